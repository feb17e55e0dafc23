"""Kamailio as a real registrar (digest auth) and proxy on 127.0.0.1, for the outage and PBX
peer tests.

The config (kamailio/registrar.cfg by default, or kamailio/proxy.cfg: several users, INVITEs
of its own users challenged, static routes to far ends that do not register) gets a free UDP
port, the users and their passwords filled in; Kamailio runs in the foreground (-DD), logs
to stderr (-E) into a file, and keeps its runtime files in its own directory (-Y), so that no
two instances nor a system one share anything. `stop()` and `start()` keep the port: a
restart forgets every binding (usrloc holds them in memory only), which is what a registrar
that restarts does. With `tls` (a `KamailioTls`) it also listens for SIP over TLS
(kamailio/tls.cfg) on `tls_port`.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.certificates import Issued, TestCa
from tests.support.sip_peers import SIPP_PASSWORD, SIPP_USER
from tests.support.sipp import free_sip_port

CONFIG = Path(__file__).parent / "kamailio" / "registrar.cfg"
PROXY_CONFIG = Path(__file__).parent / "kamailio" / "proxy.cfg"
TLS_CONFIG = Path(__file__).parent / "kamailio" / "tls.cfg"


@dataclass(frozen=True)
class KamailioTls:
    """Kamailio's TLS listener: its certificate, and the CA its clients' certificates must
    come from when `require_client_certificate` (mutual TLS)."""

    server: Issued
    ca: Path
    require_client_certificate: bool = False


def kamailio_binary() -> str:
    path = shutil.which("kamailio")
    if path is None:
        raise RuntimeError("kamailio is not on PATH (.ci/run installs the kamailio package)")
    return path


class Kamailio:
    def __init__(
        self,
        workdir: Path,
        user: str = SIPP_USER,
        password: str = SIPP_PASSWORD,
        *,
        tls: KamailioTls | None = None,
        config: Path = CONFIG,
        users: Mapping[str, str] | None = None,
        routes: Mapping[str, str] | None = None,
    ):
        """`users` (name: password) may register besides `user`, and `routes` (user: `host:port`)
        are where INVITEs for those users go; both need proxy.cfg."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.user = user
        self.users = dict(users or {})
        self.routes = dict(routes or {})
        self.port = free_sip_port()
        self.password = password
        self.tls = tls
        self.tls_port = free_sip_port() if tls is not None else 0
        self.log_path = workdir / f"kamailio-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def account(self) -> str:
        return f"{self.user}@{self.address}"

    def uri(self, user: str) -> str:
        return f"sip:{user}@{self.address}"

    @property
    def tls_address(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    @property
    def tls_account(self) -> str:
        """The user's account at the TLS listener (`sip:` and `sips:` both go over TLS)."""
        return f"{self.user}@{self.tls_address}"

    def start(self, password: str | None = None) -> "Kamailio":
        """Starts it (with `password` for the user from now on, if given) and waits until it
        answers SIP."""
        if password is not None:
            self.password = password
        config = self.config.read_text()
        for name, value in {"PORT": str(self.port), "USER": self.user}.items():
            config = config.replace(f"@{name}@", value)
        config = config.replace("@PASSWORD@", self.password)
        passwords = {self.user: self.password, **self.users}
        config = config.replace("@PASSWORDS@", _table("passwords", passwords))
        config = config.replace("@ROUTES@", _table("routes", self.routes))
        defines: list[str] = []
        if self.tls is not None:
            tls_path = self._write_tls_config(self.tls)
            config = config.replace("@TLS_PORT@", str(self.tls_port))
            config = config.replace("@TLS_CONFIG@", str(tls_path))
            defines = ["-A", "WITH_TLS"]
        config_path = self.workdir / f"kamailio-{self.port}.cfg"
        config_path.write_text(config)
        runtime = self.workdir / f"run-{self.port}"
        runtime.mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(kamailio_binary(), "-DD", "-E", "-f", str(config_path)),
                    # OpenSSL wants more shared memory than plain SIP does.
                    *("-Y", str(runtime), "-m", "64" if defines else "16", "-M", "4"),
                    *defines,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_answering()
        return self

    def _write_tls_config(self, tls: KamailioTls) -> Path:
        values = {
            "CERTIFICATE": str(tls.server.certificate),
            "KEY": str(tls.server.key),
            "CA": str(tls.ca),
            "REQUIRE": "yes" if tls.require_client_certificate else "no",
        }
        config = TLS_CONFIG.read_text()
        for name, value in values.items():
            config = config.replace(f"@{name}@", value)
        path = self.workdir / f"tls-{self.port}.cfg"
        path.write_text(config)
        return path

    def stop(self) -> None:
        """Ends Kamailio and its children (their process group); idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        # Children left behind would keep the port: the group is this process's own session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def restart(self, password: str | None = None) -> None:
        self.stop()
        self.start(password)

    def wait_for_log(self, text: str, after: int = 0, timeout: float = 15.0) -> int:
        """Waits until `text` is in the log past offset `after`; returns the offset after it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.log().find(text, after)
            if found >= 0:
                return found + len(text)
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the Kamailio log:\n{self.log()[after:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _wait_answering(self, timeout: float = 15.0) -> None:
        """Sends OPTIONS until a response comes back (any: it routes nothing for them)."""
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.2)
            local_port = sock.getsockname()[1]
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"kamailio exited early:\n{self.log()}")
                sock.sendto(_options(self.address, local_port), ("127.0.0.1", self.port))
                try:
                    reply = sock.recv(65535)
                except TimeoutError:
                    continue
                if reply.startswith(b"SIP/2.0 "):
                    return
        raise RuntimeError(f"kamailio did not answer on {self.address}:\n{self.log()}")


def _table(name: str, items: Mapping[str, str]) -> str:
    """Config lines that fill the htable `name` when Kamailio starts."""
    return "\n".join(f'\t$sht({name}=>{key}) = "{value}";' for key, value in items.items())


def _options(address: str, local_port: int) -> bytes:
    tag = uuid.uuid4().hex[:8]
    return (
        f"OPTIONS sip:{address} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1:{local_port}>;tag={tag}\r\n"
        f"To: <sip:{address}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}@127.0.0.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture()
def kamailio(tmp_path: Path) -> Iterator[Kamailio]:
    """A running Kamailio registrar for alice/SIPP_PASSWORD; stopped in teardown."""
    registrar = Kamailio(tmp_path / "kamailio")
    try:
        yield registrar.start()
    finally:
        registrar.stop()


KamailioFactory = Callable[..., Kamailio]


@pytest.fixture()
def tls_kamailio_factory(tmp_path: Path, ca: TestCa) -> Iterator[KamailioFactory]:
    """Starts Kamailio registrars that also listen for SIP over TLS, with a certificate the test
    CA signed; `require_client_certificate=True` for mutual TLS. Stopped in teardown."""
    started: list[Kamailio] = []

    def factory(require_client_certificate: bool = False) -> Kamailio:
        tls = KamailioTls(ca.issue("kamailio"), ca.certificate, require_client_certificate)
        registrar = Kamailio(tmp_path / f"kamailio-tls-{len(started)}", tls=tls)
        started.append(registrar)
        return registrar.start()

    yield factory
    for registrar in started:
        registrar.stop()
