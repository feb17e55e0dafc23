"""Live call audio benchmark (printed by `make bench`): SipStreamCallAudio's loop latency and CPU.

1. Loop latency at 16 kHz. A real `sip-worker` (set up as the operator deploys it: JSON logs,
   metrics on, a registered session) in a call to `sipp -sn uas -rtp_echo` (PCMU), one TALK
   stream (take_over) at 16 kHz. This client (the minimal one: requests from a SimpleQueue,
   responses read on a thread) sends silence frames paced at 20 ms and, every 500 ms, one 20 ms
   1 kHz click frame; the stream's received audio (the caller only: sipp's echo of what the
   stream sent) is watched for the first loud frame after each click. Measured: client send ->
   client receive, which covers gRPC both ways, the wait in the worker's playback buffer for the
   bridge's next tick, the bridge, RTP to sipp and back, and the hand-over to the stream. Floor,
   in the same run: bench/bare_audio_loop.py (its own process), a bare PJSUA2 AudioMediaPort
   wired both ways to a call to the same UAS at 16 kHz, the click handed over in
   onFrameRequested and the first loud frame timed in onFrameReceived, no gRPC. Worker and bare
   rounds alternate, 10 clicks each after 1 s of silence, each round a call of its own (the
   worker's: StartCall, the stream, EndCall). Targets: worker p50 <= bare p50 + 20 ms (audio
   from outside the tick waits 0-20 ms for the next one), worker p99 <= bare p99 + 40 ms; with
   30 clicks, p99 is the largest value. Printed without a target: the same for a call's second
   stream, opened 5 s after its first one closed (while a call has no stream, nobody pulls its
   received audio from the jitter buffer, which the next stream then meets as delay).
2. CPU. 20 concurrent calls, each its own `sip-worker` (one call per worker process, all ports
   free ones on 127.0.0.1), to one `sipp -sn uas -rtp_echo`. Each call is measured in two
   states, in rounds ordered WAV, streams, streams, WAV (so that drift hits both alike): playing
   a long tone sent with PlayWavFiles, no streams; and streaming at 16 kHz, a LISTEN and a TALK
   stream (take_over, which pauses the WAV) per call, the TALK stream fed a tone paced at 20 ms
   after a lead of 10 frames (200 ms, as a TTS client runs ahead of the call), both streams read
   to the end; a mark after the last frame ends the utterance, then the client half-closes.
   Measured: CPU seconds (psutil cpu_times, user + system, all threads) of the 20 worker
   processes over the same 10 s wall-clock window, per call. Targets: ratio streaming / WAV
   <= 2.0, and 0 frames_dropped and 0 underruns in the final stats (the one sent with `ended`)
   of every stream, while the clients keep up (their pacing never later than the lead, nothing
   dropped for reading slowly). The clients are asyncio (grpc.aio), in CLIENT_PROCESSES = 2
   processes of their own, each one event loop for half the calls: one process for all 40
   streams takes only about 0.2 cores, but the workers keep both cores of this box near full,
   and one loop's pacing then ran up to 110 ms late in a trial (two: 30 ms). Printed too: the
   CPU of the clients, of this process, of sipp and of every other process on the box (load
   from elsewhere that disturbs the run), how late the pacing ran, and how many TALK frames were
   in flight to the worker when its stats were made. Floor, in the same part once the workers
   have stopped: bench/bare_audio_stream.py, CALLS bare PJSUA2 processes, one call each to the
   same UAS, each with the two 16 kHz bridge ports of a LISTEN and a TALK stream wired as the
   worker wires them (received frames copied out with the worker's fast read, the TALK port
   handing over a tone), the frames passed through deques to and from a second Python thread,
   no gRPC and none of our code; against the same processes playing the WAV with an
   AudioMediaPlayer; BARE_ROUNDS rounds, measured alike (ordered as the workers' rounds: a
   worker keeps its stream ports after its first streams, and the bridge calls a registered
   port every tick, so the last WAV window has them idle, in both). Printed without a target:
   the bare ratio streaming / WAV beside the worker's (what any design on PJSUA2's Python
   bindings with per-frame callbacks costs), and the worker's streaming CPU per call over the
   bare one.

Everything runs on 127.0.0.1 with free ports; every process started here is stopped at the end,
on errors too. `--help` lists the knobs for shorter runs.
"""

import argparse
import asyncio
import io
import json
import math
import multiprocessing
import os
import queue
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from google.protobuf import empty_pb2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from audio_clicks import FRAME_S, MAX_LOOP_S, click_frame, is_loud, loop_latencies  # noqa: E402
from processes import echo_far_end, registrar, stopped_at_exit, wait_serving  # noqa: E402

from ondewo.sip import sip_pb2, sip_pb2_grpc  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from tests.support.sipp import PHONE_RTP_PORTS, free_media_ports  # noqa: E402

