"""`make run`: a local Redis-compatible server and one sip-worker on 127.0.0.1, until Ctrl-C.

The server keeps its data (AOF) in `.local/redis`, so the status history survives from one run
to the next. The worker serves gRPC on 127.0.0.1:50099 with SIP on 127.0.0.1. Ctrl-C (or
SIGTERM) stops the worker first (it keeps a call in progress until it ends, then writes its
last statuses; a second Ctrl-C hangs the call up, a third kills the worker), then the server.
Arguments after `--` go to sip-worker as they are; its SIP_WORKER_* variables apply too.
"""

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sip_contract.status import stream_key
from sip_worker.embedded_redis import EmbeddedRedis, EmbeddedRedisError

SESSION_KEY = "local"
STARTUP_TIMEOUT = 60.0
# Bound on the worker's own shutdown once its call is hung up (its default --shutdown-grace is
# 15 s) before SIGKILL.
WORKER_STOP_TIMEOUT = 30.0

_PYTHON_SNIPPET = """\
import grpc
from google.protobuf.empty_pb2 import Empty
from ondewo.sip import sip_pb2, sip_pb2_grpc

sip = sip_pb2_grpc.SipStub(grpc.insecure_channel("127.0.0.1:{port}"))
print(sip.GetSipStatus(Empty()))
# sip.RegisterAccount(sip_pb2.RegisterAccountRequest(account_name="alice@pbx.example",
#                                                    password="..."))
print(sip.GetSipStatusHistory(Empty()).status_history)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sip_worker.local_run",
        description=(
            "Runs a local Redis-compatible server (data kept in --data-dir) and one sip-worker "
            "on 127.0.0.1 until Ctrl-C. Arguments after -- are passed to sip-worker."
        ),
    )
    parser.add_argument("--grpc-port", type=int, default=50099, help="gRPC port (default 50099)")
    parser.add_argument("--sip-port", type=int, default=5060, help="SIP port (0 = any free one)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".local/redis"),
        help="folder of the server's data, kept between runs (default .local/redis)",
    )
    parser.add_argument(
        "--redis-port", type=int, default=0, help="port of the local server (default: a free one)"
    )
    return parser


class _Stop:
    """Counts SIGINT/SIGTERM: the first stops the worker, the second hangs up its call, the
    third kills it."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signals = 0

    def on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        self.requested.set()


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    worker_args: list[str] = []
    if "--" in arguments:
        split = arguments.index("--")
        arguments, worker_args = arguments[:split], arguments[split + 1 :]
    options = build_parser().parse_args(arguments)
    stop = _Stop()
    signal.signal(signal.SIGINT, stop.on_signal)
    signal.signal(signal.SIGTERM, stop.on_signal)
    sys.exit(run(options, worker_args, stop))


def run(options: argparse.Namespace, worker_args: list[str], stop: _Stop) -> int:
    server = EmbeddedRedis(options.data_dir, options.redis_port)
    try:
        server.start()
    except EmbeddedRedisError as error:
        print(f"make run: {error}", file=sys.stderr)
        return 1
    try:
        return _run_worker(options, worker_args, server, stop)
    finally:
        server.stop()
        print("make run: stopped the worker and the local Redis server", flush=True)


def _run_worker(
    options: argparse.Namespace, worker_args: list[str], server: EmbeddedRedis, stop: _Stop
) -> int:
    command = [
        sys.executable, "-m", "sip_worker.main",
        "--grpc-host", "127.0.0.1",
        "--grpc-port", str(options.grpc_port),
        "--sip-host", "127.0.0.1",
        "--sip-port", str(options.sip_port),
        "--redis-url", server.url,
        "--session-key", SESSION_KEY,
        *worker_args,
    ]  # fmt: skip
    # Its own session: the terminal's Ctrl-C reaches only us, and we stop the worker first.
    worker = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        if _wait_until_serving(options.grpc_port, worker, stop):
            _print_usage(options, server)
        while worker.poll() is None and not stop.requested.wait(0.2):
            pass
        if worker.poll() is not None:
            print(f"make run: sip-worker exited with code {worker.returncode}", file=sys.stderr)
            return worker.returncode or 1
        print(
            "make run: stopping sip-worker; it keeps a call in progress until it ends "
            "(Ctrl-C again to hang up)",
            flush=True,
        )
        worker.terminate()
        deadline: float | None = None  # the worker bounds its own drain
        while worker.poll() is None and stop.signals < 3:
            if stop.signals == 2 and deadline is None:
                print("make run: hanging up (Ctrl-C again to kill sip-worker)", flush=True)
                worker.terminate()  # a second signal ends the worker's drain
                deadline = time.monotonic() + WORKER_STOP_TIMEOUT
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return 0 if worker.poll() == 0 else 1
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()


def _wait_until_serving(port: int, worker: "subprocess.Popen[bytes]", stop: _Stop) -> bool:
    """True once the worker's gRPC health says SERVING; False if it exited or a stop came."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while worker.poll() is None and not stop.requested.is_set():
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                print(f"make run: sip-worker is not serving after {STARTUP_TIMEOUT:g} s")
                return False
            time.sleep(0.1)
    return False


def _print_usage(options: argparse.Namespace, server: EmbeddedRedis) -> None:
    port = options.grpc_port
    snippet = _PYTHON_SNIPPET.format(port=port)
    stream = stream_key(SESSION_KEY)
    print(
        f"""
sip-worker is serving ondewo.sip.Sip on 127.0.0.1:{port} (SIP on 127.0.0.1).
Status history: stream {stream} at {server.url}, data in {server.data_dir}
(kept between runs; see it with: redis-cli -p {server.port} XRANGE '{stream}' - +).

Call it with grpcurl (the server has reflection):
  grpcurl -plaintext 127.0.0.1:{port} ondewo.sip.Sip/GetSipStatusHistory

or from Python (.venv/bin/python):
{snippet}

Ctrl-C stops the worker, then the server.
""",
        flush=True,
    )


if __name__ == "__main__":
    main()
