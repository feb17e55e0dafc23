"""The status mirror during an upgrade: a worker of the previous version still writes the legacy
stream (`sip:{<session>}:history`), then its replacement moves it to the sharded stream and
writes there. Every status reaches the mirror once, in order; on one server and on a cluster."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import legacy_stream_key, session_key, stream_key
from sip_operator.status_mirror import SessionKey, StatusMirror
from sip_worker.redis_history import open_history
from tests.support.operator_harness import sip_status_entry
from tests.support.redis_cluster import RedisClusterOfThree
from tests.support.redis_server import RedisServer

WAIT = 60.0
AnyRedis = redis.Redis | redis.RedisCluster


def _old_worker_writes(client: AnyRedis, session: SessionKey, seq: int) -> None:
    """An entry as the previous version's worker wrote it: id `<seq>-0`, in the legacy key."""
    entry = sip_status_entry("ready", seq, callee_id=str(seq))
    client.xadd(legacy_stream_key(session_key(*session)), entry, id=f"{seq}-0")


def _new_worker_starts_and_writes(url: str, session: SessionKey, seqs: range) -> None:
    """The real worker history: opening it moves the legacy stream; then it appends."""
    history = open_history(url, session_key(*session), 100, environ={})
    try:
        for seq in seqs:
            history.append(SipStatus(status_type=SipStatus.ready, callee_id=str(seq)))
        assert history.wait_durable(WAIT)
    finally:
        history.close()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _mirroring(mirror: StatusMirror, watched: SessionKey) -> AsyncIterator[list[str]]:
    """Runs `mirror` for the block; yields the callee ids of `watched`'s statuses as they come.
    Closes the mirror at the end."""
    seen: list[str] = []
    runner = asyncio.create_task(
        mirror.run(lambda key, status: seen.append(status.callee_id) if key == watched else None)
    )
    try:
        yield seen
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await mirror.close()


async def _follow_through_the_upgrade(url: str, client: AnyRedis, namespace: str) -> None:
    alice, bob, nobody = (namespace, "alice"), (namespace, "bob"), (namespace, "nobody")
    for seq in (1, 2, 3):
        _old_worker_writes(client, alice, seq)
    mirror = StatusMirror(url, None, block_seconds=30, retry_seconds=0.2, legacy_poll_seconds=0.1)
    async with _mirroring(mirror, alice) as seen:
        mirror.follow(alice)
        await _until(lambda: seen == ["1", "2", "3"], "the newest legacy entries")
        _old_worker_writes(client, alice, 4)
        await _until(lambda: seen[-1:] == ["4"], "the old worker's next status")
        # Written just before its replacement starts: read from the legacy stream or, moved
        # with its id, from the new one; either way once.
        _old_worker_writes(client, alice, 5)
        await asyncio.to_thread(_new_worker_starts_and_writes, url, alice, range(6, 9))
        assert client.exists(legacy_stream_key(session_key(*alice))) == 0
        await _until(lambda: seen[-1:] == ["8"], "the new worker's statuses")
        await asyncio.sleep(0.5)  # several legacy polls: nothing comes twice
        assert seen == ["1", "2", "3", "4", "5", "6", "7", "8"]

        # A deleted session's streams expire, the legacy one too.
        _old_worker_writes(client, bob, 1)
        assert await mirror.expire(bob, 3600)
        assert 0 < client.ttl(legacy_stream_key(session_key(*bob))) <= 3600
        assert not await mirror.expire(nobody, 3600)


def test_the_mirror_follows_a_legacy_stream_through_its_migration(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    asyncio.run(asyncio.wait_for(_follow_through_the_upgrade(redis_server.url, client, "ns"), 120))


@pytest.mark.slow
def test_the_mirror_follows_a_legacy_stream_through_its_migration_on_a_cluster(
    redis_cluster: RedisClusterOfThree,
) -> None:
    namespace = "legacy-cluster"
    alice = session_key(namespace, "alice")
    # The two streams lie on different nodes: the move crosses them.
    assert redis_cluster.node_serving(legacy_stream_key(alice)) is not redis_cluster.node_serving(
        stream_key(alice)
    )
    client = redis.RedisCluster.from_url(redis_cluster.url.replace("?cluster=true", ""))
    try:
        asyncio.run(
            asyncio.wait_for(_follow_through_the_upgrade(redis_cluster.url, client, namespace), 120)
        )
    finally:
        client.close()


def _exists_calls(client: "redis.Redis[bytes]") -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_exists", {}).get("calls", 0))


async def _back_off_then_follow(url: str, client: "redis.Redis[bytes]") -> None:
    """Sessions with neither stream yet: their polls back off (0.05 s doubling to 0.4 s), and an
    earlier version's first status of one of them still arrives, then the rest in order."""
    sessions = [("fleet", f"new-{number}") for number in range(20)]
    mirror = StatusMirror(
        url, None, retry_seconds=0.2, legacy_poll_seconds=0.05, legacy_poll_max_seconds=0.4
    )
    async with _mirroring(mirror, sessions[0]) as seen:
        for session in sessions:
            mirror.follow(session)
        await _until(lambda: all(mirror.has_read(s) for s in sessions), "every stream loaded")
        client.config_resetstat()
        await asyncio.sleep(3.0)
        # Polled each tick, 20 sessions would take 2 EXISTS each 0.05 s: some 2,400 in 3 s.
        # Backing off, each session is polled about 9 times: some 360.
        assert 0 < _exists_calls(client) <= 600
        for seq in (1, 2):
            _old_worker_writes(client, sessions[0], seq)
        await _until(lambda: seen == ["1", "2"], "the earlier version's first statuses")
        _old_worker_writes(client, sessions[0], 3)
        await _until(lambda: seen == ["1", "2", "3"], "its next status")


def test_sessions_with_no_stream_yet_are_polled_ever_less_often(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    asyncio.run(asyncio.wait_for(_back_off_then_follow(redis_server.url, client), 120))
