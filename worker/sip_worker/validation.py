"""Checks on the SIP strings a client sends: account names, call targets and extra headers.

Everything that ends up in a SIP message is validated here, strictly, before the phone touches
PJSUA2: a CR, LF or NUL in a target or header would let a client inject its own SIP headers.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sip_worker.errors import InvalidArgument

# RFC 3261 25.1: user = 1*( unreserved / escaped / user-unreserved ).
_USER = r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+"
_HOSTNAME = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?"
)
_IPV6 = r"\[[0-9A-Fa-f:.]+\]"
_HOST = rf"(?:{_HOSTNAME}|{_IPV6})"
_PORT = r"[0-9]{1,5}"
# uri-parameters: ;name[=value] with RFC 3261 paramchar characters only.
_PARAMCHARS = r"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|%[0-9A-Fa-f]{2})+"
_PARAMS = rf"(?:;{_PARAMCHARS}(?:={_PARAMCHARS})?)*"

_ACCOUNT_RE = re.compile(
    rf"(?:(?P<scheme>sips?):)?(?P<user>{_USER})@(?P<host>{_HOST})(?::(?P<port>{_PORT}))?",
    re.IGNORECASE,
)
_TARGET_URI_RE = re.compile(
    rf"(?P<scheme>sips?):(?:(?P<user>{_USER})@)?(?P<host>{_HOST})(?::(?P<port>{_PORT}))?(?P<params>{_PARAMS})",
    re.IGNORECASE,
)
_TARGET_ADDRESS_RE = re.compile(rf"(?P<user>{_USER})@(?P<host>{_HOST})(?::(?P<port>{_PORT}))?")
_BARE_USER_RE = re.compile(_USER)

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~").
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Field values may hold any visible character, space and tab; no other control characters.
_FORBIDDEN_VALUE_CHAR_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the SIP stack writes itself; a second copy would corrupt the dialog or the message.
_STACK_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m",
        "Content-Length", "l", "Content-Type", "c", "Max-Forwards", "Route", "Record-Route",
        "Refer-To", "r", "Referred-By", "b", "Event", "o", "Authorization",
        "Proxy-Authorization",
    )
)  # fmt: skip
MAX_HEADERS = 32
MAX_HEADER_VALUE_LENGTH = 1024
MAX_TARGET_LENGTH = 512


@dataclass(frozen=True)
class AccountName:
    """A SIP account `user@host[:port]`, as parsed from `[sip:|sips:]user@host[:port]`."""

    user: str
    host: str
    port: int | None
    secure: bool

    @property
    def domain(self) -> str:
        """`host[:port]`: where the account registers and where bare callee ids go."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def canonical(self) -> str:
        """`user@host[:port]`: the name statuses carry and accounts are compared by."""
        return f"{self.user}@{self.domain}"

    @property
    def scheme(self) -> str:
        return "sips" if self.secure else "sip"

    @property
    def uri(self) -> str:
        return f"{self.scheme}:{self.canonical}"

    @property
    def registrar_uri(self) -> str:
        return f"{self.scheme}:{self.domain}"


def _check_port(port: str | None, what: str) -> int | None:
    if port is None:
        return None
    number = int(port)
    if not 1 <= number <= 65535:
        raise InvalidArgument(f"{what}: port {number} is not between 1 and 65535")
    return number


MAX_HOST_NAME_LENGTH = 253  # RFC 1035, as DNS carries names
MAX_LABEL_LENGTH = 63


def _check_host(host: str, what: str) -> None:
    """A host name DNS can carry (the resolver refuses longer ones with an error of its own)."""
    if host.startswith("["):
        return
    name = host.removesuffix(".")
    if len(name) > MAX_HOST_NAME_LENGTH:
        raise InvalidArgument(f"{what}: host name longer than {MAX_HOST_NAME_LENGTH} characters")
    if any(len(label) > MAX_LABEL_LENGTH for label in name.split(".")):
        raise InvalidArgument(f"{what}: host name label longer than {MAX_LABEL_LENGTH} characters")


def _check_text(value: str, what: str, max_length: int) -> None:
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if len(value) > max_length:
        raise InvalidArgument(f"{what} is longer than {max_length} characters")
    if _FORBIDDEN_VALUE_CHAR_RE.search(value) or " " in value or "\t" in value:
        raise InvalidArgument(f"{what} contains whitespace or control characters")


