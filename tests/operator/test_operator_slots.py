"""Port slots: 60 hostNetwork sessions under the default 50 slots per node, across a restart.

The first 50 sessions get 50 different slots; the 10 beyond share slots 0-9 (the lowest with
the fewest holders), which the scheduler then keeps on different nodes. The emulator schedules
nothing, so the tests read the pod bodies: the hostPorts the scheduler would act on, the
worker's port settings, the Service's target.
"""

import collections
import functools
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.operator_harness import Cluster, OperatorProcess, account_spec, wait_for
from tests.support.redis_server import RedisServer

NAMESPACE = "slots"
SLOTS = 50  # the default SIP_OPERATOR_SLOTS_PER_NODE
SESSIONS = 60
BEFORE_RESTART = 40  # created while the first operator runs (it is killed during these)
HOST_NETWORK = {**account_spec(), "worker": {"hostNetwork": True}}
# The default port plan: slot s has SIP 5060+s, gRPC 50099+s, metrics 9464+s, RTP 20000+100s.
SIP, GRPC, METRICS, RTP, RTP_PER_SLOT = 5060, 50099, 9464, 20000, 100


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def _ports(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {port["name"]: port for port in container["ports"]}


def _slot(cluster: Cluster, name: str) -> int | None:
    slot = cluster.status(NAMESPACE, name).get("slot")
    return slot if isinstance(slot, int) else None


def _assert_runs_on_slot(cluster: Cluster, name: str, slot: int) -> None:
    pod = cluster.pods(NAMESPACE)[f"sip-{name}"]
    assert pod["spec"]["hostNetwork"] is True
    assert pod["metadata"]["labels"]["sip-operator.dev/slot"] == str(slot)
    (container,) = pod["spec"]["containers"]
    ports = _ports(container)
    assert ports["sip"] == {
        "name": "sip",
        "containerPort": SIP + slot,
        "hostPort": SIP + slot,
        "protocol": "UDP",
    }
    assert ports["grpc"]["containerPort"] == ports["grpc"]["hostPort"] == GRPC + slot
    assert ports["metrics"]["containerPort"] == ports["metrics"]["hostPort"] == METRICS + slot
    env = _env(container)
    assert env["SIP_WORKER_SIP_PORT"] == str(SIP + slot)
    assert env["SIP_WORKER_GRPC_PORT"] == str(GRPC + slot)
    assert env["SIP_WORKER_METRICS_PORT"] == str(METRICS + slot)
    assert env["SIP_WORKER_RTP_PORT"] == str(RTP + RTP_PER_SLOT * slot)
    assert env["SIP_WORKER_RTP_PORT_COUNT"] == str(RTP_PER_SLOT)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": GRPC + slot}
    # The Service keeps the usual port and targets the pod's gRPC port, the slot's.
    (service_port,) = cluster.services(NAMESPACE)[f"sip-{name}"]["spec"]["ports"]
    assert service_port["port"] == GRPC
    assert ports[service_port["targetPort"]]["containerPort"] == GRPC + slot


def _all_slotted(cluster: Cluster, names: list[str]) -> bool:
    pods = cluster.pods(NAMESPACE)
    return all(f"sip-{n}" in pods and _slot(cluster, n) is not None for n in names)


@pytest.mark.slow
def test_host_network_sessions_get_balanced_slots_across_a_restart_and_free_them(
    cluster: Cluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    cluster.create_secret(NAMESPACE, "alice-sip", {"password": "pw"})
    operator = OperatorProcess(cluster, redis_server.url, tmp_path / "operator.log")
    names = [f"h{i:02d}" for i in range(SESSIONS)]

    def create(batch: list[str]) -> None:
        for name in batch:
            cluster.create_session(NAMESPACE, name, HOST_NETWORK)

    try:
        operator.start(["--namespace", NAMESPACE])
        creator = threading.Thread(target=create, args=(names[:BEFORE_RESTART],))
        creator.start()
        wait_for(lambda: len(cluster.pods(NAMESPACE)) >= 10, what="the first pods", step=0.01)
        operator.kill()  # mid-way: slots recorded, pods made or not, sessions not seen yet
        pods_at_kill = {n: p["metadata"]["uid"] for n, p in cluster.pods(NAMESPACE).items()}
        assert len(pods_at_kill) < BEFORE_RESTART, "the kill came too late to prove anything"
        creator.join(120)

        operator.start(["--namespace", NAMESPACE])
        create(names[BEFORE_RESTART:])
        wait_for(lambda: _all_slotted(cluster, names), timeout=180, what="60 slotted pods")

        slots = {name: _slot(cluster, name) for name in names}
        holders = collections.Counter(slots.values())
        assert holders == {s: 2 if s < SESSIONS - SLOTS else 1 for s in range(SLOTS)}
        for name, slot in slots.items():
            assert slot is not None
            _assert_runs_on_slot(cluster, name, slot)
        # The restarted operator adopted every pod on the slot it was made for.
        assert {n: cluster.pods(NAMESPACE)[n]["metadata"]["uid"] for n in pods_at_kill} == (
            pods_at_kill
        )
        assert [path for method, path in cluster.emulator.requests() if method == "DELETE"] == []

        # A deleted session frees its slot: the next session gets it.
        deleted = next(name for name, slot in slots.items() if slot == 30)
        cluster.delete_session(NAMESPACE, deleted)
        wait_for(lambda: deleted not in cluster.sessions(NAMESPACE), what="the deletion")
        cluster.create_session(NAMESPACE, "late", HOST_NETWORK)
        wait_for(lambda: _all_slotted(cluster, ["late"]), what="the late session's pod")
        assert _slot(cluster, "late") == 30
        _assert_runs_on_slot(cluster, "late", 30)

        # A session that leaves hostNetwork frees its slot once its old pod is gone.
        leaving = next(name for name, slot in slots.items() if slot == 31)
        old_pod = cluster.pods(NAMESPACE)[f"sip-{leaving}"]["metadata"]["uid"]
        cluster.patch_session(NAMESPACE, leaving, {"spec": {"worker": {"hostNetwork": False}}})

        def replaced() -> bool:
            pod = cluster.pods(NAMESPACE).get(f"sip-{leaving}")
            return pod is not None and pod["metadata"]["uid"] != old_pod

        wait_for(replaced, what="the pod-network pod")
        wait_for(lambda: "slot" not in cluster.status(NAMESPACE, leaving), what="slot removed")
        (container,) = cluster.pods(NAMESPACE)[f"sip-{leaving}"]["spec"]["containers"]
        assert all("hostPort" not in port for port in container["ports"])
        cluster.create_session(NAMESPACE, "later", HOST_NETWORK)
        wait_for(lambda: _all_slotted(cluster, ["later"]), what="the later session's pod")
        assert _slot(cluster, "later") == 31
    finally:
        operator.stop()
        operator.kill()
    assert "Traceback" not in operator.log()


@pytest.mark.parametrize("scope", [["--namespace", NAMESPACE], ["--all-namespaces"]])
def test_a_restart_keeps_recorded_slots_and_moves_those_beyond_the_slots_per_node(
    cluster: Cluster, redis_server: RedisServer, tmp_path: Path, scope: list[str]
) -> None:
    """Slots come from every session's status at start (listed in the watched namespaces, or
    cluster-wide), also from sessions the restarted operator cannot run (a Failed one): they
    are never handed out twice. A slot the lowered setting no longer has is replaced by a new
    one, and the pod with it."""
    cluster.create_secret(NAMESPACE, "alice-sip", {"password": "pw"})
    cluster.create_secret(NAMESPACE, "bob-sip", {"password": "pw"})
    bob = {**account_spec("bob@pbx.example.com", "bob-sip"), "worker": {"hostNetwork": True}}
    operator = OperatorProcess(cluster, redis_server.url, tmp_path / "operator.log")
    try:
        operator.start(scope, env={"SIP_OPERATOR_SLOTS_PER_NODE": "3"})
        for name, spec in (("a", bob), ("b", HOST_NETWORK), ("c", HOST_NETWORK)):
            cluster.create_session(NAMESPACE, name, spec)
            wait_for(functools.partial(_all_slotted, cluster, [name]), what=f"{name}'s pod")
        assert [_slot(cluster, n) for n in ("a", "b", "c")] == [0, 1, 2]
        operator.kill()
        pods = {n: p["metadata"]["uid"] for n, p in cluster.pods(NAMESPACE).items()}
        # While it is down, session a loses its pod and its password: it cannot run for now.
        cluster.core.delete_namespaced_secret("bob-sip", NAMESPACE)
        cluster.core.delete_namespaced_pod("sip-a", NAMESPACE)

        operator.start(scope, env={"SIP_OPERATOR_SLOTS_PER_NODE": "2"})
        cluster.wait_phase(NAMESPACE, "a", "Failed")
        wait_for(
            lambda: (
                cluster.pods(NAMESPACE).get("sip-c", {}).get("metadata", {}).get("uid")
                not in (None, pods["sip-c"])
            ),
            what="c's pod replaced",
        )
        assert _slot(cluster, "c") == 0  # slot 2 is gone; 0 and 1 had one holder each
        _assert_runs_on_slot(cluster, "c", 0)
        cluster.create_session(NAMESPACE, "d", HOST_NETWORK)
        wait_for(lambda: _all_slotted(cluster, ["d"]), what="d's pod")
        assert _slot(cluster, "d") == 1  # a still holds 0, with c
        assert _slot(cluster, "a") == 0 and "sip-a" not in cluster.pods(NAMESPACE)
        assert cluster.pods(NAMESPACE)["sip-b"]["metadata"]["uid"] == pods["sip-b"]
        _assert_runs_on_slot(cluster, "b", 1)
    finally:
        operator.stop()
        operator.kill()
    assert "Traceback" not in operator.log()


def test_a_pod_network_session_gets_no_slot_and_the_usual_ports(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_session(namespace, "plain", account_spec())
    pod = wait_for(lambda: cluster.pods(namespace).get("sip-plain"), what="the pod")
    cluster.wait_phase(namespace, "plain", "Pending")
    assert "slot" not in cluster.status(namespace, "plain")
    assert "sip-operator.dev/slot" not in pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    assert _ports(container) == {
        "grpc": {"name": "grpc", "containerPort": GRPC, "protocol": "TCP"},
        "sip": {"name": "sip", "containerPort": SIP, "protocol": "UDP"},
        "metrics": {"name": "metrics", "containerPort": METRICS, "protocol": "TCP"},
    }
    env = _env(container)
    assert (env["SIP_WORKER_SIP_PORT"], env["SIP_WORKER_GRPC_PORT"]) == (str(SIP), str(GRPC))
    # RTP stays within the range a NetworkPolicy opens (the defaults: 4000 and 100 ports).
    assert (env["SIP_WORKER_RTP_PORT"], env["SIP_WORKER_RTP_PORT_COUNT"]) == ("4000", "100")