SIP_WORKER = Path(sys.executable).parent / "sip-worker"
BARE_LOOP = REPO / "bench" / "bare_audio_loop.py"
BARE_STREAM = REPO / "bench" / "bare_audio_stream.py"
ACCOUNT_USER = "bench"
ACCOUNT_PASSWORD = "bench-secret"
RATE = 16000
FRAME_BYTES = RATE // 50 * 2
# Part 1: rounds of clicks, worker and bare alternating.
LOOP_ROUNDS = 3
CLICKS_PER_ROUND = 10
CLICK_INTERVAL_S = 0.5
SILENCE_FIRST_S = 1.0
# Printed without a target: the loop of a stream opened this long after the call's previous
# stream closed (the call's received audio then waits in its jitter buffer, see the docstring).
IDLE_CALL_S = 5.0
# Part 2.
CALLS = 20
CPU_ROUNDS = 2  # each one WAV window and one streaming window
# The floor's, alike: its last WAV window, as the workers', has the stream ports idle.
BARE_ROUNDS = 2
WINDOW_S = 10.0
SETTLE_S = 1.0  # after a change of state, before a window opens
TALK_LEAD_FRAMES = 10
CLIENT_PROCESSES = 2
WAV_SECONDS = 90.0  # heard only while no TALK stream is connected
Status = sip_pb2.SipStatus
Request = sip_pb2.SipCallAudioRequest
LISTEN = sip_pb2.SIP_CALL_AUDIO_MODE_LISTEN
TALK = sip_pb2.SIP_CALL_AUDIO_MODE_TALK
# A channel's first connect fails while the worker starts; keep gRPC's reconnect backoff short.
EAGER_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 50),
]


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    grpc_port: int
    log_path: Path
    channel: grpc.Channel
    stub: sip_pb2_grpc.SipStub

    def status(self) -> Any:
        return self.stub.GetSipStatus(empty_pb2.Empty(), timeout=10)

    def wait_status(self, *types: int, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status.status_type in types:
                return status
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                name = Status.StatusType.Name(status.status_type)
                raise RuntimeError(f"worker {self.grpc_port}: still {name}; log:\n{tail}")
            time.sleep(0.05)


def start_workers(
    stack: ExitStack, count: int, redis_url: str, registrar_port: int, workdir: Path
) -> list[Worker]:
    """`count` workers with registered sessions, started at once; stopped with `stack`."""
    processes = stack.enter_context(stopped_at_exit())
    environment = {**os.environ, "SIP_WORKER_PASSWORD": ACCOUNT_PASSWORD}
    workers = []
    for _ in range(count):
        grpc_port = free_port()
        log_path = workdir / f"worker-{grpc_port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    *(str(SIP_WORKER), "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port)),
                    *("--sip-port", "0", "--rtp-port", str(free_media_ports(PHONE_RTP_PORTS))),
                    *("--redis-url", redis_url, "--session-key", f"bench-{grpc_port}"),
                    *("--start-session", "--account", f"{ACCOUNT_USER}@127.0.0.1:{registrar_port}"),
                    # As the operator deploys workers.
                    *("--log-format", "json", "--metrics-port", str(free_port())),
                    *("--shutdown-grace", "5"),
                ],
                env=environment,
                stdout=log,
                stderr=log,
            )
        processes.append(process)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=EAGER_RECONNECT)
        stack.callback(channel.close)
        workers.append(Worker(process, grpc_port, log_path, channel, sip_pb2_grpc.SipStub(channel)))
    for worker in workers:
        wait_serving(worker.channel, worker.process, 60.0)
    for worker in workers:
        worker.wait_status(Status.ready)
    return workers


def start_calls(workers: list[Worker], uas_port: int) -> None:
    callee = f"sip:service@127.0.0.1:{uas_port}"
    for worker in workers:
        worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=callee), timeout=10)
    for worker in workers:
        status = worker.wait_status(Status.outgoing_call_connected, Status.outgoing_call_failed)
        if status.status_type != Status.outgoing_call_connected:
            raise RuntimeError(f"call failed: {status.description}")
    time.sleep(0.2)  # media comes with the answer; let the bridge see it


def end_calls(workers: list[Worker], wait: bool = False) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    for worker in workers if wait else ():
        worker.wait_status(Status.outgoing_call_finished)


def _config(mode: int, stream_id: str) -> Any:
    return Request(
        config=sip_pb2.SipCallAudioConfig(
            mode=mode,  # type: ignore[arg-type]
            sample_rate_hz=RATE,
            frame_ms=20,
            take_over=mode == TALK,
            stream_id=stream_id,
        )
    )


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _target_line(name: str, value: float, target: float, unit: str, shown: str = "") -> str:
    verdict = "ok" if value <= target else "MISSED"
    shown = shown or f"{value:8.2f}{unit}"
    return f"  {name:<44} {shown}  (target <= {target:g}{unit}: {verdict})"


# ---------------------------------------------------------------- 1. loop latency


@dataclass
class LoopRound:
    latencies_ms: list[float]
    clicks: int
    final_stats: Any = None
    max_late_ms: float = 0.0


