"""Hostile SIP and RTP traffic at a running worker: no input crashes it, bad input changes nothing.

Covers garbage and malformed UDP datagrams at the SIP port, INVITEs with broken SDP, garbage at
the RTP port during a call, abusive TCP clients, and an INVITE flood. After each case the
process must be alive, gRPC must answer, the status history must hold only what the case
expects, and a normal outgoing call must still connect and end.
"""

import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, suppress

import pytest

from ondewo.sip import sip_pb2
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerProcess, start_session, start_tcp_session
from tests.worker.test_outgoing_call import start_call

SippFactory = Callable[..., Sipp]

SEED = 20240611
SETTLE_S = 0.3  # long enough for the SIP thread to have handled what was just sent
VALID_SDP = (
    "v=0\r\n"
    "o=hostile 1 1 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)
CALL_ENDED = [
    "outgoing_call_initiated",
    "outgoing_call_connected",
    "hard_hangup_initiated",
    "outgoing_call_finished",
]


class RawPeer:
    """A UDP socket on `host` (127.0.0.1 unless told) that sends hand-made SIP to the worker and
    reads its answers."""

    def __init__(self, worker_port: int, host: str = "127.0.0.1") -> None:
        self.worker_port = worker_port
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, ("127.0.0.1", self.worker_port))

    def request(
        self,
        method: str,
        *,
        call_id: str | None = None,
        cseq: int = 1,
        branch: str | None = None,
        to_tag: str = "",
        omit: tuple[str, ...] = (),
        extra: tuple[bytes, ...] = (),
        body: bytes = b"",
        content_length: bytes | None = None,
    ) -> bytes:
        """A request from this peer to the worker; `omit` drops headers, `extra` adds lines."""
        via_branch = branch or uuid.uuid4().hex
        headers = {
            "Via": f"SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{via_branch}",
            "From": f"<sip:hostile@{self.host}:{self.port}>;tag=h{self.port}",
            "To": f"<sip:alice@127.0.0.1:{self.worker_port}>"
            + (f";tag={to_tag}" if to_tag else ""),
            "Call-ID": call_id or uuid.uuid4().hex,
            "CSeq": f"{cseq} {method}",
            "Contact": f"<sip:hostile@{self.host}:{self.port}>",
            "Max-Forwards": "70",
        }
        lines = [f"{method} sip:alice@127.0.0.1:{self.worker_port} SIP/2.0".encode()]
        lines += [
            f"{name}: {value}".encode() for name, value in headers.items() if name not in omit
        ]
        lines += extra
        if body:
            lines.append(b"Content-Type: application/sdp")
        lines.append(b"Content-Length: " + (content_length or str(len(body)).encode()))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def receive(self, timeout: float) -> list[bytes]:
        """Every datagram that arrives within `timeout` seconds."""
        received = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                received.append(self.sock.recv(65535))
            except TimeoutError:
                break
        return received


def status_code(message: bytes) -> int | None:
    match = re.match(rb"SIP/2\.0 (\d{3}) ", message)
    return int(match[1]) if match else None


def header(message: bytes, *names: bytes) -> bytes:
    pattern = rb"^(?:" + rb"|".join(names) + rb")[ \t]*:[ \t]*(.*?)\r?$"
    match = re.search(pattern, message, re.M | re.I)
    assert match is not None, message
    return match[1]


def to_tag_of(response: bytes) -> str:
    match = re.search(rb";tag=([^;\s>]+)", header(response, b"To", b"t"))
    assert match is not None, response
    return match[1].decode()


def assert_unharmed(worker: WorkerProcess, before: list[sip_pb2.SipStatus], case: str) -> None:
    """The worker lives, answers gRPC, and `case` appended nothing to its history."""
    assert worker.alive(), f"{case} killed the worker:\n{worker.log()}"
    worker.status()
    assert worker.history() == before, f"{case} changed the history: {worker.types()}"


