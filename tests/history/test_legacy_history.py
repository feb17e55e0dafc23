"""A legacy stream (`sip:{<session>}:history`, before the shards) is moved to the session's
sharded stream when its history opens: ids and order kept, resumable, nothing duplicated."""

from collections.abc import Iterator

import pytest
import redis

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import legacy_stream_key, stream_key
from sip_worker.redis_history import HistoryConfigError, RedisHistory, open_history
from tests.support.redis_cluster import RedisClusterOfThree
from tests.support.redis_server import RedisServer

SESSION = "ns/upgraded"
WAIT = 30.0


def status(number: int) -> SipStatus:
    result = SipStatus(
        account_name="alice@pbx.example",
        status_type=SipStatus.outgoing_call_connected,
        callee_id=f"sip:{number}@pbx.example",
    )
    result.timestamp.FromNanoseconds(1_700_000_000_000_000_000 + number * 1_000_000)
    return result


def write_legacy(client: redis.Redis | redis.RedisCluster, session: str, count: int) -> None:
    """What an old worker left: entries `<seq>-0` in the legacy stream."""
    for seq in range(1, count + 1):
        client.xadd(
            legacy_stream_key(session),
            {
                "type": "outgoing_call_connected",
                "seq": seq,
                "status": status(seq).SerializeToString(),
                "writer": "old-worker",
                "writer_seq": seq,
            },
            id=f"{seq}-0",
        )


@pytest.fixture()
def histories() -> Iterator[list[RedisHistory]]:
    opened: list[RedisHistory] = []
    yield opened
    for history in opened:
        history.close(timeout=1.0)


def ids(client: redis.Redis | redis.RedisCluster, key: str) -> list[bytes]:
    return [entry_id for entry_id, _fields in client.xrange(key)]


def test_the_legacy_stream_is_moved_with_its_ids_and_continued(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    client = redis_server.client()
    write_legacy(client, SESSION, 1500)  # more than one page of the copy
    history = open_history(redis_server.url, SESSION, 2000, environ={})
    histories.append(history)
    assert history.entries() == [status(n) for n in range(1, 1501)]
    assert client.exists(legacy_stream_key(SESSION)) == 0
    assert ids(client, stream_key(SESSION)) == [f"{n}-0".encode() for n in range(1, 1501)]

    history.append(status(1501))
    assert history.wait_durable(WAIT)
    assert ids(client, stream_key(SESSION))[-2:] == [b"1500-0", b"1501-0"]


def test_an_interrupted_migration_resumes_without_duplicates(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    client = redis_server.client()
    write_legacy(client, SESSION, 10)
    # The first 4 were copied when the previous start was interrupted.
    for entry_id, fields in client.xrange(legacy_stream_key(SESSION), count=4):
        client.xadd(stream_key(SESSION), fields, id=entry_id)
    history = open_history(redis_server.url, SESSION, 100, environ={})
    histories.append(history)
    assert history.entries() == [status(n) for n in range(1, 11)]
    assert ids(client, stream_key(SESSION)) == [f"{n}-0".encode() for n in range(1, 11)]
    assert client.exists(legacy_stream_key(SESSION)) == 0


def test_the_moved_stream_keeps_to_the_history_length(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    client = redis_server.client()
    write_legacy(client, SESSION, 10)
    history = open_history(redis_server.url, SESSION, 3, environ={})
    histories.append(history)
    assert history.entries() == [status(n) for n in (8, 9, 10)]
    assert ids(client, stream_key(SESSION)) == [b"8-0", b"9-0", b"10-0"]


def test_a_legacy_key_that_is_not_a_stream_is_refused_and_kept(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set(legacy_stream_key(SESSION), "something else")
    with pytest.raises(HistoryConfigError, match="exists but is not a stream"):
        open_history(redis_server.url, SESSION, environ={})
    assert client.get(legacy_stream_key(SESSION)) == b"something else"
    assert client.exists(stream_key(SESSION)) == 0


@pytest.mark.slow
def test_the_legacy_stream_is_moved_across_cluster_nodes(
    redis_cluster: RedisClusterOfThree, histories: list[RedisHistory]
) -> None:
    session = "cluster/upgraded"
    legacy, key = legacy_stream_key(session), stream_key(session)
    assert redis_cluster.node_serving(legacy) is not redis_cluster.node_serving(key)
    client = redis.RedisCluster.from_url(redis_cluster.url.replace("?cluster=true", ""))
    try:
        write_legacy(client, session, 5)
        history = open_history(redis_cluster.url, session, 100, environ={})
        histories.append(history)
        assert history.entries() == [status(n) for n in range(1, 6)]
        assert client.exists(legacy) == 0
        assert ids(client, key) == [f"{n}-0".encode() for n in range(1, 6)]
    finally:
        client.close()
