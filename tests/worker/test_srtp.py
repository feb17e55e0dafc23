"""SRTP (SDES over SIP over TLS) against a PJSUA2 far end: audio both ways when it is
mandatory, a far end without SRTP refused with 488, optional taking both; and a packet capture
on loopback during one call, in which no SIP and no plain RTP shows."""

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from ondewo.sip import sip_pb2
from tests.support.audio import tone_seconds, tone_seconds_in, tone_wav
from tests.support.audio_stream import AudioStream, config
from tests.support.certificates import TestCa
from tests.support.kamailio import Kamailio, KamailioFactory
from tests.support.recording_peer import RecordingPeer
from tests.support.sip_peers import SIPP_PASSWORD
from tests.worker.conftest import WorkerFactory, WorkerProcess
from tests.worker.test_tls import tls_worker

RATE = 16000
WORKER_TONE = 1000.0
PEER_TONE = 600.0
PCMU_FRAME_BYTES = 160  # 20 ms at 8 kHz


@dataclass
class Line:
    worker: WorkerProcess
    kamailio: Kamailio
    peer: RecordingPeer


@pytest.fixture()
def line_factory(
    worker_factory: WorkerFactory,
    tls_kamailio_factory: KamailioFactory,
    ca: TestCa,
    tmp_path: Path,
) -> Iterator[object]:
    """A TLS worker with `worker_srtp` and a TLS recording peer with `peer_srtp`; with
    `session`, the worker has a session (auto-answer 1 s) at a Kamailio TLS registrar."""
    peers: list[RecordingPeer] = []

    def factory(worker_srtp: str, peer_srtp: str, session: bool = True) -> Line:
        kamailio = tls_kamailio_factory()
        worker = tls_worker(worker_factory, ca.certificate, "--srtp", worker_srtp)
        issued = ca.issue(f"peer-{len(peers)}")
        peer = RecordingPeer(
            tmp_path / f"peer-{len(peers)}", tls=(issued.certificate, issued.key), srtp=peer_srtp
        )
        peers.append(peer)
        line = Line(worker, kamailio, peer)
        if session:
            open_session(line)
        return line

    yield factory
    for peer in peers:
        peer.stop()


def open_session(line: Line) -> None:
    line.worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(
            account_name=line.kamailio.tls_account, password=SIPP_PASSWORD
        ),
        timeout=30,
    )
    line.worker.stub.StartSession(
        sip_pb2.StartSessionRequest(account_name=line.kamailio.tls_account, auto_answer_interval=1),
        timeout=10,
    )


def call_peer(line: Line) -> str:
    """Calls the peer; returns where the peer sends RTP (the worker's RTP address)."""
    line.worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=line.peer.uri), timeout=10)
    line.worker.wait_for_status("outgoing_call_connected")
    return line.peer.wait_for("MEDIA").split()[1]


def audio_both_ways(line: Line, tmp_path: Path) -> None:
    """The worker's tone reaches the peer, and the peer's tone reaches the worker's LISTEN."""
    line.worker.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(WORKER_TONE, 1.5)]), timeout=10
    )
    heard_by_peer = line.peer.record(line.peer.workdir / "heard.wav", 1.2)
    assert tone_seconds(heard_by_peer, WORKER_TONE) >= 0.8
    time.sleep(0.6)  # the worker's tone has ended: LISTEN would hear it too
    tmp_path.mkdir(exist_ok=True)
    far_end = tmp_path / "far-end.wav"
    far_end.write_bytes(tone_wav(PEER_TONE, 2.0))
    listen = AudioStream(line.worker.stub, config(sample_rate_hz=RATE))
    listen.wait_for("started")
    line.peer.play(far_end)
    listen.close()
    listen.ended()
    assert tone_seconds_in(listen.audio(), RATE, PEER_TONE) >= 1.0


def test_mandatory_srtp_carries_audio_both_ways(line_factory: object, tmp_path: Path) -> None:
    line = line_factory("mandatory", "mandatory")  # type: ignore[operator]
    call_peer(line)
    audio_both_ways(line, tmp_path)


def test_mandatory_srtp_refuses_a_far_end_without_it(line_factory: object) -> None:
    line = line_factory("mandatory", "off")  # type: ignore[operator]

    # Out: the peer cannot take the SRTP-only offer.
    line.worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=line.peer.uri), timeout=10)
    failed = line.worker.wait_for_status("outgoing_call_failed")
    assert failed.description.startswith("488")

    # In, through Kamailio: the worker refuses the plain RTP offer.
    line.peer.command(f"call sip:alice@{line.kamailio.tls_address};transport=tls")
    assert line.peer.wait_for("DISCONNECTED") == "DISCONNECTED 488"
    assert "incoming_call_connected" not in line.worker.types()


