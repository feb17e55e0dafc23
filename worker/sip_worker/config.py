"""The worker's configuration: each setting is a flag `--foo-bar` and an env var SIP_WORKER_FOO_BAR.

A flag on the command line wins over its environment variable, which wins over the default.
Secrets never come from a flag value (argv is visible in `ps`): the SIP password comes from the
environment variable SIP_WORKER_PASSWORD or from `--password-file`, the API token from
`--auth-token-file`.
"""

import argparse
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "SIP_WORKER_"
PASSWORD_ENV = "SIP_WORKER_PASSWORD"
TRANSPORTS = ("udp", "tcp", "tls")
SRTP_MODES = ("off", "optional", "mandatory")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
UNTRUSTED_POLICIES = ("reject", "drop")
DEFAULT_USER_AGENT = "sip-worker"
MAX_USER_AGENT_LENGTH = 128


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the flag and its env var."""


@dataclass(frozen=True)
class WorkerConfig:
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50099
    sip_host: str = "127.0.0.1"
    sip_port: int = 5060
    sip_transport: str = "udp"
    tls_ca_file: Path | None = None  # None: the system's CA bundle
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_verify: bool = True
    srtp: str = "off"
    rtp_port: int = 4000
    rtp_port_count: int = 0  # 0: no bound
    public_address: str | None = None
    stun_servers: tuple[str, ...] = ()
    keepalive_interval: int = 15
    redis_url: str = ""  # required; parse_config refuses a config without one
    session_key: str | None = None
    history_max_len: int = 10000
    account: str | None = None
    password_file: Path | None = None
    auth_username: str | None = None
    outbound_proxy: str | None = None
    trusted_sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    untrusted_policy: str = "reject"
    user_agent: str = DEFAULT_USER_AGENT
    no_register: bool = False
    register_expiry: int = 300
    register_retry_max: float = 60.0
    auto_answer_interval: int = 1
    start_session: bool = False
    auth_token_file: Path | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    metrics_port: int = 0
    log_level: str = "INFO"
    log_format: str = "text"
    shutdown_grace: float = 15.0
    # A contact centre expects a restart never to cut a call: a stop waits for the call in
    # progress (up to an hour, as the operator's default), unless told otherwise.
    drain_timeout: float = 3600.0
    drain_deadline_file: Path | None = None
    soft_hangup_timeout: float = 10.0
    media_timeout: float = 30.0  # 0: off

    @property
    def history_session_key(self) -> str:
        """The Redis stream's session key: explicit, else the account name, else `local`."""
        return self.session_key or self.account or "local"


def _port(allow_zero: bool) -> Callable[[str], int]:
    def parse(text: str) -> int:
        port = int(text)
        low = 0 if allow_zero else 1
        if not low <= port <= 65535:
            raise ValueError(f"must be a port number between {low} and 65535")
        return port

    return parse


