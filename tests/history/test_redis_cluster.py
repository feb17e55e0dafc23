"""The history through a local three-master Redis Cluster."""

import time
from pathlib import Path

import pytest

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import stream_key
from sip_worker.redis_history import HistoryConfigError, open_history
from tests.support.redis_cluster import RedisClusterOfThree
from tests.support.sipp import Sipp
from tests.worker.conftest import SIPP_PASSWORD, SIPP_USER, start_session, start_worker

pytestmark = pytest.mark.slow
WAIT = 30.0


def test_the_history_is_written_and_reloaded_through_the_cluster(
    redis_cluster: RedisClusterOfThree,
) -> None:
    statuses = [
        SipStatus(status_type=kind, callee_id=f"sip:{kind}@pbx.example")  # type: ignore[arg-type]
        for kind in (SipStatus.registered, SipStatus.ready, SipStatus.outgoing_call_initiated)
    ]
    # Sessions whose keys hash to different nodes all work.
    sessions = [f"team-{n}/session" for n in range(6)]
    serving = {redis_cluster.node_serving(stream_key(session)).port for session in sessions}
    assert len(serving) > 1
    for session in sessions:
        history = open_history(redis_cluster.url, session, 100, environ={})
        for item in statuses:
            history.append(item)
        assert history.wait_durable(WAIT)
        history.close()

    for session in sessions:
        node = redis_cluster.node_serving(stream_key(session))
        entries = node.client().xrange(stream_key(session))
        assert [fields[b"type"] for _id, fields in entries] == [
            b"registered",
            b"ready",
            b"outgoing_call_initiated",
        ]
        reloaded = open_history(redis_cluster.url, session, 100, environ={})
        try:
            assert reloaded.entries() == statuses
        finally:
            reloaded.close()


def test_a_cluster_node_without_cluster_true_is_refused_with_the_fix(
    redis_cluster: RedisClusterOfThree,
) -> None:
    key = stream_key("elsewhere/session")
    owner = redis_cluster.node_serving(key)
    other = next(node for node in redis_cluster.nodes if node is not owner)
    with pytest.raises(HistoryConfigError, match=r"add \?cluster=true to the URL"):
        open_history(f"redis://127.0.0.1:{other.port}/0", "elsewhere/session", environ={})


def test_a_worker_writes_and_reloads_its_history_through_the_cluster(
    redis_cluster: RedisClusterOfThree, tmp_path: Path
) -> None:
    session = "cluster/worker-session"
    registrar = Sipp(
        "registrar_auth.xml",
        tmp_path / "sipp",
        variables={"user": SIPP_USER, "pass": SIPP_PASSWORD},
        args=["-m", "1"],
    )
    workers = []
    try:
        registrar.start()
        workers.append(start_worker(redis_cluster.url, tmp_path / "w1", ["--session-key", session]))
        start_session(workers[0], registrar, auto_answer_interval=1)
        history = workers[0].history()
        assert workers[0].types() == ["registered", "ready"]
        node = redis_cluster.node_serving(stream_key(session))
        deadline = time.monotonic() + WAIT
        while node.client().xlen(stream_key(session)) < len(history):
            assert time.monotonic() < deadline
            time.sleep(0.05)

        workers[0].process.kill()
        workers.append(start_worker(redis_cluster.url, tmp_path / "w2", ["--session-key", session]))
        assert workers[1].history() == history
    finally:
        for worker in workers:
            worker.stop()
        registrar.stop()