def parse_account_name(account_name: str) -> AccountName:
    """Parses `[sip:|sips:]user@host[:port]` or raises InvalidArgument."""
    _check_text(account_name, "account_name", MAX_TARGET_LENGTH)
    match = _ACCOUNT_RE.fullmatch(account_name)
    if match is None:
        raise InvalidArgument(
            f"account_name {account_name!r} is not of the form [sip:|sips:]user@host[:port]"
        )
    port = _check_port(match["port"], "account_name")
    _check_host(match["host"], "account_name")
    scheme = (match["scheme"] or "sip").lower()
    return AccountName(match["user"], match["host"], port, scheme == "sips")


def target_uri(target: str, account: AccountName, what: str, tls: bool = False) -> str:
    """The SIP URI for a call or transfer target given as a SIP URI, `user@host` or bare user.

    A bare user (or number) is placed in the account's domain. sips: URIs need `tls` (the
    worker runs SIP over TLS); without it they are refused. With `tls`, sip: URIs go over TLS.
    """
    _check_text(target, what, MAX_TARGET_LENGTH)
    if (uri_match := _TARGET_URI_RE.fullmatch(target)) is not None:
        _check_port(uri_match["port"], what)
        _check_host(uri_match["host"], what)
        if uri_match["scheme"].lower() == "sips" and not tls:
            raise InvalidArgument(
                f"{what}: sips: needs SIP over TLS, which this worker does not run"
            )
        uri = target
    elif (address_match := _TARGET_ADDRESS_RE.fullmatch(target)) is not None:
        _check_port(address_match["port"], what)
        _check_host(address_match["host"], what)
        uri = f"{account.scheme}:{target}"
    elif _BARE_USER_RE.fullmatch(target) is not None:
        uri = f"{account.scheme}:{target}@{account.domain}"
    else:
        raise InvalidArgument(f"{what} {target!r} is not a SIP URI, user@host or a bare user")
    return over_tls(uri) if tls else uri


_TRANSPORT_PARAM = re.compile(r";transport=", re.IGNORECASE)


def over_tls(uri: str) -> str:
    """A sip: URI that names no transport, with `;transport=tls`: PJSUA takes the transport of
    a Contact from the URI it sends to, so without it far ends would send their requests over
    UDP. sips: URIs mean TLS already."""
    if uri.lower().startswith("sips:") or _TRANSPORT_PARAM.search(uri):
        return uri
    return f"{uri};transport=tls"


def check_headers(headers: Mapping[str, str], what: str) -> dict[str, str]:
    """Returns `headers` as a plain dict after checking every name and value.

    Names must be RFC 3261 tokens and not ones the SIP stack writes itself; values must not
    hold CR, LF, NUL or other control characters (tab is allowed).
    """
    if len(headers) > MAX_HEADERS:
        raise InvalidArgument(f"{what}: more than {MAX_HEADERS} headers")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not _TOKEN_RE.fullmatch(name):
            raise InvalidArgument(f"{what}: header name {name!r} is not an RFC 3261 token")
        if name.lower() in _STACK_HEADERS:
            raise InvalidArgument(f"{what}: header {name!r} is set by the SIP stack")
        if _FORBIDDEN_VALUE_CHAR_RE.search(value):
            raise InvalidArgument(
                f"{what}: the value of header {name!r} contains CR, LF, NUL or another "
                "control character"
            )
        if len(value) > MAX_HEADER_VALUE_LENGTH:
            raise InvalidArgument(
                f"{what}: the value of header {name!r} is longer than "
                f"{MAX_HEADER_VALUE_LENGTH} characters"
            )
        checked[name] = value
    return checked


_DTMF_RE = re.compile(r"[0-9*#A-D]+")
MAX_DTMF_DIGITS = 64
DTMF_DURATION_MS = (40, 5000)  # the range a digit may last; 0 asks for the default
DEFAULT_DTMF_DURATION_MS = 160


def check_dtmf(digits: str, duration_ms: int) -> int:
    """Checks SendDtmf's digits; returns the duration to send each with, in ms."""
    if not digits:
        raise InvalidArgument("digits is empty")
    if len(digits) > MAX_DTMF_DIGITS:
        raise InvalidArgument(f"digits: more than {MAX_DTMF_DIGITS} digits")
    if not _DTMF_RE.fullmatch(digits):
        raise InvalidArgument("digits may hold only 0-9, *, # and A-D")
    if duration_ms == 0:
        return DEFAULT_DTMF_DURATION_MS
    low, high = DTMF_DURATION_MS
    if not low <= duration_ms <= high:
        raise InvalidArgument(f"duration_ms must be 0 (default) or {low} to {high}")
    return duration_ms
