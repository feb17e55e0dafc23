"""MetricsHistory on its own: which metric each SipStatus type moves (no SIP, no worker).

tests/worker/test_server_metrics.py checks the same metrics through a real worker and calls."""

from typing import Any

import pytest
from prometheus_client import REGISTRY

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import MEANINGS, StatusType
from sip_worker.metrics import MetricsHistory

_Type = SipStatus.StatusType


class _Recorded:
    """The inner StatusHistory: keeps what is appended."""

    def __init__(self) -> None:
        self.appended: list[SipStatus] = []

    def append(self, status: SipStatus, **_: Any) -> None:
        self.appended.append(status)

    def last(self) -> SipStatus | None:
        return self.appended[-1] if self.appended else None

    def entries(self) -> list[SipStatus]:
        return list(self.appended)

    def close(self) -> None:
        pass


def _value(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def _calls() -> dict[tuple[str, str], float]:
    return {
        (direction, outcome): _value("sip_worker_calls_total", direction=direction, outcome=outcome)
        for direction in ("incoming", "outgoing")
        for outcome in ("connected", "failed")
    }


def _durations(direction: str) -> tuple[float, float]:
    labels = {"direction": direction}
    return (
        _value("sip_worker_call_duration_seconds_count", **labels),
        _value("sip_worker_call_duration_seconds_sum", **labels),
    )


def _status(status_type: StatusType, at: float | None = None) -> SipStatus:
    status = SipStatus(status_type=status_type)
    if at is not None:
        status.timestamp.FromNanoseconds(int(at * 1e9))
    return status


@pytest.fixture()
def history() -> MetricsHistory:
    return MetricsHistory(_Recorded())


def test_registration_follows_the_session_state(history: MetricsHistory) -> None:
    assert _value("sip_worker_registered") == 0
    for status_type, expected in [
        (_Type.registered, 1),
        (_Type.no_session, 0),
        (_Type.ready, 1),
        (_Type.outgoing_call_finished, 1),  # call statuses leave it alone
        (_Type.no_session, 0),
        (_Type.incoming_call_connected, 0),
    ]:
        history.append(_status(status_type))
        assert _value("sip_worker_registered") == expected, SipStatus.StatusType.Name(status_type)


@pytest.mark.parametrize("direction", ["incoming", "outgoing"])
def test_a_connected_call_counts_once_and_its_duration(
    history: MetricsHistory, direction: str
) -> None:
    calls, durations = _calls(), _durations(direction)
    for status_type, at, active in [
        (_Type.Value(f"{direction}_call_initiated"), 100.0, 1),
        (_Type.Value(f"{direction}_call_connected"), 102.0, 1),
        (_Type.transfer_call_initiated, 110.0, 1),
        (_Type.soft_hangup_initiated, 120.0, 1),
        (_Type.Value(f"{direction}_call_finished"), 132.5, 0),
    ]:
        history.append(_status(status_type, at))
        assert _value("sip_worker_call_active") == active
    expected = dict(calls)
    expected[(direction, "connected")] += 1
    assert _calls() == expected
    count, total = _durations(direction)
    assert (count - durations[0], total - durations[1]) == (1, 30.5)


@pytest.mark.parametrize("direction", ["incoming", "outgoing"])
def test_a_failed_call_counts_as_failed_with_no_duration(
    history: MetricsHistory, direction: str
) -> None:
    calls = _calls()
    durations = {d: _durations(d) for d in ("incoming", "outgoing")}
    history.append(_status(_Type.Value(f"{direction}_call_initiated"), 1.0))
    assert _value("sip_worker_call_active") == 1
    history.append(_status(_Type.Value(f"{direction}_call_failed"), 2.0))
    assert _value("sip_worker_call_active") == 0
    expected = dict(calls)
    expected[(direction, "failed")] += 1
    assert _calls() == expected
    assert {d: _durations(d) for d in ("incoming", "outgoing")} == durations


def test_unknown_types_are_ignored_and_every_known_one_is_taken(history: MetricsHistory) -> None:
    unknown = StatusType(max(MEANINGS) + 1)
    history.append(_status(unknown))
    for status_type in MEANINGS:
        history.append(_status(status_type, 1.0))
    assert len(history.entries()) == len(MEANINGS) + 1  # all of them reach the inner history
