"""SIPp as the far end of real SIP calls on 127.0.0.1: one scenario per subprocess.

Each instance gets its own free SIP, media and control ports (sipp binds a control socket on
8888 unless told otherwise, so parallel instances would clash), writes its message trace to a
file the test can read, and is killed in `stop()`.
"""

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

SCENARIOS = Path(__file__).parent / "sipp"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortBlocks:
    """Blocks of consecutive free ports below the kernel's ephemeral range (32768 and up), so
    that no port the kernel hands to a bind(0) or to an outgoing TCP connection can land inside
    one later. Blocks are handed out in turn and only come round again after the whole range
    is used."""

    def __init__(self, ports: range, kinds: tuple[socket.SocketKind, ...]) -> None:
        self.ports = ports
        self._kinds = kinds
        self._next = ports.start

    def take(self, count: int) -> int:
        """The first of `count` consecutive ports free for every kind (an even one)."""
        for _ in range(len(self.ports)):
            first = self._next
            if first + count > self.ports.stop:
                first = self.ports.start
            self._next = first + count + count % 2
            if all(
                _is_free(port, kind) for port in range(first, first + count) for kind in self._kinds
            ):
                return first
        raise RuntimeError(f"no {count} free consecutive ports in {self.ports}")


def _is_free(port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# sipp binds its media port and the three above it (RTCP, video RTP and RTCP), PJSUA2 a pair
# per call.
_MEDIA_PORTS = PortBlocks(range(20000, 32768), (socket.SOCK_DGRAM,))
# A phone under test takes a new RTP and RTCP pair for each call: room for sixteen calls.
PHONE_RTP_PORTS = 32
# A SIP port serves UDP, TCP and TLS alike (a SIP over TLS listener may sit one above).
_SIP_PORTS = PortBlocks(range(12000, 20000), (socket.SOCK_DGRAM, socket.SOCK_STREAM))


def free_media_ports(count: int = 4) -> int:
    """The first of `count` consecutive free UDP ports (an even one, as RTP wants)."""
    return _MEDIA_PORTS.take(count)


def free_sip_port(count: int = 1) -> int:
    """A port (the first of `count`) free for SIP over UDP and TCP, below the ephemeral range:
    no outgoing TCP connection of another process can take it meanwhile."""
    return _SIP_PORTS.take(count)


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        raise RuntimeError("sipp is not on PATH (.ci/run installs the sip-tester package)")
    return path


class Sipp:
    """One sipp process running `scenario`: a built-in name ("uas") or a file in sipp/."""

    def __init__(
        self,
        scenario: str,
        workdir: Path,
        *,
        remote: str | None = None,
        variables: dict[str, str] | None = None,
        fill: dict[str, str] | None = None,
        args: Sequence[str] = (),
        transport: str = "udp",
        host: str = "127.0.0.1",
        prefix: Sequence[str] = (),
    ) -> None:
        """`variables` go to sipp's -set; `fill` replaces @NAME@ placeholders in the scenario
        file itself, for what sipp reads at load time (such as response codes). `host` is the
        address SIP and media bind to; `prefix` goes before the command (such as `ip netns
        exec NAME`, to run sipp in another network namespace)."""
        self.scenario = scenario
        self.name = Path(scenario).stem
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.prefix = list(prefix)
        self.port = free_sip_port()
        self.control_port = free_udp_port()
        self.media_port = free_media_ports()
        self.remote = remote
        self.variables = variables or {}
        self.args = list(args)
        self.transport = transport
        self.trace_path = workdir / f"{self.name}_{self.port}_messages.log"
        self.log_path = workdir / f"{self.name}_{self.port}_logs.log"
        self.output_path = workdir / f"{self.name}_{self.port}_output.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.scenario_path: Path | None = None
        if (SCENARIOS / scenario).is_file():
            self.scenario_path = SCENARIOS / scenario
            if fill:
                text = self.scenario_path.read_text()
                for name, value in fill.items():
                    text = text.replace(f"@{name}@", value)
                self.scenario_path = workdir / f"{self.name}_{self.port}.xml"
                self.scenario_path.write_text(text)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        command = [*self.prefix, sipp_binary()]
        if self.remote is not None:
            command.append(self.remote)
        if self.scenario_path is not None:
            command += ["-sf", str(self.scenario_path)]
        else:
            command += ["-sn", self.scenario]
        for name, value in self.variables.items():
            command += ["-set", name, value]
        command += [
            "-i", self.host,
            "-p", str(self.port),
            "-cp", str(self.control_port),
            "-mi", self.host,
            "-mp", str(self.media_port),
            "-t", "u1" if self.transport == "udp" else "t1",
            "-nostdin",
            "-trace_msg", "-message_file", str(self.trace_path),
            "-trace_logs", "-log_file", str(self.log_path),
        ]  # fmt: skip
        return command + self.args

    def start(self) -> "Sipp":
        output = self.output_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        output.close()
        if self.remote is None:
            self._wait_listening()
        return self

    def _wait_listening(self, timeout: float = 10.0) -> None:
        """Servers: wait until sipp has bound its SIP port (it then shows in /proc/net of its
        network namespace)."""
        deadline = time.monotonic() + timeout
        assert self.process is not None
        table = f"/proc/{self.process.pid}/net/{self.transport}"
        needle = f":{self.port:04X} "
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sipp {self.scenario} exited early:\n{self.output()}")
            if needle in Path(table).read_text():
                return
            time.sleep(0.02)
        raise RuntimeError(f"sipp {self.scenario} did not bind port {self.port}")

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def messages(self) -> str:
        """The message trace so far: every SIP message sipp sent or received."""
        return self.trace_path.read_text(errors="replace") if self.trace_path.exists() else ""

    def logs(self) -> str:
        """The scenario's <log> actions so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def timeline(self) -> list[tuple[datetime, str, str]]:
        """(time, "sent" or "received", first line) of every traced message, in order."""
        events = []
        for match in re.finditer(
            r"^-{5,} (\S+ \S+)\n\S+ message (sent|received).*\n\s*\n(.*)$",
            self.messages(),
            flags=re.M,
        ):
            when = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f")
            events.append((when, match[2], match[3].strip()))
        return events

    def received(self, method: str) -> list[str]:
        """Every request with `method` that sipp received, as text."""
        requests = []
        for block in re.split(r"^-{5,} .*$", self.messages(), flags=re.M):
            kind, _, message = block.strip("\n").partition("\n")
            if "message received" in kind and message.strip().startswith(f"{method} "):
                requests.append(message.strip())
        return requests

    def wait_for(self, pattern: str, timeout: float = 15.0, source: str = "messages") -> str:
        """Waits until `pattern` (a regex) appears in the trace or the logs; returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.messages() if source == "messages" else self.logs()
            match = re.search(pattern, text, re.M)
            if match is not None:
                return match.group(0)
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in sipp {self.scenario} {source}:\n{text}")
            time.sleep(0.05)

    def wait(self, timeout: float = 30.0) -> int:
        """Waits for the scenario to end; returns sipp's exit code (0: all calls succeeded)."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
