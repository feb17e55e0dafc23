"""Upstream's own generated client (ondewo-sip-client 5.5.2, `make install` downloads it
beside the venv) streams call audio against us unchanged: the wire is upstream's."""

import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

from ondewo.sip import sip_pb2
from tests.support.sipp import Sipp
from tests.worker.conftest import REPO, WorkerProcess

UPSTREAM_WHEELS = REPO / ".venv" / "upstream"

# Runs with only upstream's `ondewo` package importable: none of this repository's code.
_UPSTREAM_CLIENT = textwrap.dedent(
    """
    import math, queue, struct, sys, threading, time
    import grpc
    from ondewo.sip import sip_pb2, sip_pb2_grpc
    assert sip_pb2.__file__.startswith(sys.argv[2]), sip_pb2.__file__
    requests = queue.SimpleQueue()
    requests.put(sip_pb2.SipCallAudioRequest(config=sip_pb2.SipCallAudioConfig(
        mode=sip_pb2.SIP_CALL_AUDIO_MODE_TALK, sample_rate_hz=8000, frame_ms=20,
        take_over=True, stream_id="upstream-client")))
    def iterate():
        while (request := requests.get()) is not None:
            yield request
    stub = sip_pb2_grpc.SipStub(grpc.insecure_channel(sys.argv[1]))
    tone = [struct.pack("<160h", *(int(9000 * math.sin(2 * math.pi * 1000 * (n * 160 + i) / 8000))
                                   for i in range(160))) for n in range(50)]
    for number, pcm in enumerate(tone, 1):
        requests.put(sip_pb2.SipCallAudioRequest(
            audio=sip_pb2.SipCallAudioFrame(pcm_s16le=pcm, sequence=number)))
    threading.Timer(2.0, requests.put, args=(None,)).start()
    kinds, loud = [], 0
    for response in stub.SipStreamCallAudio(iterate(), timeout=20):
        kinds.append(response.WhichOneof("response"))
        if response.HasField("audio"):
            samples = struct.unpack("<160h", response.audio.pcm_s16le)
            loud += max(map(abs, samples)) > 3000
        if response.HasField("started"):
            print("STARTED", response.started.stream_id, response.started.sample_rate_hz)
        if response.HasField("ended"):
            print("ENDED", sip_pb2.SipCallAudioEndReason.Name(response.ended.reason))
        if response.HasField("stats"):
            last_stats = response.stats
    print("LOUD", loud)
    print("RECEIVED", last_stats.frames_received)
    """
)


def test_upstreams_generated_stub_streams_against_us(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp], tmp_path: Path
) -> None:
    (wheel,) = UPSTREAM_WHEELS.glob("ondewo_sip_client-5.5.2-*.whl")
    upstream = tmp_path / "upstream"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(upstream)
    uas = sipp_factory("uas", args=["-rtp_echo"])
    session.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"service@{uas.address}"), timeout=10)
    session.wait_for_status("outgoing_call_connected")

    result = subprocess.run(
        [sys.executable, "-c", _UPSTREAM_CLIENT, f"127.0.0.1:{session.grpc_port}", str(upstream)],
        env={"PYTHONPATH": str(upstream), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "STARTED upstream-client 8000" in lines
    assert "ENDED SIP_CALL_AUDIO_END_REASON_CLIENT_CLOSED" in lines
    assert "RECEIVED 50" in lines
    (loud,) = [int(line.split()[1]) for line in lines if line.startswith("LOUD")]
    assert loud >= 40  # the tone it sent came back from the echo, on its own stream
