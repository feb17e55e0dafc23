"""The floor for live-audio CPU: a call's LISTEN + TALK streams on bare PJSUA2, no gRPC or worker.

Run by bench_call_audio.py (part 2), one process per call (PJSUA2 allows one endpoint per
process), the CPU of N of them measured as the workers' is. It calls `--target` (a `sipp -sn
uas -rtp_echo`, PCMU as the worker prefers it); the null sound device hears the caller
throughout, as in the worker. Then, told on stdin, one line each, it switches between:
- `wav`: an AudioMediaPlayer of `--wav` (created once, NO_LOOP, as the worker plays a file)
  is heard by the caller; nothing else;
- `stream`: two conference-bridge ports at `--rate` Hz wired as the worker wires a LISTEN and
  a TALK stream (caller -> both ports, TALK -> caller, TALK -> LISTEN; the player is then
  heard by nobody, so the bridge pauses it). Both ports copy each received frame out (read
  through the vector's data pointer, the worker's fast read) onto a deque of their own; the
  TALK port hands the bridge, in onFrameRequested, the next tone frame from a deque. A second
  Python thread, every 20 ms, drains both received deques and tops the TALK deque up to a
  lead of 10 frames: the hand-over to and from another thread any design needs (the worker's
  gRPC threads), without gRPC. The ports are created at the first `stream` and kept (as the
  worker's port pool keeps them): the bridge hands each one a frame every tick (one without
  audio while nothing is connected to it), so they cost CPU in later `wav` states too;
- `quit`: hangs up and exits.
The main thread polls PJSUA2 (libHandleEvents, 100 ms, as the worker's owner thread) and a
thread reads stdin. On stdout (what pjlib prints there goes to stderr): READY once the call is
up; after each command, one JSON object on one line, the counters of the state it left:
{"state", "seconds", per port "received" (audio frames), "none" (frames without audio),
"requested", "underruns" (TALK deque empty at a request), and "drained" (frames the second
thread took)}.
"""

import argparse
import ctypes
import json
import math
import os
import queue
import sys
import threading
import time
from array import array
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import pjsua2 as pj
from bare_endpoint import hang_up, start_call, start_endpoint

FRAME_S = 0.02
LEAD_FRAMES = 10
POLL_MS = 100
WORD = ctypes.sizeof(ctypes.c_void_p)


def _read_vector(vector: Any) -> bytes:
    """A ByteVector's bytes through its begin and end pointers (libstdc++'s std::vector, as
    the worker's `_read_vector_directly`; checked once by `_layout_ok`)."""
    base = int(vector.this)
    begin = ctypes.c_void_p.from_address(base).value or 0
    end = ctypes.c_void_p.from_address(base + WORD).value or 0
    return ctypes.string_at(begin, end - begin)


def _layout_ok() -> bool:
    probe = bytes(range(256)) * 2
    vector = pj.ByteVector(probe)
    base = int(vector.this)
    begin = ctypes.c_void_p.from_address(base).value or 0
    end = ctypes.c_void_p.from_address(base + WORD).value or 0
    return begin != 0 and end - begin == vector.size() and _read_vector(vector) == probe


def tone_frames(rate: int, frequency: float = 600.0) -> list[bytes]:
    """One second of tone in 20 ms frames (as the bench's TALK clients send)."""
    samples = array(
        "h", (int(0.3 * 32767 * math.sin(2 * math.pi * frequency * n / rate)) for n in range(rate))
    ).tobytes()
    size = rate // 50 * 2
    return [samples[start : start + size] for start in range(0, len(samples), size)]


@dataclass
class PortCounts:
    received: int = 0
    none: int = 0
    requested: int = 0
    underruns: int = 0


class _StreamPort(pj.AudioMediaPort):  # type: ignore[misc]
    """Both callbacks run on the bridge's clock thread; `active` is False while no stream
    holds the port (then, as the worker's idle port, it takes and gives nothing)."""

    def __init__(self, frame_bytes: int, talk: deque[bytes] | None) -> None:
        super().__init__()
        self.silence = b"\0" * frame_bytes
        self.received: deque[bytes] = deque()
        self.talk = talk
        self.active = False
        self.counts = PortCounts()

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        self.counts.requested += 1
        pcm = self.silence
        if self.active and self.talk is not None:
            try:
                pcm = self.talk.popleft()
            except IndexError:
                self.counts.underruns += 1
        frame.buf = pj.ByteVector(pcm)
        frame.size = len(pcm)
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:
            self.counts.none += 1
            if self.active:
                self.received.append(self.silence)
            return
        self.counts.received += 1
        if self.active:
            self.received.append(_read_vector(frame.buf))


