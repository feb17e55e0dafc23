"""The floor for live-audio loop latency: a bare PJSUA2 AudioMediaPort, no gRPC, no worker.

Run by bench_call_audio.py in its own process (PJSUA2 allows one endpoint per process). It
calls `--target` (a `sipp -sn uas -rtp_echo`, PCMU as the worker prefers it), wires a
conference-bridge port at `--rate` Hz both ways to the call (port -> call, call -> port), and
lets the bridge's clock drive it: `onFrameRequested` hands over silence and, every
`--interval` seconds, one 20 ms 1 kHz click; `onFrameReceived` notes when a loud frame follows
a quiet one. After `--warmup` seconds of silence, `--clicks` clicks are sent. Prints one JSON
object on its last line: {"loop_ms": [...], "clicks": n, "cadence_ms": [...]}, where loop_ms
holds, per click heard back, click handed over -> first loud frame received, and cadence_ms
the gaps between `onFrameReceived` calls.
"""

import argparse
import itertools
import json
import time

import pjsua2 as pj
from audio_clicks import FRAME_S, MAX_LOOP_S, click_frame, is_loud, loop_latencies
from bare_endpoint import hang_up, start_call, start_endpoint


class _LoopPort(pj.AudioMediaPort):  # type: ignore[misc]
    """Both callbacks run on the bridge's clock thread."""

    def __init__(self, rate: int) -> None:
        super().__init__()
        self.click = click_frame(rate)
        self.silence = b"\0" * len(self.click)
        self.next_click: float | None = None
        self.clicks_left = 0
        self.interval = 0.5
        self.sent: list[float] = []
        self.loud_edges: list[float] = []
        self.received: list[float] = []
        self._loud = False

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        now = time.perf_counter()
        pcm = self.silence
        if self.next_click is not None and self.clicks_left > 0 and now >= self.next_click:
            pcm = self.click
            self.sent.append(now)
            self.clicks_left -= 1
            self.next_click += self.interval
        frame.buf = pj.ByteVector(pcm)
        frame.size = len(pcm)
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        now = time.perf_counter()
        self.received.append(now)
        loud = frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and is_loud(bytes(frame.buf))
        if loud and not self._loud:
            self.loud_edges.append(now)
        self._loud = loud


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="SIP URI of the echoing UAS")
    parser.add_argument("--rate", type=int, default=16000, help="the port's sample rate")
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between clicks")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of silence first")
    args = parser.parse_args()

    endpoint, transport = start_endpoint()
    account, call = start_call(endpoint, transport, args.target)
    port = _LoopPort(args.rate)
    media_format = pj.MediaFormatAudio()
    media_format.init(pj.PJMEDIA_FORMAT_PCM, args.rate, 1, int(FRAME_S * 1e6), 16)
    port.createPort("bench-loop", media_format)
    audio = call.getAudioMedia(-1)
    port.startTransmit(audio)
    audio.startTransmit(port)
    port.interval = args.interval
    port.clicks_left = args.clicks
    port.next_click = time.perf_counter() + args.warmup
    end = port.next_click + args.clicks * args.interval + MAX_LOOP_S
    while time.perf_counter() < end:
        endpoint.libHandleEvents(10)
    audio.stopTransmit(port)
    port.stopTransmit(audio)

    hang_up(endpoint, call)
    sent, edges, received = list(port.sent), list(port.loud_edges), list(port.received)
    del port, audio, call
    account.shutdown()
    del account
    endpoint.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)
    cadence = [(b - a) * 1000.0 for a, b in itertools.pairwise(received)]
    result = {"loop_ms": loop_latencies(sent, edges), "clicks": len(sent), "cadence_ms": cadence}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
