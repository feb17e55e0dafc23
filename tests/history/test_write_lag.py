"""The write lag RedisHistory reports (the sip_worker_history_write_seconds metric) against a
real redis-server: one lag per status written, from append() until Redis acknowledged it,
outages and lost replies included."""

import threading
import time
from collections.abc import Iterator

import pytest

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import stream_key
from sip_worker.redis_history import RedisHistory, open_history
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import ReplyLosingProxy

SESSION = "ns/lag"
KEY = stream_key(SESSION)
WAIT = 30.0  # generous: the machine is shared


def status(number: int) -> SipStatus:
    result = SipStatus(
        account_name="alice@pbx.example",
        status_type=SipStatus.outgoing_call_connected,
        callee_id=f"sip:{number}@pbx.example",
    )
    result.timestamp.FromNanoseconds(1_700_000_000_000_000_000 + number * 1_000_000)
    return result


class Lags:
    """Collects what the writer thread reports, one call at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[list[float]] = []

    def __call__(self, lags: list[float]) -> None:
        with self._lock:
            self.calls.append(list(lags))

    @property
    def all(self) -> list[float]:
        with self._lock:
            return [lag for call in self.calls for lag in call]


@pytest.fixture()
def histories() -> Iterator[list[RedisHistory]]:
    opened: list[RedisHistory] = []
    yield opened
    for history in opened:
        history.close(timeout=1.0)


def open_observed(url: str, histories: list[RedisHistory], lags: Lags) -> RedisHistory:
    history = open_history(url, SESSION, 1000, environ={}, on_written=lags)
    histories.append(history)
    return history


def test_one_positive_lag_per_status_singly_and_in_batches(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    lags = Lags()
    history = open_observed(redis_server.url, histories, lags)
    history.append(status(0))
    assert history.wait_durable(WAIT)
    # wait_durable returns only after the lags of what it waited for were reported.
    assert len(lags.all) == 1
    for number in range(1, 300):  # faster than single writes: most go in batches
        history.append(status(number))
    assert history.wait_durable(WAIT)

    assert len(lags.all) == 300
    assert all(lag > 0 for lag in lags.all)
    assert any(len(call) > 1 for call in lags.calls), "no batch was written"
    assert redis_server.client().xlen(KEY) == 300


def test_the_lag_of_a_status_buffered_in_an_outage_includes_the_downtime(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    lags = Lags()
    history = open_observed(redis_server.url, histories, lags)
    history.append(status(0))
    assert history.wait_durable(WAIT)

    redis_server.stop()
    history.append(status(1))
    appended = time.perf_counter()
    assert not history.wait_durable(0.5)  # the server is down: at least this long
    restarting = time.perf_counter()
    redis_server.start()
    assert history.wait_durable(WAIT)

    first, buffered = lags.all
    # Redis cannot have acknowledged it before it was started again.
    assert buffered >= restarting - appended
    assert buffered > first
    assert redis_server.client().xlen(KEY) == 2


def test_a_write_whose_reply_was_lost_reports_its_lag_once(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    proxy = ReplyLosingProxy(redis_server.port)
    try:
        lags = Lags()
        history = open_observed(f"redis://127.0.0.1:{proxy.port}/0", histories, lags)
        history.append(status(0))
        assert history.wait_durable(WAIT)
        proxy.lose_reply_to(b"XADD")
        history.append(status(1))
        assert proxy.reply_lost.wait(WAIT)
        history.append(status(2))
        assert history.wait_durable(WAIT)

        assert len(lags.all) == 3
        assert redis_server.client().xlen(KEY) == 3
    finally:
        proxy.close()


def test_a_failing_observer_does_not_stop_the_writer(
    redis_server: RedisServer, histories: list[RedisHistory]
) -> None:
    def broken(lags: list[float]) -> None:
        raise RuntimeError("observer bug")

    history = open_history(redis_server.url, SESSION, 1000, environ={}, on_written=broken)
    histories.append(history)
    for number in range(3):
        history.append(status(number))
        assert history.wait_durable(WAIT)
    assert redis_server.client().xlen(KEY) == 3
