"""Reading the caller, X- headers and body completeness from a raw INVITE, and the Contact
of a redirect."""

import pytest

from sip_worker.incoming_headers import body_is_truncated, caller_uri, contact_uri, custom_headers

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


def test_the_contact_of_a_redirect_keeps_its_port_and_the_first_of_several_wins() -> None:
    moved = "SIP/2.0 302 Moved Temporarily\r\nCSeq: 1 INVITE\r\n"
    assert contact_uri(moved + "Contact: <sip:bob@127.0.0.1:5080>\r\n\r\n") == (
        "sip:bob@127.0.0.1:5080"
    )
    assert contact_uri(moved + "m: sip:a@h:1;q=0.5, <sip:b@h:2>\r\n\r\n") == "sip:a@h:1"
    assert contact_uri(moved + "\r\n") is None


def test_a_quoted_display_name_is_text_whatever_it_holds() -> None:
    moved = "SIP/2.0 302 Moved Temporarily\r\nCSeq: 1 INVITE\r\n"
    disguised = 'Contact: "<sip:bob@127.0.0.1>, x" <sip:bob@127.0.0.2:5080>\r\n\r\n'
    assert contact_uri(moved + disguised) == "sip:bob@127.0.0.2:5080"
    escaped = 'From: "a \\" <sip:x@y>" <sip:real@127.0.0.2>;tag=1\r\n\r\n'
    assert caller_uri("INVITE sip:a@b SIP/2.0\r\n" + escaped) == "sip:real@127.0.0.2"


HEAD = "INVITE sip:worker@127.0.0.1 SIP/2.0\r\nCall-ID: 1\r\n"


@pytest.mark.parametrize(
    ("message", "truncated"),
    [
        (HEAD + "Content-Length: 4\r\n\r\nv=0\n", False),
        (HEAD + "Content-Length: 5\r\n\r\nv=0\n", True),
        (HEAD + "l: 5\r\n\r\nv=0\n", True),
        (HEAD + "Content-Length: 2\r\n\r\nv=0\n", False),  # extra bytes are dropped, not an error
        (HEAD + "Content-Length: 0\r\n\r\n", False),
        (HEAD + "Content-Length: 1\r\n\r\n", True),
        (HEAD + "Content-Length: 1\r\n", True),  # no blank line: no body at all
        (HEAD + "Content-Length: 2\r\n\r\n\udce9\udce9", False),  # bytes, not characters
        (HEAD + "Content-Length: 3\r\n\r\n\u00e9", True),  # one character, two bytes
        (HEAD + "Content-Length: -1\r\n\r\n", False),  # malformed: PJSIP's to judge
        (HEAD + "\r\nv=0\n", False),  # no Content-Length
    ],
)
def test_a_body_shorter_than_its_content_length_is_truncated(message: str, truncated: bool) -> None:
    assert body_is_truncated(message) is truncated
