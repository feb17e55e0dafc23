"""The PJSUA2 endpoint: created, configured and destroyed by the owner thread."""

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pjsua2 as pj

from sip_worker.errors import Unreachable
from sip_worker.phone.bindings import LogWriter
from sip_worker.phone.secure_transport import tls_config
from sip_worker.phone.settings import PhoneSettings
from sip_worker.phone.threads import owner_thread

log = logging.getLogger(__name__)
pjsip_log = logging.getLogger("sip_worker.pjsip")

# Preferred codecs first; the others waste CPU (speex) or are rarely offered.
CODEC_PRIORITIES = (
    ("PCMU/8000", 255),
    ("PCMA/8000", 254),
    ("G722/16000", 253),
    ("speex", 0),
    ("iLBC", 0),
    ("GSM", 0),
)


TRANSPORT_TYPES = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,
}


@dataclass
class Endpoint:
    """A started endpoint with its SIP transport and the loopback one that wakes its poll."""

    library: Any  # pj.Endpoint
    log_writer: LogWriter  # PJSUA2 keeps only a C pointer: the Python object must live on
    transport_id: int
    sip_port: int
    wake_port: int


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    """libCreate prints a banner on fd 1 before any log writer exists; keep stdout clean."""
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _port_of(library: Any, transport_id: int) -> int:
    return int(str(library.transportGetInfo(transport_id).localName).rsplit(":", 1)[1])


@owner_thread
def create_endpoint(settings: PhoneSettings) -> Endpoint:
    """Creates and starts the endpoint; raises Unreachable when the SIP port cannot be bound.
    On failure, what was created is left for `destroy_endpoint(library)`."""
    library = pj.Endpoint()
    log_writer = LogWriter()  # referenced here until libDestroy, whatever happens
    try:
        return _start(library, log_writer, settings)
    except BaseException:
        destroy_endpoint(library)
        raise


def _start(library: Any, log_writer: LogWriter, settings: PhoneSettings) -> Endpoint:
    with _stdout_silenced():
        library.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    # PJSUA puts it on requests and OPTIONS answers (it sends no Server header); its default
    # would name the stack and its version to every scanner.
    config.uaConfig.userAgent = settings.user_agent
    debug = pjsip_log.isEnabledFor(logging.DEBUG)
    config.logConfig.writer = log_writer
    config.logConfig.level = 4 if debug else 2
    config.logConfig.consoleLevel = 4 if debug else 2
    config.logConfig.msgLogging = debug
    config.logConfig.decor = 0
    config.medConfig.noVad = True
    # A fixed public address wins: STUN would only ask what the configuration already says.
    if not settings.public_address:
        for server in settings.stun_servers:
            config.uaConfig.stunServer.append(server)
    # NAT type detection would probe with RFC 3489 change requests, which a STUN server with
    # one address cannot answer, for an SDP attribute (a=X-nat) that far ends ignore.
    config.uaConfig.natTypeInSdp = 0
    library.libInit(config)
    transport_config = pj.TransportConfig()
    transport_config.port = settings.sip_port
    transport_config.boundAddress = settings.sip_host
    if settings.public_address:
        transport_config.publicAddress = settings.public_address
    if settings.sip_transport != "udp":
        transport_config.sockOptParams = _no_delay()  # TCP's
    if settings.sip_transport == "tls":
        transport_config.tlsConfig = tls_config(library, settings)
        transport_config.tlsConfig.sockOptParams = _no_delay()
    transport_type = TRANSPORT_TYPES[settings.sip_transport]
    where = f"{settings.sip_transport} {settings.sip_host}:{settings.sip_port}"
    try:
        transport_id = library.transportCreate(transport_type, transport_config)
    except pj.Error as error:
        raise Unreachable(f"cannot bind SIP {where}: {error.reason}") from None
    wake_config = pj.TransportConfig()
    wake_config.port = 0
    wake_config.boundAddress = "127.0.0.1"
    wake_id = library.transportCreate(pj.PJSIP_TRANSPORT_UDP, wake_config)
    library.libStart()
    library.audDevManager().setNullDev()
    for codec, priority in CODEC_PRIORITIES:
        try:
            library.codecSetPriority(codec, priority)
        except pj.Error:
            log.debug("codec %s is not in this PJSUA2 build", codec)
    sip_port = _port_of(library, transport_id)
    log.info("SIP %s bound to %s:%d", settings.sip_transport, settings.sip_host, sip_port)
    return Endpoint(library, log_writer, transport_id, sip_port, _port_of(library, wake_id))


@owner_thread
def null_sink() -> Any:
    """The bridge's port of the null sound device: it hears whatever is connected to it and
    discards it, every tick."""
    return pj.Endpoint.instance().audDevManager().getPlaybackDevMedia()


@owner_thread
def hang_up_all(library: Any) -> None:
    library.hangupAllCalls()


@owner_thread
def destroy_endpoint(library: Any) -> None:
    """Destroys the library; every other PJSUA2 object must be gone (gc'd) by now."""
    try:
        library.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
    except pj.Error as error:
        log.warning("libDestroy failed: %s", error.reason)


def _no_delay() -> Any:
    """TCP_NODELAY for SIP over TCP and TLS: without it Nagle holds a small segment until the
    peer's delayed ACK (about 40 ms) whenever one is still unacknowledged, as an INVITE
    right after the ACK of its 407 is: that doubled call setup over TLS (bench/bench_tls.py)."""
    option = pj.SockOpt()
    option.level = socket.IPPROTO_TCP
    option.optName = socket.TCP_NODELAY
    option.setOptValInt(1)
    params = pj.SockOptParams()
    params.sockOpts.append(option)
    return params