class _TalkClient:
    """One TALK stream, the minimal way: requests from a SimpleQueue, responses on a thread."""

    def __init__(self, stub: sip_pb2_grpc.SipStub) -> None:
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.requests.put(_config(TALK, "bench-loop"))
        self.loud_edges: list[float] = []
        self.started = threading.Event()
        self.marked = threading.Event()
        self.done = threading.Event()
        self.stats: Any = None
        self.ended: Any = None
        self.error: grpc.RpcError | None = None
        self._loud = False
        self._call = stub.SipStreamCallAudio(iter(self.requests.get, None), timeout=120)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self._call:
                now = time.perf_counter()
                kind = response.WhichOneof("response")
                if kind == "audio":
                    loud = is_loud(response.audio.pcm_s16le)
                    if loud and not self._loud:
                        self.loud_edges.append(now)
                    self._loud = loud
                elif kind == "started":
                    self.started.set()
                elif kind == "stats":
                    self.stats = response.stats
                elif kind == "mark":
                    self.marked.set()
                elif kind == "ended":
                    self.ended = response.ended
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.done.set()

    def close(self) -> None:
        self.requests.put(None)
        if not self.done.wait(10) or self.error is not None:
            raise RuntimeError(f"the TALK stream did not end well: {self.error}")


def worker_loop_round(worker: Worker, clicks: int) -> LoopRound:
    """Silence paced at 20 ms, a click every CLICK_INTERVAL_S after SILENCE_FIRST_S."""
    client = _TalkClient(worker.stub)
    if not client.started.wait(10):
        raise RuntimeError(f"the TALK stream did not start: {client.error}")
    click, silence = click_frame(RATE), b"\0" * FRAME_BYTES
    first = round(SILENCE_FIRST_S / FRAME_S)
    every = round(CLICK_INTERVAL_S / FRAME_S)
    total = first + clicks * every + round(MAX_LOOP_S / FRAME_S)
    sent: list[float] = []
    max_late = 0.0
    start = time.perf_counter()
    for number in range(total):
        due = start + number * FRAME_S
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        is_click = number >= first and (number - first) % every == 0 and len(sent) < clicks
        now = time.perf_counter()
        max_late = max(max_late, now - due)
        if is_click:
            sent.append(now)
        frame = sip_pb2.SipCallAudioFrame(pcm_s16le=click if is_click else silence)
        frame.sequence = number + 1
        client.requests.put(Request(audio=frame))
    client.requests.put(Request(mark="end"))
    client.marked.wait(5)
    client.close()
    return LoopRound(
        loop_latencies(sent, client.loud_edges), len(sent), client.stats, max_late * 1000.0
    )


