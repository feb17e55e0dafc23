"""Killing the operator in the middle of 50 creations: the restarted one duplicates nothing."""

import threading
from pathlib import Path

import pytest

from tests.support.operator_harness import Cluster, OperatorProcess, account_spec, wait_for
from tests.support.redis_server import RedisServer

SESSIONS = 50
NAMESPACE = "restart"


@pytest.mark.slow
def test_a_killed_and_restarted_operator_reconciles_all_without_duplicates(
    cluster: Cluster, redis_server: RedisServer, tmp_path: Path
) -> None:
    cluster.create_secret(NAMESPACE, "alice-sip", {"password": "pw"})
    operator = OperatorProcess(cluster, redis_server.url, tmp_path / "operator.log")
    names = [f"s{i:02d}" for i in range(SESSIONS)]
    created = threading.Event()

    def create_all() -> None:
        for name in names:
            cluster.create_session(NAMESPACE, name, account_spec())
        created.set()

    try:
        operator.start(["--all-namespaces"])
        creator = threading.Thread(target=create_all)
        creator.start()
        wait_for(lambda: len(cluster.pods(NAMESPACE)) >= 10, what="the first pods", step=0.01)
        operator.kill()  # mid-way: no cleanup, some sessions half done, others not seen yet
        pods_at_kill = {n: p["metadata"]["uid"] for n, p in cluster.pods(NAMESPACE).items()}
        tokens_at_kill = {n: s["data"] for n, s in cluster.secrets(NAMESPACE).items()}
        assert len(pods_at_kill) < SESSIONS, "the kill came too late to prove anything"
        creator.join(120)
        assert created.is_set()

        operator.start(["--all-namespaces"])

        def all_reconciled() -> bool:
            statuses = [cluster.status(NAMESPACE, n) for n in names]
            return len(cluster.pods(NAMESPACE)) == SESSIONS and all(
                s.get("phase") == "Pending" and s.get("podName") for s in statuses
            )

        wait_for(all_reconciled, timeout=180, what="all 50 sessions reconciled")
    finally:
        operator.stop()
        operator.kill()

    sessions = cluster.sessions(NAMESPACE)
    pods, services = cluster.pods(NAMESPACE), cluster.services(NAMESPACE)
    tokens = {n: s for n, s in cluster.secrets(NAMESPACE).items() if n != "alice-sip"}
    assert len(pods) == len(services) == len(tokens) == SESSIONS
    for name in names:
        uid = sessions[name]["metadata"]["uid"]
        for child in (pods[f"sip-{name}"], services[f"sip-{name}"], tokens[f"sip-{name}-token"]):
            (owner,) = child["metadata"]["ownerReferences"]
            assert owner["uid"] == uid and owner["controller"] is True
        assert sessions[name]["status"]["podName"] == f"sip-{name}"
    # What existed before the kill was adopted, not replaced: same pods, same tokens.
    assert {n: pods[n]["metadata"]["uid"] for n in pods_at_kill} == pods_at_kill
    assert {n: cluster.secrets(NAMESPACE)[n]["data"] for n in tokens_at_kill} == tokens_at_kill
    deletes = [path for method, path in cluster.emulator.requests() if method == "DELETE"]
    assert deletes == []
    assert "Traceback" not in operator.log()
