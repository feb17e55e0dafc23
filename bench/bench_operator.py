"""2,000 SipSessions created at once: how long until all pods exist and all statuses are set;
the operator's peak memory per session; then the status mirror's lag under a steady load.

Compared, in the same run, with the emulated API server's own time to create as many pods directly
(the same pod bodies, the same client, the same concurrency). Three processes, as in a cluster:
the Kubernetes emulator, the `sip-operator`, and this client; plus a real redis-server.

"All statuses set" means each SipSession's status has its phase, podName and endpoint, and the
worker's last SipStatus mirrored from its Redis stream (each stream gets one entry right before
the sessions are created, so the shards' XREAD readers have every stream to deliver).

Two more floors are printed. The API requests the operator makes per session (create the
SipSession, add the finalizer, read the password Secret, create token Secret, Service and Pod,
write the status, post an Event), made directly by this client: the operator cannot beat it, so
comparing with it shows what the operator itself adds. And the writes the issue requires of any
operator (the SipSession itself, the token Secret, the Service, the Pod, one status write and
the pod-created Event; no finalizer, no Secret check), made directly by this client: no
implementation that does what the issue asks can beat that floor with this client.

Then every session's worker appends a status every 10 s (spread evenly: 200 a second for 2,000
sessions) for `--lag-seconds`: the lag is from the XADD to the moment this client's watch on the
SipSessions shows the status in `.status.lastStatus`. Its floor, in the same run, is the same
watch seeing a status patch this client makes directly (the API server's and the watch's own
share of that path). Target: p99 <= 250 ms.

Peak memory: the operator's VmHWM (peak resident set) minus its resident set once warmed up
with one session, divided by the number of sessions.

Run: .venv/bin/python bench/bench_operator.py [--sessions 2000] [--lag-seconds 30]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import psutil
import urllib3

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test support code: emulator and redis-server runner

from sip_operator.pod_builder import (  # noqa: E402
    SessionRef,
    build_pod,
    build_service,
    build_token_secret,
)
from sip_operator.session_spec import parse_spec  # noqa: E402
from sip_operator.settings import OperatorSettings  # noqa: E402
from tests.support.operator_harness import session_body, sip_status_entry, stream_key  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

GROUP, VERSION = "sip-operator.dev", "v1alpha1"
CLIENT_THREADS = 8
SPEC = {
    "account": {"name": "bench@pbx.example.com", "passwordSecretRef": {"name": "pw", "key": "k"}}
}
RAW = {"_preload_content": False}  # no model decoding on the client side
STATUS_INTERVAL_S = 10.0  # each session's worker appends a status this often, in the lag phase


class Emulator:
    def __init__(self, workdir: Path) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        command = [sys.executable, "-m", "tests.support.k8s_emulator"]
        self.process = subprocess.Popen(
            [*command, "--kubeconfig", str(self.kubeconfig)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if not ready.startswith("READY"):
            raise RuntimeError(f"the emulator did not start: {ready!r}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:  # open watches can hold its shutdown up
            self.process.kill()
            self.process.wait()


class Api:
    def __init__(self, kubeconfig: Path) -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
        configuration.connection_pool_maxsize = CLIENT_THREADS
        api_client = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    def create_secret(self, namespace: str) -> None:
        body = {"metadata": {"name": "pw"}, "data": {"k": "cHc="}}
        self.core.create_namespaced_secret(namespace, body, **RAW)

    def create_session(self, namespace: str, name: str) -> None:
        body = session_body(name, SPEC)
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "sipsessions", body, **RAW
        )

    def items(self, namespace: str, plural: str) -> list[dict[str, Any]]:
        if plural == "pods":
            response = self.core.list_namespaced_pod(namespace, **RAW)
        else:
            response = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, **RAW
            )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    def patch_last_status(self, namespace: str, name: str, description: str) -> None:
        status = {"status": {"lastStatus": {"type": "registered", "description": description}}}
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "sipsessions", name, status, **RAW
        )

    def session_requests_directly(self, namespace: str, name: str, only_required: bool) -> None:
        """One session's worth of the operator's API requests, in the operator's order; with
        `only_required`, just the writes the issue requires."""
        self.create_session(namespace, name)
        if not only_required:
            finalizer = [{"op": "add", "path": "/metadata/finalizers", "value": ["bench/x"]}]
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "sipsessions", name, finalizer, **RAW
            )
            self.core.read_namespaced_secret("pw", namespace, **RAW)
        ref = SessionRef(namespace, name, "uid")
        settings = OperatorSettings()
        self.core.create_namespaced_secret(namespace, build_token_secret(ref, "t" * 43), **RAW)
        self.core.create_namespaced_service(namespace, build_service(ref, settings), **RAW)
        pod = build_pod(ref, parse_spec(SPEC), settings, 1)
        self.core.create_namespaced_pod(namespace, pod, **RAW)
        status = {"status": {"phase": "Pending", "podName": pod["metadata"]["name"]}}
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "sipsessions", name, status, **RAW
        )
        event = {
            "metadata": {"generateName": "bench-"},
            "involvedObject": {"kind": "SipSession", "name": name, "namespace": namespace},
            "reason": "PodCreated",
            "message": f"created worker pod {pod['metadata']['name']}",
            "type": "Normal",
        }
        self.core.create_namespaced_event(namespace, event, **RAW)


class LastStatusWatch:
    """Watches a namespace's SipSessions in a thread; notes when each description first shows."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self._api = Api(kubeconfig)
        self._namespace = namespace
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _events(self) -> Iterator[dict[str, Any]]:
        response = self._api.custom.list_namespaced_custom_object(
            GROUP, VERSION, self._namespace, "sipsessions", watch=True, **RAW
        )
        buffer = b""
        for chunk in response.stream(65536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def _follow(self) -> None:
        try:
            self._follow_until_stopped()
        except urllib3.exceptions.ProtocolError:
            if not self._stopped.is_set():
                raise
            # The emulator stopped while the watch was open: the end of the run.

    def _follow_until_stopped(self) -> None:
        while not self._stopped.is_set():
            for event in self._events():
                body = event.get("object", {})
                last = (body.get("status") or {}).get("lastStatus") or {}
                key = (body.get("metadata", {}).get("name", ""), last.get("description", ""))
                with self._lock:
                    self._seen.setdefault(key, time.perf_counter())
                if self._stopped.is_set():
                    return

    def seen_at(self, name: str, description: str) -> float | None:
        with self._lock:
            return self._seen.get((name, description))

    def stop(self) -> None:
        self._stopped.set()


def _lags_ms(
    sent: dict[tuple[str, str], float], watch: LastStatusWatch, timeout: float
) -> tuple[list[float], int]:
    """Each sent status's lag until the watch saw it (waiting up to `timeout`); and how many
    never showed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(watch.seen_at(*k) is None for k in sent):
        time.sleep(0.2)
    lags, missing = [], 0
    for key, at in sent.items():
        seen = watch.seen_at(*key)
        if seen is None:
            missing += 1
        else:
            lags.append((seen - at) * 1000)
    return lags, missing


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _steady_statuses(
    redis: RedisServer, names: list[str], seconds: float
) -> dict[tuple[str, str], float]:
    """Every session appends one status per STATUS_INTERVAL_S, spread evenly over the interval."""
    client = redis.client()
    gap = STATUS_INTERVAL_S / len(names)
    sent: dict[tuple[str, str], float] = {}
    started = time.perf_counter()
    for n in range(int(seconds / gap)):
        name, round_ = names[n % len(names)], n // len(names)
        due = started + n * gap
        time.sleep(max(0.0, due - time.perf_counter()))
        description = f"round {round_}"
        entry = sip_status_entry("registered", 2 + round_, description=description)
        client.xadd(stream_key("bench", name), entry)
        sent[(name, description)] = time.perf_counter()
    return sent


def _direct_patch_lags(api: Api, kubeconfig: Path, count: int) -> list[float]:
    """The floor: this client patching lastStatus itself, seen through the same kind of watch."""
    for name in (f"f{i:02d}" for i in range(count)):
        api.custom.create_namespaced_custom_object(
            GROUP, VERSION, "lagfloor", "sipsessions", session_body(name, SPEC), **RAW
        )
    watch = LastStatusWatch(kubeconfig, "lagfloor")
    time.sleep(1.0)  # the watch is listening
    sent: dict[tuple[str, str], float] = {}
    for i in range(count * 5):
        name, description = f"f{i % count:02d}", f"direct {i}"
        sent[(name, description)] = time.perf_counter()
        api.patch_last_status("lagfloor", name, description)
        time.sleep(0.02)
    lags, _ = _lags_ms(sent, watch, 30)
    watch.stop()
    return lags


def _rss_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/<pid>/status in KiB: VmRSS now, or VmHWM (the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


def _all_at_once(calls: list[Callable[[], Any]]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()
    return time.perf_counter() - started


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(1.0)  # each look lists every session: not too often, it loads the emulator


def _cpu_seconds(*pids: int) -> list[float]:
    """CPU time (user + system) each process has used so far."""
    return [sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids]


def _start_operator(kubeconfig: Path, redis_url: str, log: Path) -> "subprocess.Popen[bytes]":
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SIP_OPERATOR_", "KUBERNETES_"))
    }
    env.update(KUBECONFIG=str(kubeconfig), SIP_OPERATOR_REDIS_URL=redis_url)
    operator_bin = str(Path(sys.executable).parent / "sip-operator")
    with log.open("wb") as output:
        return subprocess.Popen(
            [operator_bin, "--standalone", "--quiet", "-n", "bench", "-n", "warmup"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def run(sessions: int, lag_seconds: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    redis = RedisServer(workdir / "redis")
    redis.start()
    emulator = Emulator(workdir)
    operator: subprocess.Popen[bytes] | None = None
    names = [f"s{i:03d}" for i in range(sessions)]
    try:
        api = Api(emulator.kubeconfig)
        for namespace in ("floor", "required", "warmup", "bench", "lagfloor"):
            api.create_secret(namespace)

        # Floor 1: the emulator creating the very pods the operator would, directly.
        spec, settings = parse_spec(SPEC), OperatorSettings()
        pods = [build_pod(SessionRef("baseline", n, f"uid-{n}"), spec, settings, 1) for n in names]
        baseline = _all_at_once(
            [lambda p=p: api.core.create_namespaced_pod("baseline", p, **RAW) for p in pods]
        )
        # Floor 2: the operator's requests, made directly.
        floor = _all_at_once(
            [lambda n=n: api.session_requests_directly("floor", n, False) for n in names]
        )
        # Floor 3: only the writes the issue requires of any operator, directly.
        required = _all_at_once(
            [lambda n=n: api.session_requests_directly("required", n, True) for n in names]
        )

        operator = _start_operator(emulator.kubeconfig, redis.url, workdir / "operator.log")
        api.create_session("warmup", "warm")  # imports, first connections: not measured
        _wait(
            lambda: any(
                s.get("status", {}).get("phase") for s in api.items("warmup", "sipsessions")
            ),
            120,
            "the operator to warm up",
        )
        rss_warm_kib = _rss_kib(operator.pid, "VmRSS")
        with redis.client().pipeline(transaction=False) as pipe:
            for name in names:
                pipe.xadd(stream_key("bench", name), sip_status_entry("registered", 1))
            pipe.execute()

        cpu_before = _cpu_seconds(emulator.process.pid, operator.pid)
        started = time.perf_counter()
        posted = _all_at_once([lambda n=n: api.create_session("bench", n) for n in names])
        _wait(lambda: len(api.items("bench", "pods")) >= sessions, 600, "all pods")
        pods_done = time.perf_counter() - started

        def statuses_set() -> bool:
            items = api.items("bench", "sipsessions")
            return len(items) == sessions and all(
                s.get("status", {}).get("phase")
                and s["status"].get("podName")
                and s["status"].get("endpoint")
                and s["status"].get("lastStatus", {}).get("type") == "registered"
                for s in items
            )

        _wait(statuses_set, 600, "all statuses")
        statuses_done = time.perf_counter() - started
        cpu_after = _cpu_seconds(emulator.process.pid, operator.pid)
        peak_kib = _rss_kib(operator.pid, "VmHWM")

        watch = LastStatusWatch(emulator.kubeconfig, "bench")
        time.sleep(2.0)  # the watch has had its initial list of every session
        cpu_before_lag = _cpu_seconds(emulator.process.pid, operator.pid)
        sent = _steady_statuses(redis, names, lag_seconds)
        cpu_lag = [
            (after - before) / lag_seconds
            for before, after in zip(
                cpu_before_lag, _cpu_seconds(emulator.process.pid, operator.pid), strict=True
            )
        ]
        lags, missing = _lags_ms(sent, watch, 60)
        watch.stop()
        floor_lags = _direct_patch_lags(api, emulator.kubeconfig, 20)
        return {
            "peak_kib_per_session": (peak_kib - rss_warm_kib) / sessions,
            "peak_mib": peak_kib / 1024,
            "lags_ms": lags,
            "lags_missing": missing,
            "emulator_cores_lag": cpu_lag[0],
            "operator_cores_lag": cpu_lag[1],
            "floor_lags_ms": floor_lags,
            "baseline_pods_s": baseline,
            "floor_same_requests_s": floor,
            "floor_required_writes_s": required,
            "sessions_posted_s": posted,
            "all_pods_s": pods_done,
            "all_statuses_s": statuses_done,
            "emulator_cpu_s": cpu_after[0] - cpu_before[0],
            "operator_cpu_s": cpu_after[1] - cpu_before[1],
        }
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
        emulator.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--lag-seconds", type=float, default=30.0)
    args = parser.parse_args()
    result = run(args.sessions, args.lag_seconds)
    n = args.sessions
    print(f"emulator creating {n} pods directly:          {result['baseline_pods_s']:6.2f} s")
    print(f"the operator's requests for {n}, directly:    {result['floor_same_requests_s']:6.2f} s")
    print(
        f"the required writes for {n}, directly:        {result['floor_required_writes_s']:6.2f} s"
    )
    print(f"{n} SipSessions POSTed in:                    {result['sessions_posted_s']:6.2f} s")
    print(f"operator: all {n} pods exist after            {result['all_pods_s']:6.2f} s")
    print(f"operator: all {n} statuses set after          {result['all_statuses_s']:6.2f} s")
    print(
        f"CPU meanwhile: emulator {result['emulator_cpu_s']:.2f} s, "
        f"operator {result['operator_cpu_s']:.2f} s"
    )
    ratio = result["all_statuses_s"] / result["baseline_pods_s"]
    # The target of 2 was set for 200 sessions; the required writes alone exceed it at 2,000.
    print(f"ratio all statuses set / direct pod creation:     {ratio:5.2f}  (target <= 2 at 200)")
    ratio = result["all_statuses_s"] / result["floor_same_requests_s"]
    print(f"ratio all statuses set / same requests directly:  {ratio:5.2f}")
    ratio = result["floor_required_writes_s"] / result["baseline_pods_s"]
    print(
        f"ratio required writes directly / direct pod creation (any operator's floor): {ratio:5.2f}"
    )
    ratio = result["all_statuses_s"] / result["floor_required_writes_s"]
    print(f"ratio all statuses set / required writes directly:  {ratio:5.2f}  (target <= 1.5)")
    print(
        f"operator peak memory {result['peak_mib']:.0f} MiB: "
        f"{result['peak_kib_per_session']:.1f} KiB per session above the warmed-up operator"
    )
    lags, floor = result["lags_ms"], result["floor_lags_ms"]
    print(
        f"mirror lag, {len(lags)} statuses ({n} sessions, one each per {STATUS_INTERVAL_S:.0f} s), "
        f"XADD -> watch: p50 {statistics.median(lags):.0f} ms, p99 {_percentile(lags, 0.99):.0f} ms"
        f"  (target p99 <= 250 ms); never seen: {result['lags_missing']}"
    )
    print(
        f"CPU meanwhile: emulator {result['emulator_cores_lag']:.2f} cores, "
        f"operator {result['operator_cores_lag']:.2f} cores"
    )
    print(
        f"floor, a status patch made directly -> watch: p50 {statistics.median(floor):.0f} ms, "
        f"p99 {_percentile(floor, 0.99):.0f} ms"
    )


if __name__ == "__main__":
    main()
