"""A SipSession's spec as typed values, with the CRD's defaults filled in.

The CRD schema refuses bad specs at admission; this parser still checks what the operator
relies on, so an object admitted without the schema (or an older one) fails clearly.
"""

import functools
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sip_operator.settings import SecretKeyRef

GROUP = "sip-operator.dev"
VERSION = "v1alpha1"
PLURAL = "sipsessions"
KIND = "SipSession"
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_AUTO_ANSWER_INTERVAL = 1
DEFAULT_START_SESSION = True
DEFAULT_REGISTER = True
DEFAULT_TRANSPORT = "udp"
DEFAULT_HISTORY_MAX_LENGTH = 10000
DEFAULT_RETAIN_AFTER_DELETION = 168 * 3600  # seconds (the CRD's default, "168h")
DEFAULT_DRAIN_TIMEOUT = 3600  # seconds (the CRD's default, "1h")
DEFAULT_KEEPALIVE_INTERVAL = 15
MAX_KEEPALIVE_INTERVAL = 3600
MAX_STUN_SERVERS = 8
MAX_TRUSTED_SOURCES = 64
TRANSPORTS = ("udp", "tcp", "tls")
UNTRUSTED_POLICIES = ("reject", "drop")
DEFAULT_UNTRUSTED_POLICY = "reject"
SRTP_MODES = ("off", "optional", "mandatory")
DEFAULT_SRTP = "off"
DEFAULT_TLS_VERIFY = True
# Fields added after the first release, with their defaults: at the default they leave the
# fingerprint as it was, so that an operator upgrade replaces no existing session's pod.
_LATER_FIELDS: dict[str, object] = {
    "register": DEFAULT_REGISTER,
    "drain_timeout": DEFAULT_DRAIN_TIMEOUT,
    "stun_servers": (),
    "keepalive_interval": DEFAULT_KEEPALIVE_INTERVAL,
    "public_address": None,
    "trusted_sources": (),
    "untrusted_policy": DEFAULT_UNTRUSTED_POLICY,
    "srtp": DEFAULT_SRTP,
    "tls_secret": None,
    "tls_verify": DEFAULT_TLS_VERIFY,
}
# host[:port] of a STUN server: a DNS name, an IPv4 address or a bracketed IPv6 one.
_HOST_PORT = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?$"
)
# A public address: a DNS name, an IPv4 address or an IPv6 one (no port).
_ADDRESS = re.compile(
    r"^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$"
)

_DURATION = re.compile(r"^(?:[0-9]+[smhd])+$")
_DURATION_PART = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SpecError(Exception):
    """The spec cannot be run; the message says which field and why."""


def parse_duration(text: str, where: str) -> int:
    """Seconds in a duration such as `90s`, `30m`, `1h30m`, `7d`; `where` names the field."""
    if not _DURATION.match(text):
        raise SpecError(f"{where} {text!r} is not a duration such as 90s, 30m, 24h or 7d")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


@dataclass(frozen=True)
class SessionSpec:
    account_name: str
    password_ref: SecretKeyRef | None  # None: no REGISTER, and no password
    auth_username: str | None = None
    outbound_proxy: str | None = None
    register: bool = DEFAULT_REGISTER
    auto_answer_interval: int = DEFAULT_AUTO_ANSWER_INTERVAL
    start_session: bool = DEFAULT_START_SESSION
    transport: str = DEFAULT_TRANSPORT
    srtp: str = DEFAULT_SRTP
    # The Secret with ca.crt and (mutual TLS) tls.crt and tls.key; None: the system's CAs.
    tls_secret: str | None = None
    tls_verify: bool = DEFAULT_TLS_VERIFY
    stun_servers: tuple[str, ...] = ()
    keepalive_interval: int = DEFAULT_KEEPALIVE_INTERVAL
    public_address: str | None = None
    trusted_sources: tuple[str, ...] = ()  # CIDRs the worker takes calls from besides its peers
    untrusted_policy: str = DEFAULT_UNTRUSTED_POLICY  # what other sources get: 403, or nothing
    image: str | None = None
    resources: dict[str, Any] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    host_network: bool = False
    history_max_length: int = DEFAULT_HISTORY_MAX_LENGTH
    retain_after_deletion: int = DEFAULT_RETAIN_AFTER_DELETION
    # Seconds a call in progress may hold up a pod replacement or the worker's exit.
    drain_timeout: int = DEFAULT_DRAIN_TIMEOUT

    @functools.cached_property
    def fingerprint(self) -> str:
        """Changes exactly when the worker pod has to be replaced (retention does not count)."""
        fields = asdict(self)
        del fields["retain_after_deletion"]
        for name, default in _LATER_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be an object")
    return value


