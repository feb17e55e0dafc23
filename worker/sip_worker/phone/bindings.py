"""Thin PJSUA2 subclasses: each callback becomes a plain call on the observer that owns it.

The observers (`AccountEvents`, `CallEvents`, a player's end-of-file hook) are the phone's
long-lived rooms; these classes keep no state of their own beyond what identifies them.
Every callback runs on the owner thread, except `SipPlayer.onEof2`, which PJSUA2 runs on its
media clock thread and which therefore only posts. A Python error in a callback is logged and
goes no further: escaping into SWIG, it would be parked in sys.last_value, keep the PJSUA2
object alive past libDestroy and abort the process at exit.
"""

import ctypes
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import pjsua2 as pj

from sip_worker.phone.secure_transport import tls_failure
from sip_worker.phone.threads import ThreadMisuse, assert_owner, media_thread

log = logging.getLogger(__name__)
pjsip_log = logging.getLogger("sip_worker.pjsip")

Self = TypeVar("Self")


def _callback(method: Callable[[Self, Any], None]) -> Callable[[Self, Any], None]:
    """An owner-thread callback: asserts the thread, logs any error, lets nothing escape."""

    @functools.wraps(method)
    def wrapper(self: Self, prm: Any) -> None:
        try:
            assert_owner(method.__qualname__)
            method(self, prm)
        except ThreadMisuse:
            pass  # recorded and logged by the guard; tests fail on it
        except Exception:
            log.exception("error in the PJSUA2 callback %s", method.__qualname__)

    return wrapper


def request_parameters(headers: Mapping[str, str]) -> Any:
    """A CallOpParam carrying `headers` (already checked) on the request it sends."""
    parameters = pj.CallOpParam(True)
    for name, value in headers.items():
        header = pj.SipHeader()
        header.hName = name
        header.hValue = value
        parameters.txOption.headers.append(header)
    return parameters


def answer_parameters(status_code: int) -> Any:
    parameters = pj.CallOpParam()
    parameters.statusCode = status_code
    return parameters


class LogWriter(pj.LogWriter):  # type: ignore[misc]
    # Runs on the owner (mainThreadOnly defers log writes to it), but must never raise.
    def write(self, entry: Any) -> None:
        try:
            level = logging.WARNING if entry.level <= 2 else logging.DEBUG
            if entry.level <= 1:
                level = logging.ERROR
            pjsip_log.log(level, "%s", str(entry.msg).rstrip())
        except Exception:
            log.exception("error in the PJSUA2 log writer")


class AccountEvents(Protocol):
    def registration_changed(
        self, account: "SipAccount", code: int, reason: str, expiration: int
    ) -> None: ...
    def incoming_call(
        self, account: "SipAccount", call_id: int, message: str, source: str
    ) -> None: ...
    def subscription_admitted(self, account: "SipAccount", source: str) -> bool: ...


class SipAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, events: AccountEvents) -> None:
        super().__init__()
        self.events = events

    @_callback
    def onRegState(self, prm: Any) -> None:
        # A failed TLS connection shows as a 503 whose reason ends in PJSIP's error name; say
        # what went wrong in words instead.
        reason = tls_failure(str(prm.reason)) or str(prm.reason)
        self.events.registration_changed(self, int(prm.code), reason, int(prm.expiration))

    @_callback
    def onIncomingCall(self, prm: Any) -> None:
        # srcAddress: where the packet came from (`ip:port`), whatever its headers claim.
        self.events.incoming_call(
            self, int(prm.callId), str(prm.rdata.wholeMsg), str(prm.rdata.srcAddress)
        )

    @_callback
    def onIncomingSubscribe(self, prm: Any) -> None:
        # PJSUA would accept any presence SUBSCRIBE (200, then NOTIFYs to whoever asked).
        if not self.events.subscription_admitted(self, str(prm.rdata.srcAddress)):
            prm.code = 403
            prm.reason = "Forbidden"


class CallEvents(Protocol):
    def call_confirmed(self, call: "SipCall") -> None: ...
    def call_disconnected(self, call: "SipCall", code: int, reason: str) -> None: ...
    def call_media_changed(self, call: "SipCall") -> None: ...
    def call_transfer_progress(
        self, call: "SipCall", code: int, reason: str, final: bool
    ) -> None: ...
    def call_dtmf(self, call: "SipCall", digit: str, duration_ms: int) -> None: ...
    def call_redirected(self, call: "SipCall", target: str, response: str) -> bool: ...


