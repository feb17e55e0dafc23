"""A phone whose accounts send no REGISTER (`--no-register`), in process, against a sipp UAS
that has no registrar: the session runs on the account at once, calls go to its host."""

import pytest

from sip_worker.errors import WrongState
from tests.phone.conftest import PhoneUnderTest
from tests.support.sip_peers import SippFactory


def test_the_session_needs_no_register_and_calls_go_to_the_account_host(
    phone_without_register: PhoneUnderTest, sipp_factory: SippFactory
) -> None:
    phone, history = phone_without_register.phone, phone_without_register.history
    trunk = sipp_factory("uas")
    account = f"alice@{trunk.address}"
    phone.register_account(account, "")  # a trunk that trusts our address needs no password
    assert history.types() == []
    phone.start_session(account, 1)
    assert history.types() == ["ready"]

    phone.start_call("service", {})  # a bare callee id: the account's host
    history.wait_for("outgoing_call_connected")
    phone.end_call(hard_hangup=True)
    history.wait_for("outgoing_call_finished")
    (invite,) = trunk.received("INVITE")
    assert invite.startswith(f"INVITE sip:service@{trunk.address} SIP/2.0")

    # EndSession and a later StartSession keep their meaning, with nothing to send.
    phone.end_session()
    with pytest.raises(WrongState, match="no session to end"):
        phone.end_session()
    phone.start_session(account, 1)
    assert history.types()[-2:] == ["no_session", "ready"]
    phone.stop(1.0)
    assert trunk.received("REGISTER") == []
