"""Fixtures for worker tests: a real `sip-worker` subprocess and a registered session."""

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ondewo.sip import sip_pb2, sip_pb2_grpc
from tests.support.redis_server import RedisServer
from tests.support.sip_peers import SIPP_PASSWORD, SIPP_USER, account_of
from tests.support.sipp import (
    PHONE_RTP_PORTS,
    Sipp,
    free_media_ports,
    free_sip_port,
    free_tcp_port,
)

REPO = Path(__file__).resolve().parents[2]
SIP_WORKER = REPO / ".venv" / "bin" / "sip-worker"


@dataclass
class WorkerProcess:
    """A running sip-worker with a gRPC stub; `stop()` kills it (teardown does too)."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    sip_port: int
    log_path: Path
    channel: grpc.Channel
    stub: sip_pb2_grpc.SipStub
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> sip_pb2.SipStatus:
        return self.stub.GetSipStatus(Empty(), timeout=10)

    def history(self) -> list[sip_pb2.SipStatus]:
        return list(self.stub.GetSipStatusHistory(Empty(), timeout=10).status_history)

    def types(self) -> list[str]:
        return [sip_pb2.SipStatus.StatusType.Name(s.status_type) for s in self.history()]

    def wait_for_status(
        self, status_type: str, timeout: float = 15.0, after: int = 0
    ) -> sip_pb2.SipStatus:
        """The first status of `status_type` at index `after` or later, polling until it shows."""
        deadline = time.monotonic() + timeout
        while True:
            history = self.history()
            for status in history[after:]:
                if sip_pb2.SipStatus.StatusType.Name(status.status_type) == status_type:
                    return status
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {status_type} after index {after} within {timeout} s: {self.types()}"
                )
            assert self.process.poll() is None, f"worker died:\n{self.log()}"
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()
        self.cleanups.clear()
        self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


WorkerFactory = Callable[..., WorkerProcess]


def start_worker(
    redis_url: str,
    workdir: Path,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    *,
    prefix: Sequence[str] = (),
    grpc_host: str = "127.0.0.1",
    sip_host: str = "127.0.0.1",
) -> WorkerProcess:
    """Starts `sip-worker` on free ports and waits until its gRPC API answers. `prefix` goes
    before the command (such as `ip netns exec NAME`, to run it in another network namespace)."""
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, sip_port = free_tcp_port(), free_sip_port()
    rtp_port = free_media_ports(PHONE_RTP_PORTS)
    command = [
        *prefix,
        str(SIP_WORKER) if SIP_WORKER.exists() else sys.executable,
        *([] if SIP_WORKER.exists() else ["-m", "sip_worker.main"]),
        "--grpc-host", grpc_host,
        "--grpc-port", str(grpc_port),
        "--sip-host", sip_host,
        "--sip-port", str(sip_port),
        "--rtp-port", str(rtp_port),
        "--redis-url", redis_url,
        "--session-key", f"test-{grpc_port}",
        *args,
    ]  # fmt: skip
    if "--sip-port" in args:
        sip_port = int(args[list(args).index("--sip-port") + 1])
    log_path = workdir / f"worker-{grpc_port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    channel = grpc.insecure_channel(f"{grpc_host}:{grpc_port}")
    worker = WorkerProcess(
        process, grpc_port, sip_port, log_path, channel, sip_pb2_grpc.SipStub(channel)
    )
    # Health answers whatever --auth-token-file says, so it tells when the gRPC server is up.
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 30.0
    while True:
        try:
            health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return worker
        except grpc.RpcError as error:
            if process.poll() is not None or time.monotonic() > deadline:
                worker.stop()
                raise RuntimeError(
                    f"sip-worker did not come up ({error}):\n{worker.log()}"
                ) from None
            time.sleep(0.05)


@pytest.fixture()
def worker_factory(redis_server: RedisServer, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Starts workers (with extra flags) on the test's Redis; kills them all in teardown."""
    started: list[WorkerProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = start_worker(redis_server.url, tmp_path / "worker", args, env)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()
    # The phone's thread guard logs every PJSUA2 call it caught off the owner thread.
    misused = [worker.log_path.name for worker in started if "thread misuse" in worker.log()]
    assert not misused, f"PJSUA2 touched off its owner thread, see {misused}"


@pytest.fixture()
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    """A sip-worker with default flags, not registered."""
    return worker_factory()


@pytest.fixture()
def session(worker: WorkerProcess, registrar: Sipp) -> WorkerProcess:
    """A worker registered at the sipp registrar with a ready session (auto-answer 1 s)."""
    start_session(worker, registrar, auto_answer_interval=1)
    return worker


def start_session(worker: WorkerProcess, registrar: Sipp, auto_answer_interval: int) -> str:
    account = account_of(registrar)
    worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=account, password=SIPP_PASSWORD), timeout=20
    )
    worker.stub.StartSession(
        sip_pb2.StartSessionRequest(
            account_name=account, auto_answer_interval=auto_answer_interval
        ),
        timeout=10,
    )
    return account


def start_tcp_session(
    worker_factory: WorkerFactory, sipp_factory: Callable[..., Sipp]
) -> tuple[WorkerProcess, Sipp]:
    """A worker on SIP over TCP with a session (auto-answer 1 s) at a TCP sipp registrar."""
    worker = worker_factory("--sip-transport", "tcp")
    registrar = sipp_factory(
        "registrar_auth.xml",
        variables={"user": SIPP_USER, "pass": SIPP_PASSWORD},
        args=["-m", "1"],
        transport="tcp",
    )
    start_session(worker, registrar, auto_answer_interval=1)
    return worker, registrar


@pytest.fixture()
def echo_call(session: WorkerProcess, sipp_factory: Callable[..., Sipp]) -> WorkerProcess:
    """A session in a connected outgoing call to a sipp UAS that echoes our RTP (PCMU)."""
    uas = sipp_factory("uas", args=["-rtp_echo"])
    session.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"service@{uas.address}"), timeout=10)
    session.wait_for_status("outgoing_call_connected")
    return session
