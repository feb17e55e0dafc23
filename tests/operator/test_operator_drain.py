"""Spec changes never cut a live call: the real operator waits for it (up to drainTimeout).

The test plays the kubelet (pod status) and the worker (statuses in the session's stream).
"""

import time
from typing import Any

import redis

from tests.support.operator_harness import (
    Cluster,
    OperatorProcess,
    account_spec,
    sip_status_entry,
    stream_key,
    wait_for,
)
from tests.support.redis_server import RedisServer

POD = "sip-alice"
NEW_IMAGE = "registry.test/sip-worker:next"
DRAIN_DEADLINE = "sip-operator.dev/drain-deadline"


def _in_call(
    cluster: Cluster, namespace: str, client: "redis.Redis[bytes]", spec: dict[str, Any]
) -> dict[str, Any]:
    """Session alice with `spec`, its worker pod ready and in a call; returns the pod."""
    cluster.create_session(namespace, "alice", spec)
    pod = wait_for(lambda: cluster.pods(namespace).get(POD), what="the pod")
    cluster.set_pod_status(namespace, POD, "Running", ready=True)
    stream = stream_key(namespace, "alice")
    client.xadd(stream, sip_status_entry("ready", 1))
    client.xadd(stream, sip_status_entry("outgoing_call_connected", 2, callee_id="bob"))
    cluster.wait_phase(namespace, "alice", "InCall")
    return pod


