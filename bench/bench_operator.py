"""200 SipSessions created at once: how long until all 200 pods exist and all statuses are set.

Compared, in the same run, with the emulated API server's own time to create 200 pods directly
(the same pod bodies, the same client, the same concurrency). Three processes, as in a cluster:
the Kubernetes emulator, the `sip-operator`, and this client; plus a real redis-server.

"All statuses set" means each SipSession's status has its phase, podName and endpoint, and the
worker's last SipStatus mirrored from its Redis stream (each stream gets one entry right before
the sessions are created, so the single XREAD reader has 200 streams to deliver).

Two more floors are printed. The API requests the operator makes per session (create the
SipSession, add the finalizer, read the password Secret, create token Secret, Service and Pod,
write the status, post an Event), made directly by this client: the operator cannot beat it, so
comparing with it shows what the operator itself adds. And the writes the issue requires of any
operator (the SipSession itself, the token Secret, the Service, the Pod, one status write and
the pod-created Event; no finalizer, no Secret check), made directly by this client: no
implementation that does what the issue asks can beat that floor with this client.

Run: .venv/bin/python bench/bench_operator.py [--sessions 200]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
import psutil

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
        self.process.wait(30)


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
        time.sleep(0.25)  # each look lists 200 objects: not too often, it loads the emulator


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


def run(sessions: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    redis = RedisServer(workdir / "redis")
    redis.start()
    emulator = Emulator(workdir)
    operator: subprocess.Popen[bytes] | None = None
    names = [f"s{i:03d}" for i in range(sessions)]
    try:
        api = Api(emulator.kubeconfig)
        for namespace in ("floor", "required", "warmup", "bench"):
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
        return {
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
    parser.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args()
    result = run(args.sessions)
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
    print(f"ratio all statuses set / direct pod creation:     {ratio:5.2f}  (target <= 2)")
    ratio = result["all_statuses_s"] / result["floor_same_requests_s"]
    print(f"ratio all statuses set / same requests directly:  {ratio:5.2f}")
    ratio = result["floor_required_writes_s"] / result["baseline_pods_s"]
    print(
        f"ratio required writes directly / direct pod creation (any operator's floor): {ratio:5.2f}"
    )
    ratio = result["all_statuses_s"] / result["floor_required_writes_s"]
    print(f"ratio all statuses set / required writes directly:  {ratio:5.2f}")


if __name__ == "__main__":
    main()
