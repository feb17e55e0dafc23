"""The status mirror and the operator against a real three-master Redis Cluster (?cluster=true)."""

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from sip_contract.status import SHARDS
from sip_operator.status_mirror import CLIENT_NAME, COMMAND_CONNECTIONS, SessionKey, StatusMirror
from tests.support.operator_harness import (
    Cluster,
    OperatorProcess,
    account_spec,
    sip_status_entry,
    stream_key,
    wait_for,
)
from tests.support.redis_cluster import RedisClusterOfThree
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow
NAMESPACE = "calls"


def _spread_sessions(redis_cluster: RedisClusterOfThree, count: int) -> list[str]:
    """Session names whose streams lie on every node of the cluster."""
    names = [f"s{n}" for n in range(count)]
    nodes = {redis_cluster.node_serving(stream_key(NAMESPACE, n)).port for n in names}
    assert len(nodes) == 3, "the sessions should cover all three masters"
    return names


def _blocked_readers(node: RedisServer) -> int:
    return sum(1 for c in node.client().client_list() if c.get("cmd") == "xread")


def _mirror_connections(node: RedisServer) -> tuple[int, int]:
    """The mirror's connections to `node`: all of them, and those whose last command was XREAD
    (a reader that just connected shows CLIENT ID or HELLO instead)."""
    mine = [c for c in node.client().client_list() if c.get("name") == CLIENT_NAME]
    return len(mine), sum(1 for c in mine if c.get("cmd") == "xread")


async def _mirror_across_the_cluster(redis_cluster: RedisClusterOfThree) -> None:
    early = _spread_sessions(redis_cluster, 8)
    cluster_client = redis.RedisCluster.from_url(redis_cluster.url.replace("?cluster=true", ""))
    early_slots = {cluster_client.keyslot(stream_key(NAMESPACE, n)) for n in early}
    # The late one joins the shard of an early one: its reader, blocked, must be woken.
    late = next(
        name
        for name in (f"late{n}" for n in range(100))
        if cluster_client.keyslot(stream_key(NAMESPACE, name)) in early_slots
    )
    seen: dict[SessionKey, list[str]] = {}
    mirror = StatusMirror(redis_cluster.url, None, block_seconds=30, retry_seconds=0.2)
    runner = asyncio.create_task(
        mirror.run(lambda key, status: seen.setdefault(key, []).append(status.type))
    )

    async def until(condition: object, what: str) -> None:
        deadline = time.monotonic() + 60
        while not callable(condition) or not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    try:
        cluster_client.xadd(stream_key(NAMESPACE, early[0]), sip_status_entry("registered", 1))
        for name in early:
            mirror.follow((NAMESPACE, name))
        await until(lambda: seen.get((NAMESPACE, early[0])) == ["registered"], "the newest entry")
        # One blocked reader per shard (hash slot) in use, on the node serving it.
        slots = {cluster_client.keyslot(stream_key(NAMESPACE, n)) for n in early}
        await until(
            lambda: sum(_blocked_readers(node) for node in redis_cluster.nodes) == len(slots),
            "a blocked XREAD per slot",
        )
        assert mirror.readers == len(slots)
        for node in redis_cluster.nodes:
            served = {
                cluster_client.keyslot(stream_key(NAMESPACE, n))
                for n in early
                if redis_cluster.node_serving(stream_key(NAMESPACE, n)) is node
            }
            assert _blocked_readers(node) == len(served)

        for seq, name in enumerate(early, start=2):
            cluster_client.xadd(stream_key(NAMESPACE, name), sip_status_entry("ready", seq))
        for name in early:
            await until(lambda n=name: seen.get((NAMESPACE, n), [])[-1:] == ["ready"], name)

        # A session followed while every reader is blocked (30 s) is read at once, and its
        # shard's reader, woken, follows it from then on.
        cluster_client.xadd(stream_key(NAMESPACE, late), sip_status_entry("registered", 1))
        started = time.monotonic()
        mirror.follow((NAMESPACE, late))
        await until(lambda: (NAMESPACE, late) in seen, "the late session")
        cluster_client.xadd(stream_key(NAMESPACE, late), sip_status_entry("ready", 2))
        await until(lambda: seen[(NAMESPACE, late)][-1:] == ["ready"], "the late one moving")
        assert time.monotonic() - started < 15

        # Unfollowed: no longer delivered; the retention is set on whichever node holds it.
        mirror.unfollow((NAMESPACE, early[0]))
        assert await mirror.expire((NAMESPACE, early[0]), 3600)
        assert 0 < cluster_client.ttl(stream_key(NAMESPACE, early[0])) <= 3600
        cluster_client.xadd(stream_key(NAMESPACE, early[0]), sip_status_entry("registered", 9))
        cluster_client.xadd(stream_key(NAMESPACE, early[1]), sip_status_entry("registered", 9))
        await until(lambda: seen[(NAMESPACE, early[1])][-1:] == ["registered"], "a followed one")
        assert seen[(NAMESPACE, early[0])][-1] == "ready"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await mirror.close()
        cluster_client.close()


