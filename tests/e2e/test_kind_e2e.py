"""On a real cluster: kind, the images, `helm install`, a call through a session's gRPC Service,
`kubectl get sips`, and the history surviving a worker pod's and Redis's restarts.

Skipped (with the reason) where docker with a running engine, kind, kubectl or helm is missing.
Run it with `make e2e` (which builds, loads and installs first); KIND_KEEP=1 keeps the session
and the sipp peer for a look afterwards.
"""

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import empty_pb2

from ondewo.sip import sip_pb2, sip_pb2_grpc
from sip_contract.status import session_key, stream_key
from tests.e2e.kind import (
    IMAGE_TAG,
    MANIFESTS,
    NAMESPACE,
    RELEASE,
    Kubectl,
    make,
    missing_prerequisites,
    port_forward,
    wait_for,
)

_MISSING = missing_prerequisites()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]

SESSION = "e2e"
ACCOUNT_SECRET = "e2e-sip-account"
CALLEE = f"callee@sipp-peer.{NAMESPACE}.svc.cluster.local:5062"
REDIS_POD = f"{RELEASE}-redis-0"
STREAM = stream_key(session_key(NAMESPACE, SESSION))
Type = sip_pb2.SipStatus.StatusType


@dataclass
class Session:
    kubectl: Kubectl
    pod: str
    service: str
    token: str
    grpc_port: int


class SipClient:
    """The ondewo.sip.Sip API of one session, with its bearer token on every call."""

    def __init__(self, port: int, token: str) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stub = sip_pb2_grpc.SipStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),)

    def close(self) -> None:
        self._channel.close()

    def history(self) -> list[sip_pb2.SipStatus]:
        reply = self._stub.GetSipStatusHistory(
            empty_pb2.Empty(), metadata=self._metadata, timeout=30
        )
        return list(reply.status_history)

    def types(self) -> list[int]:
        return [status.status_type for status in self.history()]

    def start_call(self, callee: str) -> None:
        request = sip_pb2.StartCallRequest(callee_id=callee)
        self._stub.StartCall(request, metadata=self._metadata, timeout=60)

    def end_call(self) -> None:
        request = sip_pb2.EndCallRequest(hard_hangup=True)
        self._stub.EndCall(request, metadata=self._metadata, timeout=60)

    def unauthenticated_status(self) -> grpc.StatusCode:
        try:
            self._stub.GetSipStatus(empty_pb2.Empty(), timeout=30)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
        return grpc.StatusCode.OK


def _session_status(kubectl: Kubectl) -> dict[str, object]:
    body = kubectl.get("sipsession", SESSION)
    assert body is not None, "the SipSession is gone"
    status: dict[str, object] = body.get("status") or {}
    return status


def _ready_session(kubectl: Kubectl, not_pod_uid: str | None = None) -> tuple[str, str]:
    """Waits for phase Ready with a ready worker pod (a new one if not_pod_uid); (pod, uid)."""

    def ready() -> tuple[str, str] | None:
        status = _session_status(kubectl)
        if status.get("phase") != "Ready":
            return None
        pod = kubectl.pod_ready(str(status["podName"]))
        if pod is None or pod["metadata"]["uid"] == not_pod_uid:
            return None
        return str(status["podName"]), str(pod["metadata"]["uid"])

    return wait_for("the SipSession to be Ready with a ready worker pod", ready, timeout=300)


def _stream_length(kubectl: Kubectl) -> int:
    # redis-cli authenticates from REDISCLI_AUTH in the container's env: no password in argv.
    output = kubectl.run("exec", REDIS_POD, "-c", "redis", "--", "redis-cli", "XLEN", STREAM)
    return int(output.strip())


@pytest.fixture(scope="module")
def deployed() -> Kubectl:
    make("deploy")
    return Kubectl()


