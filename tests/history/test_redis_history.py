"""RedisHistory against a real redis-server: order, reload, trimming, outages, idempotent
writes, concurrent writers, forward compatibility."""

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import stream_key
from sip_worker.redis_history import RedisHistory, open_history
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import ReplyLosingProxy

KEY = stream_key("ns/session-1")
WAIT = 30.0  # generous: the machine is shared


def status(number: int, kind: int = SipStatus.outgoing_call_connected) -> SipStatus:
    result = SipStatus(
        account_name="alice@pbx.example",
        status_type=kind,  # type: ignore[arg-type]
        callee_id=f"sip:{number}@pbx.example",
        headers={"X-Number": str(number)},
    )
    # Distinct, non-current timestamps: the stored ones must be these, not the write time.
    result.timestamp.FromNanoseconds(1_700_000_000_000_000_000 + number * 1_001_000)
    return result


@pytest.fixture()
def histories() -> Iterator[list[RedisHistory]]:
    """Closes every history a test opened."""
    opened: list[RedisHistory] = []
    yield opened
    for history in opened:
        history.close(timeout=1.0)


def open_on(server: RedisServer, histories: list[RedisHistory], max_len: int = 100) -> RedisHistory:
    history = open_history(server.url, "ns/session-1", max_len, environ={})
    histories.append(history)
    return history


def stream(server: RedisServer) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in server.client().xrange(KEY)]


def stored_statuses(server: RedisServer) -> list[SipStatus]:
    return [SipStatus.FromString(fields[b"status"]) for fields in stream(server)]


