"""Live audio, a call feature: the SipStreamCallAudio streams of a call, and who hears whom.

Each stream has its own conference-bridge port (`CallAudioPort`) at its own rate; its frames
go through the stream's `AudioTap`. Who hears whom is derived from the call's state each time
it changes and applied as a difference, so a connection that stays is never touched:
- every stream hears the caller;
- the agent (the TALK stream when one is connected, else the WAV that is playing) is heard by
  the caller and, unless the call is muted, by every LISTEN stream;
- so while a TALK stream is connected the WAV queue is heard by nobody, and the bridge, which
  pulls only ports that someone hears, pauses it until the TALK stream ends;
- the null sound device always hears the caller: a call port nobody pulls lets its jitter
  buffer fill with what keeps arriving, and the next stream would start about 0.4 s behind.
Owner thread only.
"""

import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pjsua2 as pj

from ondewo.sip.sip_pb2 import SipCallAudioEndReason
from sip_worker.errors import TooLarge
from sip_worker.phone.audio_tap import (
    FRAME_MS,
    MAX_STREAMS,
    AudioTap,
    EndReason,
    StreamSettings,
)
from sip_worker.phone.bindings import CallAudioPort
from sip_worker.phone.endpoint import null_sink
from sip_worker.phone.hand_off import Timer
from sip_worker.phone.threads import owner_thread

log = logging.getLogger(__name__)


class _Idle:
    """The sink of a port no stream holds: hears nothing, says nothing."""

    def __init__(self, frame_bytes: int) -> None:
        self._silence = b"\0" * frame_bytes

    def caller_frame(self, pcm: bytes) -> None:
        pass

    def agent_frame(self) -> bytes:
        return self._silence


class PortPool:
    """The live-audio ports of the process, by rate: created when first needed, reused after
    (see `CallAudioPort` for why none is freed while the bridge runs). At most MAX_STREAMS
    per rate exist, since no more are ever in use at once."""

    def __init__(self) -> None:
        self._free: dict[int, list[CallAudioPort]] = {}
        self._all: list[CallAudioPort] = []

    @owner_thread
    def take(self, settings: StreamSettings, sink: AudioTap) -> CallAudioPort:
        free = self._free.setdefault(settings.sample_rate_hz, [])
        if free:
            port = free.pop()
            port.sink = sink
            return port
        port = CallAudioPort(sink, settings.frame_bytes)
        media_format = pj.MediaFormatAudio()
        media_format.init(pj.PJMEDIA_FORMAT_PCM, settings.sample_rate_hz, 1, FRAME_MS * 1000, 16)
        port.createPort(f"call-audio-{len(self._all) + 1}", media_format)
        self._all.append(port)
        return port

    @owner_thread
    def give_back(self, port: CallAudioPort, settings: StreamSettings) -> None:
        port.sink = _Idle(settings.frame_bytes)
        self._free[settings.sample_rate_hz].append(port)

    @owner_thread
    def abandon(self) -> None:
        """At stop: PJSUA2 keeps the ports (and their Python halves) past libDestroy, which
        removes them from the bridge; freeing them now could race the bridge's last ticks."""
        for port in self._all:
            port.__disown__()
        self._all.clear()
        self._free.clear()


@dataclass(eq=False)
class _Stream:
    tap: AudioTap
    port: CallAudioPort
    timer: Timer  # max_duration_s


Endpoint = tuple[str, Any]  # (name, bridge port) of a source or sink