@pytest.fixture(scope="module")
def session(deployed: Kubectl) -> Iterator[Session]:
    kubectl = deployed
    password = secrets.token_urlsafe(18)
    account = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": ACCOUNT_SECRET},
        "type": "Opaque",
        "stringData": {"password": password, "users.csv": f"SEQUENTIAL\n{SESSION};{password}\n"},
    }
    kubectl.apply(json.dumps(account))
    peer = (MANIFESTS / "sipp-peer.yaml").read_text()
    kubectl.apply(peer.replace("image: sipp-peer:dev", f"image: sipp-peer:{IMAGE_TAG}"))
    wait_for("the sipp peer", lambda: kubectl.pod_ready("sipp-peer"), timeout=180)
    kubectl.apply((MANIFESTS / "sipsession.yaml").read_text())
    pod, _ = _ready_session(kubectl)
    status = _session_status(kubectl)
    token_ref = status["tokenSecretRef"]
    assert isinstance(token_ref, dict)
    endpoint = str(status["endpoint"])  # <service>.<namespace>.svc:<port>
    yield Session(
        kubectl=kubectl,
        pod=pod,
        service=endpoint.split(".", 1)[0],
        token=kubectl.secret_value(token_ref["name"], token_ref["key"]),
        grpc_port=int(endpoint.rsplit(":", 1)[1]),
    )
    if not os.environ.get("KIND_KEEP"):
        kubectl.run("delete", "sipsession", SESSION, "--wait=true", timeout=300)
        kubectl.run("delete", "-f", str(MANIFESTS / "sipp-peer.yaml"), "--wait=true")
        kubectl.run("delete", "secret", ACCOUNT_SECRET)


def test_call_through_the_session_service_and_history_survives_restarts(session: Session) -> None:
    kubectl = session.kubectl
    with port_forward(kubectl, f"svc/{session.service}", session.grpc_port) as local_port:
        client = SipClient(local_port, session.token)
        try:
            assert client.unauthenticated_status() == grpc.StatusCode.UNAUTHENTICATED
            assert Type.ready in client.types()
            client.start_call(CALLEE)
            wait_for(
                "the call to connect",
                lambda: Type.outgoing_call_connected in client.types(),
                timeout=60,
            )
            client.end_call()
            wait_for(
                "the call to finish",
                lambda: Type.outgoing_call_finished in client.types(),
                timeout=60,
            )
            before_restart = client.history()
        finally:
            client.close()

    # The operator mirrors the worker's last status into the SipSession (from Redis).
    wait_for(
        "kubectl get sips to show the finished call",
        lambda: "outgoing_call_finished" in kubectl.run("get", "sips", SESSION),
        timeout=60,
    )
    table = kubectl.run("get", "sips")
    row = next(line.split() for line in table.splitlines() if line.startswith(SESSION + " "))
    assert row[1] == "Ready" and row[2] == "outgoing_call_finished", table

    # A deleted worker pod comes back (a new pod) with the whole history.
    old_uid = kubectl.get("pod", session.pod)
    assert old_uid is not None
    kubectl.run("delete", "pod", session.pod, "--wait=true", timeout=300)
    _ready_session(kubectl, not_pod_uid=old_uid["metadata"]["uid"])
    with port_forward(kubectl, f"svc/{session.service}", session.grpc_port) as local_port:
        client = SipClient(local_port, session.token)
        try:

            def history_with_new_session() -> list[sip_pb2.SipStatus] | None:
                history = client.history()
                new = [status.status_type for status in history[len(before_restart) :]]
                return history if Type.ready in new else None

            after_restart = wait_for(
                "the new worker's session to be ready", history_with_new_session, timeout=120
            )
        finally:
            client.close()
    assert after_restart[: len(before_restart)] == before_restart

    # Redis keeps the stream across its own restart: append-only file on the PVC.
    time.sleep(2)  # appendfsync everysec: let the last second reach the disk
    length = _stream_length(kubectl)
    assert length >= len(after_restart)
    kubectl.run("delete", "pod", REDIS_POD, "--wait=true", timeout=300)
    wait_for("Redis to come back", lambda: kubectl.pod_ready(REDIS_POD), timeout=300)
    assert _stream_length(kubectl) == length
