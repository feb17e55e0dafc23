"""The media timeout, in process: a far end that goes silent without a BYE is hung up; one
whose audio flows, or that holds the call, is not."""

import dataclasses
import socket
import time
from collections.abc import Iterator

import pytest

from tests.phone.conftest import PhoneUnderTest, phone_settings, run_phone
from tests.support.sip_peers import SippFactory
from tests.support.sipp import Sipp

MEDIA_TIMEOUT = 1.0
DESCRIPTION = "no RTP from the far end for 1 s (media timeout)"
# Long enough for the timeout to have fired several times over, had it run.
SEVERAL_TIMEOUTS = 4 * MEDIA_TIMEOUT
OUTGOING_CALL = ["outgoing_call_initiated", "outgoing_call_connected", "outgoing_call_finished"]
INCOMING_CALL = ["incoming_call_initiated", "incoming_call_connected", "incoming_call_finished"]


@pytest.fixture()
def phone() -> Iterator[PhoneUnderTest]:
    yield from run_phone(dataclasses.replace(phone_settings(), media_timeout=MEDIA_TIMEOUT))


@pytest.fixture()
def phone_without_timeout() -> Iterator[PhoneUnderTest]:
    yield from run_phone(dataclasses.replace(phone_settings(), media_timeout=0.0))


@pytest.fixture()
def far_end_rtp() -> Iterator[str]:
    """The port a hold scenario names in its SDP: a socket that takes the phone's RTP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        rtp.bind(("127.0.0.1", 0))
        yield str(rtp.getsockname()[1])


def call_types(phone: PhoneUnderTest, first: str) -> list[str]:
    types = phone.history.types()
    return types[types.index(first) :] if first in types else []


def test_a_silent_callee_is_hung_up_and_the_line_is_free_at_once(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.open_session(registrar)
    silent = sipp_factory("uas_silent.xml", args=["-m", "1"])
    phone.phone.start_call(f"service@{silent.address}", {})

    finished = phone.history.wait_for("outgoing_call_finished", timeout=15)
    assert finished.description == DESCRIPTION
    # A hangup of the worker's own, not one the API asked for: no *_hangup_initiated.
    assert call_types(phone, "outgoing_call_initiated") == OUTGOING_CALL
    silent.wait_for(r"^BYE received", source="logs")
    assert silent.wait(timeout=10) == 0, silent.output()

    answering = sipp_factory("uas", args=["-m", "1"])
    after = len(phone.history.entries())
    phone.phone.start_call(f"service@{answering.address}", {})
    phone.history.wait_for("outgoing_call_connected", after=after)
    phone.phone.end_call(hard_hangup=True)
    phone.history.wait_for("outgoing_call_finished", after=after)


def test_a_silent_caller_is_hung_up_but_not_while_its_call_rings(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    # The call rings for longer than the timeout: no media yet, so nothing to miss.
    phone.open_session(registrar, auto_answer_interval=2)
    silent = sipp_factory(
        "uac_silent.xml", remote=f"127.0.0.1:{phone.phone.sip_port}", args=["-m", "1"]
    )

    finished = phone.history.wait_for("incoming_call_finished", timeout=15)
    assert finished.description == DESCRIPTION
    assert call_types(phone, "incoming_call_initiated") == INCOMING_CALL
    silent.wait_for(r"^BYE received", source="logs")
    assert silent.wait(timeout=10) == 0, silent.output()


def test_a_far_end_whose_audio_flows_keeps_the_call(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.open_session(registrar)
    echo = sipp_factory("uas", args=["-m", "1", "-rtp_echo"])
    phone.phone.start_call(f"service@{echo.address}", {})
    phone.history.wait_for("outgoing_call_connected")

    time.sleep(SEVERAL_TIMEOUTS)
    assert phone.history.types()[-1] == "outgoing_call_connected"
    phone.phone.end_call(hard_hangup=True)
    assert phone.history.wait_for("outgoing_call_finished").description != DESCRIPTION


def test_zero_turns_the_timeout_off(
    phone_without_timeout: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone = phone_without_timeout
    phone.open_session(registrar)
    silent = sipp_factory("uas_silent.xml", args=["-m", "1"])
    phone.phone.start_call(f"service@{silent.address}", {})
    phone.history.wait_for("outgoing_call_connected")

    time.sleep(SEVERAL_TIMEOUTS)
    assert phone.history.types()[-1] == "outgoing_call_connected"
    phone.phone.end_call(hard_hangup=True)
    assert phone.history.wait_for("outgoing_call_finished").description != DESCRIPTION


def assert_kept_on_hold_then_timed_out(phone: PhoneUnderTest, held: Sipp, first: str) -> None:
    """The far end (which sends no RTP or RTCP at all) holds the call for several timeouts:
    the call lives through the hold; once resumed, its silence ends the call."""
    held.wait_for(r"^held: a=recvonly", source="logs")
    held.wait_for(r"^resumed: a=sendrecv", source="logs", timeout=SEVERAL_TIMEOUTS + 10)
    assert call_types(phone, first)[-1].endswith("_call_connected")
    finished = phone.history.wait_for(first.replace("initiated", "finished"), timeout=15)
    assert finished.description == DESCRIPTION
    held.wait_for(r"^BYE ", source="messages")


def test_a_far_end_holding_an_outgoing_call_keeps_it(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory, far_end_rtp: str
) -> None:
    phone.open_session(registrar)
    holding = sipp_factory(
        "uas_hold.xml",
        fill={"RTP_PORT": far_end_rtp, "HOLD_MS": str(int(SEVERAL_TIMEOUTS * 1000))},
        args=["-m", "1", "-d", "30000"],
    )
    phone.phone.start_call(f"service@{holding.address}", {})
    assert_kept_on_hold_then_timed_out(phone, holding, "outgoing_call_initiated")


def test_a_far_end_holding_an_incoming_call_keeps_it(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory, far_end_rtp: str
) -> None:
    phone.open_session(registrar)
    holding = sipp_factory(
        "uac_hold.xml",
        remote=f"127.0.0.1:{phone.phone.sip_port}",
        fill={"RTP_PORT": far_end_rtp, "HOLD_MS": str(int(SEVERAL_TIMEOUTS * 1000))},
        args=["-m", "1", "-d", "30000"],
    )
    assert_kept_on_hold_then_timed_out(phone, holding, "incoming_call_initiated")