def test_optional_srtp_calls_a_far_end_without_it_and_takes_calls_with_it(
    line_factory: object, tmp_path: Path, ca: TestCa
) -> None:
    line = line_factory("optional", "off")  # type: ignore[operator]
    call_peer(line)
    audio_both_ways(line, tmp_path / "plain")
    line.worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    line.worker.wait_for_status("outgoing_call_finished")

    # A far end that insists on SRTP offers RTP/SAVP, which optional answers.
    issued = ca.issue("srtp-peer")
    secure = RecordingPeer(
        tmp_path / "srtp-peer", tls=(issued.certificate, issued.key), srtp="mandatory"
    )
    try:
        secure.command(f"call sip:alice@{line.kamailio.tls_address};transport=tls")
        line.worker.wait_for_status("incoming_call_connected")
        secure.wait_for("MEDIA")
        audio_both_ways(Line(line.worker, line.kamailio, secure), tmp_path / "srtp")
    finally:
        secure.stop()


def mulaw_decode(payload: bytes) -> npt.NDArray[np.float64]:
    """G.711 mu-law bytes as samples in [-1, 1]."""
    code = ~np.frombuffer(payload, dtype=np.uint8).astype(np.int64) & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code >> 4) & 0x07)
    linear = np.where(code & 0x80, 0x84 - magnitude, magnitude - 0x84)
    return linear.astype(np.float64) / 32768.0


class Capture:
    """tshark on the loopback interface, writing the packets of the given ports to a file."""

    def __init__(self, path: Path, tcp_ports: list[int]) -> None:
        tshark = shutil.which("tshark")
        if tshark is None:
            pytest.skip("tshark is not installed (.ci/run installs it)")
        self.path = path
        tcp = " or ".join(f"tcp port {port}" for port in tcp_ports)
        self._stderr = path.with_suffix(".log")
        with self._stderr.open("wb") as stderr:
            self.process = subprocess.Popen(
                [tshark, "-i", "lo", "-w", str(path), "-f", f"{tcp} or udp"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + 15
        while "Capturing on" not in self._stderr.read_text(errors="replace"):
            assert self.process.poll() is None, self._stderr.read_text(errors="replace")
            assert time.monotonic() < deadline, "tshark did not start capturing"
            time.sleep(0.05)
        time.sleep(1.0)  # dumpcap says so a moment before its first packet is captured

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def fields(
        self, display_filter: str, *fields: str, decode_as: tuple[str, ...] = ()
    ) -> list[str]:
        command = ["tshark", "-r", str(self.path), "-Y", display_filter, "-T", "fields"]
        for rule in decode_as:
            command += ["-d", rule]
        for field in fields:
            command += ["-e", field]
        result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
        return [line for line in result.stdout.splitlines() if line.strip()]


def test_a_capture_of_a_tls_and_srtp_call_shows_no_sip_and_no_plain_rtp(
    line_factory: object, tmp_path: Path
) -> None:
    line = line_factory("mandatory", "mandatory", session=False)  # type: ignore[operator]
    sip_ports = [line.worker.sip_port, line.kamailio.tls_port, line.peer.port]
    capture = Capture(tmp_path / "call.pcap", sip_ports)
    try:
        open_session(line)
        worker_rtp = int(call_peer(line).rsplit(":", 1)[1])
        line.worker.stub.PlayWavFiles(
            sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(WORKER_TONE, 3.0)]), timeout=10
        )
        time.sleep(2.0)
        line.worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
        line.worker.wait_for_status("outgoing_call_finished")
    finally:
        capture.stop()
    on_sip_ports = " or ".join(f"tcp.port == {port}" for port in sip_ports)
    as_tls = tuple(f"tcp.port=={port},tls" for port in sip_ports)

    # Signalling: TLS 1.2 with an ECDHE+AES-GCM suite, never a readable SIP message.
    assert (
        capture.fields(
            f'({on_sip_ports}) and (sip or tcp contains "SIP/2.0")',
            "frame.number",
            decode_as=as_tls,
        )
        == []
    )
    suites = capture.fields(
        f"({on_sip_ports}) and tls.handshake.type == 2",
        "tls.handshake.version",
        "tls.handshake.ciphersuite",
        decode_as=as_tls,
    )
    assert len(suites) >= 2  # the REGISTER to Kamailio, the INVITE to the peer
    for line_fields in suites:
        version, suite = line_fields.split("\t")
        assert version == "0x0303"  # TLS 1.2
        assert int(suite, 16) in {0xC02B, 0xC02C, 0xC02F, 0xC030}

    # Media: what the worker sends carries an SRTP auth tag after the 20 ms of PCMU, and the
    # payloads, read as PCMU, hold no trace of the tone it plays.
    payloads = [
        bytes.fromhex(text.replace(":", ""))
        for text in capture.fields(
            f"udp.srcport == {worker_rtp} and rtp",
            "rtp.payload",
            decode_as=(f"udp.port=={worker_rtp},rtp",),
        )
    ]
    assert len(payloads) > 50
    assert all(len(payload) > PCMU_FRAME_BYTES for payload in payloads)
    samples = mulaw_decode(b"".join(payload[:PCMU_FRAME_BYTES] for payload in payloads))
    assert tone_seconds_in(samples, 8000, WORKER_TONE) < 0.1
