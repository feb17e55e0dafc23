"""The real operator (a `sip-operator` subprocess) against the emulated API and real Redis."""

import base64
from pathlib import Path
from typing import Any

import yaml

from sip_contract.status import session_key, shard
from tests.support.operator_harness import (
    Cluster,
    OperatorProcess,
    account_spec,
    sip_status_entry,
    stream_key,
    wait_for,
)
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
MANAGED_LABELS = {
    "app.kubernetes.io/name": "sip-worker",
    "app.kubernetes.io/managed-by": "sip-operator",
}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"]}


def _owned_by(body: dict[str, Any], session: dict[str, Any]) -> bool:
    refs = body["metadata"].get("ownerReferences") or []
    return any(
        r["uid"] == session["metadata"]["uid"]
        and r["kind"] == "SipSession"
        and r["name"] == session["metadata"]["name"]
        and r.get("controller") is True
        for r in refs
    )


def test_create_gives_an_owned_wired_and_locked_down_pod_service_and_token(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    example = yaml.safe_load((REPO / "examples/sipsession-full.yaml").read_text())
    cluster.create_secret(namespace, "support-line-sip", {"password": "pw"})
    cluster.create_secret(namespace, "support-line-tls", {"ca.crt": "a CA certificate"})
    session = cluster.create_session(namespace, "support-line", example["spec"])

    pod = wait_for(lambda: cluster.pods(namespace).get("sip-support-line"), what="the pod")
    service = wait_for(lambda: cluster.services(namespace).get("sip-support-line"), what="svc")
    token = wait_for(lambda: cluster.secrets(namespace).get("sip-support-line-token"), what="tok")
    for child in (pod, service, token):
        assert _owned_by(child, session)
        labels = child["metadata"]["labels"]
        assert labels == {**MANAGED_LABELS, "sip-operator.dev/session": "support-line"}

    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "registry.example.com/sip-worker:0.1.0"
    assert container["command"] == ["sip-worker"]
    assert container["args"] == ["--start-session"]
    env = _env(container)
    literal = {name: item.get("value") for name, item in env.items() if "value" in item}
    assert literal["SIP_WORKER_ACCOUNT"] == "sip:support@pbx.example.com:5061"
    assert literal["SIP_WORKER_SESSION_KEY"] == session_key(namespace, "support-line")
    assert literal["SIP_WORKER_REDIS_URL"] == operator.redis_url
    assert literal["SIP_WORKER_HISTORY_MAX_LEN"] == "50000"
    assert literal["SIP_WORKER_AUTO_ANSWER_INTERVAL"] == "3"
    assert literal["SIP_WORKER_START_SESSION"] == "true"
    assert literal["SIP_WORKER_SIP_TRANSPORT"] == "tls"
    assert literal["SIP_WORKER_SRTP"] == "mandatory"
    assert literal["SIP_WORKER_TLS_CA_FILE"] == "/etc/sip-worker/tls/ca.crt"
    assert literal["SIP_WORKER_AUTH_USERNAME"] == "support-digest"
    assert literal["SIP_WORKER_OUTBOUND_PROXY"] == "sip:proxy.example.com:5061"
    assert literal["SIP_WORKER_NO_REGISTER"] == "true"  # account.register: false
    assert literal["SIP_WORKER_LOG_FORMAT"] == "json"
    assert literal["SIP_WORKER_SIP_HOST"] == "0.0.0.0"
    # STUN names the public address, and keep-alives hold the NAT open.
    assert literal["SIP_WORKER_STUN_SERVERS"] == "stun.example.com:3478"
    assert literal["SIP_WORKER_KEEPALIVE_INTERVAL"] == "20"
    assert "SIP_WORKER_PUBLIC_ADDRESS" not in env
    # The password only by reference; nothing else carries it.
    assert env["SIP_WORKER_PASSWORD"] == {
        "name": "SIP_WORKER_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "support-line-sip", "key": "password"}},
    }
    assert "REDIS_PASSWORD" not in env  # no Redis password configured for this operator

    # The API token: a random Secret, mounted, and the worker told where the file is.
    token_value = base64.b64decode(token["data"]["token"]).decode()
    assert len(token_value) >= 32
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    token_volume = next(v for v in volumes.values() if "secret" in v)
    assert token_volume["secret"]["secretName"] == "sip-support-line-token"
    token_mount = mounts[token_volume["name"]]
    assert token_mount["readOnly"] is True
    (item,) = token_volume["secret"]["items"]
    assert literal["SIP_WORKER_AUTH_TOKEN_FILE"] == f"{token_mount['mountPath']}/{item['path']}"

    # Locked down; /tmp writable although the root filesystem is not.
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert "emptyDir" in volumes[mounts_at(container, "/tmp")]
    assert spec["terminationGracePeriodSeconds"] >= float(literal["SIP_WORKER_SHUTDOWN_GRACE"])
    assert container["readinessProbe"]["grpc"] == {"port": 50099}
    assert container["livenessProbe"]["grpc"] == {"port": 50099}
    assert {"name": "grpc", "containerPort": 50099, "protocol": "TCP"} in container["ports"]

    # The spec's scheduling and resources reach the pod.
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"] == example["spec"]["worker"]["tolerations"]
    assert container["resources"] == example["spec"]["worker"]["resources"]
    assert spec["hostNetwork"] is False

    # The Service selects exactly this pod's labels, on the gRPC port.
    selector = service["spec"]["selector"]
    assert selector and all(pod["metadata"]["labels"][k] == v for k, v in selector.items())
    assert [p["port"] for p in service["spec"]["ports"]] == [50099]

    cluster.wait_phase(namespace, "support-line", "Pending")
    status = cluster.status(namespace, "support-line")
    assert status["podName"] == "sip-support-line"
    assert status["endpoint"] == f"sip-support-line.{namespace}.svc:50099"
    assert status["tokenSecretRef"] == {"name": "sip-support-line-token", "key": "token"}
    assert status["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Registered", "UpdatePending"}
    wait_for(lambda: "PodCreated" in cluster.event_reasons(namespace, "support-line"))


def mounts_at(container: dict[str, Any], path: str) -> str:
    return str(next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == path))


