"""SipStreamCallAudio over gRPC: the config handshake, a reader thread for the client's
requests, and the responses (call audio, marks, digits, stats every second, then `ended`).

The handler thread yields what the stream's tap holds; a second thread reads the client's
requests so that agent audio reaches the playback buffer as it arrives, whatever the handler
is blocked on. The stream's media side is in `sip_worker.phone.call_audio`.
"""

import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Protocol

import grpc

from ondewo.sip.sip_pb2 import (
    SipCallAudioConfig,
    SipCallAudioDtmf,
    SipCallAudioEnded,
    SipCallAudioEndReason,
    SipCallAudioFrame,
    SipCallAudioMark,
    SipCallAudioMode,
    SipCallAudioRequest,
    SipCallAudioResponse,
    SipCallAudioStarted,
    SipCallAudioStats,
)
from sip_worker.errors import InvalidArgument, PhoneError
from sip_worker.grpc_errors import abort
from sip_worker.phone.audio_tap import (
    FRAME_MS,
    AudioTap,
    Dtmf,
    Ended,
    EndReason,
    Failed,
    Frame,
    Mark,
    StreamSettings,
)

log = logging.getLogger(__name__)

CONFIG_DEADLINE_S = 2.0
STATS_INTERVAL_S = 1.0
DEFAULT_MAX_DURATION_S = 3600
MAX_DURATION_S = 24 * 3600
SAMPLE_RATES = (8000, 16000)
MAX_STREAM_ID_LENGTH = 128
_CLIENT_CLOSED = SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_CLIENT_CLOSED
_MODES = (SipCallAudioMode.SIP_CALL_AUDIO_MODE_LISTEN, SipCallAudioMode.SIP_CALL_AUDIO_MODE_TALK)


class CallAudioControl(Protocol):
    """What the stream asks of the phone (`sip_worker.phone.Phone`)."""

    def open_call_audio(self, settings: StreamSettings) -> AudioTap: ...
    def close_call_audio(self, tap: AudioTap, reason: EndReason) -> None: ...
    def clear_call_audio(self, tap: AudioTap) -> None: ...


def stream_settings(config: SipCallAudioConfig) -> StreamSettings:
    """Checks the client's config (0 means the default everywhere)."""
    rate = config.sample_rate_hz or 16000
    if rate not in SAMPLE_RATES:
        raise InvalidArgument(f"sample_rate_hz must be 8000 or 16000 (0: 16000), not {rate}")
    if (config.frame_ms or FRAME_MS) != FRAME_MS:
        raise InvalidArgument(f"frame_ms must be 20 (or 0), not {config.frame_ms}")
    mode = config.mode or SipCallAudioMode.SIP_CALL_AUDIO_MODE_LISTEN
    if mode not in _MODES:
        raise InvalidArgument(f"mode {config.mode} is not LISTEN or TALK")
    if mode == SipCallAudioMode.SIP_CALL_AUDIO_MODE_TALK and not config.take_over:
        raise InvalidArgument("a TALK stream needs take_over: it replaces the call's playback")
    duration = config.max_duration_s or DEFAULT_MAX_DURATION_S
    if not 0 < duration <= MAX_DURATION_S:
        raise InvalidArgument(
            f"max_duration_s must be 0 (default {DEFAULT_MAX_DURATION_S}) to {MAX_DURATION_S}"
        )
    stream_id = config.stream_id
    if len(stream_id) > MAX_STREAM_ID_LENGTH or not stream_id.isprintable():
        raise InvalidArgument(
            f"stream_id must be printable and at most {MAX_STREAM_ID_LENGTH} characters"
        )
    return StreamSettings(stream_id, mode, rate, duration)


