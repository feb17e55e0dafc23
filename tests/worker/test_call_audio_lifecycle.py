"""Live-audio streams coming and going: a client whose connection is reset frees its place at
once, and thousands of streams leave no threads, descriptors or memory behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import grpc
import psutil
import pytest

from ondewo.sip import sip_pb2
from tests.support.audio_stream import AudioStream, config, talk_config
from tests.support.sipp import Sipp
from tests.worker.conftest import REPO, WorkerProcess

SippFactory = Callable[..., Sipp]
MAX_STREAMS = 16

# A client in its own process, killed mid-stream: the kernel resets its connection.
_CLIENT = textwrap.dedent(
    """
    import sys, grpc
    from ondewo.sip import sip_pb2, sip_pb2_grpc
    from tests.support.audio_stream import AudioStream, config
    stub = sip_pb2_grpc.SipStub(grpc.insecure_channel(sys.argv[1]))
    stream = AudioStream(stub, config())
    stream.wait_for("audio", count=5)
    print("STREAMING", flush=True)
    stream.finished.wait()
    """
)


def test_a_client_whose_connection_is_reset_frees_its_place_at_once(
    echo_call: WorkerProcess,
) -> None:
    others = [AudioStream(echo_call.stub, config()) for _ in range(MAX_STREAMS - 1)]
    for stream in others:
        stream.wait_for("started")
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, f"127.0.0.1:{echo_call.grpc_port}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "STREAMING"
        full = AudioStream(echo_call.stub, config())
        full.wait()
        assert full.error is not None and full.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=10)
        killed_at = time.monotonic()
        # The place of the vanished client is free again: the 16th stream opens.
        while True:
            last = AudioStream(echo_call.stub, talk_config())
            if not last.finished.wait(0.1):
                break
            assert last.error is not None
            assert last.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, last.error
            assert time.monotonic() - killed_at < 1.0, "the place was not freed within 1 s"
        last.wait_for("started")
        freed_within = time.monotonic() - killed_at
    finally:
        if client.poll() is None:
            client.kill()
    assert freed_within < 1.0
    for stream in (*others, last):
        stream.close()
        stream.ended()
    assert echo_call.status().status_type == sip_pb2.SipStatus.outgoing_call_connected


@pytest.mark.slow
def test_sixteen_streams_two_hundred_times_leak_nothing(echo_call: WorkerProcess) -> None:
    process = psutil.Process(echo_call.process.pid)

    def cycle() -> None:
        streams = [
            AudioStream(echo_call.stub, talk_config() if i == 0 else config())
            for i in range(MAX_STREAMS)
        ]
        for stream in streams:
            stream.wait_for("started")
        for stream in streams:
            stream.close()
        for stream in streams:
            stream.ended()

    for _ in range(10):  # warm up: thread pools, allocator arenas
        cycle()
    threads, fds, rss = process.num_threads(), process.num_fds(), process.memory_info().rss
    for _ in range(200):
        cycle()
    time.sleep(0.5)
    grown_threads = process.num_threads() - threads
    grown_fds = process.num_fds() - fds
    grown_mb = (process.memory_info().rss - rss) / 1e6
    print(
        f"after 3200 streams: threads {grown_threads:+d}, fds {grown_fds:+d},"
        f" RSS {grown_mb:+.1f} MB"
    )
    assert grown_threads <= 2
    assert grown_fds <= 2
    assert grown_mb < 8.0
    # The call is unaffected and a new stream still hears it.
    assert echo_call.status().status_type == sip_pb2.SipStatus.outgoing_call_connected
    stream = AudioStream(echo_call.stub, config())
    stream.wait_for("audio", count=25)
    stream.close()
    assert stream.ended().reason == sip_pb2.SIP_CALL_AUDIO_END_REASON_CLIENT_CLOSED
    assert not [
        line for line in echo_call.log().splitlines() if "ERROR" in line or "Traceback" in line
    ]
    assert os.path.exists(f"/proc/{echo_call.process.pid}")
