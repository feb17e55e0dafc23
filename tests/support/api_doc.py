"""Reads the message, enum and method tables of docs/sip-api.md (the upstream API document)."""

import re
from dataclasses import dataclass
from pathlib import Path

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "sip-api.md"
_SECTION = re.compile(
    r'<a name="ondewo\.sip\.([\w.]+)"></a>\s*\n\s*### ([\w.]+)\n(.*?)(?=<a name=|\n## |\Z)', re.S
)
_ROW = re.compile(r"^\| (.+?) \|$", re.M)
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


@dataclass(frozen=True)
class ApiDoc:
    # message name -> [(field, type, label)] in document order
    messages: dict[str, list[tuple[str, str, str]]]
    # enum name -> {value name: number}
    enums: dict[str, dict[str, int]]
    # method -> (request type, response type)
    methods: dict[str, tuple[str, str]]


def _rows(body: str) -> list[list[str]]:
    rows = []
    for line in _ROW.findall(body):
        cells = [_LINK.sub(r"\1", cell).strip() for cell in line.split(" | ")]
        if set(cells[0]) <= {"-", " "} or cells[0] in ("Field", "Name", "Method Name"):
            continue
        rows.append(cells)
    return rows


def load() -> ApiDoc:
    text = API_DOC.read_text()
    messages: dict[str, list[tuple[str, str, str]]] = {}
    enums: dict[str, dict[str, int]] = {}
    methods: dict[str, tuple[str, str]] = {}
    for anchor, _title, body in _SECTION.findall(text):
        if "| Method Name |" in body:
            methods = {row[0]: (row[1].lstrip("."), row[2].lstrip(".")) for row in _rows(body)}
        elif "| Number |" in body:
            enums[anchor] = {row[0]: int(row[1]) for row in _rows(body)}
        elif "| Field |" in body:
            messages[anchor] = [(row[0], row[1], row[2]) for row in _rows(body)]
    return ApiDoc(messages=messages, enums=enums, methods=methods)