def bare_loop_round(uas_port: int, clicks: int) -> LoopRound:
    result = subprocess.run(
        [
            *(sys.executable, str(BARE_LOOP), "--target", f"sip:service@127.0.0.1:{uas_port}"),
            *("--rate", str(RATE), "--clicks", str(clicks)),
            *("--interval", str(CLICK_INTERVAL_S), "--warmup", str(SILENCE_FIRST_S)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    output = json.loads(result.stdout.strip().splitlines()[-1])
    return LoopRound(output["loop_ms"], output["clicks"])


def bench_loop(stack: ExitStack, redis_url: str, registrar_port: int, workdir: Path) -> None:
    uas_port = echo_far_end(stack, workdir / "sipp").port
    (worker,) = start_workers(stack, 1, redis_url, registrar_port, workdir)
    worker_rounds: list[LoopRound] = []
    bare_rounds: list[LoopRound] = []

    def worker_round(idle_s: float = 0.0) -> LoopRound:
        """A fresh call per round; with `idle_s`, the measured stream is the call's second,
        opened `idle_s` after a first one (1 s of silence) closed."""
        start_calls([worker], uas_port)
        if idle_s:
            worker_loop_round(worker, 0)
            time.sleep(idle_s)
        try:
            return worker_loop_round(worker, CLICKS_PER_ROUND)
        finally:
            end_calls([worker], wait=True)

    for number in range(LOOP_ROUNDS):
        if number % 2:
            bare_rounds.append(bare_loop_round(uas_port, CLICKS_PER_ROUND))
            worker_rounds.append(worker_round())
        else:
            worker_rounds.append(worker_round())
            bare_rounds.append(bare_loop_round(uas_port, CLICKS_PER_ROUND))
    idle_round = worker_round(IDLE_CALL_S)

    def summary(rounds: list[LoopRound]) -> tuple[list[float], int]:
        return [ms for r in rounds for ms in r.latencies_ms], sum(r.clicks for r in rounds)

    worker_ms, worker_clicks = summary(worker_rounds)
    bare_ms, bare_clicks = summary(bare_rounds)
    print(
        f"1. loop latency at {RATE} Hz, PCMU call to sipp -rtp_echo "
        f"({LOOP_ROUNDS} alternating rounds of {CLICKS_PER_ROUND} clicks)"
    )
    if not worker_ms or not bare_ms:
        print(f"  clicks heard back: worker {len(worker_ms)}, bare {len(bare_ms)}: MISSED")
        return
    rows = (
        ("worker: client send -> client receive", worker_ms, worker_clicks),
        ("bare: onFrameRequested -> onFrameReceived", bare_ms, bare_clicks),
    )
    for name, values, clicks in rows:
        print(
            f"  {name:<44} p50 {_percentile(values, 0.5):6.1f} ms  "
            f"p99 {_percentile(values, 0.99):6.1f} ms  max {max(values):6.1f} ms  "
            f"(heard {len(values)}/{clicks})"
        )
    print(
        "  per round p50 worker/bare ms (the TALK stream's underruns): "
        + "  ".join(
            f"{statistics.median(w.latencies_ms or [math.nan]):.1f}/"
            f"{statistics.median(b.latencies_ms or [math.nan]):.1f}"
            f" ({w.final_stats.underruns if w.final_stats else '?'})"
            for w, b in zip(worker_rounds, bare_rounds, strict=True)
        )
    )
    p50_over = _percentile(worker_ms, 0.5) - _percentile(bare_ms, 0.5)
    p99_over = _percentile(worker_ms, 0.99) - _percentile(bare_ms, 0.99)
    print(_target_line("worker p50 - bare p50", p50_over, 20.0, " ms", f"{p50_over:+8.1f} ms"))
    print(_target_line("worker p99 - bare p99", p99_over, 40.0, " ms", f"{p99_over:+8.1f} ms"))
    heard = "ok" if len(worker_ms) == worker_clicks else "MISSED"
    print(f"  every click heard back through the worker: {heard}")
    if idle_round.latencies_ms:
        print(
            f"  worker, a call's 2nd stream, {IDLE_CALL_S:g} s after its 1st (no target): "
            f"p50 {_percentile(idle_round.latencies_ms, 0.5):6.1f} ms  "
            f"max {max(idle_round.latencies_ms):6.1f} ms  "
            f"(heard {len(idle_round.latencies_ms)}/{idle_round.clicks})"
        )
    else:
        print(f"  worker, a call's 2nd stream, {IDLE_CALL_S:g} s after its 1st: no click heard")
    underruns = sum(r.final_stats.underruns for r in worker_rounds if r.final_stats)
    dropped = sum(r.final_stats.frames_dropped for r in worker_rounds if r.final_stats)
    late = max(r.max_late_ms for r in worker_rounds)
    print(
        f"  TALK streams' final stats: underruns {underruns}, frames_dropped {dropped}; "
        f"client pacing at most {late:.1f} ms late"
    )


# ---------------------------------------------------------------- 2. CPU


def tone_wav(seconds: float, frequency: float = 440.0) -> bytes:
    samples = np.arange(int(seconds * RATE)) / RATE
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * frequency * samples)).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(RATE)
        file.writeframes(pcm)
    return buffer.getvalue()


def tone_frames(frequency: float = 600.0) -> list[bytes]:
    """One second of tone in 20 ms frames (600 Hz: whole periods in a second, so it loops)."""
    return [
        frame.tobytes()
        for frame in np.split(
            (0.3 * 32767 * np.sin(2 * np.pi * frequency * np.arange(RATE) / RATE)).astype("<i2"),
            50,
        )
    ]


@dataclass
class _StreamResult:
    started: asyncio.Event = field(default_factory=asyncio.Event)
    marked: asyncio.Event = field(default_factory=asyncio.Event)
    frames: int = 0
    opened_at: float = 0.0
    ended_at: float = 0.0
    stats: Any = None
    ended: str = ""
    error: str = ""
    # TALK: frames written but not yet received by the worker, at each stats (the most), and
    # (seconds into the stream, that lag) at each stats that counted new underruns.
    max_lag: int = 0
    underrun_notes: list[tuple[float, int]] = field(default_factory=list)


class _Streaming:
    """One client process's streams: per call a TALK and a LISTEN stream, one pacing task."""

    def __init__(self, stubs: list[sip_pb2_grpc.SipStub]) -> None:
        self.talks = [stub.SipStreamCallAudio(timeout=600) for stub in stubs]
        self.listens = [stub.SipStreamCallAudio(timeout=600) for stub in stubs]
        self.results = {id(call): _StreamResult() for call in self.talks + self.listens}
        self.readers: list[asyncio.Task[None]] = []
        self.sender: asyncio.Task[None] | None = None
        self.stopping = False
        self.late_s: list[float] = []
        self.ticks = 0
        self.written = 0  # frames written to each TALK stream

    async def open(self) -> None:
        for number, (talk, listen) in enumerate(zip(self.talks, self.listens, strict=True)):
            await talk.write(_config(TALK, f"bench-talk-{number}"))
            await listen.write(_config(LISTEN, f"bench-listen-{number}"))
        for call in self.talks + self.listens:
            self.readers.append(asyncio.create_task(self._read(call, self.results[id(call)])))
        started = [result.started.wait() for result in self.results.values()]
        await asyncio.wait_for(asyncio.gather(*started), 20)
        self.sender = asyncio.create_task(self._pace())

    async def _read(self, call: Any, result: _StreamResult) -> None:
        try:
            async for response in call:
                kind = response.WhichOneof("response")
                if kind == "audio":
                    result.frames += 1
                elif kind == "stats":
                    if call in self.talks:
                        self._note_stats(result, response.stats)
                    result.stats = response.stats
                elif kind == "started":
                    result.opened_at = time.monotonic()
                    result.started.set()
                elif kind == "mark":
                    result.marked.set()
                elif kind == "ended":
                    result.ended_at = time.monotonic()
                    result.ended = sip_pb2.SipCallAudioEndReason.Name(response.ended.reason)
        except grpc.RpcError as error:
            result.error = f"{error.code().name}: {error.details()}"
        finally:
            result.started.set()
            result.marked.set()

    def _note_stats(self, result: _StreamResult, stats: Any) -> None:
        lag = self.written - stats.frames_received
        result.max_lag = max(result.max_lag, lag)
        if stats.underruns > (result.stats.underruns if result.stats else 0):
            result.underrun_notes.append((round(time.monotonic() - result.opened_at, 1), lag))

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        frames = tone_frames()
        for number in range(TALK_LEAD_FRAMES):
            await self._send_frame(frames, number)
        start = loop.time()
        while not self.stopping:
            self.ticks += 1
            due = start + self.ticks * FRAME_S
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send_frame(frames, TALK_LEAD_FRAMES + self.ticks)
            self.late_s.append(loop.time() - due)

    async def _send_frame(self, frames: list[bytes], number: int) -> None:
        frame = sip_pb2.SipCallAudioFrame(pcm_s16le=frames[number % len(frames)], sequence=number)
        request = Request(audio=frame)
        for talk in self.talks:
            await talk.write(request)
        self.written += 1

    async def close(self) -> dict[str, Any]:
        """Ends the utterance with a mark (no underrun at the end), half-closes, reads to the
        end; returns every stream's final stats."""
        self.stopping = True
        if self.sender is not None:
            await self.sender
        for talk in self.talks:
            await talk.write(Request(mark="end"))
        talk_results = [self.results[id(talk)] for talk in self.talks]
        await asyncio.wait_for(asyncio.gather(*(r.marked.wait() for r in talk_results)), 15)
        for call in self.talks + self.listens:
            await call.done_writing()
        await asyncio.wait_for(asyncio.gather(*self.readers), 15)
        streams = []
        for name, calls in (("talk", self.talks), ("listen", self.listens)):
            for call in calls:
                result = self.results[id(call)]
                stats = result.stats
                streams.append(
                    {
                        "kind": name,
                        "frames_per_s": result.frames
                        / max(1e-3, result.ended_at - result.opened_at),
                        "ended": result.ended,
                        "error": result.error,
                        "max_lag": result.max_lag,
                        "underrun_notes": result.underrun_notes,
                        "stats": {
                            field_name: getattr(stats, field_name) if stats else -1
                            for field_name in STATS_FIELDS
                        },
                    }
                )
        late_ms = [late * 1000.0 for late in self.late_s] or [0.0]
        return {"streams": streams, "late_ms": late_ms}


STATS_FIELDS = ("frames_sent", "frames_dropped", "frames_received", "underruns", "frames_discarded")


def client_process(ports: list[int], connection: Connection) -> None:
    """A client process (spawned): on "start" opens the streams of its calls and answers
    "started"; on "stop" closes them and answers with their results; ends on "quit"."""
    asyncio.run(_serve_client(ports, connection))


async def _serve_client(ports: list[int], connection: Connection) -> None:
    loop = asyncio.get_running_loop()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    stubs = [sip_pb2_grpc.SipStub(channel) for channel in channels]
    try:
        while await loop.run_in_executor(None, connection.recv) == "start":
            streaming = _Streaming(stubs)
            try:
                await streaming.open()
                connection.send(("started", None))
                await loop.run_in_executor(None, connection.recv)  # "stop"
                connection.send(("stopped", await streaming.close()))
            except Exception as error:
                connection.send(("error", repr(error)))
                for call in streaming.talks + streaming.listens:
                    call.cancel()
    finally:
        for channel in channels:
            await channel.close()


@dataclass
class Clients:
    processes: list[Any]
    connections: list[Connection]

    def ask(self, command: str, expect: str, timeout: float = 60.0) -> list[Any]:
        for connection in self.connections:
            connection.send(command)
        answers = []
        for connection in self.connections:
            if not connection.poll(timeout):
                raise RuntimeError(f"a client process did not answer {command!r} in time")
            kind, value = connection.recv()
            if kind != expect:
                raise RuntimeError(f"a client process answered {command!r} with {kind}: {value}")
            answers.append(value)
        return answers


@contextmanager
def client_processes(ports: list[int], count: int) -> Iterator[Clients]:
    context = multiprocessing.get_context("spawn")  # no fork of a process holding gRPC
    processes, connections = [], []
    try:
        for number in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=client_process, args=(ports[number::count], theirs), daemon=True
            )
            process.start()
            processes.append(process)
            connections.append(ours)
        yield Clients(processes, connections)
    finally:
        for connection in connections:
            with suppress(OSError):
                connection.send("quit")
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()


