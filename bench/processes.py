"""What the benches start and must stop: child processes, the sipp far ends they call, and
the wait for a started worker to serve."""

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.sipp import Sipp

STOP_TIMEOUT_S = 15.0


def stop_all(processes: list[subprocess.Popen[Any]]) -> None:
    """Terminates all at once, then waits for each (kills what is still there after 15 s)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def stopped_at_exit() -> Iterator[list[subprocess.Popen[Any]]]:
    """A list for the processes started in the block; all of them are stopped at its end."""
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        stop_all(started)


@contextmanager
def running(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """One process for the block, stopped at its end."""
    with stopped_at_exit() as started:
        started.append(subprocess.Popen(args, **kwargs))
        yield started[0]


def echo_far_end(stack: ExitStack, workdir: Path) -> Sipp:
    """`sipp -sn uas -rtp_echo` on a free port: answers every call, echoes its RTP."""
    uas = Sipp("uas", workdir, args=["-rtp_echo"]).start()
    stack.callback(uas.stop)
    return uas


def registrar(
    stack: ExitStack, workdir: Path, user: str, password: str, dialogs: int | None = None
) -> Sipp:
    """A sipp registrar with digest auth for `user`; without `dialogs`, it serves them all."""
    limit = ["-m", str(dialogs)] if dialogs is not None else []
    peer = Sipp(
        "registrar_auth.xml", workdir, variables={"user": user, "pass": password}, args=limit
    )
    stack.callback(peer.stop)
    return peer.start()


def wait_serving(
    channel: grpc.Channel, process: subprocess.Popen[bytes], timeout: float, poll_s: float = 0.05
) -> None:
    """Until the worker's health check says SERVING; an error if it exits or takes too long."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sip-worker exited with {process.returncode} before SERVING")
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(poll_s)
    raise RuntimeError("sip-worker did not become SERVING in time")
