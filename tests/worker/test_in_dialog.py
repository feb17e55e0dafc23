"""In-dialog requests PBXs send mid-call: far-end hold and resume, session refreshes.

Each call must keep exactly its three statuses (initiated, connected, finished), answer every
re-INVITE and UPDATE with 200 OK and the right SDP direction, and stay usable: after the
resume, audio played into the call reaches the far end.
"""

import re
import socket
import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from ondewo.sip import sip_pb2
from tests.support.audio import dominant_frequency, rms, tone_wav
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerProcess
from tests.worker.test_incoming_call import SippFactory, call_worker
from tests.worker.test_outgoing_call import start_call

INCOMING_CALL = ["incoming_call_initiated", "incoming_call_connected", "incoming_call_finished"]
OUTGOING_CALL = ["outgoing_call_initiated", "outgoing_call_connected", "outgoing_call_finished"]
TONE_HZ = 1000
# The scenarios' -d pause after the resume: time enough to play the tone and hear it.
RESUMED_MS = 1500
HOLD_MS = 200
HEARD_SECONDS = 0.5


@pytest.fixture()
def far_end_rtp() -> Iterator[socket.socket]:
    """A UDP socket the sipp far end names in its SDP, so the test gets the worker's RTP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        rtp.bind(("127.0.0.1", 0))
        yield rtp


def rtp_port(rtp: socket.socket) -> str:
    return str(rtp.getsockname()[1])


def decode_pcmu(data: bytes) -> npt.NDArray[np.float64]:
    """G.711 mu-law bytes as samples scaled to [-1, 1]."""
    codes = ~np.frombuffer(data, dtype=np.uint8)
    exponent = (codes >> 4) & 0x07
    magnitude = ((((codes & 0x0F).astype(np.int32) << 3) + 0x84) << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude) / 32768.0


def heard(rtp: socket.socket, seconds: float) -> npt.NDArray[np.float64]:
    """The PCMU audio of the RTP arriving within `seconds` from now (what came before is
    dropped: the worker sends silence whenever nothing plays)."""
    rtp.setblocking(False)
    try:
        while True:
            rtp.recv(2048)
    except BlockingIOError:
        pass
    payloads = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        rtp.settimeout(left)
        try:
            packet = rtp.recv(2048)
        except TimeoutError:
            break
        payloads.append(packet[12:])  # PJSUA2 sends the bare 12-byte RTP header
    return decode_pcmu(b"".join(payloads))


def assert_tone_reaches_far_end(worker: WorkerProcess, rtp: socket.socket) -> None:
    worker.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(TONE_HZ, 2 * HEARD_SECONDS)]),
        timeout=10,
    )
    samples = heard(rtp, HEARD_SECONDS)
    assert len(samples) >= 8000 * HEARD_SECONDS * 0.8, "the worker sends no RTP"
    assert rms(samples) > 0.1
    assert abs(dominant_frequency(samples, 8000) - TONE_HZ) < 20


def sdp_directions(sipp: Sipp, response_to: str) -> list[str]:
    """The direction attribute of each 200 OK sipp received for `response_to` requests
    ("" where the answer has no SDP), in order."""
    directions = []
    for block in re.split(r"^-{5,} .*$", sipp.messages(), flags=re.M):
        kind, _, message = block.strip("\n").partition("\n")
        message = message.strip()
        if (
            "message received" in kind
            and message.startswith("SIP/2.0 200 ")
            and re.search(rf"^CSeq: *\d+ {response_to}\s*$", message, re.M)
        ):
            found = re.search(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", message, re.M)
            directions.append(found[1] if found else "")
    return directions


def call_history(worker: WorkerProcess, first: str) -> list[str]:
    """The status types from the call's `first` one on."""
    types = worker.types()
    return types[types.index(first) :] if first in types else []


def test_far_end_holds_and_resumes_an_incoming_call(
    session: WorkerProcess, sipp_factory: SippFactory, far_end_rtp: socket.socket
) -> None:
    uac = sipp_factory(
        "uac_hold.xml",
        remote=f"127.0.0.1:{session.sip_port}",
        fill={"RTP_PORT": rtp_port(far_end_rtp), "HOLD_MS": str(HOLD_MS)},
        args=["-m", "1", "-d", str(RESUMED_MS), "-s", "worker"],
    )

    uac.wait_for(r"^resumed: a=sendrecv", source="logs")
    assert call_history(session, "incoming_call_initiated") == INCOMING_CALL[:2]
    assert_tone_reaches_far_end(session, far_end_rtp)

    assert uac.wait(timeout=30) == 0, uac.output() + uac.messages()
    session.wait_for_status("incoming_call_finished")
    assert sdp_directions(uac, "INVITE") == ["sendrecv", "recvonly", "sendrecv"]
    assert call_history(session, "incoming_call_initiated") == INCOMING_CALL
    assert sip_pb2.SipStatus.StatusType.Name(session.status().status_type) == INCOMING_CALL[-1]


def test_far_end_refreshes_the_session_with_update_and_reinvite(
    session: WorkerProcess, sipp_factory: SippFactory
) -> None:
    uac = call_worker(sipp_factory, session, "uac_refresh.xml", hold_ms=500)

    uac.wait_for(r"^refreshed: a=sendrecv", source="logs")
    assert call_history(session, "incoming_call_initiated") == INCOMING_CALL[:2]

    assert uac.wait(timeout=30) == 0, uac.output() + uac.messages()
    session.wait_for_status("incoming_call_finished")
    assert sdp_directions(uac, "UPDATE") == [""]  # no offer, so no answer
    assert sdp_directions(uac, "INVITE") == ["sendrecv", "sendrecv"]
    assert call_history(session, "incoming_call_initiated") == INCOMING_CALL
    assert sip_pb2.SipStatus.StatusType.Name(session.status().status_type) == INCOMING_CALL[-1]


def test_far_end_holds_and_resumes_an_outgoing_call(
    session: WorkerProcess, sipp_factory: SippFactory, far_end_rtp: socket.socket
) -> None:
    uas = sipp_factory(
        "uas_hold.xml",
        fill={"RTP_PORT": rtp_port(far_end_rtp), "HOLD_MS": str(HOLD_MS)},
        args=["-m", "1", "-d", str(RESUMED_MS)],
    )

    start_call(session, f"service@{uas.address}")
    uas.wait_for(r"^resumed: a=sendrecv", source="logs")
    assert call_history(session, "outgoing_call_initiated") == OUTGOING_CALL[:2]
    assert_tone_reaches_far_end(session, far_end_rtp)

    assert uas.wait(timeout=30) == 0, uas.output() + uas.messages()
    session.wait_for_status("outgoing_call_finished")
    # The worker's own INVITE got the first 200 OK; these answer the far end's re-INVITEs.
    assert sdp_directions(uas, "INVITE") == ["recvonly", "sendrecv"]
    assert call_history(session, "outgoing_call_initiated") == OUTGOING_CALL
    assert sip_pb2.SipStatus.StatusType.Name(session.status().status_type) == OUTGOING_CALL[-1]