def _cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _others_cpu(ours: set[int]) -> dict[tuple[int, float], float]:
    """CPU seconds so far of every process on the box that is not this bench's or its
    children's, by (pid, create time)."""
    seen = {}
    for process in psutil.process_iter():
        try:
            if process.pid in ours:
                continue
            times = process.cpu_times()
            seen[(process.pid, process.create_time())] = times.user + times.system
        except psutil.Error:
            pass
    return seen


@dataclass
class Usage:
    """CPU seconds over one window."""

    wall: float
    workers: float
    clients: float
    bench: float
    sipp: float
    others: float  # every other process on the box (load that is not this benchmark's)


def measure(groups: dict[str, list[psutil.Process]], seconds: float) -> Usage:
    bench = psutil.Process()
    ours = {bench.pid, *(child.pid for child in bench.children(recursive=True))}
    before = {name: _cpu_s(processes) for name, processes in groups.items()}
    others, started = _others_cpu(ours), time.monotonic()
    time.sleep(seconds)
    after = {name: _cpu_s(processes) for name, processes in groups.items()}
    wall = time.monotonic() - started
    others_after = _others_cpu(ours)
    # A process that started in the window counts whole; one that ended in it is missed.
    others_spent = sum(cpu - others.get(key, 0.0) for key, cpu in others_after.items())
    spent = {name: after[name] - before[name] for name in groups}
    return Usage(wall, others=others_spent, **spent)


