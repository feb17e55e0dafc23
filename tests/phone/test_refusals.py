"""Incoming INVITEs the session refuses, in process: each with its code, none with a status."""

import socket
import threading
import uuid

from tests.phone.conftest import PhoneUnderTest
from tests.support.audio import tone_wav
from tests.support.sip_peers import SIPP_PASSWORD, SippFactory, account_of
from tests.support.sipp import Sipp


def call_phone(sipp_factory: SippFactory, phone: PhoneUnderTest, scenario: str = "uac") -> Sipp:
    return sipp_factory(
        scenario, remote=f"127.0.0.1:{phone.phone.sip_port}", args=["-m", "1", "-d", "500"]
    )


def test_registered_without_a_session_refuses_with_480(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.phone.register_account(account_of(registrar), SIPP_PASSWORD)
    before = phone.history.types()
    caller = call_phone(sipp_factory, phone)
    caller.wait_for(r"SIP/2\.0 480 ")
    assert phone.history.types() == before == ["registered"]


def test_a_second_call_while_busy_gets_486_and_leaves_the_first(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.call_connected(registrar, sipp_factory)
    before = phone.history.types()

    second = call_phone(sipp_factory, phone, "uac_busy.xml")
    assert second.wait(timeout=20) == 0, second.output()  # the scenario requires a 486
    assert phone.history.types() == before
    phone.phone.mute()  # the first call is still the active one


def test_auto_answer_zero_declines_after_the_refusal_delay(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.open_session(registrar, auto_answer_interval=0)
    caller = call_phone(sipp_factory, phone, "uac_busy.xml")
    assert caller.wait(timeout=20) == 0, caller.output()
    failed = phone.history.wait_for("incoming_call_failed")
    assert failed.description == "486 Busy Here"
    assert phone.history.types()[2:] == ["incoming_call_initiated", "incoming_call_failed"]
    invite, busy = (t for t, _, line in caller.timeline() if "INVITE" in line or " 486 " in line)
    assert (busy - invite).total_seconds() >= 0.19  # the refusal held its call slot


def test_a_body_shorter_than_its_content_length_gets_400(
    phone: PhoneUnderTest, registrar: Sipp
) -> None:
    phone.open_session(registrar)
    before = phone.history.types()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        port = peer.getsockname()[1]
        invite = "\r\n".join(
            [
                f"INVITE sip:alice@127.0.0.1:{phone.phone.sip_port} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{uuid.uuid4().hex}",
                f"From: <sip:short@127.0.0.1:{port}>;tag=short",
                f"To: <sip:alice@127.0.0.1:{phone.phone.sip_port}>",
                f"Call-ID: {uuid.uuid4().hex}",
                "CSeq: 1 INVITE",
                f"Contact: <sip:short@127.0.0.1:{port}>",
                "Max-Forwards: 70",
                "Content-Type: application/sdp",
                "Content-Length: 500",
                "",
                "v=0\r\n",
            ]
        )
        peer.sendto(invite.encode(), ("127.0.0.1", phone.phone.sip_port))
        answers = []
        while not any(a.startswith(b"SIP/2.0 400 ") for a in answers):
            answers.append(peer.recv(65535))
    assert phone.history.types() == before


def test_while_stopping_new_calls_get_503_and_the_call_ends_softly(
    phone: PhoneUnderTest, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    phone.call_connected(registrar, sipp_factory)
    phone.phone.play_wav_files([tone_wav(440.0, 3.0)])

    stopping = threading.Thread(target=phone.phone.stop, args=(6.0,))
    stopping.start()
    soft = phone.history.wait_for("soft_hangup_initiated")
    caller = call_phone(sipp_factory, phone)
    caller.wait_for(r"SIP/2\.0 503 ")
    stopping.join(timeout=10)

    assert not stopping.is_alive()
    assert phone.history.types()[-2:] == ["soft_hangup_initiated", "outgoing_call_finished"]
    finished = phone.history.entries()[-1]
    # The soft hangup waited for the queued audio (bounded by half the remaining grace).
    assert finished.timestamp.ToNanoseconds() - soft.timestamp.ToNanoseconds() >= 2.5e9
