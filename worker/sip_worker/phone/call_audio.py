"""Live audio, a call feature: the SipStreamCallAudio streams of a call, and who hears whom.

Each stream has its own conference-bridge port (`CallAudioPort`) at its own rate; its frames
go through the stream's `AudioTap`. Who hears whom is derived from the call's state each time
it changes and applied as a difference, so a connection that stays is never touched:
- every stream hears the caller;
- the agent (the TALK stream when one is connected, else the WAV that is playing) is heard by
  the caller and, unless the call is muted, by every LISTEN stream;
- so while a TALK stream is connected the WAV queue is heard by nobody, and the bridge, which
  pulls only ports that someone hears, pauses it until the TALK stream ends.
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
from sip_worker.phone.hand_off import Timer
from sip_worker.phone.owner import PjOwner
from sip_worker.phone.threads import owner_thread

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Stream:
    tap: AudioTap
    port: CallAudioPort
    timer: Timer  # max_duration_s


Endpoint = tuple[str, Any]  # (name, bridge port) of a source or sink


class CallAudio:
    def __init__(self, owner: PjOwner) -> None:
        self._owner = owner
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
        port = CallAudioPort(tap, settings.frame_bytes)
        media_format = pj.MediaFormatAudio()
        media_format.init(pj.PJMEDIA_FORMAT_PCM, settings.sample_rate_hz, 1, FRAME_MS * 1000, 16)
        port.createPort(f"call-audio-{call_serial}-{serial}", media_format)
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
        self._owner.retire(stream.port)
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
        """The call ended: its bridge slot and the ports are gone, and their connections."""
        self.end_all(SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_CALL_ENDED)
        self._connected.clear()
        self._audio = None

    @owner_thread
    def wire(self, player: Any, muted: bool) -> None:
        """Connects what should be connected now, disconnects the rest."""
        desired: dict[tuple[str, str], tuple[Any, Any]] = {}
        if self._audio is not None:
            caller: Endpoint = ("caller", self._audio)
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
