"""What the phone is configured with: the worker's configuration provides it as it is."""

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Protocol


class PhoneSettings(Protocol):
    """The settings the phone reads (`WorkerConfig` has them all, by these names)."""

    @property
    def sip_host(self) -> str: ...  # address SIP and RTP bind to
    @property
    def sip_port(self) -> int: ...  # 0 = any free port
    @property
    def sip_transport(self) -> str: ...  # "udp" | "tcp" | "tls"
    @property
    def tls_ca_file(self) -> Path | None: ...  # CAs of the servers; None: the system's bundle
    @property
    def tls_cert_file(self) -> Path | None: ...  # our certificate, for mutual TLS
    @property
    def tls_key_file(self) -> Path | None: ...  # its private key
    @property
    def tls_verify(self) -> bool: ...  # check the server's certificate and name
    @property
    def srtp(self) -> str: ...  # "off" | "optional" | "mandatory"
    @property
    def rtp_port(self) -> int: ...  # first RTP port
    @property
    def rtp_port_count(self) -> int: ...  # ports from rtp_port that RTP and RTCP use; 0: no bound
    @property
    def public_address(self) -> str | None: ...  # for Contact and SDP (pods behind NAT)
    @property
    def stun_servers(self) -> tuple[str, ...]: ...  # host[:port]; unused with public_address
    @property
    def keepalive_interval(self) -> int: ...  # seconds between UDP keep-alives, 0 = off
    @property
    def auth_username(self) -> str | None: ...  # digest user if it differs from the account's
    @property
    def outbound_proxy(self) -> str | None: ...  # SIP URI of an outbound proxy
    @property
    def trusted_sources(self) -> tuple[IPv4Network | IPv6Network, ...]: ...  # besides the peers
    @property
    def untrusted_policy(self) -> str: ...  # "reject" (403) | "drop" (kernel filter)
    @property
    def user_agent(self) -> str: ...  # User-Agent text, naming no stack or version
    @property
    def no_register(self) -> bool: ...  # accounts send no REGISTER (trunks that trust our address)
    @property
    def register_expiry(self) -> int: ...  # seconds asked for in REGISTER
    @property
    def register_retry_max(self) -> float: ...  # longest back-off between REGISTER attempts
    @property
    def soft_hangup_timeout(self) -> float: ...  # bound on waiting for queued audio before BYE
    @property
    def media_timeout(self) -> float: ...  # seconds without media from the far end; 0 = off