class _Drainer:
    """The second thread: every 20 ms takes what the ports received and tops the TALK deque
    up to LEAD_FRAMES."""

    def __init__(self, ports: list[_StreamPort], talk: deque[bytes], tone: list[bytes]) -> None:
        self.ports, self.talk, self.tone = ports, talk, tone
        self.drained = 0
        self._next = 0
        self._stop = threading.Event()
        self._top_up()  # the lead is there before the TALK port is first asked
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _top_up(self) -> None:
        while len(self.talk) < LEAD_FRAMES:
            self.talk.append(self.tone[self._next % len(self.tone)])
            self._next += 1

    def _run(self) -> None:
        while not self._stop.wait(FRAME_S):
            for port in self.ports:
                while True:
                    try:
                        port.received.popleft()
                    except IndexError:
                        break
                    self.drained += 1
            self._top_up()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.drained


class Bare:
    """The call and what is wired to it; main thread only."""

    def __init__(self, endpoint: pj.Endpoint, audio: Any, wav: str, rate: int) -> None:
        self.endpoint, self.audio, self.rate = endpoint, audio, rate
        self.player = pj.AudioMediaPlayer()
        self.player.createPlayer(wav, pj.PJMEDIA_FILE_NO_LOOP)
        self.talk: deque[bytes] = deque()
        self.tone = tone_frames(rate)
        self.ports: list[_StreamPort] = []
        self.drainer: _Drainer | None = None
        self.connections: list[tuple[Any, Any]] = []
        self.state = "idle"
        self.since = time.monotonic()

    def _make_ports(self) -> None:
        frame_bytes = self.rate // 50 * 2
        media_format = pj.MediaFormatAudio()
        media_format.init(pj.PJMEDIA_FORMAT_PCM, self.rate, 1, int(FRAME_S * 1e6), 16)
        for name, talk in (("listen", None), ("talk", self.talk)):
            port = _StreamPort(frame_bytes, talk)
            port.createPort(f"bare-{name}", media_format)
            self.ports.append(port)

    def switch(self, state: str) -> dict[str, Any]:
        """Leaves the current state (its counters are returned) and enters `state`."""
        drained = self.drainer.stop() if self.drainer else 0
        self.drainer = None
        for source, sink in reversed(self.connections):
            source.stopTransmit(sink)
        self.connections.clear()
        for port in self.ports:
            port.active = False
        left = {
            "state": self.state,
            "seconds": time.monotonic() - self.since,
            "ports": [asdict(port.counts) for port in self.ports],
            "drained": drained,
        }
        for port in self.ports:
            port.counts = PortCounts()
            port.received.clear()
        self.talk.clear()
        if state == "wav":
            self.connections.append((self.player, self.audio))
        elif state == "stream":
            if not self.ports:
                self._make_ports()
            listen, talk = self.ports
            self.connections += [
                (self.audio, listen),
                (self.audio, talk),
                (talk, self.audio),
                (talk, listen),
            ]
            for port in self.ports:
                port.active = True
            self.drainer = _Drainer(self.ports, self.talk, self.tone)
        for source, sink in self.connections:
            source.startTransmit(sink)
        self.state, self.since = state, time.monotonic()
        return left


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="SIP URI of the echoing UAS")
    parser.add_argument("--wav", required=True, help="the WAV file the `wav` state plays")
    parser.add_argument("--rate", type=int, default=16000, help="the ports' sample rate")
    parser.add_argument("--rtp-port", type=int, default=0)
    args = parser.parse_args()
    if not _layout_ok():
        sys.exit("this ByteVector's layout is not libstdc++'s: no fast read")
    # stdout is this program's answers alone: what pjlib prints there goes to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    endpoint, transport = start_endpoint()
    account, call = start_call(endpoint, transport, args.target, args.rtp_port)
    audio = call.getAudioMedia(-1)
    null_sink = endpoint.audDevManager().getPlaybackDevMedia()
    audio.startTransmit(null_sink)
    bare = Bare(endpoint, audio, args.wav, args.rate)
    commands: queue.SimpleQueue[str] = queue.SimpleQueue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("quit")

    threading.Thread(target=read_commands, daemon=True).start()
    print("READY", file=answers)
    while True:
        endpoint.libHandleEvents(POLL_MS)
        try:
            command = commands.get_nowait()
        except queue.Empty:
            continue
        if command not in ("wav", "stream", "quit"):
            sys.exit(f"unknown command {command!r}")
        print(json.dumps(bare.switch(command)), file=answers)
        if command == "quit":
            break
    audio.stopTransmit(null_sink)
    hang_up(endpoint, call)
    # The ports stay registered until libDestroy removes them from the bridge (as the worker
    # abandons its pool): freeing them first could race the bridge's last ticks.
    for port in bare.ports:
        port.__disown__()
    del bare, audio, null_sink, call
    account.shutdown()
    del account
    endpoint.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)


if __name__ == "__main__":
    main()
