"""The status recorder: the one place that orders, timestamps and names the phone's statuses.

Rooms say what happened (`session`, `call`); the recorder
- appends a call's `*_call_initiated` before any other status of that call;
- gives a call step its direction's type (CONNECTED of an outgoing call is
  `outgoing_call_connected`);
- timestamps every status, never earlier than the one before;
- tells storage when the next status of the same call follows at once (`expect_follow_up`),
  so storage need not know what any status type means.
Runs on the owner thread, like the rooms that call it.
"""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import CallStep, Direction, StatusType, call_status_type, meaning
from sip_worker.history import StatusHistory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallIdentity:
    """What a call's statuses say about it."""

    serial: int  # unique per call within the process
    direction: Direction
    callee_id: str
    headers: dict[str, str] = field(default_factory=dict)
    # Wall-clock ns at which the worker took the request that started the call (StartCall),
    # carried by the call's initiated status; None: the moment it is recorded.
    started_ns: int | None = None
    sip_call_id: str = ""  # the SIP Call-ID, once the call has one


class StatusRecorder:
    def __init__(self, history: StatusHistory, account_name: Callable[[], str]) -> None:
        self._history = history
        self._account_name = account_name
        self._announced: set[int] = set()  # serials of calls whose initiated is recorded
        self._last_ns = 0

    def session(
        self, status_type: StatusType, account_name: str | None = None, description: str = ""
    ) -> None:
        """A status of the session (registered, ready, no_session, session_registration_failed
        with its reason in `description`)."""
        self._append(SipStatus(status_type=status_type, description=description), account_name)

    def call(
        self,
        call: CallIdentity,
        what: CallStep | StatusType,
        *,
        description: str = "",
        transfer_call_id: str = "",
        headers: Mapping[str, str] | None = None,
        exception_name: str = "",
        call_audio_streams: int = 0,
        sip_response_code: int = 0,
    ) -> None:
        """A status of `call`: a step (typed by the call's direction) or a type that names no
        direction (transfer_call_initiated, soft_/hard_hangup_initiated)."""
        status_type = call_status_type(what, call.direction) if isinstance(what, CallStep) else what
        if meaning(status_type).call is CallStep.INITIATED:
            if call.serial in self._announced:
                return  # already recorded, before the status that needed it
            self._announced.add(call.serial)
        elif call.serial not in self._announced:
            self._announced.add(call.serial)
            initiated = call_status_type(CallStep.INITIATED, call.direction)
            self._record_call(call, SipStatus(status_type=initiated), None)
        if meaning(status_type).ends_call:
            self._announced.discard(call.serial)
        status = SipStatus(
            status_type=status_type,
            transfer_call_id=transfer_call_id,
            description=description,
            exception_name=exception_name,
            call_audio_streams=call_audio_streams,
            sip_response_code=sip_response_code,
        )
        self._record_call(call, status, headers)

    def _record_call(
        self, call: CallIdentity, status: SipStatus, headers: Mapping[str, str] | None
    ) -> None:
        """Adds what every status of `call` carries, then appends it."""
        status.callee_id = call.callee_id
        status.call_id = call.sip_call_id
        status.headers.update(call.headers if headers is None else headers)
        initiated = meaning(status.status_type).call is CallStep.INITIATED
        self._append(
            status,
            at_ns=call.started_ns if initiated else None,
            # An outgoing call is recorded once its INVITE is out: its answer follows within
            # milliseconds, and storage may write both in one round trip.
            expect_follow_up=initiated and call.direction is Direction.OUTGOING,
        )

    def _append(
        self,
        status: SipStatus,
        account_name: str | None = None,
        *,
        at_ns: int | None = None,
        expect_follow_up: bool = False,
    ) -> None:
        status.account_name = self._account_name() if account_name is None else account_name
        self._last_ns = max(at_ns or time.time_ns(), self._last_ns)
        status.timestamp.FromNanoseconds(self._last_ns)
        name = SipStatus.StatusType.Name(status.status_type)
        try:
            self._history.append(status, expect_follow_up=expect_follow_up)
        except Exception:
            log.exception("could not record the status %s", name)
        log.info(
            "status %s%s%s",
            name,
            f" callee={status.callee_id}" if status.callee_id else "",
            f" ({status.description})" if status.description else "",
        )