class SipCall(pj.Call):  # type: ignore[misc]
    def __init__(self, events: CallEvents, account: SipAccount, call_id: int) -> None:
        super().__init__(account, call_id)
        self.events = events
        self.disconnected = False

    @_callback
    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.events.call_confirmed(self)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True
            self.events.call_disconnected(self, int(info.lastStatusCode), str(info.lastReason))

    @_callback
    def onCallMediaState(self, prm: Any) -> None:
        self.events.call_media_changed(self)

    @_callback
    def onDtmfDigit(self, prm: Any) -> None:
        # With mainThreadOnly, PJSUA2 defers DTMF callbacks to the owner thread. Once per key
        # press (RFC 4733 events are told at their start); PJSUA2 2.15 gives no duration here,
        # for SIP INFO neither (PJSUA_UNKNOWN_DTMF_DURATION): it is then 0.
        duration = int(prm.duration)
        self.events.call_dtmf(self, str(prm.digit), duration if duration < 0xFFFF else 0)

    def onCallRedirected(self, prm: Any) -> int:
        # Not `_callback`: PJSUA acts on the answer. PJSUA2's own answer is to stop (the call
        # then fails); an error here stops it too.
        follow = False
        try:
            assert_owner("SipCall.onCallRedirected")
            follow = self.events.call_redirected(self, str(prm.targetUri), _received(prm.e))
        except ThreadMisuse:
            pass  # recorded and logged by the guard; tests fail on it
        except Exception:
            log.exception("error in the PJSUA2 callback SipCall.onCallRedirected")
        return int(pj.PJSIP_REDIRECT_ACCEPT if follow else pj.PJSIP_REDIRECT_STOP)

    def onCallTransferRequest(self, prm: Any) -> None:
        # Not `_callback`: the answer is set first, so that nothing can leave PJSUA's default
        # (202, then a call to the Refer-To target, its challenges answered with the account's
        # credentials), which would let any far end make the worker call whom it likes. The
        # API gives the client no say in a far end's transfer: declined.
        prm.statusCode = pj.PJSIP_SC_DECLINE
        log.info("declined the far end's REFER to %s", prm.dstUri)

    def onCallReplaceRequest(self, prm: Any) -> None:
        # An INVITE with Replaces would take this call over, answered by PJSUA itself and never
        # shown to onIncomingCall (so past the source policy and the line's bookkeeping).
        prm.statusCode = pj.PJSIP_SC_FORBIDDEN
        prm.reason = "Forbidden"
        log.info("refused an INVITE that would replace the call")

    @_callback
    def onCallTransferStatus(self, prm: Any) -> None:
        prm.cont = True  # stay subscribed until the final NOTIFY
        self.events.call_transfer_progress(
            self, int(prm.statusCode), str(prm.reason), bool(prm.finalNotify)
        )


def _received(event: Any) -> str:
    """The whole text of the message a SipEvent received, or "" for another event."""
    if event.type != pj.PJSIP_EVENT_TSX_STATE:
        return ""
    state = event.body.tsxState
    return str(state.src.rdata.wholeMsg) if state.type == pj.PJSIP_EVENT_RX_MSG else ""


class SipPlayer(pj.AudioMediaPlayer):  # type: ignore[misc]
    """A WAV file player; `on_eof_media_thread` is told (on the media thread) when it ends."""

    def __init__(self, on_eof_media_thread: Callable[[], None]) -> None:
        super().__init__()
        self._on_eof = on_eof_media_thread

    @media_thread
    def onEof2(self) -> None:
        self._on_eof()


def _read_vector_directly(vector: Any) -> bytes:
    """A ByteVector's bytes read through its data pointer: a std::vector starts with its
    begin and end pointers (libstdc++, which the wheel is built with). 1 µs for a 640-byte
    frame, where bytes(vector) copies element by element through SWIG (about 300 µs)."""
    base = int(vector.this)
    begin = ctypes.c_void_p.from_address(base).value or 0
    end = ctypes.c_void_p.from_address(base + ctypes.sizeof(ctypes.c_void_p)).value or 0
    return ctypes.string_at(begin, end - begin)


def _direct_read_works() -> bool:
    """Whether the vector layout is the one `_read_vector_directly` assumes: its two first
    words must span exactly size() bytes (checked before anything is read through them)."""
    probe = bytes(range(256)) * 2
    vector = pj.ByteVector(probe)
    base = int(vector.this)
    begin = ctypes.c_void_p.from_address(base).value or 0
    end = ctypes.c_void_p.from_address(base + ctypes.sizeof(ctypes.c_void_p)).value or 0
    return begin != 0 and end - begin == vector.size() and _read_vector_directly(vector) == probe


vector_bytes: Callable[[Any], bytes] = _read_vector_directly if _direct_read_works() else bytes


class AudioSink(Protocol):
    """What a CallAudioPort feeds; both run on the media clock thread and must not block."""

    def caller_frame(self, pcm: bytes) -> None: ...
    def agent_frame(self) -> bytes: ...


class CallAudioPort(pj.AudioMediaPort):  # type: ignore[misc]
    """A conference-bridge port of live audio: 20 ms frames in and out, fed to `sink`.

    The bridge calls a registered port every tick, connected or not, and PJSUA2 unregisters
    it only from the C++ destructor, which runs while Python is tearing the object down: so a
    port is never freed while the bridge runs. Ports are reused (`call_audio.PortPool`); the
    sink is swapped, a single attribute store the media thread sees whole.
    """

    def __init__(self, sink: AudioSink, frame_bytes: int) -> None:
        super().__init__()
        self.sink = sink
        self._frame_bytes = frame_bytes

    @media_thread
    def onFrameRequested(self, frame: Any) -> None:
        frame.buf = pj.ByteVector(self.sink.agent_frame())
        frame.size = self._frame_bytes
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO

    @media_thread
    def onFrameReceived(self, frame: Any) -> None:
        audio = frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO
        self.sink.caller_frame(vector_bytes(frame.buf) if audio else b"")
