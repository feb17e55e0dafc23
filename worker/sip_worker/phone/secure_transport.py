"""SIP over TLS and SRTP: the TLS transport's settings and the words for its failures.

The PJSUA2 wheel links OpenSSL 1.0.2k: TLS 1.2 is the newest version it speaks (no TLS 1.3),
and of its ciphers only ECDHE key exchange with AES-GCM is taken (it has no ChaCha20).
"""

import logging
import re
from pathlib import Path
from typing import Any

import pjsua2 as pj

from sip_worker.errors import Unreachable
from sip_worker.phone.settings import PhoneSettings

log = logging.getLogger(__name__)

# IANA ids: forward secrecy (ECDHE) and an AEAD cipher; RSA and ECDSA server certificates.
STRONG_CIPHERS = {
    0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
    0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384",
    0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
    0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
}
# Where Debian/Ubuntu and RHEL-likes keep the system's CA bundle: the wheel's own OpenSSL
# looks in its build prefix, which no distribution fills.
SYSTEM_CA_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
)
SRTP_USE = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "mandatory": pj.PJMEDIA_SRTP_MANDATORY,
}
# PJSIP's TLS errors (pjsip/sip_errno.h), which the reason of a failed request's 503 names in
# parentheses, and what they mean to a user.
_TLS_FAILURES = {
    "PJSIP_TLS_ECACERT": "TLS: cannot load the CA file (--tls-ca-file)",
    "PJSIP_TLS_ECERTFILE": "TLS: cannot load the certificate (--tls-cert-file)",
    "PJSIP_TLS_EKEYFILE": "TLS: cannot load the private key (--tls-key-file)",
    "PJSIP_TLS_ETIMEDOUT": "TLS: the handshake timed out",
    "PJSIP_TLS_ECERTVERIF": "TLS: certificate verify failed",
}
_ERROR_NAME = re.compile(r"\((PJSIP_TLS_[A-Z]+)\)")


def tls_config(library: Any, settings: PhoneSettings) -> Any:
    """The TlsConfig of the worker's TLS transport; raises Unreachable if none can be made."""
    config = pj.TlsConfig()
    config.method = pj.PJSIP_TLSV1_2_METHOD
    config.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2
    available = set(library.utilSslGetAvailableCiphers())
    ciphers = [cipher for cipher in STRONG_CIPHERS if cipher in available]
    if not ciphers:
        raise Unreachable(
            "SIP over TLS: this OpenSSL offers none of " + ", ".join(STRONG_CIPHERS.values())
        )
    for cipher in ciphers:
        config.ciphers.append(cipher)
    log.info("SIP over TLS 1.2 with %s", ", ".join(STRONG_CIPHERS[cipher] for cipher in ciphers))
    ca_file = settings.tls_ca_file or next((p for p in SYSTEM_CA_BUNDLES if p.is_file()), None)
    if ca_file is not None:
        config.CaListFile = str(ca_file)
    elif settings.tls_verify:
        raise Unreachable("SIP over TLS: no system CA bundle found; give --tls-ca-file")
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        config.certFile = str(settings.tls_cert_file)
        config.privKeyFile = str(settings.tls_key_file)
    config.verifyServer = settings.tls_verify
    if not settings.tls_verify:
        log.warning("SIP over TLS without certificate verification (--tls-verify false)")
    return config


def tls_failure(reason: str) -> str | None:
    """What a PJSIP reason phrase says went wrong with TLS; None if it is no TLS failure."""
    match = _ERROR_NAME.search(reason)
    return _TLS_FAILURES.get(match[1]) if match else None
