"""The active call's phases, in process: what each phase allows and what it records."""

import pytest

from sip_worker.errors import Unreachable, WrongState
from sip_worker.phone.transfer import Transfer, TransferOutcome
from tests.phone.conftest import PhoneUnderTest
from tests.support.audio import tone_wav
from tests.support.sip_peers import SippFactory
from tests.support.sipp import Sipp


def test_session_records_registered_then_ready(phone: PhoneUnderTest, registrar: Sipp) -> None:
    account = phone.open_session(registrar)
    assert phone.history.types() == ["registered", "ready"]
    assert {status.account_name for status in phone.history.entries()} == {account}
    stamps = [status.timestamp.ToNanoseconds() for status in phone.history.entries()]
    assert stamps == sorted(stamps)


def test_outgoing_call_connected_then_soft_hangup_after_playback(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.open_session(registrar)
    uas = sipp_factory("uas")
    phone.phone.start_call(f"service@{uas.address}", {"X-Case": "phases"})
    phone.history.wait_for("outgoing_call_connected")
    # The recorder tells storage that an outgoing call's answer follows its initiated at once.
    assert phone.history.follow_ups == ["outgoing_call_initiated"]

    phone.phone.mute()
    phone.phone.unmute()
    phone.phone.play_wav_files([tone_wav(440.0, 1.0)])
    phone.phone.end_call(hard_hangup=False)  # CONNECTED -> HANGING_UP: waits for the audio

    with pytest.raises(WrongState, match="being hung up"):
        phone.phone.play_wav_files([tone_wav(440.0, 0.2)])
    with pytest.raises(WrongState, match="being hung up"):
        phone.phone.end_call(hard_hangup=False)
    with pytest.raises(WrongState, match="being hung up"):
        phone.phone.transfer_call("queue@127.0.0.1", {})
    finished = phone.history.wait_for("outgoing_call_finished", timeout=10)

    assert phone.history.types() == [
        "registered",
        "ready",
        "outgoing_call_initiated",
        "outgoing_call_connected",
        "soft_hangup_initiated",
        "outgoing_call_finished",
    ]
    soft = phone.history.entries()[-2]
    # The BYE waited for the second of queued audio (plus slack).
    waited = finished.timestamp.ToNanoseconds() - soft.timestamp.ToNanoseconds()
    assert waited >= 0.9e9
    assert all(s.headers["X-Case"] == "phases" for s in phone.history.entries()[2:])
    uas.wait_for(r"^BYE sip:")
    # FINISHED: the line is free, nothing refers to the old call any more.
    with pytest.raises(WrongState, match="there is no call"):
        phone.phone.mute()


def test_incoming_call_while_setting_up_refuses_features_and_hangs_up_hard(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.open_session(registrar, auto_answer_interval=30)
    uac = sipp_factory("uac_xhdr.xml", remote=f"127.0.0.1:{phone.phone.sip_port}", args=["-m", "1"])
    initiated = phone.history.wait_for("incoming_call_initiated")
    assert initiated.callee_id == f"sip:sipp@127.0.0.1:{uac.port}"
    assert dict(initiated.headers) == {"X-Custom-Caller": "sipp-uac-1", "X-Session-Id": "sess-42"}

    for refused in (
        lambda: phone.phone.play_wav_files([tone_wav(440.0, 0.2)]),
        lambda: phone.phone.transfer_call("queue@127.0.0.1", {}),
    ):
        with pytest.raises(WrongState, match="not connected yet"):
            refused()
    with pytest.raises(WrongState, match="already in progress"):
        phone.phone.start_call("bob@127.0.0.1", {})

    phone.phone.end_call(hard_hangup=True)
    failed = phone.history.wait_for("incoming_call_failed")
    assert phone.history.types()[2:] == [
        "incoming_call_initiated",
        "hard_hangup_initiated",
        "incoming_call_failed",
    ]
    assert failed.callee_id == initiated.callee_id
    uac.wait_for(r"SIP/2\.0 603 ")


def test_transfer_phase_allows_one_transfer_and_ends_the_leg(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.open_session(registrar)
    uas = sipp_factory("uas_refer.xml", args=["-m", "1"])
    phone.phone.start_call(f"service@{uas.address}", {})
    phone.history.wait_for("outgoing_call_connected")

    phone.phone.transfer_call("queue7@127.0.0.1:5099", {"X-Reason": "blind"})
    with pytest.raises(WrongState, match="a transfer is already in progress"):
        phone.phone.transfer_call("queue8@127.0.0.1:5099", {})
    finished = phone.history.wait_for("outgoing_call_finished", timeout=20)

    assert phone.history.types()[2:] == [
        "outgoing_call_initiated",
        "outgoing_call_connected",
        "transfer_call_initiated",
        "outgoing_call_finished",
    ]
    transfer = phone.history.entries()[-2]
    assert transfer.transfer_call_id == "queue7@127.0.0.1:5099"
    assert dict(transfer.headers) == {"X-Reason": "blind"}
    assert finished.transfer_call_id == "queue7@127.0.0.1:5099"


def test_an_invite_that_cannot_be_sent_fails_the_call_with_the_error_class(
    phone: PhoneUnderTest, registrar: Sipp
) -> None:
    phone.open_session(registrar)
    # The SIP transport is IPv4 UDP: PJSIP refuses an IPv6 target before sending anything.
    with pytest.raises(Unreachable):
        phone.phone.start_call("sip:bob@[::1]:5060", {})
    assert phone.history.types()[2:] == ["outgoing_call_initiated", "outgoing_call_failed"]
    failed = phone.history.entries()[-1]
    assert failed.exception_name == "Unreachable", failed
    assert failed.description
    phone.history.wait_for("ready")  # the session goes on: the line is free again
    with pytest.raises(WrongState, match="there is no call"):
        phone.phone.end_call(hard_hangup=True)


def test_a_notify_of_success_that_overtook_the_refer_s_202_still_counts_as_accepted() -> None:
    """Through a proxy the NOTIFYs may arrive before the 202 (PJSUA then reports no
    "Accepted"): the call still leaves by the transfer, with the REFER's 202."""
    transfer = Transfer()
    assert transfer.progress(100, "Trying", final=False) == TransferOutcome()
    assert transfer.progress(200, "OK", final=True) == TransferOutcome(leave=True)
    assert (transfer.left, transfer.response_code) == (True, 202)
