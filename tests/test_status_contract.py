"""The status contract (sip_contract.status): every SipStatus type has a meaning, and the
helpers agree with the table."""

import pytest

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import (
    MEANINGS,
    CallStep,
    Direction,
    Meaning,
    SessionState,
    StatusType,
    call_status_type,
    meaning,
    meaning_of_name,
    session_key,
    stream_key,
)

ALL_TYPES = SipStatus.StatusType.values()
DIRECTIONAL = [(status_type, m) for status_type, m in MEANINGS.items() if m.direction is not None]


def test_every_status_type_has_a_meaning() -> None:
    missing = [SipStatus.StatusType.Name(t) for t in ALL_TYPES if t not in MEANINGS]
    assert missing == [], f"add these SipStatus types to sip_contract.status.MEANINGS: {missing}"
    assert set(MEANINGS) == set(ALL_TYPES)


@pytest.mark.parametrize("name", SipStatus.StatusType.keys())
def test_meaning_of_name_is_the_meaning_of_the_type(name: str) -> None:
    assert meaning_of_name(name) == meaning(SipStatus.StatusType.Value(name))


@pytest.mark.parametrize(
    ("status_type", "expected"),
    DIRECTIONAL,
    ids=[SipStatus.StatusType.Name(t) for t, _ in DIRECTIONAL],
)
def test_call_status_type_round_trips(status_type: StatusType, expected: Meaning) -> None:
    m = meaning(status_type)
    assert m == expected
    assert m.call is not None and m.direction is not None
    assert call_status_type(m.call, m.direction) == status_type


def test_every_directional_step_has_a_type_in_each_direction() -> None:
    steps = {m.call for _, m in DIRECTIONAL}
    assert steps == {CallStep.INITIATED, CallStep.CONNECTED, CallStep.FAILED, CallStep.FINISHED}
    for step in steps:
        for direction in Direction:
            assert step is not None
            assert MEANINGS[call_status_type(step, direction)].call is step


def test_a_step_without_direction_has_no_call_status_type() -> None:
    with pytest.raises(KeyError):
        call_status_type(CallStep.HANGUP_INITIATED, Direction.INCOMING)


@pytest.mark.parametrize("name", ["", "unknown", "some_future_type", "READY", "ready "])
def test_meaning_of_an_unknown_name_is_none(name: str) -> None:
    assert meaning_of_name(name) is None


def test_meaning_of_an_unknown_type_raises() -> None:
    with pytest.raises(KeyError):
        meaning(StatusType(max(ALL_TYPES) + 1))


def test_a_call_is_on_until_it_ends() -> None:
    for m in MEANINGS.values():
        assert not (m.in_call and m.ends_call)
        assert (m.call is not None) == (m.in_call or m.ends_call)
        if m.call is not None:
            assert m.session is SessionState.READY


def test_stream_key() -> None:
    assert session_key("ns", "a") == "ns/a"
    assert stream_key(session_key("ns", "a")) == "sip:{ns/a}:history"
