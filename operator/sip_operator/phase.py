"""What a SipSession's status says, derived from what the operator observed.

Pure functions: the controller gathers the observations (its own problems, the worker pod
from the watch, the worker's SipStatuses from Redis, folded into `WorkerStatuses`) and this
module turns them into the phase, message and conditions that go into `.status`.
"""

import datetime
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import REGISTRATION_REPORTS, SessionState, meaning_of_name

PENDING = "Pending"
STARTING = "Starting"
READY = "Ready"
IN_CALL = "InCall"
FAILED = "Failed"
TERMINATING = "Terminating"
# Every phase the operator publishes (the CRD's enum of status.phase).
PHASES = (PENDING, STARTING, READY, IN_CALL, FAILED, TERMINATING)


@dataclass(frozen=True)
class WorkerStatus:
    """The newest entry of the session's history stream."""

    type: str
    callee_id: str = ""
    timestamp: str | None = None
    description: str = ""

    def as_status(self) -> dict[str, str]:
        status = {"type": self.type, "calleeId": self.callee_id}
        if self.timestamp:
            status["timestamp"] = self.timestamp
        if self.description:
            status["description"] = self.description
        return status


_REGISTRATION_REPORT_NAMES = frozenset(SipStatus.StatusType.Name(t) for t in REGISTRATION_REPORTS)


@dataclass(frozen=True)
class WorkerStatuses:
    """The worker's statuses so far, folded in order into what each judgement needs: a
    registration lost and won back during a call (`session_registration_failed`, `registered`)
    is the newest status, yet the call is still on, and a call's statuses say nothing about
    the registration."""

    newest: WorkerStatus | None = None
    activity: WorkerStatus | None = None  # the newest about the session and its calls
    registration: WorkerStatus | None = None  # the newest that says whether it is registered

    def add(self, status: WorkerStatus) -> "WorkerStatuses":
        report = status.type in _REGISTRATION_REPORT_NAMES
        in_call = self.activity is not None and _in_call(self.activity)
        meaning = meaning_of_name(status.type)
        about_registration = meaning is None or meaning.call is None
        return WorkerStatuses(
            newest=status,
            activity=self.activity if report and in_call else status,
            # Until one says otherwise, a call's status implies an account that can call.
            registration=status
            if about_registration or not self.registration
            else self.registration,
        )


def _in_call(status: WorkerStatus) -> bool:
    meaning = meaning_of_name(status.type)
    return meaning is not None and meaning.in_call


@dataclass(frozen=True)
class PodState:
    """What the watch last said about the worker pod."""

    name: str
    uid: str
    owner_uid: str | None
    phase: str | None
    ready: bool
    deleting: bool
    spec_hash: str | None
    reason: str
    drain_deadline: str | None = None  # the annotation the worker reads (see pod_builder)

    @property
    def failed(self) -> bool:
        # restartPolicy Always: a pod that ended (evicted, node lost, ...) never runs again.
        return self.phase in ("Failed", "Succeeded")


def pod_state(
    body: Mapping[str, Any], owner_uid: str | None, spec_hash_key: str, drain_deadline_key: str
) -> PodState:
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    status = body.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return PodState(
        name=str(metadata.get("name", "")),
        uid=str(metadata.get("uid", "")),
        owner_uid=owner_uid,
        phase=status.get("phase"),
        ready=ready and status.get("phase") == "Running",
        deleting=bool(metadata.get("deletionTimestamp")),
        spec_hash=annotations.get(spec_hash_key),
        reason=_pod_reason(status),
        drain_deadline=annotations.get(drain_deadline_key),
    )


