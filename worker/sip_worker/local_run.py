"""`make run`: a local Redis-compatible server, an echo line and one sip-worker on 127.0.0.1,
until Ctrl-C.

The server keeps its data (AOF) in `.local/redis`, so the status history survives from one run
to the next. The echo line (`sip_worker.echo_line`) answers every call and sends its audio back.
The worker serves gRPC on 127.0.0.1:50099 with SIP on 127.0.0.1 and a session, started at boot
without a REGISTER, for an account at the echo line: a bare callee id such as `echo` calls it.
Ctrl-C (or SIGTERM) stops the worker first (it keeps a call in progress until it ends, then
writes its last statuses; a second Ctrl-C hangs the call up, a third kills the worker), then
the echo line, then the server. Arguments after `--` go to sip-worker as they are; its
SIP_WORKER_* variables apply too.
"""

import argparse
import math
import select
import signal
import subprocess
import sys
import threading
import time
import wave
from array import array
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sip_contract.status import stream_key
from sip_worker.echo_line import READY_PREFIX
from sip_worker.embedded_redis import EmbeddedRedis, EmbeddedRedisError

SESSION_KEY = "local"
ACCOUNT_USER = "local"
TONE_NAME = "tone.wav"
STARTUP_TIMEOUT = 60.0
# Bound on the worker's own shutdown once its call is hung up (its default --shutdown-grace is
# 15 s) before SIGKILL.
WORKER_STOP_TIMEOUT = 30.0
ECHO_LINE_STOP_TIMEOUT = 10.0

_PYTHON_SNIPPET = """\
import time
from pathlib import Path

import grpc
from google.protobuf.empty_pb2 import Empty
from ondewo.sip import sip_pb2, sip_pb2_grpc

Status = sip_pb2.SipStatus
sip = sip_pb2_grpc.SipStub(grpc.insecure_channel("127.0.0.1:{port}"))
sip.StartCall(sip_pb2.StartCallRequest(callee_id="echo"))  # {echo_uri}
while sip.GetSipStatus(Empty()).status_type == Status.outgoing_call_initiated:
    time.sleep(0.1)
tone = Path("{tone}").read_bytes()
sip.PlayWavFiles(sip_pb2.PlayWavFilesRequest(wav_files=[tone]))
sip.EndCall(sip_pb2.EndCallRequest(hard_hangup=False))  # soft: once the tone has played
while sip.GetSipStatus(Empty()).status_type != Status.outgoing_call_finished:
    time.sleep(0.1)
for status in sip.GetSipStatusHistory(Empty()).status_history:
    print(Status.StatusType.Name(status.status_type), status.callee_id, status.description)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sip_worker.local_run",
        description=(
            "Runs a local Redis-compatible server (data kept in --data-dir), an echo line and "
            "one sip-worker with a session for calling it, on 127.0.0.1 until Ctrl-C. "
            "Arguments after -- are passed to sip-worker."
        ),
    )
    parser.add_argument("--grpc-port", type=int, default=50099, help="gRPC port (default 50099)")
    parser.add_argument("--sip-port", type=int, default=5060, help="SIP port (0 = any free one)")
    parser.add_argument(
        "--echo-port", type=int, default=5062, help="the echo line's SIP port (0 = any free one)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".local/redis"),
        help="folder of the server's data and the test tone, kept between runs "
        "(default .local/redis)",
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
    echo_line = _EchoLine(options.echo_port)
    try:
        echo_uri = echo_line.wait_ready(stop)
        if echo_uri is None:
            return 0 if stop.requested.is_set() else 1
        tone = _write_tone(server.data_dir / TONE_NAME)
        return _run_worker(options, worker_args, server, _LocalSession(echo_uri, tone), stop)
    finally:
        echo_line.stop()
        server.stop()
        print("make run: stopped the worker, the echo line and the local Redis server", flush=True)


class _EchoLine:
    """The echo line's process, in its own session like the worker (we stop it ourselves)."""

    def __init__(self, port: int) -> None:
        command = [sys.executable, "-m", "sip_worker.echo_line", "--port", str(port)]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait_ready(self, stop: _Stop) -> str | None:
        """Its SIP URI once it answers; None (having said why) if it exited or a stop came."""
        stdout: IO[str] | None = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not stop.requested.is_set() and time.monotonic() < deadline:
            if select.select([stdout], [], [], 0.2)[0]:
                line = stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line.removeprefix(READY_PREFIX).strip()
                if not line:
                    code = self._process.wait()
                    print(f"make run: the echo line exited with code {code}", file=sys.stderr)
                    return None
        if not stop.requested.is_set():
            print(f"make run: the echo line did not answer within {STARTUP_TIMEOUT:g} s")
        return None

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(ECHO_LINE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class _LocalSession:
    """The worker's boot session: its account at the echo line, and a WAV file to play."""

    def __init__(self, echo_uri: str, tone: Path) -> None:
        self.echo_uri = echo_uri
        self.account = f"{ACCOUNT_USER}@{echo_uri.rpartition('@')[2]}"
        self.tone = tone


def _write_tone(path: Path) -> Path:
    """One second of 440 Hz, 16-bit mono at 8 kHz: something to hear come back."""
    rate = 8000
    samples = array("h", (int(8000 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(rate)))
    with wave.open(str(path), "wb") as tone:
        tone.setnchannels(1)
        tone.setsampwidth(2)
        tone.setframerate(rate)
        tone.writeframes(samples.tobytes())
    return path


def _run_worker(
    options: argparse.Namespace,
    worker_args: list[str],
    server: EmbeddedRedis,
    session: _LocalSession,
    stop: _Stop,
) -> int:
    command = [
        sys.executable, "-m", "sip_worker.main",
        "--grpc-host", "127.0.0.1",
        "--grpc-port", str(options.grpc_port),
        "--sip-host", "127.0.0.1",
        "--sip-port", str(options.sip_port),
        "--redis-url", server.url,
        "--session-key", SESSION_KEY,
        # The echo line has no registrar, as trunks that trust an address have none.
        "--no-register", "--start-session", "--account", session.account,
        *worker_args,
    ]  # fmt: skip
    # Its own session: the terminal's Ctrl-C reaches only us, and we stop the worker first.
    worker = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        if _wait_until_serving(options.grpc_port, worker, stop):
            _print_usage(options, server, session)
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


def _print_usage(
    options: argparse.Namespace, server: EmbeddedRedis, session: _LocalSession
) -> None:
    port = options.grpc_port
    snippet = _PYTHON_SNIPPET.format(port=port, echo_uri=session.echo_uri, tone=session.tone)
    stream = stream_key(SESSION_KEY)
    print(
        f"""
sip-worker is serving ondewo.sip.Sip on 127.0.0.1:{port} (SIP on 127.0.0.1), with a session
for {session.account} (no REGISTER). The echo line {session.echo_uri} answers every call
and sends its audio back; callee_id "echo" reaches it.
Status history: stream {stream} at {server.url}, data in {server.data_dir}
(kept between runs; see it with: redis-cli -p {server.port} XRANGE '{stream}' - +).

Look at it with grpcurl (the server has reflection):
  grpcurl -plaintext 127.0.0.1:{port} ondewo.sip.Sip/GetSipStatusHistory

Call the echo line from Python (.venv/bin/python), play a tone and print the history:
{snippet}

Ctrl-C stops the worker, then the echo line and the server.
""",
        flush=True,
    )


if __name__ == "__main__":
    main()