def _count(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be an integer >= {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be an integer between {minimum} and {maximum}")
        return value

    return parse


# PJSUA keeps up to four calls (refused ones too, briefly), each with an RTP and an RTCP port.
MIN_RTP_PORT_COUNT = 8


def _rtp_port_count(text: str) -> int:
    value = int(text)
    if value != 0 and value < MIN_RTP_PORT_COUNT:
        raise ValueError(f"must be 0 (no bound) or at least {MIN_RTP_PORT_COUNT}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _retry_max(text: str) -> float:
    value = float(text)
    if not 1 <= value <= 3600:
        raise ValueError("must be a number of seconds between 1 and 3600")
    return value


def _seconds_or_zero(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be 0 or a positive number of seconds")
    return value


def _choice(choices: Sequence[str], fold: Callable[[str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = fold(text.strip())
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _text(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


_HOST_PORT = re.compile(
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def _host_ports(text: str) -> tuple[str, ...]:
    """Comma-separated host[:port] items; empty text is none."""
    items = [item.strip() for item in text.split(",")] if text.strip() else []
    for item in items:
        match = _HOST_PORT.fullmatch(item)
        if match is None or not 1 <= int(match["port"] or 1) <= 65535:
            raise ValueError(f"{item!r} is not host[:port], such as stun.example.com:3478")
    return tuple(items)


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (IPv4 or IPv6; a bare address is one host); empty text is none."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as error:
            raise ValueError(f"{item!r} is not a CIDR such as 203.0.113.0/24 ({error})") from None
    return tuple(networks)


_USER_AGENT = re.compile(r"[\x20-\x7e]+")


def _user_agent(text: str) -> str:
    """What User-Agent says: printable ASCII (a CR or LF would inject SIP headers)."""
    value = text.strip()
    if not _USER_AGENT.fullmatch(value) or len(value) > MAX_USER_AGENT_LENGTH:
        raise ValueError(f"must be 1 to {MAX_USER_AGENT_LENGTH} printable ASCII characters")
    return value


def _file(text: str) -> Path:
    return Path(_text(text))


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"must be one of {', '.join(_TRUE)} or {', '.join(v for v in _FALSE if v)}")


@dataclass(frozen=True)
class _Setting:
    name: str  # the WorkerConfig field
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    is_switch: bool = False  # a flag without a value; its env var takes true/false
    default_text: str | None = None  # how --help states a default that is not a plain value
    # The flag (named in the singular) once per value; its env var lists them comma-separated.
    repeatable: bool = False

    @property
    def flag(self) -> str:
        name = self.name.removesuffix("s") if self.repeatable else self.name
        return "--" + name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[_Setting, ...] = (
    _Setting("grpc_host", _text, "address the gRPC server listens on", "HOST"),
    _Setting("grpc_port", _port(True), "gRPC port (0 = any free port)", "PORT"),
    _Setting("sip_host", _text, "address the SIP transport and RTP bind to", "HOST"),
    _Setting("sip_port", _port(True), "SIP port (0 = any free port)", "PORT"),
    _Setting(
        "sip_transport",
        _choice(TRANSPORTS, str.lower),
        "SIP transport; tls is TLS 1.2 (ECDHE with AES-GCM only) and takes sips: accounts and "
        "targets",
        "|".join(TRANSPORTS),
    ),
    _Setting(
        "tls_ca_file",
        _file,
        "PEM file of the CAs that sign the SIP servers' certificates (for --sip-transport tls)",
        "PATH",
        default_text="the system's CA bundle",
    ),
    _Setting(
        "tls_cert_file",
        _file,
        "PEM certificate (chain) the worker presents for mutual TLS; needs --tls-key-file",
        "PATH",
    ),
    _Setting("tls_key_file", _file, "PEM private key of --tls-cert-file", "PATH"),
    _Setting(
        "tls_verify",
        _boolean,
        "verify the SIP server's certificate and name; false accepts any server (an explicit "
        "choice, for tests and lab set-ups only)",
        "true|false",
        default_text="true",
    ),
    _Setting(
        "srtp",
        _choice(SRTP_MODES, str.lower),
        "SRTP (SDES keys in the SDP, so --sip-transport tls only): optional offers it and takes "
        "plain RTP too, mandatory refuses calls without it (488)",
        "|".join(SRTP_MODES),
    ),
    _Setting("rtp_port", _port(False), "first RTP port", "PORT"),
    _Setting(
        "rtp_port_count",
        _rtp_port_count,
        "RTP and RTCP stay within this many ports from --rtp-port, reused in turn "
        "(0 = no bound: every call takes the next pair up)",
        "N",
    ),
    _Setting(
        "public_address",
        _text,
        "address put in Contact and SDP, for hosts behind NAT",
        "ADDRESS",
        default_text="--sip-host (for 0.0.0.0: the default interface address)",
    ),
    _Setting(
        "stun_servers",
        _host_ports,
        "STUN server (repeatable) that tells the address Contact and SDP carry behind NAT; "
        "unused with --public-address",
        "HOST[:PORT]",
        default_text="none",
        repeatable=True,
    ),
    _Setting(
        "keepalive_interval",
        _count(0, 3600),
        "seconds between UDP keep-alives to the registrar, which hold a NAT's binding open "
        "(0 = off)",
        "SECONDS",
    ),
    _Setting(
        "redis_url",
        _text,
        "Redis URL of the status history (redis://, rediss://, unix://)",
        "URL",
        default_text="none, required",
    ),
    _Setting(
        "session_key",
        _text,
        "key of this session's history stream",
        "KEY",
        default_text="--account, else 'local'",
    ),
    _Setting("history_max_len", _count(1), "entries kept in the history stream", "N"),
    _Setting("account", _text, "SIP account user@host[:port] for --start-session", "ACCOUNT"),
    _Setting(
        "password_file",
        _file,
        f"file holding the SIP password (otherwise the env var {PASSWORD_ENV})",
        "PATH",
    ),
    _Setting("auth_username", _text, "digest user name if it differs from the account's", "USER"),
    _Setting("outbound_proxy", _text, "SIP URI of an outbound proxy", "URI"),
    _Setting(
        "trusted_sources",
        _networks,
        "network (repeatable) whose INVITEs and SUBSCRIBEs are taken besides those from the "
        "addresses the account's registrar (or host) and the outbound proxy resolve to; every "
        "other source gets 403 and changes nothing",
        "CIDR",
        default_text="none",
        repeatable=True,
    ),
    _Setting(
        "untrusted_policy",
        _choice(UNTRUSTED_POLICIES, str.lower),
        "what untrusted sources get: reject (403 to INVITE and SUBSCRIBE) or drop (the kernel "
        "discards all they send to the SIP port: no answer at all)",
        "|".join(UNTRUSTED_POLICIES),
    ),
    _Setting(
        "user_agent",
        _user_agent,
        "User-Agent of every request and OPTIONS answer (no SIP stack or version by default)",
        "TEXT",
    ),
    _Setting(
        "no_register",
        _boolean,
        "send no REGISTER: the account is usable at once, calls go to its host (or the outbound "
        "proxy), the password is optional (for trunks that authenticate by source address)",
        is_switch=True,
    ),
    _Setting(
        "register_expiry",
        _count(10, 86400),
        "registration expiry asked for in REGISTER, in seconds; the refresh goes out a quarter "
        "of it before the granted binding expires (at 225 s with 300), which also gives a "
        "registrar that restarted and forgot the binding its binding back",
        "SECONDS",
    ),
    _Setting(
        "register_retry_max",
        _retry_max,
        "longest wait in seconds between REGISTER attempts after a refused or unanswered one "
        "(from 1 s, doubling, +-20 %% jitter); the worker never gives up",
        "SECONDS",
    ),
    _Setting(
        "auto_answer_interval",
        _count(0),
        "seconds before --start-session answers incoming calls (0 declines them)",
        "SECONDS",
    ),
    _Setting(
        "start_session",
        _boolean,
        "register --account (unless --no-register) and start the session at boot",
        is_switch=True,
    ),
    _Setting(
        "auth_token_file",
        _file,
        "file holding the API token; every Sip RPC must then carry "
        "'authorization: Bearer <token>' (health and reflection stay open)",
        "PATH",
    ),
    _Setting(
        "max_message_bytes",
        _count(1024),
        "largest gRPC request accepted; larger ones get RESOURCE_EXHAUSTED",
        "BYTES",
    ),
    _Setting(
        "metrics_port", _port(True), "Prometheus metrics port on --grpc-host (0 = off)", "PORT"
    ),
    _Setting("log_level", _choice(LOG_LEVELS, str.upper), "log level", "|".join(LOG_LEVELS)),
    _Setting(
        "log_format",
        _choice(LOG_FORMATS, str.lower),
        "log line format (json: one object a line)",
        "|".join(LOG_FORMATS),
    ),
    _Setting(
        "shutdown_grace",
        _seconds,
        "bound in seconds on SIGTERM/SIGINT handling: end the call softly, unregister, exit",
        "SECONDS",
    ),
    _Setting(
        "drain_timeout",
        _seconds_or_zero,
        "on SIGTERM/SIGINT during a call: keep it for up to this many seconds (no new calls "
        "meanwhile), then hang up; a second signal hangs up at once; 0 hangs up at once",
        "SECONDS",
    ),
    _Setting(
        "drain_deadline_file",
        _file,
        "file that may hold an RFC 3339 time by which a drain ends at the latest (the operator's"
        " deadline for a pending pod replacement); read again every second while draining",
        "PATH",
    ),
    _Setting(
        "soft_hangup_timeout",
        _seconds,
        "bound in seconds on waiting for queued audio before a soft hangup's BYE",
        "SECONDS",
    ),
    _Setting(
        "media_timeout",
        _seconds_or_zero,
        "seconds without RTP or RTCP from the far end before the worker hangs the call up "
        "(0 = off; paused while the call is on hold)",
        "SECONDS",
    ),
)

_DEFAULTS = WorkerConfig()


def _describe_default(setting: _Setting) -> str:
    value = getattr(_DEFAULTS, setting.name)
    if setting.default_text is not None:
        return setting.default_text
    if setting.is_switch:
        return "off"
    return "none" if value is None else str(value)


class _ParserExit(Exception):
    """argparse wants to exit (after --help, or on a usage error)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Parser(argparse.ArgumentParser):
    def exit(self, status: int = 0, message: str | None = None) -> Any:
        raise _ParserExit(status, message or "")

    def error(self, message: str) -> Any:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sip-worker",
        description=(
            "One SIP user agent serving the ondewo.sip.Sip gRPC API. Every flag can also be set "
            f"by its environment variable; a flag wins. The SIP password comes from {PASSWORD_ENV}"
            " or --password-file, never from a flag value."
        ),
        allow_abbrev=False,
    )
    for setting in SETTINGS:
        help_text = f"{setting.help} [env {setting.env}; default: {_describe_default(setting)}]"
        if setting.is_switch:
            parser.add_argument(
                setting.flag, dest=setting.name, action="store_const", const="true", help=help_text
            )
        elif setting.repeatable:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                metavar=setting.metavar,
                action="append",
                help=help_text,
            )
        else:
            parser.add_argument(
                setting.flag, dest=setting.name, metavar=setting.metavar, help=help_text
            )
    # Refused outright, so that a password never lands in argv by habit.
    parser.add_argument("--password", dest="password_flag", help=argparse.SUPPRESS)
    return parser


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> WorkerConfig:
    """Reads flags then env vars; raises ConfigError with a message fit for the user.

    `--help` raises SystemExit(0) after printing.
    """
    parser = build_parser()
    try:
        namespace = parser.parse_args(list(argv))
    except _ParserExit as exit_request:
        if exit_request.message:
            print(exit_request.message)
        raise SystemExit(exit_request.status) from None
    if namespace.password_flag is not None:
        raise ConfigError(
            f"--password is not accepted (argv is visible to every user on the host): "
            f"set {PASSWORD_ENV} or use --password-file"
        )
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw: str | list[str] | None = getattr(namespace, setting.name)
        if isinstance(raw, list):  # a repeated flag's values, as its env var would list them
            raw = ",".join(raw)
        source = setting.flag
        if raw is None:
            raw = environ.get(setting.env)
            source = setting.env
        if raw is None:
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as error:
            raise ConfigError(f"{source}={raw!r}: {_reason(error)}") from None
    config = WorkerConfig(**values)
    if not config.redis_url:
        raise ConfigError(
            f"--redis-url (env {ENV_PREFIX}REDIS_URL) is required: the status history lives in "
            "Redis (`make run` starts a local server for you)"
        )
    if config.rtp_port + config.rtp_port_count - 1 > 65535:
        raise ConfigError(
            f"--rtp-port {config.rtp_port} with --rtp-port-count {config.rtp_port_count} "
            "goes beyond port 65535"
        )
    _check_tls(config)
    if config.start_session and not config.account:
        raise ConfigError(
            f"--start-session needs --account (env {ENV_PREFIX}ACCOUNT): the account to register"
        )
    return config


def _check_tls(config: WorkerConfig) -> None:
    if config.sip_transport != "tls":
        given = [
            setting.flag
            for setting in SETTINGS
            if setting.name.startswith("tls_")
            and getattr(config, setting.name) != getattr(_DEFAULTS, setting.name)
        ]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --sip-transport tls")
        if config.srtp != "off":
            # SDES carries the SRTP keys in the SDP: over UDP or TCP anyone on the path reads them.
            raise ConfigError(
                f"--srtp {config.srtp} needs --sip-transport tls: its keys travel in the SDP"
            )
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        raise ConfigError("--tls-cert-file and --tls-key-file go together (mutual TLS)")
    for flag, path in (
        ("--tls-ca-file", config.tls_ca_file),
        ("--tls-cert-file", config.tls_cert_file),
        ("--tls-key-file", config.tls_key_file),
    ):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")


def _reason(error: ValueError) -> str:
    text = str(error)
    # int()/float() say "invalid literal for int() with base 10: 'x'"; say what is wanted instead.
    if text.startswith(("invalid literal", "could not convert")):
        return "must be a number"
    return text


def read_password(config: WorkerConfig, environ: Mapping[str, str]) -> str | None:
    """The SIP password from --password-file, else SIP_WORKER_PASSWORD, else None."""
    if config.password_file is not None:
        return _read_secret(config.password_file, "--password-file")
    return environ.get(PASSWORD_ENV) or None


def read_auth_token(config: WorkerConfig) -> str | None:
    """The API token from --auth-token-file, or None when auth is off."""
    if config.auth_token_file is None:
        return None
    return _read_secret(config.auth_token_file, "--auth-token-file")


def _read_secret(path: Path, flag: str) -> str:
    try:
        # Kubernetes Secret files and `echo` add a trailing newline that is not part of it.
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"{flag} {path}: cannot read it ({reason})") from None
    if not secret:
        raise ConfigError(f"{flag} {path}: the file is empty")
    return secret
