"""The status contract: where a session's SipStatus history lives, and what each type means.

Workers append every SipStatus of a session to one Redis stream; the operator follows it to
derive the SipSession's phase; metrics and tests read the same types. This module is the one
place that says
- the stream's key (`stream_key`): `sip:history:{<shard>}:<session>`, where the shard (00 to 15)
  is a stable hash of the session key and the braces are a Redis Cluster hash tag, so all
  streams lie in `SHARDS` slots and one XREAD per shard follows any number of sessions; and the
  key of versions before the shards (`legacy_stream_key`), which workers migrate at start;
- for every `SipStatus.StatusType`: the session state it leaves (no session, registered,
  ready), whether it belongs to a call, the call's step and direction, and whether it ends the
  call (`MEANINGS`; a test fails when a type is missing).
"""

import binascii
import enum
from dataclasses import dataclass
from typing import TypeAlias

from ondewo.sip.sip_pb2 import SipStatus

StatusType: TypeAlias = SipStatus.StatusType.ValueType


def session_key(namespace: str, name: str) -> str:
    """The session key of the SipSession `namespace/name`, as the operator passes it on."""
    return f"{namespace}/{name}"


# Part of the contract: changing it (or `shard`) moves every stream.
SHARDS = 16


def shard(session: str) -> int:
    """The shard of the session with key `session`: CRC-32 of its UTF-8 bytes modulo SHARDS,
    the same in every process and version (unlike hash())."""
    return binascii.crc32(session.encode()) % SHARDS


def stream_key(session: str) -> str:
    """The Redis stream holding the history of the session with key `session`.

    The shard's braces come first, so they are the hash tag whatever the session key holds;
    the `history:` prefix keeps it distinct from every legacy key (`sip:{...`)."""
    return f"sip:history:{shard_hash_tag(shard(session))}:{session}"


def shard_hash_tag(number: int) -> str:
    """The Redis Cluster hash tag every stream of shard `number` carries: `{07}`."""
    return f"{{{number:02d}}}"


def legacy_stream_key(session: str) -> str:
    """The stream of the session in versions before the shards (one hash slot per session)."""
    return f"sip:{{{session}}}:history"


class SessionState(enum.Enum):
    """What a status leaves the session in."""

    NONE = "none"  # no session: the account is not registered (or lost it) or the session ended
    REGISTERED = "registered"  # registered, the session not (yet) open
    READY = "ready"  # the session is open: calls may come and go


class Direction(enum.Enum):
    INCOMING = "incoming"
    OUTGOING = "outgoing"


class CallStep(enum.Enum):
    INITIATED = "initiated"
    CONNECTED = "connected"
    TRANSFER_INITIATED = "transfer_initiated"
    HANGUP_INITIATED = "hangup_initiated"
    FAILED = "failed"  # ended before it was connected
    FINISHED = "finished"  # ended after it was connected


_ENDS_CALL = frozenset({CallStep.FAILED, CallStep.FINISHED})


@dataclass(frozen=True)
class Meaning:
    session: SessionState
    call: CallStep | None = None  # None: the status is not about a call
    direction: Direction | None = None  # set on the steps whose type names a direction

    @property
    def ends_call(self) -> bool:
        """The call's last status (terminal)."""
        return self.call in _ENDS_CALL

    @property
    def in_call(self) -> bool:
        """A call is being set up, is up, or is being torn down after this status."""
        return self.call is not None and not self.ends_call


_Type = SipStatus.StatusType
_IN, _OUT = Direction.INCOMING, Direction.OUTGOING
_READY = SessionState.READY

MEANINGS: dict[StatusType, Meaning] = {
    _Type.no_session: Meaning(SessionState.NONE),
    _Type.registered: Meaning(SessionState.REGISTERED),
    _Type.ready: Meaning(_READY),
    _Type.incoming_call_initiated: Meaning(_READY, CallStep.INITIATED, _IN),
    _Type.outgoing_call_initiated: Meaning(_READY, CallStep.INITIATED, _OUT),
    _Type.incoming_call_connected: Meaning(_READY, CallStep.CONNECTED, _IN),
    _Type.outgoing_call_connected: Meaning(_READY, CallStep.CONNECTED, _OUT),
    _Type.transfer_call_initiated: Meaning(_READY, CallStep.TRANSFER_INITIATED),
    _Type.soft_hangup_initiated: Meaning(_READY, CallStep.HANGUP_INITIATED),
    _Type.hard_hangup_initiated: Meaning(_READY, CallStep.HANGUP_INITIATED),
    _Type.incoming_call_failed: Meaning(_READY, CallStep.FAILED, _IN),
    _Type.outgoing_call_failed: Meaning(_READY, CallStep.FAILED, _OUT),
    _Type.incoming_call_finished: Meaning(_READY, CallStep.FINISHED, _IN),
    _Type.outgoing_call_finished: Meaning(_READY, CallStep.FINISHED, _OUT),
    # The registrar refused or did not answer a REGISTER: not registered until `registered`
    # follows (the worker keeps retrying).
    _Type.session_registration_failed: Meaning(SessionState.NONE),
}

# What a worker appends about its account while a call may be on: they say whether the account is
# registered and leave the call (and the session) as they were.
REGISTRATION_REPORTS: frozenset[StatusType] = frozenset(
    {_Type.registered, _Type.session_registration_failed}
)

_CALL_TYPES: dict[tuple[CallStep, Direction], StatusType] = {
    (meaning.call, meaning.direction): status_type
    for status_type, meaning in MEANINGS.items()
    if meaning.call is not None and meaning.direction is not None
}


def meaning(status_type: StatusType) -> Meaning:
    """What `status_type` means; KeyError for a type this version does not know."""
    return MEANINGS[status_type]


def meaning_of_name(type_name: str) -> Meaning | None:
    """What the type named `type_name` (a stream entry's `type`) means; None if unknown, as a
    newer worker's type may be."""
    try:
        return MEANINGS.get(_Type.Value(type_name))
    except ValueError:
        return None


def call_status_type(step: CallStep, direction: Direction) -> StatusType:
    """The type of a call's `step` in `direction`, e.g. CONNECTED, OUTGOING ->
    outgoing_call_connected; KeyError for a step whose types name no direction."""
    return _CALL_TYPES[(step, direction)]
