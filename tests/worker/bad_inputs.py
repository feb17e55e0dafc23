"""Malformed requests shared by the unit tests and the end-to-end bad-input tests."""

import struct

from tests.support.audio import float_tone_wav, tone_wav

BAD_ACCOUNT_NAMES = [
    "",
    "alice",
    "@127.0.0.1",
    "alice@",
    "alice@127.0.0.1:0",
    "alice@127.0.0.1:99999",
    "alice@127.0.0.1:port",
    "alice bob@127.0.0.1",
    "alice@127.0.0.1\r\nX-Injected: 1",
    "alice@127.0.0.1\n",
    "alice\0@127.0.0.1",
    "tel:alice@127.0.0.1",
    "sip:alice@127.0.0.1;transport=udp",
    "alice@-bad-.example",
    "alice@" + "a" * 64 + ".example",  # a DNS label is at most 63 characters
    "alice@" + "a." * 127 + "example",  # a host name at most 253
]
BAD_TARGETS = [
    "",
    "bob smith",
    " bob",
    "bob\r",
    "bob\n",
    "bob\r\nX-Injected: 1",
    "bob\0",
    "bob@127.0.0.1\0",
    "sip:bob@127.0.0.1 SIP/2.0",
    "<sip:bob@127.0.0.1>",
    "bob@",
    "sip:",
    "sip:bob@127.0.0.1:70000",
    "bob@" + "a" * 64 + ".example",
    "sip:bob@" + "a." * 127 + "example",
]
BAD_HEADERS = [
    {"X Bad": "v"},
    {"X-Bad:": "v"},
    {"": "v"},
    {"X-Ümlaut": "v"},
    {"X-Bad\r\nX-Injected": "v"},
    {"X-Value": "a\r\nX-Injected: 1"},
    {"X-Value": "a\rb"},
    {"X-Value": "a\nb"},
    {"X-Value": "a\0b"},
    {"Via": "SIP/2.0/UDP 10.0.0.1"},
    {"call-id": "forged"},
    {"X-Long": "v" * 5000},
]


def truncated(wav: bytes) -> bytes:
    return wav[: len(wav) - 101]


def mu_law_wav() -> bytes:
    data = bytes(800)
    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 800)
    return b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data


BAD_WAV_REQUESTS: list[list[bytes]] = [
    [],
    [b""],
    [b"not a wav file at all, just some bytes"],
    [b"RIFF\x10\x00\x00\x00WAVEjunk"],
    [truncated(tone_wav(1000, 0.2))],
    [tone_wav(1000, 0.2)[:44]],  # a header and no samples
    [mu_law_wav()],
    [float_tone_wav(1000, 0.2, 16000, 24)],  # 24-bit float does not exist
    [tone_wav(1000, 0.2, sample_rate=96000)],
    [tone_wav(1000, 0.2, sample_rate=4000)],
    [tone_wav(1000, 0.2), b"RIFF"],  # one bad item refuses the whole request
]