def stream_call_audio(
    phone: CallAudioControl,
    requests: Iterator[SipCallAudioRequest],
    context: grpc.ServicerContext,
) -> Iterator[SipCallAudioResponse]:
    """The RPC's responses; see the module docstring."""
    first: queue.SimpleQueue[SipCallAudioRequest | None] = queue.SimpleQueue()
    opened: Future[AudioTap | None] = Future()
    reader = threading.Thread(
        target=_read_requests,
        args=(phone, requests, first, opened),
        name="audio-requests",
        daemon=True,
    )
    reader.start()
    try:
        tap = _open(phone, first)
    except PhoneError as error:
        opened.set_result(None)
        abort(context, error)
    except BaseException:
        opened.set_result(None)  # the reader thread must not wait for a stream that never was
        raise
    opened.set_result(tap)
    # Whatever ends the RPC (the client vanishing too) frees the stream's place at once.
    context.add_callback(lambda: phone.close_call_audio(tap, _CLIENT_CLOSED))
    settings = tap.settings
    yield SipCallAudioResponse(
        started=SipCallAudioStarted(
            stream_id=settings.stream_id,
            sample_rate_hz=settings.sample_rate_hz,
            frame_ms=FRAME_MS,
            mode=settings.mode,
        )
    )
    next_stats = time.monotonic() + STATS_INTERVAL_S
    while True:
        item = tap.take(next_stats - time.monotonic())
        if time.monotonic() >= next_stats:
            yield _stats(tap)
            next_stats += STATS_INTERVAL_S
        if item is None:
            continue
        if isinstance(item, Frame):
            frame = SipCallAudioFrame(pcm_s16le=item.pcm, sequence=item.sequence)
            yield SipCallAudioResponse(audio=frame)
        elif isinstance(item, Mark):
            yield SipCallAudioResponse(mark=SipCallAudioMark(name=item.name))
        elif isinstance(item, Dtmf):
            dtmf = SipCallAudioDtmf(digit=item.digit, duration_ms=item.duration_ms)
            yield SipCallAudioResponse(dtmf=dtmf)
        elif isinstance(item, Ended):
            yield _stats(tap)
            yield SipCallAudioResponse(
                ended=SipCallAudioEnded(reason=item.reason, detail=item.detail)
            )
            return
        elif isinstance(item, Failed):
            phone.close_call_audio(tap, _CLIENT_CLOSED)
            abort(context, item.error)


def _open(
    phone: CallAudioControl, first: "queue.SimpleQueue[SipCallAudioRequest | None]"
) -> AudioTap:
    try:
        request = first.get(timeout=CONFIG_DEADLINE_S)
    except queue.Empty:
        raise InvalidArgument(
            f"the first request must be a config, sent within {CONFIG_DEADLINE_S:g} s"
        ) from None
    if request is None or request.WhichOneof("request") != "config":
        raise InvalidArgument("the first request must be a config")
    return phone.open_call_audio(stream_settings(request.config))


def _read_requests(
    phone: CallAudioControl,
    requests: Iterator[SipCallAudioRequest],
    first: "queue.SimpleQueue[SipCallAudioRequest | None]",
    opened: "Future[AudioTap | None]",
) -> None:
    """The reader thread: hands over the first request, then applies each to the stream."""
    try:
        first.put(next(requests, None))
        tap = opened.result()
        if tap is None:
            return
        for request in requests:
            error = _apply(phone, tap, request)
            if error is not None:
                tap.fail(error)
                return
    except grpc.RpcError:
        pass  # the RPC ended (the client went away): the callback closes the stream
    except Exception:
        log.exception("reading the audio stream's requests failed")
        return
    else:
        if opened.done() and (tap := opened.result()) is not None:
            phone.close_call_audio(tap, _CLIENT_CLOSED)  # the client half-closed


def _apply(
    phone: CallAudioControl, tap: AudioTap, request: SipCallAudioRequest
) -> PhoneError | None:
    kind = request.WhichOneof("request")
    if kind == "audio":
        if not tap.settings.talks:
            return InvalidArgument("audio goes to the caller on a TALK stream only")
        size = len(request.audio.pcm_s16le)
        if size != tap.settings.frame_bytes:
            return InvalidArgument(
                f"an audio frame holds {tap.settings.frame_bytes} bytes (20 ms at "
                f"{tap.settings.sample_rate_hz} Hz), not {size}"
            )
        tap.talk(request.audio.pcm_s16le)
    elif kind == "agent_muted":
        tap.set_agent_muted(request.agent_muted)
    elif kind == "clear":
        phone.clear_call_audio(tap)
    elif kind == "mark":
        tap.mark(request.mark)
    elif kind == "config":
        return InvalidArgument("config is accepted once, as the first request")
    else:
        return InvalidArgument("an empty request")
    return None


def _stats(tap: AudioTap) -> SipCallAudioResponse:
    stats = tap.stats()
    return SipCallAudioResponse(
        stats=SipCallAudioStats(
            frames_sent=stats.frames_sent,
            frames_dropped=stats.frames_dropped,
            frames_received=stats.frames_received,
            underruns=stats.underruns,
            frames_discarded=stats.frames_discarded,
        )
    )
