"""The status contract (sip_contract.status): every SipStatus type has a meaning, and the
helpers agree with the table."""

import pytest
from redis.crc import key_slot

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import (
    MEANINGS,
    SHARDS,
    CallStep,
    Direction,
    Meaning,
    SessionState,
    StatusType,
    call_status_type,
    legacy_stream_key,
    meaning,
    meaning_of_name,
    session_key,
    shard,
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


def test_stream_keys() -> None:
    assert session_key("ns", "a") == "ns/a"
    assert stream_key(session_key("ns", "a")) == "sip:history:{06}:ns/a"
    assert legacy_stream_key(session_key("ns", "a")) == "sip:{ns/a}:history"


def test_the_shard_of_a_session_never_changes() -> None:
    # Fixed values: another function (or SHARDS) would move every stream of a running system.
    assert SHARDS == 16
    assert [shard(key) for key in ("ns/a", "calls/alice", "local", "calls/s0")] == [6, 0, 8, 11]


# Sessions spread over every shard, plus keys holding braces of their own.
SESSIONS = [f"team-{n}/session" for n in range(200)] + ["x{y}z", "{}", "a}b{c", "ns/{1}"]


def test_every_shard_is_used_and_every_stream_is_in_its_shards_slot() -> None:
    assert {shard(session) for session in SESSIONS} == set(range(SHARDS))
    for session in SESSIONS:
        # The hash tag is the shard alone: the slot is the one of the bare shard tag.
        assert key_slot(stream_key(session).encode()) == key_slot(
            f"{{{shard(session):02d}}}".encode()
        )
    slots = {key_slot(stream_key(session).encode()) for session in SESSIONS}
    assert len(slots) == SHARDS


def test_no_stream_key_is_a_legacy_key() -> None:
    # Legacy keys all begin "sip:{": the migration can never delete another session's stream.
    for session in SESSIONS:
        assert legacy_stream_key(session).startswith("sip:{")
        assert not stream_key(session).startswith("sip:{")
