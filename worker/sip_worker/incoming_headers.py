"""The caller, the `X-` headers and the completeness of an incoming SIP request, and the
Contact of a redirect, read from the message's raw text.

PJSUA2 hands an incoming INVITE to the application only as the whole message text, so the
header section is parsed here: names are matched case-insensitively, folded lines are joined,
and repeated headers are combined with ", " as RFC 3261 7.3.1 allows.
"""

import re

_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_HEADER_LINE_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:[ \t]*(.*)")
# PJSUA2 decodes the message with surrogateescape: a byte that is not UTF-8 arrives as a lone
# surrogate, which protobuf (and so the status history) cannot encode.
_UNDECODABLE_RE = re.compile("[\ud800-\udfff]")
_HEAD_END_RE = re.compile(r"\r?\n\r?\n")
_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"')  # RFC 3261 quoted-string, escapes included


def _header_lines(message: str) -> list[tuple[str, str]]:
    """(name, value) of every header line of `message`, folded lines joined."""
    head = _UNDECODABLE_RE.sub("\ufffd", _HEAD_END_RE.split(message, maxsplit=1)[0])
    unfolded = _FOLD_RE.sub(" ", head)
    lines = []
    for line in unfolded.splitlines()[1:]:
        match = _HEADER_LINE_RE.fullmatch(line.rstrip())
        if match is not None:
            lines.append((match[1], match[2]))
    return lines


def address_of(name_addr: str) -> str:
    """`sip:user@host` from a name-addr such as `"Bob" <sip:bob@host>;tag=x`. A quoted
    display name is the sender's text, whatever it holds: `"<sip:a@b>" <sip:c@d>` is c@d."""
    unquoted = _QUOTED_RE.sub('""', name_addr)
    start, end = unquoted.find("<"), unquoted.find(">")
    if 0 <= start < end:
        return unquoted[start + 1 : end]
    return unquoted.split(";", 1)[0].strip()


def caller_uri(message: str) -> str | None:
    """The URI of the From header (`sip:user@host:port`, port kept), or None without one."""
    for name, value in _header_lines(message):
        if name.lower() in ("from", "f"):
            return address_of(value)
    return None


def contact_uri(message: str) -> str | None:
    """The first URI of the Contact header (port kept), or None without one."""
    for name, value in _header_lines(message):
        if name.lower() in ("contact", "m"):
            return address_of(_QUOTED_RE.sub('""', value).split(",", 1)[0])
    return None


def custom_headers(message: str) -> dict[str, str]:
    """Every `X-` header of `message` (a whole SIP message), in first-seen order and spelling."""
    found: dict[str, tuple[str, list[str]]] = {}
    for name, value in _header_lines(message):
        if not name.lower().startswith("x-"):
            continue
        found.setdefault(name.lower(), (name, []))[1].append(value.strip())
    return {spelling: ", ".join(values) for spelling, values in found.values()}


def body_is_truncated(message: str) -> bool:
    """Whether `message` declares (Content-Length) more body bytes than it carries. PJSIP
    takes such a datagram as it is; RFC 3261 18.3 asks for a 400 instead."""
    parts = _HEAD_END_RE.split(message, maxsplit=1)
    body = parts[1].encode("utf-8", "surrogateescape") if len(parts) == 2 else b""
    for name, value in _header_lines(message):
        if name.lower() in ("content-length", "l"):
            declared = value.strip()
            return declared.isdigit() and int(declared) > len(body)
    return False
