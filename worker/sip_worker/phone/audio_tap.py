"""A live-audio stream's shared state: the bounded buffers between the threads it spans.

Four threads touch a stream, each through its own methods:
- the media clock thread (`caller_frame`, `agent_frame`): every 20 ms, never blocking, never
  calling gRPC: it appends to or pops from buffers and counts;
- the stream's request reader (`talk`, `mark`, `clear`, `set_agent_muted`, `fail`);
- the RPC's response thread (`take`, `stats`);
- the owner thread (`dtmf`, `end`).
Every counter has one writer; buffers are deques and a SimpleQueue, whose single operations
are atomic. What a slow reader cannot take is dropped and counted; what a fast talker sends
beyond the playback bound is discarded and counted.
"""

import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from ondewo.sip.sip_pb2 import SipCallAudioEndReason, SipCallAudioMode
from sip_worker.errors import PhoneError

FRAME_MS = 20
# Streams one call takes at once (the bridge has 254 ports; each stream holds a gRPC thread).
MAX_STREAMS = 16
# Agent audio a TALK stream may buffer ahead of the call's pace (a TTS engine sends a sentence
# at once): 30 s.
TALK_BUFFER_FRAMES = 30 * 1000 // FRAME_MS
# Call audio waiting for a client that reads slowly, before frames are dropped: 1 s.
OUTBOUND_FRAMES = 1000 // FRAME_MS
# A client that takes nothing for this long, while audio waits for it, is ended (STALLED).
STALL_S = 5.0


EndReason: TypeAlias = SipCallAudioEndReason.ValueType


@dataclass(frozen=True)
class StreamSettings:
    """A checked SipCallAudioConfig."""

    stream_id: str
    mode: "SipCallAudioMode.ValueType"
    sample_rate_hz: int
    max_duration_s: int

    @property
    def talks(self) -> bool:
        return self.mode == SipCallAudioMode.SIP_CALL_AUDIO_MODE_TALK

    @property
    def frame_bytes(self) -> int:
        return self.sample_rate_hz * FRAME_MS // 1000 * 2


@dataclass(frozen=True)
class Frame:
    sequence: int
    pcm: bytes


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Dtmf:
    digit: str
    duration_ms: int


@dataclass(frozen=True)
class Ended:
    reason: EndReason
    detail: str = ""


@dataclass(frozen=True)
class Failed:
    """The client sent something invalid: the RPC ends with this error's code."""

    error: PhoneError


@dataclass(frozen=True)
class Stats:
    frames_sent: int
    frames_dropped: int
    frames_received: int
    underruns: int
    frames_discarded: int


Item = Frame | Mark | Dtmf | Ended | Failed


class AudioTap:
    def __init__(
        self,
        settings: StreamSettings,
        call_serial: int,
        serial: int,
        request_stall_end: Callable[[], None],
    ) -> None:
        """`request_stall_end` is called (once, on the media thread) when the client stalls:
        it must only post the end to the owner."""
        self.settings = settings
        self.call_serial = call_serial
        self.serial = serial
        self._request_stall_end = request_stall_end
        self._silence = b"\0" * settings.frame_bytes
        self._outbound: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._talk: deque[bytes | Mark] = deque()
        self.ended: Ended | None = None  # written by the owner
        # Media thread.
        self._sequence = 0
        self._frames_queued = 0
        self._frames_dropped = 0
        self._underruns = 0
        self._agent_talking = False  # the last tick played agent audio
        self._stall_reported = False
        # Request reader.
        self._frames_received = 0
        self._frames_discarded = 0
        self._agent_muted = False
        # Response thread.
        self._frames_taken = 0
        self._last_take = time.monotonic()

    # ------------------------------------------------------------ media clock thread

    def caller_frame(self, pcm: bytes) -> None:
        """A frame of the call's audio for the client."""
        if self.ended is not None:
            return
        if self._frames_queued - self._frames_taken >= OUTBOUND_FRAMES:
            self._frames_dropped += 1
            if time.monotonic() - self._last_take > STALL_S and not self._stall_reported:
                self._stall_reported = True
                self._request_stall_end()
            return
        self._sequence += 1
        self._frames_queued += 1
        self._outbound.put(Frame(self._sequence, pcm or self._silence))

    def agent_frame(self) -> bytes:
        """The next frame of agent audio for the caller (TALK), silence when there is none."""
        while True:
            try:
                item = self._talk.popleft()
            except IndexError:
                if self._agent_talking:
                    self._underruns += 1  # ran dry mid-utterance (no mark, no clear)
                self._agent_talking = False
                return self._silence
            if isinstance(item, Mark):
                self._outbound.put(item)
                self._agent_talking = False  # a mark ends an utterance: silence is expected
                continue
            self._agent_talking = True
            return self._silence if self._agent_muted else item

    # ------------------------------------------------------------ request reader

    def talk(self, pcm: bytes) -> None:
        self._frames_received += 1
        if len(self._talk) >= TALK_BUFFER_FRAMES:
            self._frames_discarded += 1
            return
        self._talk.append(pcm)

    def mark(self, name: str) -> None:
        """Echoed once the agent audio sent before it has been played (at once without TALK)."""
        if self.settings.talks:
            self._talk.append(Mark(name))
        else:
            self._outbound.put(Mark(name))

    def clear(self) -> None:
        """Drops the agent audio not yet played; the marks among it come back at once."""
        while True:
            try:
                item = self._talk.popleft()
            except IndexError:
                break
            if isinstance(item, Mark):
                self._outbound.put(item)
        self._agent_talking = False

    def set_agent_muted(self, muted: bool) -> None:
        self._agent_muted = muted

    def fail(self, error: PhoneError) -> None:
        self._outbound.put(Failed(error))

    # ------------------------------------------------------------ response thread

    def take(self, timeout: float) -> Item | None:
        """The next item for the client, or None after `timeout` seconds."""
        try:
            item = self._outbound.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        self._last_take = time.monotonic()
        if isinstance(item, Frame):
            self._frames_taken += 1
        return item

    def stats(self) -> Stats:
        return Stats(
            frames_sent=self._frames_taken,
            frames_dropped=self._frames_dropped,
            frames_received=self._frames_received,
            underruns=self._underruns,
            frames_discarded=self._frames_discarded,
        )

    # ------------------------------------------------------------ owner thread

    def dtmf(self, digit: str, duration_ms: int) -> None:
        if self.ended is None:
            self._outbound.put(Dtmf(digit, duration_ms))

    def end(self, reason: EndReason, detail: str = "") -> None:
        if self.ended is None:
            self.ended = Ended(reason, detail)
            self._outbound.put(self.ended)