def bench_cpu(
    stack: ExitStack, redis_url: str, registrar_port: int, workdir: Path, client_count: int
) -> None:
    far_end = echo_far_end(stack, workdir / "sipp")
    assert far_end.process is not None
    uas_port, uas = far_end.port, far_end.process
    with ExitStack() as workers_part:  # the workers are gone before the floor runs
        worker_cpu = _workers_cpu(
            workers_part, uas_port, uas, redis_url, registrar_port, workdir, client_count
        )
    report_cpu(*worker_cpu, bare_cpu(stack, uas_port, uas, workdir))


def _workers_cpu(
    stack: ExitStack,
    uas_port: int,
    uas: subprocess.Popen[bytes],
    redis_url: str,
    registrar_port: int,
    workdir: Path,
    client_count: int,
) -> tuple[list[Usage], list[Usage], list[dict[str, Any]], int]:
    workers = start_workers(stack, CALLS, redis_url, registrar_port, workdir)
    clients = stack.enter_context(
        client_processes([w.grpc_port for w in workers], min(client_count, CALLS))
    )
    start_calls(workers, uas_port)
    stack.callback(end_calls, workers)
    wav = tone_wav(WAV_SECONDS)
    for worker in workers:
        worker.stub.PlayWavFiles(sip_pb2.PlayWavFilesRequest(wav_files=[wav]), timeout=30)
    groups = {
        "workers": [psutil.Process(w.process.pid) for w in workers],
        "clients": [psutil.Process(p.pid) for p in clients.processes],
        "bench": [psutil.Process()],
        "sipp": [psutil.Process(uas.pid)],
    }
    wav_usage: list[Usage] = []
    stream_usage: list[Usage] = []
    results: list[dict[str, Any]] = []
    for number in range(CPU_ROUNDS):
        for phase in ("wav", "streams") if number % 2 == 0 else ("streams", "wav"):
            if phase == "wav":
                time.sleep(SETTLE_S)
                wav_usage.append(measure(groups, WINDOW_S))
                continue
            clients.ask("start", "started")
            time.sleep(SETTLE_S)
            stream_usage.append(measure(groups, WINDOW_S))
            results += clients.ask("stop", "stopped")
    for worker in workers:
        if worker.status().call_audio_streams:
            raise RuntimeError(f"worker {worker.grpc_port} still reports audio streams")
    return wav_usage, stream_usage, results, len(clients.processes)


@dataclass
class BareCpu:
    wav: list[Usage]
    streams: list[Usage]
    # Per process and state left, bare_audio_stream.py's counters (see its docstring).
    counts: list[dict[str, Any]]


def _bare_line(process: subprocess.Popen[str], log_path: Path, timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"bare_audio_stream.py did not answer (exit {process.poll()}):\n{tail}")
    return line.strip()