def test_defaults_apply_and_start_session_false_drops_the_flag(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_session(namespace, "bob", {**account_spec(), "startSession": False})
    pod = wait_for(lambda: cluster.pods(namespace).get("sip-bob"), what="the pod")
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["args"] == []
    assert env["SIP_WORKER_START_SESSION"] == "false"
    assert env["SIP_WORKER_AUTO_ANSWER_INTERVAL"] == "1"
    assert env["SIP_WORKER_SIP_TRANSPORT"] == "udp"
    assert env["SIP_WORKER_HISTORY_MAX_LEN"] == "10000"
    assert env["SIP_WORKER_KEEPALIVE_INTERVAL"] == "15"
    assert "SIP_WORKER_STUN_SERVERS" not in env
    assert container["image"] == "registry.test/sip-worker:test"  # SIP_OPERATOR_WORKER_IMAGE
    assert "SIP_WORKER_AUTH_USERNAME" not in env and "SIP_WORKER_OUTBOUND_PROXY" not in env
    assert "SIP_WORKER_NO_REGISTER" not in env  # registering, as without the field


def test_a_trunk_without_register_needs_no_password_secret(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    # No Secret exists in the namespace: the operator must not wait for one.
    spec = {"account": {"name": "bot@trunk.example.com", "register": False}}
    cluster.create_session(namespace, "trunk", spec)
    pod = wait_for(lambda: cluster.pods(namespace).get("sip-trunk"), what="the pod")
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["SIP_WORKER_NO_REGISTER"]["value"] == "true"
    assert "SIP_WORKER_PASSWORD" not in env
    assert cluster.status(namespace, "trunk").get("phase") != "Failed"


def test_worker_statuses_in_the_stream_become_status_and_phase(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    names = ["alice", "carol", "dave"]
    for name in names:
        cluster.create_session(namespace, name, account_spec())
    for name in names:
        wait_for(lambda n=name: cluster.pods(namespace).get(f"sip-{n}"), what=f"pod of {name}")
        cluster.set_pod_status(namespace, f"sip-{name}", "Running", ready=True)
    cluster.wait_phase(namespace, "alice", "Starting")

    redis.xadd(stream_key(namespace, "alice"), sip_status_entry("registered", 1))
    wait_for(
        lambda: cluster.status(namespace, "alice").get("lastStatus", {}).get("type") == "registered"
    )
    conditions = {c["type"]: c["status"] for c in cluster.status(namespace, "alice")["conditions"]}
    assert conditions == {"Registered": "True", "Ready": "False", "UpdatePending": "False"}
    wait_for(lambda: "Registered" in cluster.event_reasons(namespace, "alice"))

    redis.xadd(stream_key(namespace, "alice"), sip_status_entry("ready", 2))
    cluster.wait_phase(namespace, "alice", "Ready")
    redis.xadd(
        stream_key(namespace, "alice"),
        sip_status_entry("outgoing_call_connected", 3, callee_id="sip:bob@pbx.example.com"),
    )
    cluster.wait_phase(namespace, "alice", "InCall")
    last = cluster.status(namespace, "alice")["lastStatus"]
    assert last["type"] == "outgoing_call_connected"
    assert last["calleeId"] == "sip:bob@pbx.example.com"
    assert last["timestamp"].endswith("Z")

    # Other sessions' streams move independently.
    redis.xadd(stream_key(namespace, "carol"), sip_status_entry("ready", 1))
    cluster.wait_phase(namespace, "carol", "Ready")
    assert cluster.status(namespace, "dave")["phase"] == "Starting"
    assert cluster.status(namespace, "alice")["phase"] == "InCall"

    redis.xadd(stream_key(namespace, "alice"), sip_status_entry("outgoing_call_finished", 4))
    cluster.wait_phase(namespace, "alice", "Ready")
    ready = {c["type"]: c["status"] for c in cluster.status(namespace, "alice")["conditions"]}
    assert ready == {"Registered": "True", "Ready": "True", "UpdatePending": "False"}

    # One blocking XREAD per shard in use, not a reader per session.
    shards = {shard(session_key(namespace, name)) for name in names}
    readers = [c for c in redis.client_list() if c.get("cmd") == "xread"]
    assert len(readers) == len(shards), readers
    assert all(reader["flags"] == "b" for reader in readers)  # blocked in it


def test_a_deleted_pod_is_recreated(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_session(namespace, "alice", account_spec())
    first = wait_for(lambda: cluster.pods(namespace).get("sip-alice"), what="the pod")
    cluster.core.delete_namespaced_pod("sip-alice", namespace)
    second = wait_for(
        lambda: (
            (p := cluster.pods(namespace).get("sip-alice"))
            and p["metadata"]["uid"] != first["metadata"]["uid"]
            and p
        ),
        what="a new pod",
    )
    assert len(cluster.pods(namespace)) == 1
    assert second["metadata"]["ownerReferences"] == first["metadata"]["ownerReferences"]
    wait_for(lambda: cluster.event_reasons(namespace, "alice").count("PodCreated") == 2)
    messages = [e["message"] for e in cluster.events(namespace, "alice")]
    assert "created worker pod sip-alice (before: worker pod sip-alice was deleted" in " ".join(
        messages
    )


def test_a_failed_pod_is_replaced_and_the_session_recovers(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_session(namespace, "alice", account_spec())
    first = wait_for(lambda: cluster.pods(namespace).get("sip-alice"), what="the pod")
    cluster.set_pod_status(namespace, "sip-alice", "Failed", ready=False)
    wait_for(lambda: "Failed" in cluster.event_reasons(namespace, "alice"), what="Failed event")
    failure = next(e for e in cluster.events(namespace, "alice") if e["reason"] == "Failed")
    assert failure["type"] == "Warning" and "Evicted" in failure["message"]
    second = wait_for(
        lambda: (
            (p := cluster.pods(namespace).get("sip-alice"))
            and p["metadata"]["uid"] != first["metadata"]["uid"]
            and p
        ),
        what="a replacement pod",
    )
    assert second["metadata"]["name"] == "sip-alice"
    cluster.wait_phase(namespace, "alice", "Pending")
    wait_for(lambda: "Recovered" in cluster.event_reasons(namespace, "alice"), what="Recovered")
    cluster.set_pod_status(namespace, "sip-alice", "Running", ready=True)
    cluster.wait_phase(namespace, "alice", "Starting")


def test_a_spec_change_replaces_the_pod(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_session(namespace, "alice", account_spec())
    first = wait_for(lambda: cluster.pods(namespace).get("sip-alice"), what="the pod")
    wait_for(lambda: cluster.status(namespace, "alice").get("observedGeneration") == 1)
    cluster.patch_session(namespace, "alice", {"spec": {"autoAnswerInterval": 7}})

    def replacement() -> dict[str, Any] | None:
        pod = cluster.pods(namespace).get("sip-alice")
        if pod and pod["metadata"]["uid"] != first["metadata"]["uid"]:
            return pod
        return None

    second = wait_for(replacement, what="the replacement pod")
    env = {e["name"]: e.get("value") for e in second["spec"]["containers"][0]["env"]}
    assert env["SIP_WORKER_AUTO_ANSWER_INTERVAL"] == "7"
    wait_for(lambda: cluster.status(namespace, "alice").get("observedGeneration") == 2)
    assert "Replacing" in cluster.event_reasons(namespace, "alice")
    # A change that does not concern the pod (retention) keeps it.
    cluster.patch_session(namespace, "alice", {"spec": {"history": {"retainAfterDeletion": "1h"}}})
    wait_for(lambda: cluster.status(namespace, "alice").get("observedGeneration") == 3)
    assert cluster.pods(namespace)["sip-alice"]["metadata"]["uid"] == second["metadata"]["uid"]


def test_deleting_the_session_removes_its_objects_and_lets_the_history_expire(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    spec = {**account_spec(), "history": {"retainAfterDeletion": "2h"}}
    cluster.create_session(namespace, "alice", spec)
    cluster.create_session(namespace, "keep", account_spec())
    wait_for(lambda: len(cluster.pods(namespace)) == 2, what="both pods")
    wait_for(lambda: len(cluster.secrets(namespace)) == 3, what="both token Secrets")
    redis.xadd(stream_key(namespace, "alice"), sip_status_entry("ready", 1))
    redis.xadd(stream_key(namespace, "keep"), sip_status_entry("ready", 1))
    wait_for(lambda: cluster.status(namespace, "alice").get("lastStatus"), what="mirrored")
    assert redis.ttl(stream_key(namespace, "alice")) == -1  # no expiry while the session lives

    cluster.delete_session(namespace, "alice")
    wait_for(lambda: "alice" not in cluster.sessions(namespace), what="the SipSession gone")
    assert set(cluster.pods(namespace)) == {"sip-keep"}
    assert set(cluster.services(namespace)) == {"sip-keep"}
    assert set(cluster.secrets(namespace)) == {"alice-sip", "sip-keep-token"}
    ttl = redis.ttl(stream_key(namespace, "alice"))
    assert 0 < ttl <= 7200
    assert redis.ttl(stream_key(namespace, "keep")) == -1
    assert redis.xlen(stream_key(namespace, "alice")) == 1  # kept until it expires

    # A new session of the same name owns its history again: no expiry.
    cluster.create_session(namespace, "alice", account_spec())
    wait_for(lambda: cluster.pods(namespace).get("sip-alice"), what="the new pod")
    wait_for(lambda: redis.ttl(stream_key(namespace, "alice")) == -1, what="expiry removed")


def test_a_missing_secret_fails_clearly_and_recovers_when_it_appears(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_session(namespace, "erin", account_spec(account="erin@pbx", secret="erin-sip"))
    cluster.wait_phase(namespace, "erin", "Failed")
    message = cluster.status(namespace, "erin")["message"]
    assert f"Secret {namespace}/erin-sip not found" in message
    wait_for(lambda: "Failed" in cluster.event_reasons(namespace, "erin"), what="Failed event")
    warning = next(e for e in cluster.events(namespace, "erin") if e["reason"] == "Failed")
    assert warning["type"] == "Warning" and "erin-sip" in warning["message"]
    assert "sip-erin" not in cluster.pods(namespace)

    cluster.create_secret(namespace, "erin-sip", {"wrong-key": "x"})
    wait_for(
        lambda: "has no key 'password'" in cluster.status(namespace, "erin").get("message", ""),
        what="the missing key reported",
    )
    assert "sip-erin" not in cluster.pods(namespace)

    cluster.core.patch_namespaced_secret(
        "erin-sip", namespace, {"data": {"password": base64.b64encode(b"pw").decode()}}
    )
    wait_for(lambda: cluster.pods(namespace).get("sip-erin"), what="the pod after recovery")
    cluster.wait_phase(namespace, "erin", "Pending")
    wait_for(lambda: "Recovered" in cluster.event_reasons(namespace, "erin"), what="Recovered")


def test_only_the_watched_namespace_is_reconciled(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    other = f"{namespace}-other"
    cluster.create_secret(other, "alice-sip", {"password": "pw"})
    cluster.create_session(other, "alice", account_spec())
    cluster.create_session(namespace, "alice", account_spec())
    wait_for(lambda: cluster.pods(namespace).get("sip-alice"), what="the watched one's pod")
    cluster.wait_phase(namespace, "alice", "Pending")
    assert cluster.pods(other) == {} and cluster.status(other, "alice") == {}


def test_leftovers_of_a_deleted_namesake_are_replaced_and_strangers_left_alone(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    stale_owner = [
        {"apiVersion": "sip-operator.dev/v1alpha1", "kind": "SipSession", "name": "alice"}
        | {"uid": "uid-of-a-deleted-alice", "controller": True}
    ]
    container = {"name": "sip-worker", "image": "old"}
    cluster.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {
                "name": "sip-alice",
                "labels": MANAGED_LABELS,
                "ownerReferences": stale_owner,
            },
            "spec": {"containers": [container]},
        },
    )
    cluster.create_secret(namespace, "sip-alice-token", {"token": "old-token"})
    cluster.core.patch_namespaced_secret(
        "sip-alice-token", namespace, {"metadata": {"ownerReferences": stale_owner}}
    )
    cluster.core.create_namespaced_pod(
        namespace, {"metadata": {"name": "sip-bob"}, "spec": {"containers": [container]}}
    )

    alice = cluster.create_session(namespace, "alice", account_spec())
    cluster.create_session(namespace, "bob", account_spec())

    def replaced() -> bool:
        pod = cluster.pods(namespace).get("sip-alice")
        token = cluster.secrets(namespace).get("sip-alice-token")
        return bool(pod and token and _owned_by(pod, alice) and _owned_by(token, alice))

    wait_for(replaced, what="alice's leftovers replaced by her own pod and token")
    token = cluster.secrets(namespace)["sip-alice-token"]
    assert base64.b64decode(token["data"]["token"]) != b"old-token"
    cluster.wait_phase(namespace, "bob", "Failed")
    assert "not controlled by this SipSession" in cluster.status(namespace, "bob")["message"]
    assert "ownerReferences" not in cluster.pods(namespace)["sip-bob"]["metadata"]


def test_a_deleted_service_is_recreated_at_once(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    session = cluster.create_session(namespace, "alice", account_spec())
    first = wait_for(lambda: cluster.services(namespace).get("sip-alice"), what="the Service")
    pod = wait_for(lambda: cluster.pods(namespace).get("sip-alice"), what="the pod")
    cluster.core.delete_namespaced_service("sip-alice", namespace)

    def recreated() -> dict[str, Any] | None:
        service = cluster.services(namespace).get("sip-alice")
        return (
            service if service and service["metadata"]["uid"] != first["metadata"]["uid"] else None
        )

    second = wait_for(recreated, what="the Service recreated")
    assert _owned_by(second, session)
    assert second["spec"] == first["spec"]
    # Only the Service was missing: the pod is the same one.
    assert cluster.pods(namespace)["sip-alice"]["metadata"]["uid"] == pod["metadata"]["uid"]
