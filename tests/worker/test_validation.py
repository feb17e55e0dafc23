"""The SIP string checks in isolation: account names, targets, headers."""

import pytest

from sip_worker.errors import InvalidArgument
from sip_worker.validation import check_headers, parse_account_name, target_uri
from tests.worker.bad_inputs import BAD_ACCOUNT_NAMES, BAD_HEADERS, BAD_TARGETS

ACCOUNT = parse_account_name("alice@pbx.example.com:5070")


@pytest.mark.parametrize(
    ("text", "canonical", "registrar"),
    [
        ("alice@pbx.example.com", "alice@pbx.example.com", "sip:pbx.example.com"),
        ("sip:alice@10.0.0.1:5070", "alice@10.0.0.1:5070", "sip:10.0.0.1:5070"),
        ("SIP:alice@host", "alice@host", "sip:host"),
        ("sips:alice@host", "alice@host", "sips:host"),
        ("+49.30-123@[::1]:5060", "+49.30-123@[::1]:5060", "sip:[::1]:5060"),
        ("a%20b@host", "a%20b@host", "sip:host"),
    ],
)
def test_account_names_parse(text: str, canonical: str, registrar: str) -> None:
    account = parse_account_name(text)
    assert account.canonical == canonical
    assert account.registrar_uri == registrar


@pytest.mark.parametrize("text", BAD_ACCOUNT_NAMES)
def test_bad_account_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_account_name(text)


@pytest.mark.parametrize(
    ("target", "uri"),
    [
        ("bob", "sip:bob@pbx.example.com:5070"),
        ("+4930123456", "sip:+4930123456@pbx.example.com:5070"),
        ("bob@other.example", "sip:bob@other.example"),
        ("bob@10.1.2.3:5080", "sip:bob@10.1.2.3:5080"),
        ("sip:bob@other.example", "sip:bob@other.example"),
        ("sip:+49301@gw.example;user=phone", "sip:+49301@gw.example;user=phone"),
        ("sip:gw.example:5062;transport=tcp", "sip:gw.example:5062;transport=tcp"),
    ],
)
def test_targets_become_sip_uris(target: str, uri: str) -> None:
    assert target_uri(target, ACCOUNT, "callee_id") == uri


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_bad_targets_are_refused(target: str) -> None:
    with pytest.raises(InvalidArgument, match="callee_id"):
        target_uri(target, ACCOUNT, "callee_id")


def test_sips_targets_are_refused_without_tls() -> None:
    with pytest.raises(InvalidArgument, match="TLS"):
        target_uri("sips:bob@other.example", ACCOUNT, "callee_id")


def test_good_headers_pass_unchanged() -> None:
    headers = {
        "X-Id": "abc",
        "Subject": "a: b, c",
        "X-Empty": "",
        "X-Tab": "a\tb",
        "P-Asserted-Identity": "<sip:a@b>",
    }
    assert check_headers(headers, "headers") == headers


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_bad_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument, match="headers"):
        check_headers(headers, "headers")


def test_too_many_headers_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="more than"):
        check_headers({f"X-H{i}": "v" for i in range(33)}, "headers")


@pytest.mark.parametrize(
    ("target", "uri"),
    [
        ("sips:bob@other.example", "sips:bob@other.example"),
        ("bob", "sip:bob@pbx.example.com:5070;transport=tls"),
        ("bob@10.1.2.3:5061", "sip:bob@10.1.2.3:5061;transport=tls"),
        ("sip:bob@other.example;user=phone", "sip:bob@other.example;user=phone;transport=tls"),
        ("sip:gw.example;transport=TLS", "sip:gw.example;transport=TLS"),
    ],
)
def test_targets_go_over_tls_when_the_worker_runs_it(target: str, uri: str) -> None:
    assert target_uri(target, ACCOUNT, "callee_id", tls=True) == uri