def assert_takes_a_call(
    worker: WorkerProcess, sipp_factory: SippFactory, tcp: bool = False
) -> Sipp:
    """A normal outgoing call to a fresh sipp UAS connects and ends; returns the UAS."""
    uas = sipp_factory("uas", transport="tcp" if tcp else "udp")
    after = len(worker.history())
    start_call(worker, f"sip:svc@{uas.address}" + (";transport=tcp" if tcp else ""))
    worker.wait_for_status("outgoing_call_connected", after=after)
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished", after=after)
    assert worker.types()[after:] == CALL_ENDED
    return uas


@pytest.fixture()
def peer(session: WorkerProcess) -> Iterator[RawPeer]:
    with closing(RawPeer(session.sip_port)) as raw_peer:
        yield raw_peer


def test_random_datagrams_change_nothing(
    session: WorkerProcess, peer: RawPeer, sipp_factory: SippFactory
) -> None:
    before = session.history()
    rng = random.Random(SEED)

    for _ in range(300):
        peer.send(rng.randbytes(rng.randint(1, 1500)))
    time.sleep(SETTLE_S)

    assert_unharmed(session, before, "300 random datagrams")
    assert_takes_a_call(session, sipp_factory)


def malformed_datagrams(peer: RawPeer) -> dict[str, bytes]:
    """Named SIP datagrams that are broken or belong to nothing the worker knows."""
    sdp = VALID_SDP.encode()
    missing = {
        f"INVITE without {name}": peer.request("INVITE", omit=(name,), body=sdp)
        for name in ("Via", "From", "To", "Call-ID", "CSeq")
    }
    unknown_dialog = {
        f"{method} for no dialog": peer.request(method, to_tag="nosuchdialog")
        for method in ("BYE", "ACK", "CANCEL")
    }
    responses = {
        f"{code} to no transaction": (
            f"SIP/2.0 {code}\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{peer.worker_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:alice@127.0.0.1:{peer.worker_port}>;tag=nosuch\r\n"
            f"To: <sip:bob@127.0.0.1:{peer.port}>;tag=remote\r\n"
            f"Call-ID: {uuid.uuid4().hex}\r\n"
            f"CSeq: 1 {method}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        for code, method in (("200 OK", "INVITE"), ("180 Ringing", "INVITE"), ("200 OK", "BYE"))
    }
    return {
        "a CRLF keep-alive": b"\r\n",
        "a NUL byte": b"\0",
        "65000 bytes": b"INVITE " + b"A" * 64993,
        "a request line alone": f"INVITE sip:alice@127.0.0.1:{peer.worker_port} SIP/2.0".encode(),
        "a request line and a blank line": b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n\r\n",
        **missing,
        "negative Content-Length": peer.request("INVITE", body=sdp, content_length=b"-5"),
        "non-numeric Content-Length": peer.request("INVITE", body=sdp, content_length=b"lots"),
        "non-UTF-8 header values on OPTIONS": peer.request(
            "OPTIONS", extra=(b"X-Bytes: \xff\xfe\xc3\x28 \x80", b"Subject: caf\xe9")
        ),
        "non-UTF-8 header name": peer.request("OPTIONS", extra=(b"X-\xff\xfe: 1",)),
        **responses,
        **unknown_dialog,
    }


def test_malformed_sip_datagrams_change_nothing(
    session: WorkerProcess, peer: RawPeer, sipp_factory: SippFactory
) -> None:
    before = session.history()

    for case, datagram in malformed_datagrams(peer).items():
        peer.send(datagram)
        time.sleep(0.05)
        assert_unharmed(session, before, case)
    time.sleep(SETTLE_S)

    assert_unharmed(session, before, "the malformed datagrams")
    assert_takes_a_call(session, sipp_factory)


def test_content_length_beyond_the_body_gets_400_and_changes_nothing(
    session: WorkerProcess, peer: RawPeer, sipp_factory: SippFactory
) -> None:
    # PJSIP takes such a datagram as a call; RFC 3261 18.3 asks for a 400.
    before = session.history()
    sdp = VALID_SDP.encode()
    call_id, branch = uuid.uuid4().hex, uuid.uuid4().hex
    length = str(len(sdp) + 500).encode()

    peer.send(
        peer.request("INVITE", call_id=call_id, branch=branch, body=sdp, content_length=length)
    )
    final = final_response(peer, call_id, "Content-Length beyond the body")
    end_incoming_call(peer, call_id, branch, final)
    time.sleep(SETTLE_S)

    assert status_code(final) == 400
    assert_unharmed(session, before, "Content-Length beyond the body")
    assert_takes_a_call(session, sipp_factory)


def final_response(peer: RawPeer, call_id: str, case: str, timeout: float = 5.0) -> bytes:
    """The worker's first final response to the INVITE of `call_id`, sent for `case`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in peer.receive(0.1):
            code = status_code(message)
            if (
                code is not None
                and code >= 200
                and header(message, b"Call-ID", b"i") == call_id.encode()
            ):
                return message
    raise AssertionError(f"no final response to the INVITE with {case} within {timeout} s")


def end_incoming_call(peer: RawPeer, call_id: str, branch: str, final: bytes) -> None:
    """Completes the caller's side: ACK the final response, and hang up an answered call."""
    code = status_code(final)
    assert code is not None
    to_tag = to_tag_of(final)
    if code >= 300:  # the ACK of a refusal belongs to the INVITE transaction
        peer.send(peer.request("ACK", call_id=call_id, branch=branch, to_tag=to_tag))
        return
    peer.send(peer.request("ACK", call_id=call_id, to_tag=to_tag))
    peer.send(peer.request("BYE", call_id=call_id, cseq=2, to_tag=to_tag))


INCOMING_CALL_OUTCOMES = (
    [],
    ["incoming_call_initiated", "incoming_call_failed"],
    ["incoming_call_initiated", "incoming_call_connected", "incoming_call_finished"],
)


def settled_statuses(worker: WorkerProcess, after: int) -> list[str]:
    """The statuses from index `after` on, once an incoming call there (if any) has ended."""
    time.sleep(SETTLE_S)
    if worker.types()[after:]:
        worker.wait_for_status("incoming_call_initiated", after=after)
        deadline = time.monotonic() + 10
        while worker.types()[-1] not in ("incoming_call_failed", "incoming_call_finished"):
            assert time.monotonic() < deadline, f"the call did not end: {worker.types()}"
            time.sleep(0.02)
    return worker.types()[after:]


def odd_invite_bodies() -> dict[str, tuple[bytes, tuple[bytes, ...]]]:
    """Named (SDP body, extra header lines) of INVITEs the worker may take or refuse."""
    sdp = VALID_SDP
    return {
        "valid SDP (the control)": (sdp.encode(), ()),
        "garbage SDP": (random.Random(SEED).randbytes(300), ()),
        "text that is not SDP": (b"hello\r\nthis=is not\r\nSDP at all\r\n", ()),
        "m=audio 0": (sdp.replace("m=audio 40000", "m=audio 0").encode(), ()),
        "no m= line": (sdp.split("m=")[0].encode(), ()),
        "opus only": (
            sdp.replace("RTP/AVP 0", "RTP/AVP 98")
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:98 opus/48000/2")
            .encode(),
            (),
        ),
        "c= with an invalid address": (
            sdp.replace("c=IN IP4 127.0.0.1", "c=IN IP4 999.0.0.not-an-address").encode(),
            (),
        ),
        "a 60 KB X- header": (sdp.encode(), (b"X-Long: " + b"a" * 60 * 1024,)),
        "non-UTF-8 X- header value": (sdp.encode(), (b"X-Bytes: caf\xe9 \xff\xfe\xc3\x28",)),
    }


def test_odd_invites_are_refused_or_handled_cleanly(
    session: WorkerProcess, peer: RawPeer, sipp_factory: SippFactory
) -> None:
    outcomes = {}

    for case, (body, extra) in odd_invite_bodies().items():
        after = len(session.history())
        call_id, branch = uuid.uuid4().hex, uuid.uuid4().hex
        peer.send(peer.request("INVITE", call_id=call_id, branch=branch, body=body, extra=extra))
        final = final_response(peer, call_id, case)
        end_incoming_call(peer, call_id, branch, final)
        statuses = settled_statuses(session, after)

        assert session.alive(), f"{case} killed the worker:\n{session.log()}"
        code = status_code(final)
        assert code is not None
        outcomes[case] = (code, statuses)
        assert statuses in INCOMING_CALL_OUTCOMES, (case, statuses)
        assert (code < 300) == (statuses == list(INCOMING_CALL_OUTCOMES[2])), (case, code, statuses)
        assert session.status().status_type != sip_pb2.SipStatus.StatusType.incoming_call_initiated

    assert outcomes["valid SDP (the control)"][0] == 200, outcomes
    for case in ("garbage SDP", "text that is not SDP", "no m= line", "opus only"):
        assert 400 <= outcomes[case][0] < 500, (case, outcomes[case])
    # Each byte that is not UTF-8 is recorded as U+FFFD (it used to wedge the worker: the
    # status could not be encoded, and the call was neither answered nor refused).
    recorded = [dict(status.headers) for status in session.history() if "X-Bytes" in status.headers]
    assert recorded == [{"X-Bytes": "caf\ufffd \ufffd\ufffd\ufffd("}] * 3, recorded
    assert_takes_a_call(session, sipp_factory)


def rtp_garbage(rng: random.Random) -> list[bytes]:
    """Datagrams for an RTP port: random bytes, bad RTP versions, lying CSRC counts, empty."""
    header_of_version = [bytes([version << 6, 0]) + bytes(10) for version in range(4)]
    return [
        b"",
        b"\x80",
        *(header + rng.randbytes(160) for header in header_of_version),
        bytes([0x8F, 0]) + bytes(10),  # version 2 claiming 15 CSRCs it does not carry
        bytes([0x9F, 0]) + bytes(10) + b"\xff" * 4,  # and an extension header too
        bytes([0xAF, 0]) + bytes(10) + b"\xff",  # and padding whose length byte lies
        bytes([0x80, 0x7F]) + rng.randbytes(1400),  # an unknown payload type
        b"\x80" + b"\xff" * 65000,
        *(rng.randbytes(rng.randint(1, 1500)) for _ in range(200)),
    ]


def test_rtp_garbage_during_a_call_changes_nothing(
    session: WorkerProcess, sipp_factory: SippFactory
) -> None:
    uas = sipp_factory("uas")
    start_call(session, f"sip:svc@{uas.address}")
    session.wait_for_status("outgoing_call_connected")
    during_call = session.history()
    match = re.search(r"^m=audio (\d+) ", uas.received("INVITE")[0], re.M)
    assert match is not None
    rtp_port = int(match[1])

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        for datagram in rtp_garbage(random.Random(SEED)):
            for port in (rtp_port, rtp_port + 1):  # RTP and RTCP
                attacker.sendto(datagram, ("127.0.0.1", port))
    time.sleep(SETTLE_S)

    assert_unharmed(session, during_call, "RTP garbage")
    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    session.wait_for_status("outgoing_call_finished", after=len(during_call))
    assert session.types()[len(during_call) - 2 :] == CALL_ENDED
    uas.wait_for(r"^BYE sip:")
    assert_takes_a_call(session, sipp_factory)


def test_abusive_tcp_clients_change_nothing(
    worker_factory: Callable[..., WorkerProcess], sipp_factory: SippFactory
) -> None:
    worker, _ = start_tcp_session(worker_factory, sipp_factory)
    before = worker.history()
    address = ("127.0.0.1", worker.sip_port)

    # Stays connected and silent until the end of the test.
    with socket.create_connection(address, timeout=5):
        # The worker may hang up on the garbage: that is fine.
        with (
            socket.create_connection(address, timeout=5) as flooder,
            suppress(BrokenPipeError, ConnectionResetError),
        ):
            flooder.sendall(random.Random(SEED).randbytes(1024 * 1024))
        with socket.create_connection(address, timeout=5) as partial:
            partial.sendall(
                f"INVITE sip:alice@127.0.0.1:{worker.sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKpartial\r\n"
                "Content-Length: 500\r\n\r\nv=0\r\n".encode()
            )
        time.sleep(SETTLE_S)

        assert_unharmed(worker, before, "abusive TCP clients")
        assert_takes_a_call(worker, sipp_factory, tcp=True)


def flood_with_invites(worker: WorkerProcess, peer: RawPeer, invite_count: int) -> list[int]:
    """Sends `invite_count` INVITEs at once (resending the unanswered, as a UAC's timer A
    would) and ends each call as its final answer comes; the final codes, sorted."""
    branches = {uuid.uuid4().hex: uuid.uuid4().hex for _ in range(invite_count)}
    invites = {
        call_id: peer.request("INVITE", call_id=call_id, branch=branch, body=VALID_SDP.encode())
        for call_id, branch in branches.items()
    }
    finals: dict[str, bytes] = {}
    heard: set[str] = set()

    for invite in invites.values():
        peer.send(invite)
    deadline = time.monotonic() + 10
    while len(finals) < len(invites) and time.monotonic() < deadline and worker.alive():
        for message in peer.receive(0.5):
            call_id = header(message, b"Call-ID", b"i").decode()
            heard.add(call_id)
            code = status_code(message)
            if code is not None and code >= 200 and call_id not in finals:
                finals[call_id] = message
                end_incoming_call(peer, call_id, branches[call_id], message)
        for call_id in invites.keys() - heard:
            peer.send(invites[call_id])

    assert worker.alive(), f"the flood killed the worker:\n{worker.log()}"
    assert len(finals) == len(invites), f"{len(invites) - len(finals)} INVITEs got no answer"
    return sorted(status_code(final) or 0 for final in finals.values())


def one_call_at_a_time(statuses: list[str]) -> list[list[str]]:
    """`statuses` cut into calls; fails unless each call ends before the next begins."""
    calls: list[list[str]] = []
    for status in statuses:
        if status == "incoming_call_initiated":
            calls.append([])
        assert calls, f"a status before any call: {statuses}"
        calls[-1].append(status)
    assert all(call in INCOMING_CALL_OUTCOMES for call in calls), statuses
    return calls


@pytest.mark.parametrize("invite_count", [20, 300])
def test_invite_flood_gets_answers_and_one_call_at_a_time(
    session: WorkerProcess, peer: RawPeer, sipp_factory: SippFactory, invite_count: int
) -> None:
    after = len(session.history())

    codes = flood_with_invites(session, peer, invite_count)

    # The caller ends each answered call at once, so a later INVITE may be answered too.
    assert set(codes) <= {200, 486}, codes
    calls = one_call_at_a_time(settled_statuses(session, after))
    assert codes.count(200) == sum("incoming_call_connected" in call for call in calls)
    assert_takes_a_call(session, sipp_factory)


def test_invite_flood_while_declining_every_call(
    worker: WorkerProcess, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    """Every refused INVITE would open media sockets: the refusals must not exhaust them."""
    start_session(worker, registrar, auto_answer_interval=0)
    after = len(worker.history())

    with closing(RawPeer(worker.sip_port)) as peer:
        codes = flood_with_invites(worker, peer, 300)

    assert set(codes) == {486}, codes
    time.sleep(SETTLE_S)
    declined = one_call_at_a_time(worker.types()[after:])
    assert declined, "no INVITE reached the phone"
    assert all(call == ["incoming_call_initiated", "incoming_call_failed"] for call in declined)
    assert_takes_a_call(worker, sipp_factory)
