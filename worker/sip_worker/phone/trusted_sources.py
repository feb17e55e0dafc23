"""The inbound source policy: which packet source addresses may start something at the worker.

Trusted are the addresses the current account's SIP server resolves to (its registrar, or
without one the account's host) and the outbound proxy's, plus the configured networks
(`--trusted-source`). Without an account only the configured networks are trusted. The check
reads the source address of the packet, never a header: headers are the sender's to write.
"""

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A SIP URI, bare or in angle brackets: what follows the scheme, up to the closing bracket.
_URI_BODY = re.compile(r"<?sips?:([^>\s]*)", re.IGNORECASE)


def uri_host(uri: str) -> str | None:
    """The host of a SIP URI such as `sip:proxy.example.com:5060;lr` or
    `<sip:user@[2001:db8::1]>`, without brackets; None if it is not a SIP URI.

    The user part may hold `;`, `?`, `:` and more (RFC 3261 user-unreserved), so the host is
    what follows its `@`, which a valid URI has at most once: `sip:127.0.0.1;x@evil.example`
    names evil.example. A URI with two is no valid one, and has no host here."""
    match = _URI_BODY.match(uri.strip())
    if match is None or match[1].count("@") > 1:
        return None
    host_and_rest = match[1].rpartition("@")[2]
    if host_and_rest.startswith("["):
        end = host_and_rest.find("]")
        return host_and_rest[1:end] if end > 1 else None
    return re.split(r"[:;?]", host_and_rest, maxsplit=1)[0] or None


def resolve(hosts: Iterable[str]) -> frozenset[Address]:
    """Every address the hosts resolve to; a host that does not resolve adds none (the
    REGISTER or the call to it fails anyway) and is logged."""
    addresses: set[Address] = set()
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_UDP)
        except (OSError, UnicodeError) as error:  # UnicodeError: a name DNS cannot carry
            log.warning("cannot resolve %s, so no address of it is trusted: %s", host, error)
            continue
        for info in infos:
            addresses.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
    return frozenset(addresses)


def source_address(source: str) -> Address | None:
    """The address of PJSIP's `ip:port` / `[ip6]:port` source text; None if unreadable."""
    host = source[1:].split("]", 1)[0] if source.startswith("[") else source.rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class TrustedSources:
    """The configured networks; `admits` adds the peers of the account in use."""

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self._networks = networks

    def admits(self, source: str, peers: frozenset[Address]) -> bool:
        """Whether PJSIP's `ip:port` source text is trusted."""
        address = source_address(source)
        return address is not None and self.trusts(address, peers)

    def trusts(self, address: Address, peers: frozenset[Address]) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address in peers or any(address in network for network in self._networks)
