"""baresip (Debian `baresip-core`) as a far-end phone on 127.0.0.1, driven by its `ctrl_tcp`
control interface.

Each instance has its own config directory (`baresip -f`): SIP on a free UDP port, one
account registered at a registrar (digest auth), audio from a WAV file with a tone (`aufile`)
and every call's audio written to WAV files by the `sndfile` filter (`-dec.wav` is what it
heard, `-enc.wav` what it sent); its player is an `aubridge` device nobody reads, as the
machine has no sound card. DNS goes to 127.0.0.1 only (every peer is an address anyway).
Commands and events are JSON netstrings on the control socket: `{"command": "dial",
"params": "sip:..."}` gets `{"response": true, "ok": ...}`, and call events come as
`{"event": true, "type": "CALL_ESTABLISHED", ...}`.
"""

import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.audio import tone_wav
from tests.support.sipp import free_media_ports, free_sip_port, free_tcp_port

MODULES = Path("/usr/lib/baresip/modules")


def baresip_binary() -> str:
    path = shutil.which("baresip")
    if path is None:
        raise RuntimeError("baresip is not on PATH (.ci/run installs the baresip-core package)")
    return path


class Baresip:
    def __init__(
        self,
        workdir: Path,
        user: str,
        password: str,
        registrar: str,
        *,
        tone_hz: float = 600.0,
        answer: bool = True,
        media_encryption: str = "",
    ) -> None:
        """A phone for `user` registering at `registrar` (`host:port`) that sends a tone at
        `tone_hz` into every call and answers calls at once (`answer`) or never.
        `media_encryption` is the account's `mediaenc` (e.g. `srtp-mand`: SRTP with SDES keys
        only, RTP/SAVP); none by default."""
        self.user = user
        self.registrar = registrar
        self.sip_port = free_sip_port(2)
        self.control_port = free_tcp_port()
        self.rtp_port = free_media_ports()
        self.dir = workdir / f"baresip-{user}-{self.sip_port}"
        self.dir.mkdir(parents=True)
        # baresip cuts its audio files' paths at 128 characters (a test's folder can be longer,
        # and `.wav` went missing): they go to a short folder, moved into `dir` by `stop()`.
        self.recordings = Path(tempfile.mkdtemp(prefix="baresip-"))
        self.log_path = self.dir / "baresip.log"
        self._password = password
        self._tone_hz = tone_hz
        self._answer = answer
        self._media_encryption = media_encryption
        self.process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._events: list[dict[str, Any]] = []
        self._responses: list[dict[str, Any]] = []
        self._lock = threading.Condition()

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.registrar}"

    def start(self, timeout: float = 15.0) -> "Baresip":
        """Starts it and waits until its account is registered."""
        tone = self.recordings / "tone.wav"  # a short path too
        tone.write_bytes(tone_wav(self._tone_hz, 60.0, sample_rate=8000, amplitude=0.3))
        (self.dir / "config").write_text(
            "\n".join(
                [
                    "poll_method epoll",
                    f"sip_listen 127.0.0.1:{self.sip_port}",
                    "sip_transports udp",
                    "net_interface 127.0.0.1",
                    "dns_server 127.0.0.1:53",
                    f"rtp_ports {self.rtp_port}-{self.rtp_port + 3}",
                    f"audio_source aufile,{tone}",
                    "audio_player aubridge,nobody",
                    "audio_alert aubridge,nobody",
                    f"module_path {MODULES}",
                    *(f"module {name}.so" for name in ("g711", "aufile", "aubridge", "sndfile")),
                    *(["module srtp.so"] if self._media_encryption else []),
                    f"snd_path {self.recordings}",
                    *(f"module_app {name}.so" for name in ("account", "menu", "ctrl_tcp")),
                    f"ctrl_tcp_listen 127.0.0.1:{self.control_port}",
                    "",
                ]
            )
        )
        answermode = "auto" if self._answer else "manual"
        encryption = f";mediaenc={self._media_encryption}" if self._media_encryption else ""
        (self.dir / "accounts").write_text(
            f"<{self.aor}>;auth_pass={self._password};answermode={answermode};regint=60"
            f"{encryption}\n"
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [baresip_binary(), "-f", str(self.dir), "-v"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._connect(timeout)
        self._wait_registered(timeout)
        return self

    def command(self, name: str, params: str = "", timeout: float = 10.0) -> dict[str, Any]:
        """Runs a command (a menu command: `dial`, `accept`, `hangup`, `listcalls`, ...) and
        returns its response; a refused command raises."""
        assert self._control is not None, "not started"
        token = f"{name}-{time.monotonic_ns()}"
        body = json.dumps({"command": name, "params": params, "token": token}).encode()
        self._control.sendall(b"%d:%s," % (len(body), body))
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for response in self._responses:
                    if response.get("token") == token:
                        if not response.get("ok"):
                            raise AssertionError(f"baresip refused {name} {params}: {response}")
                        return response
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"baresip did not answer {name}:\n{self.log()}")
                self._lock.wait(remaining)

    def dial(self, uri: str) -> None:
        self.command("dial", uri)

    def hangup(self) -> None:
        self.command("hangup")

    def wait_for_event(self, kind: str, timeout: float = 15.0, after: int = 0) -> dict[str, Any]:
        """The first event of type `kind` at index `after` or later, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for event in self._events[after:]:
                    if event.get("type") == kind:
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    kinds = [event.get("type") for event in self._events]
                    raise AssertionError(f"no {kind} from baresip within {timeout} s: {kinds}")
                self._lock.wait(remaining)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def heard(self) -> Path:
        """The recording of what it heard in its (one) call, once the call has ended."""
        (recording,) = self.recordings.glob("*-dec.wav")
        return recording

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Ends it (it un-registers, then exits); idempotent."""
        control, self._control = self._control, None
        if control is not None:
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
            control.close()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if not self.recordings.is_relative_to(self.dir):
            self.recordings = Path(shutil.move(self.recordings, self.dir / "recordings"))

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"baresip exited early:\n{self.log()}")
            try:
                self._control = socket.create_connection(("127.0.0.1", self.control_port), 1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"baresip's control port did not open:\n{self.log()}"
                    ) from None
                time.sleep(0.05)
        self._control.settimeout(None)
        self._reader = threading.Thread(target=self._read, args=(self._control,), daemon=True)
        self._reader.start()

    def _wait_registered(self, timeout: float) -> None:
        """Polls `reginfo` (the REGISTER_OK event may come before the control connection)."""
        deadline = time.monotonic() + timeout
        while True:
            info = re.sub(r"\x1b\[[0-9;]*m", "", self.command("reginfo")["data"])
            if re.search(rf"{re.escape(self.aor)}\s+OK ", info):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"baresip did not register: {info}\n{self.log()}")
            time.sleep(0.05)

    def _read(self, control: socket.socket) -> None:
        """Collects the netstrings baresip sends: responses and events."""
        buffer = b""
        while True:
            try:
                chunk = control.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b":" in buffer:
                length, _, rest = buffer.partition(b":")
                if len(rest) < int(length) + 1:
                    break
                message = json.loads(rest[: int(length)])
                buffer = rest[int(length) + 1 :]
                with self._lock:
                    (self._events if message.get("event") else self._responses).append(message)
                    self._lock.notify_all()
