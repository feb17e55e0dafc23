"""Worker benchmark (printed by `make bench`): call setup, RPC overhead, start-up and memory.

1. Call setup: StartCall -> outgoing_call_connected from the status timestamps, through a real
   `sip-worker` set up as the operator deploys it (every status logged at INFO as JSON, metrics
   on), against a bare PJSUA2 makeCall -> CONFIRMED (bench/bare_pjsua2_caller.py, its own
   process) to the same sipp UAS in the same run. `outgoing_call_initiated` carries the time
   the worker took the StartCall, so the span covers the hand-off to the SIP thread, the work
   before the INVITE and the SIP exchange. Both get one unmeasured warm-up call, then the same
   number of calls in alternating rounds. Targets: ratio <= 1.5, worker median <= 5 ms. Also
   printed, without a target: the same from the moment this client sends the StartCall, which
   adds gRPC's way in (the same for any gRPC service; item 2 compares it with health Check).
2. GetSipStatus p50/p99 over 10,000 calls against grpc.health.v1 Check on the same server
   (interleaved blocks, one channel). Target ratio <= 1.5.
3. Idle RSS of the worker and time from process start to health SERVING, with the worker's
   defaults and with --metrics-port set (as the operator deploys workers: prometheus_client
   is only loaded then). Targets <= 50 MB and <= 500 ms. Against it, the same in the same run
   for bench/bare_stack.py: the fixed stack alone (Python, grpcio with health and reflection,
   a started PJSUA2 endpoint, redis-py), none of the worker's code: the floor any worker on
   this stack starts from (printed as 4).
5. What one call costs, for sizing a node (no target): the worker's CPU (fraction of one core)
   and RSS over CALL_SAMPLE_S idle with its session ready, then as long in a connected call
   with RTP both ways (the sipp UAS echoes the worker's stream).

Everything runs on 127.0.0.1 with free ports; every process started here is stopped at the end.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import grpc
import psutil
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from processes import echo_far_end, registrar, running, wait_serving  # noqa: E402

from ondewo.sip import sip_pb2, sip_pb2_grpc  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from tests.support.sipp import PHONE_RTP_PORTS, free_media_ports  # noqa: E402

SIP_WORKER = Path(sys.executable).parent / "sip-worker"
# Worker and bare calls alternate in rounds, so that load from elsewhere hits both alike.
ROUNDS = 5
CALLS_PER_ROUND = 10
CALLS = ROUNDS * CALLS_PER_ROUND
PACE_S = 0.05
POLL_S = 0.02
SETUP_QUIET_S = 0.03
STATUS_RPCS = 10_000
STARTS = 5
CALL_SAMPLE_S = 10.0
# How the operator runs workers (logging at the default INFO); the metrics port follows.
DEPLOYED_FLAGS = ("--log-format", "json", "--metrics-port")
ACCOUNT_USER = "bench"
ACCOUNT_PASSWORD = "bench-secret"
Status = sip_pb2.SipStatus
# A channel's first connect fails while the worker starts; gRPC's default reconnect backoff
# (1 s and growing) would be measured instead of the worker's start-up.
EAGER_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 20),
]


def _worker_args(redis_url: str, grpc_port: int, *extra: str) -> list[str]:
    return [
        str(SIP_WORKER),
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--sip-port",
        "0",
        "--rtp-port",
        str(free_media_ports(PHONE_RTP_PORTS)),
        "--redis-url",
        redis_url,
        *extra,
    ]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ratio_line(name: str, value: float, target: float, unit: str = "") -> str:
    verdict = "ok" if value <= target else "MISSED"
    return f"  {name:<48} {value:8.2f}{unit}  (target <= {target}{unit}: {verdict})"


Startup = dict[str, list[float]]


def bench_startup(redis_url: str, workdir: Path) -> tuple[Startup, Startup, Startup]:
    """Time from Popen to SERVING ("start_ms"), and RSS and USS (private memory) after a second
    idle, for `STARTS` workers with defaults, as many with metrics and as many bare stacks,
    alternating."""
    plain: Startup = {"start_ms": [], "rss_mb": [], "uss_mb": []}
    metered: Startup = {"start_ms": [], "rss_mb": [], "uss_mb": []}
    bare: Startup = {"start_ms": [], "rss_mb": [], "uss_mb": []}
    for _ in range(STARTS):
        _start_once(redis_url, workdir, plain)
        _start_once(redis_url, workdir, metered, "--metrics-port", str(free_port()))
        _start_bare_stack(redis_url, bare)
    return plain, metered, bare


def _start_once(redis_url: str, workdir: Path, results: Startup, *extra: str) -> None:
    port = free_port()
    started = time.perf_counter()
    with (
        (workdir / "startup.log").open("ab") as log,
        running(_worker_args(redis_url, port, *extra), stdout=log, stderr=log) as process,
        grpc.insecure_channel(f"127.0.0.1:{port}", options=EAGER_RECONNECT) as channel,
    ):
        wait_serving(channel, process, 30.0, poll_s=0.002)
        results["start_ms"].append((time.perf_counter() - started) * 1000.0)
        _measure_idle_memory(process, results)


def _start_bare_stack(redis_url: str, results: Startup) -> None:
    port = free_port()
    started = time.perf_counter()
    command = [sys.executable, str(REPO / "bench" / "bare_stack.py")]
    with (
        running(
            [*command, "--grpc-port", str(port), "--redis-url", redis_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ) as process,
        grpc.insecure_channel(f"127.0.0.1:{port}", options=EAGER_RECONNECT) as channel,
    ):
        wait_serving(channel, process, 30.0, poll_s=0.002)
        results["start_ms"].append((time.perf_counter() - started) * 1000.0)
        _measure_idle_memory(process, results)


def _measure_idle_memory(process: subprocess.Popen[bytes], results: Startup) -> None:
    time.sleep(1.0)
    memory = psutil.Process(process.pid).memory_full_info()
    results["rss_mb"].append(memory.rss / 2**20)
    results["uss_mb"].append(memory.uss / 2**20)


def _wait_status(
    stub: sip_pb2_grpc.SipStub, accept: Callable[[Status], bool], timeout: float = 10.0
) -> Status:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = stub.GetSipStatus(empty_pb2.Empty(), timeout=5)
        if accept(status):
            return status
        # The timestamps measure; polling gently keeps this client off the worker's CPU.
        time.sleep(POLL_S)
    raise RuntimeError("the expected status did not come in time")


def _seconds(status: Status) -> float:
    return float(status.timestamp.ToNanoseconds()) / 1e9


def bench_calls(
    stub: sip_pb2_grpc.SipStub, uas_port: int, spans: dict[str, list[float]], calls: int
) -> None:
    """Per call, in ms, appended to `spans`: client StartCall sent -> outgoing_call_initiated
    (gRPC's way in: `initiated` carries the time the worker took the request), initiated ->
    connected (the worker: hand-off, checks, makeCall, the SIP exchange), and sent ->
    connected."""
    callee = f"sip:service@127.0.0.1:{uas_port}"
    done = (Status.outgoing_call_connected, Status.outgoing_call_failed)
    for _ in range(calls):
        sent = time.time()
        stub.StartCall(sip_pb2.StartCallRequest(callee_id=callee), timeout=10)
        # Stay quiet while the call is set up: the timestamps measure, the client need not.
        time.sleep(SETUP_QUIET_S)
        outcome = _wait_status(stub, lambda s: s.status_type in done)
        if outcome.status_type != Status.outgoing_call_connected:
            raise RuntimeError(f"call failed: {outcome.description}")
        history = stub.GetSipStatusHistory(empty_pb2.Empty(), timeout=10).status_history
        initiated = next(
            s for s in reversed(history) if s.status_type == Status.outgoing_call_initiated
        )
        spans["grpc"].append((_seconds(initiated) - sent) * 1000.0)
        spans["worker"].append((_seconds(outcome) - _seconds(initiated)) * 1000.0)
        spans["total"].append((_seconds(outcome) - sent) * 1000.0)
        stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
        _wait_status(stub, lambda s: s.status_type == Status.outgoing_call_finished)
        time.sleep(PACE_S)


def bench_bare(uas_port: int) -> list[float]:
    result = subprocess.run(
        [
            *(sys.executable, str(REPO / "bench" / "bare_pjsua2_caller.py")),
            *("--target", f"sip:service@127.0.0.1:{uas_port}", "--calls", str(CALLS_PER_ROUND)),
            *("--pace", str(PACE_S), "--warmup", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    setup_ms: list[float] = json.loads(result.stdout.strip().splitlines()[-1])["setup_ms"]
    return setup_ms


def bench_rpcs(channel: grpc.Channel) -> tuple[list[float], list[float]]:
    sip = sip_pb2_grpc.SipStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    empty = empty_pb2.Empty()
    check = health_pb2.HealthCheckRequest(service="")
    status_us: list[float] = []
    health_us: list[float] = []
    block = 500
    for _ in range(50):  # warm-up
        sip.GetSipStatus(empty)
        health.Check(check)
    for _ in range(STATUS_RPCS // block):
        for _ in range(block):
            started = time.perf_counter()
            sip.GetSipStatus(empty)
            status_us.append((time.perf_counter() - started) * 1e6)
        for _ in range(block):
            started = time.perf_counter()
            health.Check(check)
            health_us.append((time.perf_counter() - started) * 1e6)
    return status_us, health_us


def _cpu_and_rss(pid: int, seconds: float) -> tuple[float, float]:
    """The process's CPU use over `seconds` (cores) and its RSS at the end (MB)."""
    process = psutil.Process(pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(seconds)
    used = sum(process.cpu_times()[:2]) - before
    return used / seconds, process.memory_info().rss / 2**20


def bench_call_cost(stub: sip_pb2_grpc.SipStub, uas_port: int, pid: int) -> dict[str, float]:
    idle_cpu, idle_rss = _cpu_and_rss(pid, CALL_SAMPLE_S)
    stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"sip:echo@127.0.0.1:{uas_port}"), timeout=10)
    _wait_status(stub, lambda s: s.status_type == Status.outgoing_call_connected)
    call_cpu, call_rss = _cpu_and_rss(pid, CALL_SAMPLE_S)
    stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    _wait_status(stub, lambda s: s.status_type == Status.outgoing_call_finished)
    return {"idle_cpu": idle_cpu, "idle_rss": idle_rss, "call_cpu": call_cpu, "call_rss": call_rss}


