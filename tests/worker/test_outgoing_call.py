"""StartCall to sipp UAS scenarios: connect, headers on the wire, remote BYE, refusals."""

import re
import socket
import struct
import time
from collections.abc import Callable

import grpc
import pytest

from ondewo.sip import sip_pb2
from tests.support.sipp import Sipp, free_udp_port
from tests.worker.conftest import WorkerProcess

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it from 3.13 on
HEADERS = {"X-Custom-Id": "abc123", "X-Tenant": "t1", "X-Empty-Ok": "a value, with: punctuation"}


def start_call(worker: WorkerProcess, callee: str, headers: dict[str, str] | None = None) -> None:
    worker.stub.StartCall(
        sip_pb2.StartCallRequest(callee_id=callee, headers=headers or {}), timeout=10
    )


def test_call_connects_with_headers_on_the_invite(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    uas = sipp_factory("uas")
    callee = f"service@{uas.address}"

    start_call(session, callee, HEADERS)
    connected = session.wait_for_status("outgoing_call_connected")

    assert session.types()[-2:] == ["outgoing_call_initiated", "outgoing_call_connected"]
    initiated = session.history()[-2]
    assert initiated.callee_id == callee
    assert dict(initiated.headers) == HEADERS
    assert connected.callee_id == callee
    invite = uas.received("INVITE")[0]
    assert invite.startswith(f"INVITE sip:{callee} SIP/2.0")
    for name, value in HEADERS.items():
        assert f"\n{name}: {value}\n" in invite.replace("\r\n", "\n")
    assert "m=audio" in invite
    assert "PCMU/8000" in invite

    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    session.wait_for_status("outgoing_call_finished")
    uas.wait_for(r"^BYE sip:")


def _receive_with_kernel_time(sock: socket.socket) -> tuple[bytes, tuple[str, int], int]:
    """A datagram, its sender, and the wall-clock ns at which the kernel received it."""
    data, ancillary, _, sender = sock.recvmsg(65535, 1024)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", payload[:16])
            return data, sender, seconds * 1_000_000_000 + nanoseconds
    raise AssertionError("no receive timestamp")


def _busy_reply(invite: str) -> bytes:
    lines = invite.split("\r\n")
    copied = [
        line if not line.lower().startswith(("to:", "t:")) else line + ";tag=busy"
        for line in lines
        if line.lower().startswith(("via:", "v:", "from:", "f:", "to:", "t:", "call-id:", "i:"))
        or line.lower().startswith("cseq:")
    ]
    return "\r\n".join(["SIP/2.0 486 Busy Here", *copied, "Content-Length: 0", "", ""]).encode()


def test_initiated_carries_the_time_the_worker_took_the_request(session: WorkerProcess) -> None:
    # So that its timestamp also covers the hand-off to the SIP thread and the work before the
    # INVITE: it must precede the INVITE on the wire (as the kernel timestamped it), not follow.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as callee:
        callee.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        callee.bind(("127.0.0.1", 0))
        callee.settimeout(10)
        sent_ns = time.time_ns()
        start_call(session, f"service@127.0.0.1:{callee.getsockname()[1]}")
        invite, worker_address, invite_ns = _receive_with_kernel_time(callee)
        callee.sendto(_busy_reply(invite.decode()), worker_address)
        session.wait_for_status("outgoing_call_failed")

    history = session.history()
    assert session.types()[-2:] == ["outgoing_call_initiated", "outgoing_call_failed"]
    assert history[-1].description == "486 Busy Here"
    stamps = [status.timestamp.ToNanoseconds() for status in history]
    assert invite.startswith(b"INVITE ")
    assert sent_ns <= stamps[-2] < invite_ns <= stamps[-1]
    assert stamps == sorted(stamps)


def test_sip_uri_callee_is_used_verbatim(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    uas = sipp_factory("uas")
    callee = f"sip:+4912345@{uas.address};user=phone"

    start_call(session, callee)
    session.wait_for_status("outgoing_call_connected")

    assert uas.received("INVITE")[0].startswith(f"INVITE {callee} SIP/2.0")
    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    session.wait_for_status("outgoing_call_finished")


def test_remote_bye_finishes_the_call(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    uas = sipp_factory("uas_bye.xml", args=["-d", "300", "-m", "1"])

    start_call(session, f"service@{uas.address}")
    finished = session.wait_for_status("outgoing_call_finished")

    assert session.types()[-3:] == [
        "outgoing_call_initiated",
        "outgoing_call_connected",
        "outgoing_call_finished",
    ]
    assert finished.callee_id == f"service@{uas.address}"
    assert uas.wait(timeout=20) == 0
    # The session stays ready for the next call.
    uas_again = sipp_factory("uas")
    start_call(session, f"service@{uas_again.address}")
    session.wait_for_status("outgoing_call_connected", after=len(session.history()) - 1)


@pytest.mark.parametrize(("code", "reason"), [(486, "Busy Here"), (404, "Not Found")])
def test_refused_call_fails_with_the_sip_code(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp], code: int, reason: str
) -> None:
    uas = sipp_factory(
        "uas_reject.xml", fill={"CODE": str(code), "REASON": reason}, args=["-m", "1"]
    )

    start_call(session, f"service@{uas.address}")
    failed = session.wait_for_status("outgoing_call_failed")

    assert failed.description == f"{code} {reason}"
    assert session.types()[-2:] == ["outgoing_call_initiated", "outgoing_call_failed"]
    assert uas.wait(timeout=20) == 0


def test_second_call_during_a_call_is_refused(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    uas = sipp_factory("uas")
    start_call(session, f"service@{uas.address}")
    session.wait_for_status("outgoing_call_connected")
    before = session.history()

    with pytest.raises(grpc.RpcError) as refused:
        start_call(session, f"other@{uas.address}")

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert session.history() == before
    assert len(uas.received("INVITE")) == 1
    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    session.wait_for_status("outgoing_call_finished")


def test_end_call_before_the_answer_cancels(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    silent = f"service@127.0.0.1:{free_udp_port()}"  # nobody answers the INVITE there
    start_call(session, silent)
    session.wait_for_status("outgoing_call_initiated")

    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    failed = session.wait_for_status("outgoing_call_failed", timeout=40)

    assert session.types()[-3:] == [
        "outgoing_call_initiated",
        "hard_hangup_initiated",
        "outgoing_call_failed",
    ]
    assert failed.description.split()[0] in ("487", "408")


def test_redirects_are_followed_at_most_five_times(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    """A far end that sends every INVITE back to itself: a redirect loop ends the call."""
    redirector = sipp_factory("uas_redirect_loop.xml")

    start_call(session, f"loop@{redirector.address}")
    failed = session.wait_for_status("outgoing_call_failed", timeout=20)

    target = rf"sip:hop\d+@{re.escape(redirector.address)}"
    assert re.fullmatch(
        rf"redirected to {target}: not followed \(after 5 redirects\)", failed.description
    )
    assert len(redirector.received("INVITE")) == 6
    assert "outgoing_call_connected" not in session.types()
