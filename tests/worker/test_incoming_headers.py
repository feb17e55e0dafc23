"""Reading the caller and X- headers from a raw INVITE."""

from sip_worker.incoming_headers import caller_uri, custom_headers

INVITE = (
    "INVITE sip:worker@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-1\r\n"
    'From: "Caller" <sip:sipp@127.0.0.1:5071>;tag=1\r\n'
    "To: <sip:worker@127.0.0.1:5060>\r\n"
    "x-lower: one\r\n"
    "X-Folded: first\r\n"
    "  second\r\n"
    "X-Repeated: a\r\n"
    "X-REPEATED: b\r\n"
    "X-Spaces :   padded   \r\n"
    "Subject: not custom\r\n"
    "Content-Length: 12\r\n"
    "\r\n"
    "X-In-Body: no\r\n"
)


def test_custom_headers_are_collected() -> None:
    assert custom_headers(INVITE) == {
        "x-lower": "one",
        "X-Folded": "first second",
        "X-Repeated": "a, b",
        "X-Spaces": "padded",
    }


def test_caller_keeps_the_port() -> None:
    assert caller_uri(INVITE) == "sip:sipp@127.0.0.1:5071"
    assert caller_uri(INVITE.replace('From: "Caller" <', "f: ").replace(">;tag", ";tag")) == (
        "sip:sipp@127.0.0.1:5071"
    )
    assert caller_uri("INVITE sip:a@b SIP/2.0\r\n\r\n") is None
