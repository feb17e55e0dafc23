"""The `X-` headers of an incoming SIP request, read from its raw text.

PJSUA2 hands an incoming INVITE to the application only as the whole message text, so the
header section is parsed here: names are matched case-insensitively, folded lines are joined,
and repeated headers are combined with ", " as RFC 3261 7.3.1 allows.
"""

import re

_FOLD_RE = re.compile(r"\r?\n[ \t]+")
_HEADER_LINE_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:[ \t]*(.*)")


def custom_headers(message: str) -> dict[str, str]:
    """Every `X-` header of `message` (a whole SIP message), in first-seen order and spelling."""
    head = re.split(r"\r?\n\r?\n", message, maxsplit=1)[0]
    unfolded = _FOLD_RE.sub(" ", head)
    found: dict[str, tuple[str, list[str]]] = {}
    for line in unfolded.splitlines()[1:]:
        match = _HEADER_LINE_RE.fullmatch(line.rstrip())
        if match is None or not match[1].lower().startswith("x-"):
            continue
        found.setdefault(match[1].lower(), (match[1], []))[1].append(match[2].strip())
    return {spelling: ", ".join(values) for spelling, values in found.values()}
