"""Reads the messages, enums and methods of docs/sip-call-audio.md (the live-audio contract).

The document gives them as proto text in code blocks and in inline code; a message given twice
(upstream's fields, then our additions) is merged.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_DOC = Path(__file__).resolve().parents[2] / "docs" / "sip-call-audio.md"
_CODE = re.compile(r"```\n(.*?)```|`([^`\n]+)`", re.S)
_TOKEN = re.compile(r"[A-Za-z_][\w.]*|\d+|[{}();=]")


@dataclass(frozen=True)
class Field:
    type: str
    number: int
    oneof: str | None


@dataclass
class AudioDoc:
    messages: dict[str, dict[str, Field]] = field(default_factory=dict)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    # method -> (request type, response type, client streaming, server streaming)
    methods: dict[str, tuple[str, str, bool, bool]] = field(default_factory=dict)


def _code(text: str) -> str:
    parts = [block or inline for block, inline in _CODE.findall(text)]
    return "\n".join(re.sub(r"//[^\n]*", "", part) for part in parts)


def load() -> AudioDoc:
    doc = AudioDoc()
    tokens = _TOKEN.findall(_code(AUDIO_DOC.read_text()))
    stack: list[tuple[str, str]] = []  # (kind, name) of the open blocks
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token == "}":
            if stack:
                stack.pop()
            i += 1
        elif token in ("message", "enum", "service", "oneof") and tokens[i + 2 : i + 3] == ["{"]:
            stack.append((token, following))
            if token == "message":
                doc.messages.setdefault(following, {})
            elif token == "enum":
                doc.enums.setdefault(following, {})
            i += 3
        elif token == "rpc":
            # rpc Name ( [stream] Request ) returns ( [stream] Response )
            end = tokens.index(")", tokens.index(")", i) + 1)
            words = [t for t in tokens[i + 1 : end] if t not in "()"]
            name, request = words[0], words[1 : words.index("returns")]
            response = words[words.index("returns") + 1 :]
            doc.methods[name] = (request[-1], response[-1], len(request) == 2, len(response) == 2)
            i = end + 1
        elif following == "{" and not stack and token[0].isupper():
            stack.append(("message", token))  # inline `Name { ... }`
            doc.messages.setdefault(token, {})
            i += 2
        elif stack and stack[-1][0] == "enum" and following == "=":
            doc.enums[stack[-1][1]][token] = int(tokens[i + 2])
            i += 4
        elif stack and stack[-1][0] in ("message", "oneof") and tokens[i + 2 : i + 3] == ["="]:
            message = next(name for kind, name in reversed(stack) if kind == "message")
            oneof = stack[-1][1] if stack[-1][0] == "oneof" else None
            doc.messages[message][following] = Field(token, int(tokens[i + 3]), oneof)
            i += 5
        else:
            i += 1
    return doc