def _string(section: Mapping[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        if required:
            raise SpecError(f"{where}.{key} is required")
        return None
    if not isinstance(value, str):
        raise SpecError(f"{where}.{key} must be a string")
    return value


def _integer(section: Mapping[str, Any], key: str, where: str, default: int, low: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(f"{where}.{key} must be an integer >= {low}")
    return value


def _boolean(section: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{where}.{key} must be true or false")
    return value


def _password_ref(account: Mapping[str, Any], register: bool) -> SecretKeyRef | None:
    """The password's Secret key; optional only for an account that never REGISTERs."""
    where = "spec.account.passwordSecretRef"
    if account.get("passwordSecretRef") is None:
        if register:
            raise SpecError(f"{where} is required unless spec.account.register is false")
        return None
    secret_ref = _mapping(account["passwordSecretRef"], where)
    return SecretKeyRef(
        name=str(_string(secret_ref, "name", where, required=True)),
        key=str(_string(secret_ref, "key", where, required=True)),
    )


def _stun_servers(sip: Mapping[str, Any]) -> tuple[str, ...]:
    servers = sip.get("stunServers") or []
    where = "spec.sip.stunServers"
    if not isinstance(servers, list) or len(servers) > MAX_STUN_SERVERS:
        raise SpecError(f"{where} must be a list of at most {MAX_STUN_SERVERS} host[:port]")
    for server in servers:
        if not isinstance(server, str) or not _HOST_PORT.match(server):
            raise SpecError(f"{where}: {server!r} is not host[:port], such as stun.example.com")
    return tuple(servers)


def _trusted_sources(sip: Mapping[str, Any]) -> tuple[str, ...]:
    sources = sip.get("trustedSources") or []
    where = "spec.sip.trustedSources"
    if not isinstance(sources, list) or len(sources) > MAX_TRUSTED_SOURCES:
        raise SpecError(f"{where} must be a list of at most {MAX_TRUSTED_SOURCES} CIDRs")
    for source in sources:
        try:
            ipaddress.ip_network(source)
        except (TypeError, ValueError):
            raise SpecError(f"{where}: {source!r} is not a CIDR such as 203.0.113.0/24") from None
    return tuple(sources)


def _tls(spec: Mapping[str, Any], transport: str) -> tuple[str, str | None, bool]:
    """spec.srtp, spec.tls.secretRef.name and spec.tls.verify, which need transport tls."""
    srtp = spec.get("srtp", DEFAULT_SRTP)
    if srtp not in SRTP_MODES:
        raise SpecError(f"spec.srtp must be one of {', '.join(SRTP_MODES)}")
    tls = _mapping(spec.get("tls"), "spec.tls")
    if transport != "tls":
        if srtp != DEFAULT_SRTP:
            # SDES keys travel in the SDP: over udp or tcp anyone on the path reads them.
            raise SpecError("spec.srtp needs spec.transport tls (its keys travel in the SDP)")
        if tls:
            raise SpecError("spec.tls needs spec.transport tls")
    secret_ref = _mapping(tls.get("secretRef"), "spec.tls.secretRef")
    secret = _string(secret_ref, "name", "spec.tls.secretRef", required=bool(secret_ref))
    return srtp, secret, _boolean(tls, "verify", "spec.tls", DEFAULT_TLS_VERIFY)


def parse_spec(spec: Mapping[str, Any]) -> SessionSpec:
    """The typed spec; raises SpecError for anything the worker could not run with."""
    account = _mapping(spec.get("account"), "spec.account")
    if not account:
        raise SpecError("spec.account is required")
    register = _boolean(account, "register", "spec.account", DEFAULT_REGISTER)
    password_ref = _password_ref(account, register)
    transport = spec.get("transport", DEFAULT_TRANSPORT)
    if transport not in TRANSPORTS:
        raise SpecError(f"spec.transport must be one of {', '.join(TRANSPORTS)}")
    srtp, tls_secret, tls_verify = _tls(spec, transport)
    worker = _mapping(spec.get("worker"), "spec.worker")
    history = _mapping(spec.get("history"), "spec.history")
    sip = _mapping(spec.get("sip"), "spec.sip")
    keepalive_interval = _integer(
        sip, "keepaliveInterval", "spec.sip", DEFAULT_KEEPALIVE_INTERVAL, 0
    )
    if keepalive_interval > MAX_KEEPALIVE_INTERVAL:
        raise SpecError(f"spec.sip.keepaliveInterval must be at most {MAX_KEEPALIVE_INTERVAL}")
    public_address = _string(sip, "publicAddress", "spec.sip")
    untrusted_policy = sip.get("untrustedPolicy", DEFAULT_UNTRUSTED_POLICY)
    if untrusted_policy not in UNTRUSTED_POLICIES:
        raise SpecError(f"spec.sip.untrustedPolicy must be one of {', '.join(UNTRUSTED_POLICIES)}")
    if public_address is not None and not _ADDRESS.match(public_address):
        raise SpecError(f"spec.sip.publicAddress {public_address!r} is not an address (no port)")
    retain = _string(history, "retainAfterDeletion", "spec.history")
    drain = _string(worker, "drainTimeout", "spec.worker")
    tolerations = worker.get("tolerations")
    if tolerations is not None and not isinstance(tolerations, list):
        raise SpecError("spec.worker.tolerations must be a list")
    return SessionSpec(
        account_name=str(_string(account, "name", "spec.account", required=True)),
        password_ref=password_ref,
        auth_username=_string(account, "authUsername", "spec.account"),
        outbound_proxy=_string(account, "outboundProxy", "spec.account"),
        register=register,
        auto_answer_interval=_integer(
            spec, "autoAnswerInterval", "spec", DEFAULT_AUTO_ANSWER_INTERVAL, 0
        ),
        start_session=_boolean(spec, "startSession", "spec", DEFAULT_START_SESSION),
        transport=transport,
        srtp=srtp,
        tls_secret=tls_secret,
        tls_verify=tls_verify,
        stun_servers=_stun_servers(sip),
        keepalive_interval=keepalive_interval,
        public_address=public_address,
        trusted_sources=_trusted_sources(sip),
        untrusted_policy=untrusted_policy,
        image=_string(worker, "image", "spec.worker"),
        resources=dict(_mapping(worker.get("resources"), "spec.worker.resources")) or None,
        node_selector=dict(_mapping(worker.get("nodeSelector"), "spec.worker.nodeSelector"))
        or None,
        tolerations=list(tolerations) if tolerations else None,
        host_network=_boolean(worker, "hostNetwork", "spec.worker", False),
        history_max_length=_integer(
            history, "maxLength", "spec.history", DEFAULT_HISTORY_MAX_LENGTH, 1
        ),
        retain_after_deletion=(
            parse_duration(retain, "spec.history.retainAfterDeletion")
            if retain
            else DEFAULT_RETAIN_AFTER_DELETION
        ),
        drain_timeout=(
            parse_duration(drain, "spec.worker.drainTimeout") if drain else DEFAULT_DRAIN_TIMEOUT
        ),
    )