def test_the_mirror_follows_streams_on_every_node_with_blocking_reads(
    redis_cluster: RedisClusterOfThree,
) -> None:
    asyncio.run(asyncio.wait_for(_mirror_across_the_cluster(redis_cluster), 120))


SESSIONS = 300
ROUNDS = 5


async def _mirror_many_sessions(redis_cluster: RedisClusterOfThree) -> None:
    namespace = "many"  # the cluster is shared with other tests: streams of its own
    sessions = [(namespace, f"s{n}") for n in range(SESSIONS)]
    cluster_client = redis.RedisCluster.from_url(redis_cluster.url.replace("?cluster=true", ""))
    seen: dict[SessionKey, list[int]] = {session: [] for session in sessions}
    mirror = StatusMirror(redis_cluster.url, None, block_seconds=30, retry_seconds=0.2)
    runner = asyncio.create_task(
        mirror.run(lambda key, status: seen[key].append(int(status.callee_id)))
    )
    # The bound on each node: a reader per shard it serves, the command client's connections,
    # and the one redis-py's cluster discovery (CLUSTER SLOTS) keeps to each node.
    one_key_per_shard = {cluster_client.keyslot(stream_key(*s)): stream_key(*s) for s in sessions}
    assert len(one_key_per_shard) == SHARDS
    served = {node.port: 0 for node in redis_cluster.nodes}  # shards per node
    for key in one_key_per_shard.values():
        served[redis_cluster.node_serving(key).port] += 1
    peak = {node.port: 0 for node in redis_cluster.nodes}
    reading = {node.port: 0 for node in redis_cluster.nodes}

    def count_connections() -> None:
        for node in redis_cluster.nodes:
            total, readers = _mirror_connections(node)
            peak[node.port] = max(peak[node.port], total)
            reading[node.port] = readers

    def append_round(seq: int) -> None:
        pipe = cluster_client.pipeline()
        for session in sessions:
            entry = sip_status_entry("ready", seq, callee_id=str(seq))
            pipe.xadd(stream_key(*session), entry)
        pipe.execute()
        count_connections()

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    try:
        # Half are followed before anything is written, half while the statuses come.
        for session in sessions[: SESSIONS // 2]:
            mirror.follow(session)
        await until(lambda: mirror.readers == SHARDS, "a reader per shard")
        for seq in range(1, ROUNDS + 1):
            await asyncio.to_thread(append_round, seq)
            if seq == 2:
                for session in sessions[SESSIONS // 2 :]:
                    mirror.follow(session)
        await until(lambda: all(s[-1:] == [ROUNDS] for s in seen.values()), "every status")
        count_connections()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await mirror.close()
        cluster_client.close()

    for session in sessions[: SESSIONS // 2]:
        assert seen[session] == list(range(1, ROUNDS + 1)), session  # all, in order, once each
    for session in sessions[SESSIONS // 2 :]:
        # From the newest entry when it was followed on, each later one.
        first = seen[session][0]
        assert seen[session] == list(range(first, ROUNDS + 1)), session
    # One reader per shard, each on the node serving it, and the command client's connections,
    # whatever the number of sessions.
    assert reading == served
    assert all(peak[port] <= served[port] + COMMAND_CONNECTIONS + 1 for port in peak), peak
    assert sum(peak.values()) <= SHARDS + len(redis_cluster.nodes) * (COMMAND_CONNECTIONS + 1)


def test_the_mirror_follows_300_sessions_with_a_bounded_number_of_connections(
    redis_cluster: RedisClusterOfThree,
) -> None:
    asyncio.run(asyncio.wait_for(_mirror_many_sessions(redis_cluster), 120))


def test_the_operator_mirrors_statuses_through_a_redis_cluster(
    redis_cluster: RedisClusterOfThree, cluster: Cluster, tmp_path: Path
) -> None:
    names = _spread_sessions(redis_cluster, 6)
    cluster_client = redis.RedisCluster.from_url(redis_cluster.url.replace("?cluster=true", ""))
    cluster.create_secret(NAMESPACE, "alice-sip", {"password": "pw"})
    operator = OperatorProcess(cluster, redis_cluster.url, tmp_path / "operator.log")
    operator.start(["--namespace", NAMESPACE])
    try:
        for name in names:
            cluster.create_session(NAMESPACE, name, account_spec())
        for name in names:
            pod = wait_for(lambda n=name: cluster.pods(NAMESPACE).get(f"sip-{n}"), what=name)
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
            assert env["SIP_WORKER_REDIS_URL"] == redis_cluster.url  # the workers write there
            cluster.set_pod_status(NAMESPACE, f"sip-{name}", "Running", ready=True)
        for name in names:
            cluster_client.xadd(stream_key(NAMESPACE, name), sip_status_entry("ready", 1))
        for name in names:
            cluster.wait_phase(NAMESPACE, name, "Ready")

        cluster.delete_session(NAMESPACE, names[0])
        wait_for(lambda: names[0] not in cluster.sessions(NAMESPACE), what="the session gone")
        assert cluster_client.ttl(stream_key(NAMESPACE, names[0])) > 0
        assert cluster_client.ttl(stream_key(NAMESPACE, names[1])) == -1
    finally:
        operator.stop()
        operator.kill()
        cluster_client.close()
    log = operator.log()
    assert "Traceback" not in log and "unreadable" not in log, log[-5000:]


async def _mirror_through_a_node_outage(redis_cluster: RedisClusterOfThree) -> None:
    names = _spread_sessions(redis_cluster, 9)
    cluster_client = redis.RedisCluster.from_url(redis_cluster.url.replace("?cluster=true", ""))
    seen: dict[SessionKey, str] = {}
    mirror = StatusMirror(redis_cluster.url, None, block_seconds=2, retry_seconds=0.2)
    runner = asyncio.create_task(mirror.run(lambda key, status: seen.update({key: status.type})))

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 90
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    try:
        for name in names:
            cluster_client.xadd(stream_key(NAMESPACE, name), sip_status_entry("registered", 1))
            mirror.follow((NAMESPACE, name))
        await until(lambda: len(seen) == len(names), "every session's newest entry")
        down = redis_cluster.node_serving(stream_key(NAMESPACE, names[0]))
        down.stop()
        await asyncio.sleep(1)
        down.start()
        await until(lambda: all(_cluster_ok(node) for node in redis_cluster.nodes), "cluster ok")
        for name in names:
            cluster_client.xadd(stream_key(NAMESPACE, name), sip_status_entry("ready", 2))
        await until(lambda: set(seen.values()) == {"ready"}, "every session after the outage")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await mirror.close()
        cluster_client.close()


def _cluster_ok(node: RedisServer) -> bool:
    try:
        info = node.client().execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False
    return b"cluster_state:ok" in info


def test_the_mirror_rides_out_a_cluster_node_outage(
    redis_cluster: RedisClusterOfThree, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sip_operator.status_mirror"):
        asyncio.run(asyncio.wait_for(_mirror_through_a_node_outage(redis_cluster), 180))
    messages = [record.getMessage() for record in caplog.records]
    assert any("unreadable" in m for m in messages), messages  # the outage was noticed
    assert any("reachable again" in m for m in messages), messages
