"""A real STUN server: coturn's `turnserver` in STUN-only mode (no TURN relay, no auth)."""

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

STUN_PORT = 3478


class StunServer:
    """One turnserver answering STUN Binding requests on `host`:3478; `stop()` kills it."""

    def __init__(self, workdir: Path, host: str, prefix: Sequence[str] = ()) -> None:
        """`prefix` goes before the command (such as `ip netns exec NAME`)."""
        binary = shutil.which("turnserver")
        if binary is None:
            raise RuntimeError("turnserver is not installed (.ci/run installs coturn)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.log_path = workdir / "turnserver.log"
        command = [
            *prefix, binary,
            "--stun-only", "--listening-ip", host, "--listening-port", str(STUN_PORT),
            # Its own files only: no /etc/turnserver.conf, no database or pid file of the host's.
            "-c", "/dev/null", "--userdb", str(workdir / "turndb"),
            "--pidfile", str(workdir / "turnserver.pid"),
            "--no-cli", "--no-tls", "--no-dtls", "--no-rfc5780",
            "--log-file", "stdout", "--simple-log",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_listening()

    @property
    def address(self) -> str:
        return f"{self.host}:{STUN_PORT}"

    def _wait_listening(self, timeout: float = 10.0) -> None:
        """Until its UDP port shows in /proc/net of its network namespace."""
        needle = f":{STUN_PORT:04X} "
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if needle in Path(f"/proc/{self.process.pid}/net/udp").read_text():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"turnserver did not listen on {self.address}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
