"""Runs the real `sip-operator` console script against the Kubernetes emulator and real Redis.

`Cluster` is the test's view of the emulated API (the real kubernetes client over HTTP, plus
snapshots straight from the emulator). `OperatorProcess` is the operator as a subprocess,
with its output captured to a file (scanned for secrets by the tests).
"""

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import kubernetes

from ondewo.sip import sip_pb2
from sip_contract import status as contract
from tests.support.k8s_emulator import GROUP, SIPSESSIONS, VERSION, EmulatorThread

T = TypeVar("T")

OPERATOR_BIN = Path(sys.executable).parent / "sip-operator"


def wait_for(
    condition: Callable[[], T], timeout: float = 60.0, what: str = "condition", step: float = 0.05
) -> T:
    """Polls until `condition()` is truthy and returns it; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def session_body(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SipSession",
        "metadata": {"name": name},
        "spec": dict(spec),
    }


def account_spec(
    account: str = "alice@pbx.example.com", secret: str = "alice-sip"
) -> dict[str, Any]:
    return {"account": {"name": account, "passwordSecretRef": {"name": secret, "key": "password"}}}


class Cluster:
    def __init__(self, emulator: EmulatorThread) -> None:
        self.emulator = emulator
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(emulator.kubeconfig), client_configuration=configuration
        )
        api_client = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    @property
    def kubeconfig(self) -> Path:
        return self.emulator.kubeconfig

    # -- writes, through the real client, as kubectl would --

    def create_session(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "sipsessions", session_body(name, spec)
        )
        return created

    def patch_session(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "sipsessions", name, dict(patch)
        )

    def delete_session(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "sipsessions", name)

    def create_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        self.core.create_namespaced_secret(
            namespace, {"metadata": {"name": name}, "type": "Opaque", "data": encoded}
        )

    def set_pod_status(self, namespace: str, name: str, phase: str, ready: bool) -> None:
        """The kubelet's part: the emulator has none."""
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        status: dict[str, Any] = {"phase": phase, "conditions": conditions, "podIP": "10.0.0.7"}
        if phase == "Failed":
            status.update(reason="Evicted", message="The node was low on resource: memory.")
        self.core.patch_namespaced_pod_status(name, namespace, {"status": status})

    # -- reads, straight from the emulator's store --

    def sessions(self, namespace: str) -> dict[str, dict[str, Any]]:
        return self.emulator.objects(SIPSESSIONS, namespace)

    def session(self, namespace: str, name: str) -> dict[str, Any]:
        return self.sessions(namespace).get(name) or {}

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.session(namespace, name).get("status") or {}
        return status

    def pods(self, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        return self.emulator.objects("v1/pods", namespace)

    def services(self, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        return self.emulator.objects("v1/services", namespace)

    def secrets(self, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        return self.emulator.objects("v1/secrets", namespace)

    def events(self, namespace: str, involved: str | None = None) -> list[dict[str, Any]]:
        events = self.emulator.objects("v1/events", namespace).values()
        return [
            e
            for e in events
            if involved is None or e.get("involvedObject", {}).get("name") == involved
        ]

    def event_reasons(self, namespace: str, involved: str) -> list[str]:
        return [str(e.get("reason")) for e in self.events(namespace, involved)]

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.status(namespace, name).get("phase") == phase,
            timeout,
            f"{namespace}/{name} in phase {phase} (last: {self.status(namespace, name)})",
        )


class OperatorProcess:
    """`sip-operator` as a subprocess; killed in teardown whatever happens."""

    def __init__(self, cluster: Cluster, redis_url: str, log_path: Path) -> None:
        self.cluster = cluster
        self.redis_url = redis_url
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SIP_OPERATOR_", "KUBERNETES_")) and k != "REDIS_PASSWORD"
        }
        env.update(
            KUBECONFIG=str(self.cluster.kubeconfig),
            SIP_OPERATOR_REDIS_URL=self.redis_url,
            SIP_OPERATOR_WORKER_IMAGE="registry.test/sip-worker:test",
            SIP_OPERATOR_BACKOFF_BASE="0.2",
            SIP_OPERATOR_BACKOFF_MAX="2",
        )
        env.update(extra)
        return env

    def start(
        self, args: list[str], env: Mapping[str, str] | None = None, standalone: bool = True
    ) -> None:
        assert shutil.which(str(OPERATOR_BIN)), f"{OPERATOR_BIN} is not installed"
        scope = ["--standalone"] if standalone else []
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(OPERATOR_BIN), *scope, "--verbose", *args],
                env=self.environment(env or {}),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def sip_status_entry(
    status_type: str,
    seq: int,
    callee_id: str = "",
    description: str = "",
    timestamp: float | None = None,
) -> dict[str, Any]:
    """A stream entry exactly as workers write it: serialized SipStatus, type name, seq.

    Its timestamp is `timestamp` (seconds since the epoch), else now.
    """
    status = sip_pb2.SipStatus(
        account_name="alice@pbx.example.com",
        status_type=sip_pb2.SipStatus.StatusType.Value(status_type),
        callee_id=callee_id,
        description=description,
    )
    if timestamp is None:
        status.timestamp.GetCurrentTime()
    else:
        status.timestamp.FromNanoseconds(round(timestamp * 1e9))
    return {"status": status.SerializeToString(), "type": status_type, "seq": seq}


def stream_key(namespace: str, name: str) -> str:
    """The history stream of the SipSession `namespace/name`, as workers and the operator name
    it (sip_contract)."""
    return contract.stream_key(contract.session_key(namespace, name))