def _pending(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return wait_for(
        lambda: cluster.status(namespace, "alice").get("pendingUpdate"),
        what=f"a pending update (status: {cluster.status(namespace, 'alice')})",
    )


def _replacement(cluster: Cluster, namespace: str, old: dict[str, Any]) -> dict[str, Any]:
    def new_pod() -> dict[str, Any] | None:
        pod = cluster.pods(namespace).get(POD)
        return pod if pod and pod["metadata"]["uid"] != old["metadata"]["uid"] else None

    return wait_for(new_pod, what="the replacement pod")


def _condition(cluster: Cluster, namespace: str, kind: str) -> dict[str, Any]:
    conditions = cluster.status(namespace, "alice")["conditions"]
    return next(c for c in conditions if c["type"] == kind)


def _events(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(namespace, "alice") if e["reason"] == reason]


def _image(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["image"])


def test_a_spec_change_mid_call_waits_for_the_call_then_replaces_the_pod(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    first = _in_call(cluster, namespace, client, account_spec())
    (container,) = first["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SIP_WORKER_DRAIN_TIMEOUT"] == "3600"  # the default, 1h
    # The drain, then the worker's soft shutdown (SIP_OPERATOR_WORKER_SHUTDOWN_GRACE 20), + 10 s.
    assert first["spec"]["terminationGracePeriodSeconds"] == 3600 + 20 + 10
    # The worker reads the drain deadline annotation as a file.
    (drain,) = [v for v in first["spec"]["volumes"] if "downwardAPI" in v]
    (item,) = drain["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{DRAIN_DEADLINE}']"
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == drain["name"]]
    assert env["SIP_WORKER_DRAIN_DEADLINE_FILE"] == f"{mount['mountPath']}/{item['path']}"

    cluster.patch_session(namespace, "alice", {"spec": {"worker": {"image": NEW_IMAGE}}})
    pending = _pending(cluster, namespace)
    assert pending["reason"] == "waiting for the call in progress to end"
    assert pending["generation"] == 2
    condition = _condition(cluster, namespace, "UpdatePending")
    assert (condition["status"], condition["reason"]) == ("True", "CallInProgress")
    status = cluster.status(namespace, "alice")
    assert status["phase"] == "InCall" and status["observedGeneration"] == 1
    wait_for(lambda: _events(cluster, namespace, "UpdatePending"), what="the UpdatePending event")
    # The worker learns the deadline through the pod's annotation (a downward-API file).
    wait_for(
        lambda: (
            cluster.pods(namespace)[POD]["metadata"]["annotations"].get(DRAIN_DEADLINE)
            == pending["deadline"]
        ),
        what="the drain deadline on the pod",
    )
    pod = cluster.pods(namespace)[POD]
    assert pod["metadata"]["uid"] == first["metadata"]["uid"] and _image(pod) == _image(first)
    assert "Replacing" not in cluster.event_reasons(namespace, "alice")

    # The call goes on (a status of it): still no replacement.
    client.xadd(stream_key(namespace, "alice"), sip_status_entry("soft_hangup_initiated", 3))
    wait_for(
        lambda: cluster.status(namespace, "alice")["lastStatus"]["type"] == "soft_hangup_initiated"
    )
    assert cluster.pods(namespace)[POD]["metadata"]["uid"] == first["metadata"]["uid"]

    client.xadd(stream_key(namespace, "alice"), sip_status_entry("outgoing_call_finished", 4))
    second = _replacement(cluster, namespace, first)
    assert _image(second) == NEW_IMAGE
    assert DRAIN_DEADLINE not in (second["metadata"].get("annotations") or {})
    (replacing,) = _events(cluster, namespace, "Replacing")
    assert replacing["type"] == "Normal"
    assert "now that no call is in progress" in replacing["message"]
    wait_for(lambda: cluster.status(namespace, "alice").get("observedGeneration") == 2)
    assert "pendingUpdate" not in cluster.status(namespace, "alice")
    assert _condition(cluster, namespace, "UpdatePending")["status"] == "False"
    assert len(_events(cluster, namespace, "UpdatePending")) == 1


def test_a_call_that_outlasts_the_drain_timeout_is_replaced_anyway(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    spec = {**account_spec(), "worker": {"drainTimeout": "3s"}}
    first = _in_call(cluster, namespace, redis_server.client(), spec)
    assert first["spec"]["terminationGracePeriodSeconds"] == 3 + 20 + 10

    cluster.patch_session(namespace, "alice", {"spec": {"worker": {"image": NEW_IMAGE}}})
    pending = _pending(cluster, namespace)
    assert pending["deadline"] > pending["since"]
    second = _replacement(cluster, namespace, first)
    assert _image(second) == NEW_IMAGE
    (replacing,) = _events(cluster, namespace, "Replacing")
    assert replacing["type"] == "Warning"
    assert "drainTimeout 3s passed" in replacing["message"]


def test_a_pod_lost_while_an_update_waits_is_recreated_at_once_with_the_new_spec(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    first = _in_call(cluster, namespace, redis_server.client(), account_spec())
    cluster.patch_session(namespace, "alice", {"spec": {"worker": {"image": NEW_IMAGE}}})
    _pending(cluster, namespace)

    cluster.set_pod_status(namespace, POD, "Failed", ready=False)  # evicted mid-call
    second = _replacement(cluster, namespace, first)
    assert _image(second) == NEW_IMAGE
    wait_for(lambda: "pendingUpdate" not in cluster.status(namespace, "alice"))
    assert "Replacing" not in cluster.event_reasons(namespace, "alice")


def test_a_spec_changed_back_during_the_wait_keeps_the_pod_and_clears_the_wait(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    first = _in_call(cluster, namespace, redis_server.client(), account_spec())
    cluster.patch_session(namespace, "alice", {"spec": {"worker": {"image": NEW_IMAGE}}})
    _pending(cluster, namespace)
    cluster.patch_session(namespace, "alice", {"spec": {"worker": {"image": None}}})

    wait_for(lambda: cluster.status(namespace, "alice").get("observedGeneration") == 3)
    assert "pendingUpdate" not in cluster.status(namespace, "alice")
    # A node drain later must not find the old deadline.
    wait_for(
        lambda: DRAIN_DEADLINE not in cluster.pods(namespace)[POD]["metadata"]["annotations"],
        what="the drain deadline removed",
    )
    assert cluster.pods(namespace)[POD]["metadata"]["uid"] == first["metadata"]["uid"]


def test_a_restarted_operator_keeps_waiting_with_the_original_deadline(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    first = _in_call(cluster, namespace, client, account_spec())
    cluster.patch_session(namespace, "alice", {"spec": {"worker": {"image": NEW_IMAGE}}})
    before = _pending(cluster, namespace)
    time.sleep(1.1)  # status times have whole seconds: a wait begun afresh would show

    operator.kill()
    operator.start(["--namespace", namespace])
    # A status the new operator mirrors tells that it has taken the session up.
    client.xadd(stream_key(namespace, "alice"), sip_status_entry("soft_hangup_initiated", 3))
    wait_for(
        lambda: cluster.status(namespace, "alice")["lastStatus"]["type"] == "soft_hangup_initiated"
    )
    after = cluster.status(namespace, "alice")["pendingUpdate"]
    assert (after["since"], after["deadline"]) == (before["since"], before["deadline"])
    assert cluster.pods(namespace)[POD]["metadata"]["uid"] == first["metadata"]["uid"]
    assert len(_events(cluster, namespace, "UpdatePending")) == 1

    client.xadd(stream_key(namespace, "alice"), sip_status_entry("outgoing_call_finished", 4))
    assert _image(_replacement(cluster, namespace, first)) == NEW_IMAGE


def _registered(cluster: Cluster, namespace: str) -> tuple[str, str, str]:
    condition = _condition(cluster, namespace, "Registered")
    return condition["status"], condition["reason"], condition["message"]


def _lose_and_regain_the_registration(
    cluster: Cluster, namespace: str, client: "redis.Redis[bytes]", first: int
) -> None:
    """The worker's statuses of a registration lost (refresh unanswered) and won back."""
    stream = stream_key(namespace, "alice")
    client.xadd(
        stream,
        sip_status_entry("session_registration_failed", first, description="408 Request Timeout"),
    )
    wait_for(
        lambda: (
            _registered(cluster, namespace)
            == (
                "False",
                "RegistrationFailed",
                "last status session_registration_failed: 408 Request Timeout",
            )
        ),
        what=f"Registered False (status: {cluster.status(namespace, 'alice')})",
    )
    client.xadd(stream, sip_status_entry("registered", first + 1))
    wait_for(
        lambda: _registered(cluster, namespace)[:2] == ("True", "Registered"),
        what=f"Registered True again (status: {cluster.status(namespace, 'alice')})",
    )


def test_the_registered_condition_follows_a_registration_lost_and_won_back_mid_call(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    """The newest statuses say nothing of the call, which goes on: InCall, and the spec
    change waits for the call's end, not for the registration's return."""
    client = redis_server.client()
    first = _in_call(cluster, namespace, client, account_spec())
    assert _registered(cluster, namespace)[:2] == ("True", "Registered")
    cluster.patch_session(namespace, "alice", {"spec": {"worker": {"image": NEW_IMAGE}}})
    assert _pending(cluster, namespace)["reason"] == "waiting for the call in progress to end"

    _lose_and_regain_the_registration(cluster, namespace, client, 3)
    status = cluster.status(namespace, "alice")
    assert status["phase"] == "InCall" and status["lastStatus"]["type"] == "registered"
    assert cluster.pods(namespace)[POD]["metadata"]["uid"] == first["metadata"]["uid"]
    assert _condition(cluster, namespace, "UpdatePending")["reason"] == "CallInProgress"

    client.xadd(stream_key(namespace, "alice"), sip_status_entry("outgoing_call_finished", 5))
    assert _image(_replacement(cluster, namespace, first)) == NEW_IMAGE


def test_a_restarted_operator_still_sees_the_call_behind_a_lost_registration(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    """An operator that starts after the registration was lost mid-call reads the stream's
    newest entries, not only the newest one: it waits for the call."""
    client = redis_server.client()
    first = _in_call(cluster, namespace, client, account_spec())
    operator.stop()
    client.xadd(
        stream_key(namespace, "alice"),
        sip_status_entry("session_registration_failed", 3, description="503 Service Unavailable"),
    )
    cluster.patch_session(namespace, "alice", {"spec": {"worker": {"image": NEW_IMAGE}}})
    operator.start(["--namespace", namespace])
    assert _pending(cluster, namespace)["reason"] == "waiting for the call in progress to end"
    status = cluster.status(namespace, "alice")
    assert status["phase"] == "InCall"
    assert _registered(cluster, namespace)[:2] == ("False", "RegistrationFailed")
    assert cluster.pods(namespace)[POD]["metadata"]["uid"] == first["metadata"]["uid"]


def test_a_trunk_session_that_sends_no_register_is_ready_but_not_registered(
    cluster: Cluster, operator: OperatorProcess, namespace: str, redis_server: RedisServer
) -> None:
    """spec.account.register: false: the worker records `ready` without `registered`."""
    cluster.create_session(
        namespace, "alice", {"account": {"name": "alice@trunk.example.com", "register": False}}
    )
    wait_for(lambda: cluster.pods(namespace).get(POD), what="the pod")
    cluster.set_pod_status(namespace, POD, "Running", ready=True)
    redis_server.client().xadd(stream_key(namespace, "alice"), sip_status_entry("ready", 1))
    cluster.wait_phase(namespace, "alice", "Ready")

    assert _condition(cluster, namespace, "Ready")["status"] == "True"
    assert _registered(cluster, namespace) == (
        "False",
        "RegistrationDisabled",
        "spec.account.register is false: the worker sends no REGISTER",
    )
    assert _events(cluster, namespace, "Registered") == []