def bare_cpu(
    stack: ExitStack, uas_port: int, uas: subprocess.Popen[bytes], workdir: Path
) -> BareCpu:
    """The floor: CALLS bare_audio_stream.py processes, one call each to the same UAS,
    measured as the workers are, in BARE_ROUNDS rounds (WAV, streaming; then the other way)."""
    wav_path = workdir / "bare-tone.wav"
    wav_path.write_bytes(tone_wav(WAV_SECONDS))
    processes: list[Any] = stack.enter_context(stopped_at_exit())
    logs = []
    for number in range(CALLS):
        log_path = workdir / f"bare-stream-{number}.log"
        with log_path.open("wb") as log:
            command = [sys.executable, str(BARE_STREAM), "--wav", str(wav_path)]
            command += ["--target", f"sip:service@127.0.0.1:{uas_port}", "--rate", str(RATE)]
            command += ["--rtp-port", str(free_media_ports(PHONE_RTP_PORTS))]
            processes.append(
                subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
                )
            )
        logs.append(log_path)

    def tell(command: str) -> list[dict[str, Any]]:
        for process in processes:
            process.stdin.write(command + "\n")
            process.stdin.flush()
        return [
            json.loads(_bare_line(p, log, 15.0)) for p, log in zip(processes, logs, strict=True)
        ]

    for process, log_path in zip(processes, logs, strict=True):
        if (line := _bare_line(process, log_path, 30.0)) != "READY":
            raise RuntimeError(f"bare_audio_stream.py said {line!r}, not READY")
    groups = {
        "workers": [psutil.Process(p.pid) for p in processes],
        "clients": [],
        "bench": [psutil.Process()],
        "sipp": [psutil.Process(uas.pid)],
    }
    result = BareCpu([], [], [])
    for number in range(BARE_ROUNDS):
        for phase in ("wav", "stream") if number % 2 == 0 else ("stream", "wav"):
            result.counts += tell(phase)
            time.sleep(SETTLE_S)
            (result.wav if phase == "wav" else result.streams).append(measure(groups, WINDOW_S))
    result.counts += tell("quit")
    for process, log_path in zip(processes, logs, strict=True):
        if process.wait(15) != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bare_audio_stream.py exited with {process.returncode}:\n{tail}")
    return result


def report_cpu(
    wav_usage: list[Usage],
    stream_usage: list[Usage],
    results: list[dict[str, Any]],
    clients: int,
    bare: BareCpu,
) -> None:
    def per_call(usage: list[Usage]) -> float:
        """Worker CPU seconds per call per WINDOW_S of wall clock."""
        return sum(u.workers for u in usage) / sum(u.wall for u in usage) * WINDOW_S / CALLS

    def cores(usage: list[Usage], name: str) -> float:
        return sum(getattr(u, name) for u in usage) / sum(u.wall for u in usage)

    wav, streams = per_call(wav_usage), per_call(stream_usage)
    print(
        f"2. CPU: {CALLS} calls, one sip-worker each, to sipp -rtp_echo, {RATE} Hz "
        f"({CPU_ROUNDS} rounds of {WINDOW_S:g} s windows per state; {clients} client processes)"
    )
    for name, value in (("WAV only (PlayWavFiles)", wav), ("streaming (LISTEN + TALK)", streams)):
        print(
            f"  worker CPU per call, {name:<26} {value:6.3f} s per {WINDOW_S:g} s "
            f"({value / WINDOW_S * 100:5.1f} % of a core)"
        )
    print(
        "  per round, streaming/WAV per call s: "
        + "  ".join(
            f"{s.workers / CALLS:.3f}/{w.workers / CALLS:.3f}"
            for s, w in zip(stream_usage, wav_usage, strict=True)
        )
    )
    print(_target_line("ratio streaming / WAV", streams / wav, 2.0, ""))
    bare_wav, bare_streams = per_call(bare.wav), per_call(bare.streams)
    print(
        f"  floor: {CALLS} bare PJSUA2 processes, no gRPC (bench/bare_audio_stream.py; "
        f"{len(bare.wav)} round(s) of {WINDOW_S:g} s windows per state)"
    )
    for name, value in (
        ("WAV only (AudioMediaPlayer)", bare_wav),
        ("streaming (2 ports + thread)", bare_streams),
    ):
        print(
            f"  bare CPU per call, {name:<30} {value:6.3f} s per {WINDOW_S:g} s "
            f"({value / WINDOW_S * 100:5.1f} % of a core)"
        )
    print(
        "  bare per round, streaming/WAV per call s: "
        + "  ".join(
            f"{s.workers / CALLS:.3f}/{w.workers / CALLS:.3f}"
            for s, w in zip(bare.streams, bare.wav, strict=True)
        )
    )
    print(
        f"  ratio streaming / WAV: worker {streams / wav:.2f}, bare {bare_streams / bare_wav:.2f}"
        " (the bare one is the floor for this stack; no target)"
    )
    print(
        f"  worker streaming CPU / bare streaming CPU, per call: {streams / bare_streams:.2f} "
        f"(+{streams - bare_streams:.3f} s per {WINDOW_S:g} s per call: gRPC and our code)"
    )
    usages = (
        ("WAV", "workers", wav_usage),
        ("streaming", "workers", stream_usage),
        ("bare WAV", "bare", bare.wav),
        ("bare streaming", "bare", bare.streams),
    )
    for title, who, usage in usages:
        print(
            f"  cores busy while {title:<14}: {who} {cores(usage, 'workers'):.2f}, "
            f"clients {cores(usage, 'clients'):.2f}, this process {cores(usage, 'bench'):.2f}, "
            f"sipp {cores(usage, 'sipp'):.2f}; other processes on the box "
            f"{cores(usage, 'others'):.2f}"
        )
    report_bare_counts(bare.counts)
    streams_seen = [s for result in results for s in result["streams"]]
    totals = {name: sum(s["stats"][name] for s in streams_seen) for name in STATS_FIELDS}
    missing = sum(1 for s in streams_seen if s["stats"]["frames_sent"] < 0)
    ends: dict[str, int] = {}
    for stream in streams_seen:
        reason = stream["ended"] or f"error {stream['error']}"
        ends[reason] = ends.get(reason, 0) + 1
    print(
        f"  {len(streams_seen)} streams' final stats, totals: "
        + ", ".join(f"{name} {value}" for name, value in totals.items())
        + (f"; {missing} without stats" if missing else "")
    )
    print(f"  streams ended: {ends}")
    for name in ("frames_dropped", "underruns"):
        worst = max((s["stats"][name] for s in streams_seen), default=0)
        verdict = "ok" if totals[name] == 0 and not missing else "MISSED"
        print(
            f"  {name} in every stream's final stats: 0 (total {totals[name]}, worst {worst}): "
            f"{verdict}"
        )
    late = [ms for result in results for ms in result["late_ms"]]
    lead_ms = TALK_LEAD_FRAMES * FRAME_S * 1000.0
    kept_up = max(late) < lead_ms and totals["frames_dropped"] == 0
    print(
        f"  clients' pacing late by p50 {_percentile(late, 0.5):.1f} ms, p99 "
        f"{_percentile(late, 0.99):.1f} ms, max {max(late):.1f} ms (lead {lead_ms:.0f} ms): "
        + ("the clients kept up" if kept_up else "the clients did NOT keep up")
    )
    talks = [s for s in streams_seen if s["kind"] == "talk"]
    print(
        "  TALK frames written but not yet received by the worker, at a stats, the most: "
        f"{max(s['max_lag'] for s in talks)}"
    )
    notes = [s["underrun_notes"] for s in talks if s["underrun_notes"]]
    if notes:
        print(f"  underruns seen in stats at (s into the stream, frames in flight): {notes}")
    fewest = min(s["frames_per_s"] for s in streams_seen)
    print(f"  audio frames received per stream per s, fewest {fewest:.1f} (50 expected)")