def test_entries_are_written_in_order_with_type_and_seq(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    history = open_on(redis_server, histories)
    appended = [status(n, kind) for n, kind in enumerate([1, 2, 4, 5, 13])]
    for item in appended:
        history.append(item)

    assert history.wait_durable(WAIT)
    entries = stream(redis_server)
    assert [SipStatus.FromString(e[b"status"]) for e in entries] == appended
    assert [e[b"type"] for e in entries] == [
        b"registered",
        b"ready",
        b"outgoing_call_initiated",
        b"outgoing_call_connected",
        b"outgoing_call_finished",
    ]
    assert [e[b"seq"] for e in entries] == [b"1", b"2", b"3", b"4", b"5"]
    ids = [entry_id for entry_id, _fields in redis_server.client().xrange(KEY)]
    assert ids == [b"1-0", b"2-0", b"3-0", b"4-0", b"5-0"]
    assert history.entries() == appended
    assert history.last() == appended[-1]
    assert history.buffer_depth == 0


def test_a_new_process_loads_the_history_and_continues_it(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    first = open_on(redis_server, histories)
    for number in range(3):
        first.append(status(number))
    first.close()

    second = open_on(redis_server, histories)
    assert second.entries() == [status(n) for n in range(3)]
    assert second.last() == status(2)
    second.append(status(3))
    assert second.wait_durable(WAIT)
    assert stored_statuses(redis_server) == [status(n) for n in range(4)]
    assert [e[b"seq"] for e in stream(redis_server)] == [b"1", b"2", b"3", b"4"]


def test_an_empty_stream_has_no_last_status(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    history = open_on(redis_server, histories)
    assert history.last() is None
    assert history.entries() == []


def test_the_stream_is_trimmed_to_exactly_max_len(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    history = open_on(redis_server, histories, max_len=5)
    for number in range(12):
        history.append(status(number))
        assert history.wait_durable(WAIT)  # each one reaches Redis: Redis trims

    assert redis_server.client().xlen(KEY) == 5
    assert stored_statuses(redis_server) == [status(n) for n in range(7, 12)]
    assert [e[b"seq"] for e in stream(redis_server)] == [b"8", b"9", b"10", b"11", b"12"]
    assert history.entries() == [status(n) for n in range(7, 12)]
    history.close()
    assert open_on(redis_server, histories, max_len=5).entries() == history.entries()


def test_close_writes_everything_queued(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    history = open_on(redis_server, histories, max_len=1000)
    for number in range(500):
        history.append(status(number))
    history.close()
    assert stored_statuses(redis_server) == [status(n) for n in range(500)]


def test_an_outage_loses_nothing_and_duplicates_nothing(
    redis_server: RedisServer,
    histories: list[RedisHistory],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sip_worker.redis_history")
    history = open_on(redis_server, histories)
    for number in range(3):
        history.append(status(number))
    assert history.wait_durable(WAIT)

    redis_server.stop()
    for number in range(3, 8):
        history.append(status(number))
    # Reads while Redis is down answer from memory.
    assert history.entries() == [status(n) for n in range(8)]
    assert history.last() == status(7)
    assert history.buffer_depth == 5
    # Several retries fail (logged at debug level only) before the server is back.
    wait_for(lambda: debug_retries(caplog) >= 3)
    assert not history.wait_durable(0.01)
    redis_server.start()

    assert history.wait_durable(WAIT)
    assert history.buffer_depth == 0
    assert stored_statuses(redis_server) == [status(n) for n in range(8)]
    assert [e[b"seq"] for e in stream(redis_server)] == [str(n).encode() for n in range(1, 9)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in warnings if "is unavailable" in m]) == 1
    assert len([m for m in warnings if "reachable again" in m]) == 1


def debug_retries(caplog: pytest.LogCaptureFixture) -> int:
    return len([r for r in caplog.records if "still unavailable" in r.getMessage()])


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_a_longer_outage_than_max_len_keeps_the_newest_like_trimming_would(
    redis_server: RedisServer,
    histories: list[RedisHistory],
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = open_on(redis_server, histories, max_len=4)
    redis_server.stop()
    for number in range(10):
        history.append(status(number))
    assert history.buffer_depth == 4
    redis_server.start()

    assert history.wait_durable(WAIT)
    assert stored_statuses(redis_server) == [status(n) for n in range(6, 10)]
    assert "the 6 oldest gave way to the 4-entry limit" in caplog.text


@pytest.fixture()
def proxy(redis_server: RedisServer) -> Iterator[ReplyLosingProxy]:
    proxy = ReplyLosingProxy(redis_server.port)
    yield proxy
    proxy.close()


def open_through(proxy: ReplyLosingProxy, histories: list[RedisHistory]) -> RedisHistory:
    history = open_history(f"redis://127.0.0.1:{proxy.port}/0", "ns/session-1", 100, environ={})
    histories.append(history)
    return history


def test_a_single_write_whose_reply_was_lost_is_not_written_twice(
    redis_server: RedisServer, histories: list[RedisHistory], proxy: ReplyLosingProxy
) -> None:
    history = open_through(proxy, histories)
    history.append(status(0))
    assert history.wait_durable(WAIT)

    proxy.lose_reply_to(b"XADD")
    history.append(status(1))
    assert proxy.reply_lost.wait(WAIT)
    history.append(status(2))
    assert history.wait_durable(WAIT)

    assert stored_statuses(redis_server) == [status(0), status(1), status(2)]
    assert [e[b"seq"] for e in stream(redis_server)] == [b"1", b"2", b"3"]


def test_a_batch_whose_reply_was_lost_is_not_written_twice(
    redis_server: RedisServer, histories: list[RedisHistory], proxy: ReplyLosingProxy
) -> None:
    history = open_through(proxy, histories)
    proxy.hold()
    history.append(status(0))  # the writer sends it and waits in the proxy...
    for number in range(1, 6):
        history.append(status(number))  # ...while these queue up into one batch
    proxy.lose_reply_to(b"EVALSHA")
    proxy.release()
    assert proxy.reply_lost.wait(WAIT)
    assert history.wait_durable(WAIT)

    assert stored_statuses(redis_server) == [status(n) for n in range(6)]
    assert [e[b"seq"] for e in stream(redis_server)] == [str(n).encode() for n in range(1, 7)]


@pytest.mark.parametrize("one_at_a_time", [True, False], ids=["single-writes", "batches"])
def test_two_writers_of_one_session_interleave_without_loss_or_duplicates(
    redis_server: RedisServer, histories: list[RedisHistory], one_at_a_time: bool
) -> None:
    old = open_on(redis_server, histories)
    old.append(status(0))
    assert old.wait_durable(WAIT)
    new = open_on(redis_server, histories)
    for number in range(1, 41):
        writer = old if number % 3 else new
        writer.append(status(number))
        if one_at_a_time:
            assert writer.wait_durable(WAIT)
    assert old.wait_durable(WAIT)
    assert new.wait_durable(WAIT)

    stored = stored_statuses(redis_server)
    assert sorted(stored, key=lambda s: s.timestamp.ToNanoseconds()) == [
        status(n) for n in range(41)
    ]
    if one_at_a_time:
        assert stored == [status(n) for n in range(41)]
    assert [e[b"seq"] for e in stream(redis_server)] == [str(n).encode() for n in range(1, 42)]
    from_new = [s for s in stored if s in new.entries()[1:]]
    assert from_new == [status(n) for n in range(1, 41) if n % 3 == 0]


def test_entries_with_unknown_fields_still_load(
    redis_server: RedisServer, histories: list[RedisHistory], caplog: pytest.LogCaptureFixture
) -> None:
    # A SipStatus from a later version: a field number this version does not know (99,
    # length-delimited "future"), and a stream entry with fields this version does not know.
    future_status = status(1).SerializeToString() + b"\x9a\x06\x06future"
    client = redis_server.client()
    client.xadd(KEY, {"status": status(0).SerializeToString(), "seq": 1})
    client.xadd(
        KEY,
        {"type": "future_type", "seq": 2, "status": future_status, "shard": "eu-1", "v": "9"},
    )
    client.xadd(KEY, {"type": "ready", "seq": 3, "status": b"\xff\xff not protobuf"})
    client.xadd(KEY, {"note": "an entry without a status"})

    history = open_on(redis_server, histories)
    loaded = history.entries()
    assert loaded[0] == status(0)
    assert loaded[1].callee_id == status(1).callee_id
    assert loaded[1].SerializeToString() == future_status  # the unknown field is kept
    assert len(loaded) == 2
    assert "2 entries without a readable status were skipped" in caplog.text

    history.append(status(2))
    assert history.wait_durable(WAIT)
    assert stream(redis_server)[-1][b"seq"] == b"4"


def test_close_with_redis_down_gives_up_after_its_timeout(
    redis_server: RedisServer, histories: list[RedisHistory], caplog: pytest.LogCaptureFixture
) -> None:
    history = open_on(redis_server, histories)
    redis_server.stop()
    history.append(status(0))
    started = time.monotonic()
    history.close(timeout=1.0)
    # Bounded: the timeout plus at most one connection attempt's own timeout.
    assert time.monotonic() - started < 10.0
    assert f"1 statuses of {KEY} could not be written" in caplog.text