def _pod_reason(status: Mapping[str, Any]) -> str:
    parts = [str(status[k]) for k in ("reason", "message") if status.get(k)]
    for container in status.get("containerStatuses") or []:
        for state in ("waiting", "terminated"):
            detail = (container.get("state") or {}).get(state) or {}
            if detail.get("reason"):
                parts.append(f"{container.get('name', 'container')} {state}: {detail['reason']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class PendingUpdate:
    """A spec change the running pod does not have yet, held back by a call (or the chance of
    one: the worker's last status not read yet)."""

    generation: int
    since: float  # epoch seconds: when the wait began
    deadline: float  # epoch seconds: when the pod is replaced even if the call goes on
    cause: str  # the UpdatePending condition's reason
    reason: str

    def as_status(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "since": timestamp(self.since),
            "deadline": timestamp(self.deadline),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Observation:
    deleting: bool = False
    problem: str | None = None  # why the session cannot run now (phase Failed)
    waiting: str | None = None  # why there is no pod right now (e.g. a pending recreation)
    pod: PodState | None = None
    replacing: bool = False
    statuses: WorkerStatuses = WorkerStatuses()
    start_session: bool = True
    registers: bool = True  # spec.account.register: false sends no REGISTER
    pending_update: PendingUpdate | None = None


def call_in_progress(pod: PodState | None, statuses: WorkerStatuses) -> bool:
    """The worker serves and its statuses leave a call being set up, up or torn down."""
    ready = pod is not None and pod.phase == "Running" and pod.ready
    return ready and statuses.activity is not None and _in_call(statuses.activity)


def derive_phase(observation: Observation) -> tuple[str, str]:
    """The phase and a one-line message saying why."""
    pod, worker = observation.pod, observation.statuses.activity
    if observation.deleting:
        return TERMINATING, "deleting the worker pod, its service and token Secret"
    if observation.problem:
        return FAILED, observation.problem
    if observation.replacing:
        return PENDING, "replacing the worker pod for the changed spec"
    if pod is None:
        return PENDING, observation.waiting or "creating the worker pod"
    if pod.phase != "Running":
        return PENDING, f"worker pod {pod.name} is {pod.phase or 'Pending'}"
    if not pod.ready:
        return STARTING, "waiting for the worker to report healthy"
    # A type this operator does not know (a newer worker's) counts as neither a call nor an
    # open session, and leaves the account registered.
    if worker is not None and call_in_progress(pod, observation.statuses):
        return IN_CALL, f"{worker.type} {worker.callee_id}".strip()
    meaning = meaning_of_name(worker.type) if worker is not None else None
    if observation.start_session and (meaning is None or meaning.session is not SessionState.READY):
        return STARTING, "the worker is registering the account and starting the session"
    return READY, "the worker is ready"


def is_registered(observation: Observation) -> bool:
    pod, worker = observation.pod, observation.statuses.registration
    return (
        observation.registers
        and not observation.deleting
        and pod is not None
        and pod.ready
        and worker is not None
        and _session_state(worker) is not SessionState.NONE
    )


def _session_state(worker: WorkerStatus) -> SessionState | None:
    """What the worker's last status leaves the session in; None for an unknown type."""
    meaning = meaning_of_name(worker.type)
    return meaning.session if meaning is not None else None


def registered_message(observation: Observation) -> str:
    """Why the Registered condition is what it is: a stale "registered" in the stream of a
    pod that is not ready does not count, and the message says so."""
    worker, pod = observation.statuses.registration, observation.pod
    if not observation.registers:
        return "spec.account.register is false: the worker sends no REGISTER"
    if worker is None:
        return "no status yet"
    if observation.deleting:
        return f"the session is being deleted (last status {worker.type})"
    if pod is None or not pod.ready:
        return f"the worker pod is not ready (last status {worker.type})"
    # session_registration_failed carries the registrar's answer, e.g. "403 Forbidden".
    return f"last status {worker.type}" + (f": {worker.description}" if worker.description else "")


def _registered_reason(observation: Observation, registered: bool) -> str:
    if registered:
        return "Registered"
    if not observation.registers:
        return "RegistrationDisabled"
    worker = observation.statuses.registration
    if worker is not None and worker.type == "session_registration_failed":
        return "RegistrationFailed"
    return "NotRegistered"


def now_timestamp() -> str:
    return timestamp(time.time())


def timestamp(epoch: float) -> str:
    """RFC 3339 in UTC to the second, as Kubernetes writes times."""
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: Any) -> float | None:
    """Epoch seconds of an RFC 3339 time (as `timestamp` writes it); None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _update_condition(observation: Observation) -> tuple[bool, str, str]:
    pending = observation.pending_update
    if pending is not None:
        return True, pending.cause, pending.reason
    if observation.replacing:
        return False, "Replacing", "replacing the worker pod for the changed spec"
    return False, "UpToDate", "no spec change waits"


def _condition(
    kind: str,
    true: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    status = "True" if true else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
        "observedGeneration": generation,
    }


def build_status(
    observation: Observation,
    *,
    generation: int,
    pod_name: str,
    endpoint: str,
    token_secret: Mapping[str, str],
    previous: Mapping[str, Any],
    now: str,
) -> dict[str, Any]:
    """The whole `.status` (conditions keep their lastTransitionTime while unchanged)."""
    phase, message = derive_phase(observation)
    registered = is_registered(observation)
    old_conditions = previous.get("conditions") or []
    ready = phase in (READY, IN_CALL)
    status: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "podName": pod_name,
        "endpoint": endpoint,
        "tokenSecretRef": dict(token_secret),
        "observedGeneration": generation,
        "conditions": [
            _condition("Ready", ready, phase, message, generation, old_conditions, now),
            _condition(
                "Registered",
                registered,
                _registered_reason(observation, registered),
                registered_message(observation),
                generation,
                old_conditions,
                now,
            ),
            _condition(
                "UpdatePending", *_update_condition(observation), generation, old_conditions, now
            ),
        ],
        "lastStatus": newest.as_status() if (newest := observation.statuses.newest) else None,
        "pendingUpdate": pending.as_status() if (pending := observation.pending_update) else None,
    }
    return status