def report_bare_counts(counts: list[dict[str, Any]]) -> None:
    """Whether the floor did its work: frames per port per s, TALK underruns, drained."""
    streamed = [c for c in counts if c["state"] == "stream"]
    if not streamed:
        return
    rates = [port["received"] / c["seconds"] for c in streamed for port in c["ports"]]
    requested = [c["ports"][1]["requested"] / c["seconds"] for c in streamed]
    drained = [c["drained"] / c["seconds"] / 2 for c in streamed]
    underruns = sum(c["ports"][1]["underruns"] for c in streamed)
    print(
        f"  bare streaming: audio frames received per port per s, fewest {min(rates):.1f}; "
        f"TALK frames requested per s, fewest {min(requested):.1f}; drained per port per s, "
        f"fewest {min(drained):.1f}; TALK underruns {underruns} (50 per s expected, 0 underruns)"
    )
    idle = [c for c in counts if c["state"] == "wav" and c["ports"]]
    if idle:
        none = [port["none"] / c["seconds"] for c in idle for port in c["ports"]]
        print(
            f"  bare WAV with the ports idle: frames without audio per idle port per s, "
            f"fewest {min(none):.1f} (the bridge calls a registered port every tick)"
        )


def main() -> None:
    global LOOP_ROUNDS, CLICKS_PER_ROUND, CALLS, CPU_ROUNDS, WINDOW_S, BARE_ROUNDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "loop", "cpu"), default="all")
    parser.add_argument("--loop-rounds", type=int, default=LOOP_ROUNDS)
    parser.add_argument("--clicks", type=int, default=CLICKS_PER_ROUND, help="per round")
    parser.add_argument("--calls", type=int, default=CALLS)
    parser.add_argument("--cpu-rounds", type=int, default=CPU_ROUNDS)
    parser.add_argument("--bare-rounds", type=int, default=BARE_ROUNDS, help="the CPU floor's")
    parser.add_argument("--window", type=float, default=WINDOW_S, help="seconds")
    parser.add_argument("--client-processes", type=int, default=CLIENT_PROCESSES)
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    args = parser.parse_args()
    LOOP_ROUNDS, CLICKS_PER_ROUND = args.loop_rounds, args.clicks
    CALLS, CPU_ROUNDS, WINDOW_S = args.calls, args.cpu_rounds, args.window
    BARE_ROUNDS = args.bare_rounds

    began = time.monotonic()
    with ExitStack() as stack:
        if args.keep:
            workdir = Path(tempfile.mkdtemp(prefix="bench-audio-"))
            print(f"  (logs kept in {workdir})")
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-audio-")))
        redis_server = RedisServer(workdir / "redis")
        redis_server.start()
        stack.callback(redis_server.stop)
        registrar_port = registrar(stack, workdir / "sipp", ACCOUNT_USER, ACCOUNT_PASSWORD).port
        print(f"live call audio benchmark (SipStreamCallAudio, loopback, {os.cpu_count()} cores)")
        if args.part in ("all", "loop"):
            with ExitStack() as part:
                bench_loop(part, redis_server.url, registrar_port, workdir)
        if args.part in ("all", "cpu"):
            with ExitStack() as part:
                bench_cpu(part, redis_server.url, registrar_port, workdir, args.client_processes)
    print(f"  (whole benchmark: {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
