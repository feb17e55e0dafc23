"""The REGISTER back-off: from 1 s, doubling up to the maximum, jittered, reset by a success."""

from sip_worker.phone.registration_retry import JITTER, RetryBackoff


def test_delays_double_up_to_the_maximum_and_start_over_after_reset() -> None:
    backoff = RetryBackoff(maximum=6.0, uniform=lambda low, high: 1.0)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 6.0, 6.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_every_delay_is_spread_by_the_jitter() -> None:
    spreads: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        spreads.append((low, high))
        return high

    backoff = RetryBackoff(maximum=60.0, uniform=uniform)
    assert backoff.next_delay() == 1.0 + JITTER
    assert spreads == [(1 - JITTER, 1 + JITTER)]
    delays = [RetryBackoff(maximum=60.0).next_delay() for _ in range(200)]
    assert all(1 - JITTER <= delay <= 1 + JITTER for delay in delays)
    assert len(set(delays)) > 1
