"""The source policy's parts: hosts of SIP URIs, their addresses, and which sources it trusts.
Only IP literals and names that fail before any lookup: no DNS query leaves the machine."""

import ipaddress

import pytest

from sip_worker.phone.trusted_sources import TrustedSources, resolve, source_address, uri_host


@pytest.mark.parametrize(
    ("uri", "host"),
    [
        ("sip:proxy.example.com:5060;lr", "proxy.example.com"),
        ("<sip:user@[2001:db8::1]:5061>", "2001:db8::1"),
        ("sips:bob@203.0.113.7;transport=tls", "203.0.113.7"),
        ("SIP:Bob@Example.COM", "Example.COM"),
        ("tel:+4312345", None),
        ("bob@example.com", None),
        # RFC 3261 lets the user part hold ';', '?' and ':': the host follows its '@'.
        ("sip:127.0.0.1;x@evil.example:5060", "evil.example"),
        ("<sip:a?b=c;d@[2001:db8::2];lr>", "2001:db8::2"),
        ("sip:alice:secret@pbx.example.com", "pbx.example.com"),
        ("sip:pbx.example.com?subject=x", "pbx.example.com"),
        ("sip:a@127.0.0.1@evil.example", None),  # two '@': no valid URI, no trusted host
        ("sip:[]:5060", None),
    ],
)
def test_the_host_of_a_sip_uri(uri: str, host: str | None) -> None:
    assert uri_host(uri) == host


def test_literals_resolve_to_themselves_and_names_dns_cannot_carry_to_nothing() -> None:
    assert resolve(["203.0.113.7", "[2001:db8::1]"]) == {
        ipaddress.ip_address("203.0.113.7"),
        ipaddress.ip_address("2001:db8::1"),
    }
    # The resolver refuses these before asking anyone (UnicodeError from the IDNA codec).
    assert resolve(["a" * 64 + ".example", "x..example"]) == frozenset()


@pytest.mark.parametrize(
    ("source", "address"),
    [
        ("127.0.0.2:5060", "127.0.0.2"),
        ("[2001:db8::1]:5060", "2001:db8::1"),
        ("not an address:5060", None),
        ("", None),
    ],
)
def test_the_address_of_a_pjsip_source(source: str, address: str | None) -> None:
    expected = ipaddress.ip_address(address) if address is not None else None
    assert source_address(source) == expected


def test_networks_and_peers_are_trusted_ipv4_mapped_sources_too() -> None:
    trusted = TrustedSources((ipaddress.ip_network("203.0.113.0/24"),))
    peer = frozenset({ipaddress.ip_address("198.51.100.9")})

    assert trusted.admits("203.0.113.200:5060", frozenset())
    assert trusted.admits("[::ffff:203.0.113.5]:5060", frozenset())
    assert trusted.admits("198.51.100.9:5080", peer)
    assert not trusted.admits("198.51.100.9:5080", frozenset())
    assert not trusted.admits("192.0.2.1:5060", peer)
    assert not trusted.admits("garbage", peer)