class CallAudio:
    def __init__(self, ports: PortPool) -> None:
        self._ports = ports
        self._null_sink = null_sink()
        self._streams: dict[int, _Stream] = {}
        self._serials = 0
        self._audio: Any = None  # the call's pj.AudioMedia while media is active
        # (source name, sink name) -> (source, sink) of every connection made.
        self._connected: dict[tuple[str, str], tuple[Any, Any]] = {}

    @property
    def count(self) -> int:
        return len(self._streams)

    def _talk(self) -> _Stream | None:
        return next((s for s in self._streams.values() if s.tap.settings.talks), None)

    @owner_thread
    def open(
        self,
        settings: StreamSettings,
        call_serial: int,
        request_stall_end: Callable[[int], None],
        schedule_max_duration: Callable[[float, int], Timer],
    ) -> AudioTap:
        """Connects a stream; `request_stall_end(serial)` runs on the media thread (it must
        only post), `schedule_max_duration(seconds, serial)` schedules its end."""
        if len(self._streams) >= MAX_STREAMS:
            raise TooLarge(f"the call already has {MAX_STREAMS} audio streams, the most it takes")
        if settings.talks and self._talk() is not None:
            raise TooLarge("the call already has a TALK stream; at most one may talk")
        self._serials += 1
        serial = self._serials
        tap = AudioTap(settings, call_serial, serial, lambda: request_stall_end(serial))
        port = self._ports.take(settings, tap)
        timer = schedule_max_duration(settings.max_duration_s, serial)
        self._streams[serial] = _Stream(tap, port, timer)
        log.info(
            "audio stream %s (%s, %d Hz) connected; %d on the call",
            settings.stream_id or serial,
            "TALK" if settings.talks else "LISTEN",
            settings.sample_rate_hz,
            len(self._streams),
        )
        return tap

    @owner_thread
    def close(self, serial: int, reason: EndReason, detail: str = "") -> bool:
        """Ends a stream (its client gets `ended` with `reason`); False if it was gone."""
        stream = self._streams.pop(serial, None)
        if stream is None:
            return False
        stream.timer.cancel()
        stream.tap.end(reason, detail)
        self._ports.give_back(stream.port, stream.tap.settings)
        log.info(
            "audio stream %s ended (%s); %d on the call",
            stream.tap.settings.stream_id or serial,
            SipCallAudioEndReason.Name(reason),
            len(self._streams),
        )
        return True

    @owner_thread
    def dtmf(self, digit: str, duration_ms: int) -> None:
        for stream in self._streams.values():
            stream.tap.dtmf(digit, duration_ms)

    @owner_thread
    def media_changed(self, audio: Any) -> None:
        self._audio = audio

    @owner_thread
    def end_all(self, reason: EndReason) -> None:
        for serial in list(self._streams):
            self.close(serial, reason)

    @owner_thread
    def release(self) -> None:
        """The call ended: every connection goes, then every stream."""
        self._audio = None
        self.wire(None, False)
        self.end_all(SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_CALL_ENDED)

    @owner_thread
    def wire(self, player: Any, muted: bool) -> None:
        """Connects what should be connected now, disconnects the rest."""
        desired: dict[tuple[str, str], tuple[Any, Any]] = {}
        if self._audio is not None:
            caller: Endpoint = ("caller", self._audio)
            _add(desired, caller, ("null-sink", self._null_sink))
            talk = self._talk()
            agent: Endpoint | None = None
            if talk is not None:
                agent = (f"stream-{talk.tap.serial}", talk.port)
            elif player is not None:
                agent = (f"player-{id(player)}", player)
            listeners: list[Endpoint] = []
            for serial, stream in self._streams.items():
                endpoint = (f"stream-{serial}", stream.port)
                _add(desired, caller, endpoint)
                if stream is not talk:
                    listeners.append(endpoint)
            if agent is not None:
                _add(desired, agent, caller)
                if not muted:
                    for listener in listeners:
                        _add(desired, agent, listener)
        for key, (source, sink) in list(self._connected.items()):
            if desired.get(key) != (source, sink):
                with suppress(pj.Error):
                    source.stopTransmit(sink)
                del self._connected[key]
        for key, (source, sink) in desired.items():
            if key not in self._connected:
                source.startTransmit(sink)
                self._connected[key] = (source, sink)


def _add(
    connections: dict[tuple[str, str], tuple[Any, Any]], source: Endpoint, sink: Endpoint
) -> None:
    connections[(source[0], sink[0])] = (source[1], sink[1])