def main() -> None:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-worker-")))
        redis_server = RedisServer(workdir / "redis")
        redis_server.start()
        stack.callback(redis_server.stop)

        plain_start, metered_start, bare_start = bench_startup(redis_server.url, workdir)

        uas_port = echo_far_end(stack, workdir / "sipp").port
        registrar_port = registrar(
            stack, workdir / "sipp", ACCOUNT_USER, ACCOUNT_PASSWORD, dialogs=1
        ).port
        grpc_port = free_port()
        log = stack.enter_context((workdir / "worker.log").open("wb"))
        environment = {**os.environ, "SIP_WORKER_PASSWORD": ACCOUNT_PASSWORD}
        account = f"{ACCOUNT_USER}@127.0.0.1:{registrar_port}"
        process = stack.enter_context(
            running(
                _worker_args(
                    redis_server.url,
                    grpc_port,
                    "--start-session",
                    "--account",
                    account,
                    "--session-key",
                    "bench",
                    *DEPLOYED_FLAGS,
                    str(free_port()),
                ),
                env=environment,
                stdout=log,
                stderr=log,
            )
        )
        channel = stack.enter_context(
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=EAGER_RECONNECT)
        )
        wait_serving(channel, process, 30.0, poll_s=0.002)
        stub = sip_pb2_grpc.SipStub(channel)
        bench_calls(stub, uas_port, {"grpc": [], "worker": [], "total": []}, 1)  # warm-up
        spans: dict[str, list[float]] = {"grpc": [], "worker": [], "total": []}
        bare_ms: list[float] = []
        round_medians: list[tuple[float, float]] = []
        for number in range(ROUNDS):
            worker_before, bare_before = len(spans["worker"]), len(bare_ms)
            if number % 2:
                bare_ms += bench_bare(uas_port)
                bench_calls(stub, uas_port, spans, CALLS_PER_ROUND)
            else:
                bench_calls(stub, uas_port, spans, CALLS_PER_ROUND)
                bare_ms += bench_bare(uas_port)
            round_medians.append(
                (_median(spans["worker"][worker_before:]), _median(bare_ms[bare_before:]))
            )
        status_us, health_us = bench_rpcs(channel)
        call_cost = bench_call_cost(stub, uas_port, process.pid)

    worker_median = _median(spans["worker"])
    bare_median = _median(bare_ms)
    client_median = _median(spans["total"])
    status_p50, status_p99 = _percentile(status_us, 0.5), _percentile(status_us, 0.99)
    health_p50, health_p99 = _percentile(health_us, 0.5), _percentile(health_us, 0.99)
    print(f"worker benchmark ({CALLS} calls to a sipp UAS, {STATUS_RPCS} status RPCs, loopback)")
    print("1. call setup, medians")
    print(f"  worker initiated -> connected (status timestamps) {worker_median:6.2f} ms")
    print(f"  bare PJSUA2 makeCall -> CONFIRMED                {bare_median:6.2f} ms")
    print(f"  client StartCall sent -> connected               {client_median:6.2f} ms")
    print(f"    of which sent -> worker took it (gRPC way in)  {_median(spans['grpc']):6.2f} ms")
    print(
        "  per round, worker/bare ms: "
        + "  ".join(f"{worker:.2f}/{bare:.2f}" for worker, bare in round_medians)
    )
    print(_ratio_line("ratio worker / bare", worker_median / bare_median, 1.5))
    print(_ratio_line("worker median", worker_median, 5.0, " ms"))
    print(f"  ratio client-measured / bare (no target)          {client_median / bare_median:8.2f}")
    print("2. GetSipStatus against health Check (same server, same channel)")
    print(f"  GetSipStatus  p50 {status_p50:7.0f} us  p99 {status_p99:7.0f} us")
    print(f"  health Check  p50 {health_p50:7.0f} us  p99 {health_p99:7.0f} us")
    print(_ratio_line("ratio p50", status_p50 / health_p50, 1.5))
    print(_ratio_line("ratio p99", status_p99 / health_p99, 1.5))
    for title, results in (("defaults", plain_start), ("with --metrics-port", metered_start)):
        print(f"3. start-up and memory, {title} ({STARTS} starts)")
        start_ms = _median(results["start_ms"])
        print(_ratio_line("process start -> SERVING, median", start_ms, 500.0, " ms"))
        print(_ratio_line("idle RSS, median", _median(results["rss_mb"]), 50.0, " MB"))
        uss_mb = _median(results["uss_mb"])
        print(f"  idle USS (private, not shared with other workers), median {uss_mb:.2f} MB")
    bare_rss, bare_uss = _median(bare_start["rss_mb"]), _median(bare_start["uss_mb"])
    print(f"4. the bare stack, none of the worker's code ({STARTS} starts; bench/bare_stack.py)")
    bare_start_ms = _median(bare_start["start_ms"])
    print(f"  process start -> SERVING, median                 {bare_start_ms:8.2f} ms")
    print(f"  idle RSS, median {bare_rss:.2f} MB; USS {bare_uss:.2f} MB")
    worker_rss = _median(plain_start["rss_mb"])
    print(
        f"  worker (defaults) over the bare stack: RSS +{worker_rss - bare_rss:.2f} MB, "
        f"ratio {worker_rss / bare_rss:.2f}"
    )
    print(f"5. what one call costs ({CALL_SAMPLE_S:.0f} s each; no target)")
    print(
        f"  session ready, no call:   CPU {call_cost['idle_cpu'] * 100:5.1f}% of a core, "
        f"RSS {call_cost['idle_rss']:.1f} MB"
    )
    print(
        f"  one call, RTP both ways:  CPU {call_cost['call_cpu'] * 100:5.1f}% of a core, "
        f"RSS {call_cost['call_rss']:.1f} MB"
    )


if __name__ == "__main__":
    main()
