"""Per-SipSession reconciliation: one small loop per session, woken by what changed.

kopf delivers the watch events (sessions and worker pods) and the status mirror delivers the
worker's statuses; each only records the news and wakes the session's loop. The loop compares
what exists with what should, makes at most one step of difference (create, replace,
recreate with backoff), and writes `.status` when it changed. Level-based and idempotent:
names are deterministic, a 409 means "adopt what is there", so a restarted operator never
duplicates anything.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sip_operator import metrics, phase
from sip_operator.kube import AlreadyExists, KubeApi, KubeError
from sip_operator.metrics import ErrorKind
from sip_operator.phase import Observation, PendingUpdate, PodState, WorkerStatus, WorkerStatuses
from sip_operator.pod_builder import (
    ANNOTATION_DRAIN_DEADLINE,
    ANNOTATION_SPEC_HASH,
    TLS_KEYS,
    TOKEN_KEY,
    SessionRef,
    build_pod,
    build_service,
    build_token_secret,
    child_names,
    controller_uid,
    endpoint,
    new_token,
    pod_fingerprint,
)
from sip_operator.port_slots import SlotTable
from sip_operator.session_spec import (
    DEFAULT_RETAIN_AFTER_DELETION,
    SessionSpec,
    SpecError,
    parse_spec,
)
from sip_operator.settings import OperatorSettings, SecretKeyRef
from sip_operator.status_mirror import SessionKey, StatusMirror

logger = logging.getLogger(__name__)

# (SipSession body, event type Normal|Warning, reason, message) -> a Kubernetes Event.
PostEvent = Callable[[Mapping[str, Any], str, str, str], None]

STOP_TIMEOUT = 30.0
WAIT_FOR_CALL = "waiting for the call in progress to end"
WAIT_FOR_STATUS = "waiting for the worker's last status from Redis: a call may be in progress"
# How often a wait for the worker's status looks again (an empty stream wakes nobody).
STATUS_RECHECK = 1.0


class RetentionError(Exception):
    """The history stream's expiry could not be set (Redis unreachable)."""


@dataclass
class Session:
    """What the operator knows about one SipSession between passes."""

    key: SessionKey
    body: dict[str, Any]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: "asyncio.Task[None] | None" = None
    stopping: bool = False
    pod: PodState | None = None
    statuses: WorkerStatuses = field(default_factory=WorkerStatuses)
    problem: str | None = None  # what keeps it Failed
    waiting: str | None = None  # why there is no pod at the moment
    replacing: bool = False
    pending_since: float | None = None  # epoch seconds: a spec change waits for a call since
    pending: PendingUpdate | None = None  # as published
    children_ready: bool = False  # token Secret and Service exist
    pod_failures: int = 0  # pod losses since the last ready pod: the recreation backoff
    pod_lost: bool = False  # the next pod created is a recreation
    problem_retries: int = 0
    api_failures: int = 0
    not_before: float = 0.0  # monotonic time before which no pod is created
    deleting_pod_uid: str | None = None  # a pod this operator deleted on purpose
    applied_generation: int = 0
    published: dict[str, Any] | None = None
    last_phase: str | None = None
    last_failure: str | None = None
    registered: bool = False

    parsed: tuple[int, SessionSpec] | None = None  # (generation, its spec)

    def spec(self) -> SessionSpec:
        """The typed spec of the current generation (parsed once per generation)."""
        if self.parsed is None or self.parsed[0] != self.generation:
            self.parsed = (self.generation, parse_spec(self.body.get("spec") or {}))
        return self.parsed[1]

    def settle_update(self) -> None:
        """The pod runs, or the next one will run, the current spec: no update waits."""
        self.pending_since = None
        self.pending = None

    @property
    def ref(self) -> SessionRef:
        metadata = self.body["metadata"]
        return SessionRef(self.key[0], self.key[1], str(metadata.get("uid", "")))

    @property
    def generation(self) -> int:
        return int(self.body["metadata"].get("generation") or 1)

    @property
    def label(self) -> str:
        return f"{self.key[0]}/{self.key[1]}"


def _session_key(body: Mapping[str, Any]) -> SessionKey:
    metadata = body["metadata"]
    return (str(metadata["namespace"]), str(metadata["name"]))


def _pod_state(body: Mapping[str, Any], owner_uid: str | None) -> PodState:
    return phase.pod_state(body, owner_uid, ANNOTATION_SPEC_HASH, ANNOTATION_DRAIN_DEADLINE)


def _has_key(secret: Mapping[str, Any], key: str) -> bool:
    return key in (secret.get("data") or {}) or key in (secret.get("stringData") or {})


class SessionController:
    def __init__(
        self,
        kube: KubeApi,
        mirror: StatusMirror,
        settings: OperatorSettings,
        post_event: PostEvent,
        finalizer: str,
        session_namespaces: Sequence[str] | None,
    ) -> None:
        """`session_namespaces`: where SipSessions are listed (None: cluster-wide)."""
        self._finalizer = finalizer
        self._kube = kube
        self._mirror = mirror
        self._settings = settings
        self._post_event = post_event
        self._session_namespaces = session_namespaces
        self._slots = SlotTable(settings.slots_per_node)
        self._slots_lock = asyncio.Lock()
        self.sessions: dict[SessionKey, Session] = {}
        self._finalizing: set[SessionKey] = set()  # until the SipSession is gone from the API

    # ---- news from the watches and the status mirror: record it, wake the session ----

    def observe_session(self, body: Mapping[str, Any]) -> None:
        key = _session_key(body)
        session = self.sessions.get(key)
        uid = body["metadata"].get("uid")
        if session is not None and session.ref.uid != uid:
            self._abandon(session)  # a deleted namesake: start over for the new object
            session = None
        if session is None:
            if body["metadata"].get("deletionTimestamp"):
                return  # being deleted: finalize() does the rest, nothing is to be started
            status = body.get("status") or {}
            conditions = status.get("conditions") or []
            session = Session(
                key=key,
                body=dict(body),
                last_phase=status.get("phase"),
                last_failure=status.get("message") if status.get("phase") == phase.FAILED else None,
                registered=any(
                    c.get("type") == "Registered" and c.get("status") == "True" for c in conditions
                ),
                applied_generation=int(status.get("observedGeneration") or 0),
                # A restarted operator keeps the wait's original deadline.
                pending_since=phase.parse_timestamp(
                    (status.get("pendingUpdate") or {}).get("since")
                ),
            )
            self.sessions[key] = session
            self._mirror.follow(key)
            session.task = asyncio.get_running_loop().create_task(
                self._run(session), name=f"session {session.label}"
            )
        else:
            session.body = dict(body)
        session.wake.set()

    def forget_session(self, body: Mapping[str, Any]) -> None:
        """The SipSession is gone from the API (after its finalizer)."""
        self._finalizing.discard(_session_key(body))
        self._slots.release(str(body["metadata"].get("uid", "")))
        session = self.sessions.get(_session_key(body))
        if session is not None and session.ref.uid == body["metadata"].get("uid"):
            self._abandon(session)

    def _owner_session(self, body: Mapping[str, Any]) -> tuple[Session | None, str | None]:
        """The followed session named by `body`'s controlling SipSession, and that owner's uid.

        The session may be a namesake of the owner (compare its uid).
        """
        metadata = body.get("metadata") or {}
        owner_uid = controller_uid(dict(body))
        owner = next(
            (r for r in metadata.get("ownerReferences") or [] if r.get("uid") == owner_uid), None
        )
        if owner is None:
            return None, None
        key = (str(metadata.get("namespace")), str(owner.get("name")))
        return self.sessions.get(key), owner_uid

    def observe_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        session, owner_uid = self._owner_session(body)
        if session is None or metadata.get("name") != child_names(session.key[1]).pod:
            return
        uid = str(metadata.get("uid", ""))
        adopted = session.pod is not None and session.pod.uid == uid
        if session.ref.uid != owner_uid and not adopted:
            return  # a deleted namesake's pod, not (yet) looked at by this session
        if event_type == "DELETED":
            if session.pod is not None and session.pod.uid != uid:
                return  # an older pod's late news
            session.pod = None
            session.settle_update()
            session.children_ready = False  # re-check token Secret and Service with the new pod
            if uid != session.deleting_pod_uid:
                session.pod_lost = True
                session.pod_failures += 1
                delay = self._settings.backoff(session.pod_failures)
                session.not_before = time.monotonic() + delay
                session.waiting = f"worker pod {metadata.get('name')} was deleted; recreating it"
            session.deleting_pod_uid = None
        else:
            session.pod = _pod_state(body, owner_uid)
        session.wake.set()

    def observe_service(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A session's Service deleted (by hand, say) is created again at once."""
        if event_type != "DELETED":
            return
        session, owner_uid = self._owner_session(body)
        if session is None or session.ref.uid != owner_uid:
            return  # not a followed session's, or a deleted namesake's
        if body["metadata"].get("name") != child_names(session.key[1]).service:
            return
        logger.info("SipSession %s: its Service was deleted; recreating it", session.label)
        session.children_ready = False  # the next pass creates what is missing
        session.wake.set()

    def observe_worker_status(self, key: SessionKey, status: WorkerStatus) -> None:
        session = self.sessions.get(key)
        if session is not None:
            session.statuses = session.statuses.add(status)
            session.wake.set()

    # ---- deletion and shutdown ----

    async def finalize(self, body: Mapping[str, Any]) -> None:
        """Deletes pod, Service and token Secret, and lets the history stream expire."""
        key = _session_key(body)
        self._finalizing.add(key)
        session = self.sessions.get(key)
        if session is not None and session.ref.uid == body["metadata"].get("uid"):
            await self._stop(session)
            self.sessions.pop(key, None)
        self._mirror.unfollow(key)
        self._slots.release(str(body["metadata"].get("uid", "")))
        namespace, name = key
        names = child_names(name)
        await self._kube.patch_session_status(
            namespace,
            name,
            {
                "phase": phase.TERMINATING,
                "message": "deleting the worker pod, its service and token Secret",
            },
        )
        await self._kube.delete_pod(namespace, names.pod)
        await self._kube.delete_service(namespace, names.service)
        await self._kube.delete_secret(namespace, names.token_secret)
        try:
            retain = parse_spec(body.get("spec") or {}).retain_after_deletion
        except SpecError:
            retain = DEFAULT_RETAIN_AFTER_DELETION
        try:
            await self._mirror.expire(key, retain)
        except Exception as error:
            raise RetentionError(f"cannot set the history stream's expiry: {error}") from error
        logger.info("SipSession %s/%s deleted; history kept for %ds", namespace, name, retain)

    async def release(self, body: Mapping[str, Any]) -> None:
        """Stops acting on a session another operator replica serves now (peering paused us).

        Forgotten, not finalized: it is taken up afresh, like after a restart, when this
        replica serves again.
        """
        key = _session_key(body)
        self._finalizing.discard(key)  # another replica finishes the deletion
        session = self.sessions.get(key)
        if session is None or session.ref.uid != body["metadata"].get("uid"):
            return
        self._abandon(session)
        # The replica serving now hands out slots; read them afresh before handing out any.
        self._slots.reset()
        await self._stop(session)
        logger.info("SipSession %s: released; another operator replica serves it", session.label)

    async def close(self) -> None:
        await asyncio.gather(*(self._stop(s) for s in list(self.sessions.values())))
        self.sessions.clear()
        self._finalizing.clear()

    def phases(self) -> list[str | None]:
        """Each followed session's phase, as last derived; read from the metrics server's
        thread, hence from copies (copying a dict or set is atomic under the GIL)."""
        finalizing = set(self._finalizing)
        sessions = list(self.sessions.values())
        following = [s.last_phase for s in sessions if s.key not in finalizing]
        return [*following, *[phase.TERMINATING] * len(finalizing)]

    def _abandon(self, session: Session) -> None:
        self.sessions.pop(session.key, None)
        self._mirror.unfollow(session.key)
        session.stopping = True
        session.wake.set()

    async def _stop(self, session: Session) -> None:
        """Lets the session's loop finish its current step (no half-done create), then ends it."""
        session.stopping = True
        session.wake.set()
        if session.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(session.task), STOP_TIMEOUT)
        except TimeoutError:
            session.task.cancel()

    # ---- the loop ----

    async def _run(self, session: Session) -> None:
        while not session.stopping:
            session.wake.clear()
            delay: float | None
            try:
                with metrics.RECONCILE_DURATION.time():
                    delay = await self._reconcile(session)
                session.api_failures = 0
            except KubeError as error:
                metrics.reconcile_failed(ErrorKind.KUBERNETES_API)
                session.api_failures += 1
                delay = self._settings.backoff(session.api_failures)
                logger.warning("SipSession %s: %s; retrying in %.1fs", session.label, error, delay)
            except Exception:
                metrics.reconcile_failed(ErrorKind.UNEXPECTED)
                session.api_failures += 1
                delay = self._settings.backoff(session.api_failures)
                logger.exception("SipSession %s: reconciling failed", session.label)
            if session.stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.wake.wait(), delay)

    async def _reconcile(self, session: Session) -> float | None:
        """One pass; returns when to look again (None: only when something changes)."""
        metadata = session.body["metadata"]
        if metadata.get("deletionTimestamp"):
            return None  # finalize() takes it from here
        if self._finalizer not in (metadata.get("finalizers") or []):
            # kopf adds it first; writing before that would only make its patch conflict,
            # and whatever is created must be cleaned up on deletion.
            return None
        try:
            spec = session.spec()
        except SpecError as error:
            metrics.reconcile_failed(ErrorKind.SPEC)
            session.problem = f"invalid spec: {error}"
            await self._publish(session, None)
            return None
        if not session.children_ready:
            problem = await self._ensure_children(session.ref)
            if problem:
                return await self._fail(session, spec, problem, ErrorKind.NAME_CONFLICT)
            session.children_ready = True
        pod = session.pod
        if pod is not None:
            return await self._check_pod(session, spec, pod)
        wait = session.not_before - time.monotonic()
        if wait > 0:
            await self._publish(session, spec)
            return wait
        problem = await self._secret_problem(session.key[0], spec)
        if problem:
            return await self._fail(session, spec, problem, ErrorKind.SECRET)
        tls_keys = await self._tls_keys(session.key[0], spec)
        if isinstance(tls_keys, str):
            return await self._fail(session, spec, tls_keys, ErrorKind.SECRET)
        slot = await self._slot_for_pod(session, spec)
        created = await self._create_pod(session, spec, slot, tls_keys)
        if created is None:
            return self._settings.backoff(1)
        if isinstance(created, str):
            return await self._fail(session, spec, created, ErrorKind.NAME_CONFLICT)
        return await self._check_pod(session, spec, created)

    async def _check_pod(self, session: Session, spec: SessionSpec, pod: PodState) -> float | None:
        namespace = session.key[0]
        waiting_since = session.pending_since
        session.settle_update()  # set again below while the pod still waits for its replacement
        if pod.deleting or pod.uid == session.deleting_pod_uid:
            await self._publish(session, spec)
            return None  # its DELETED event wakes us
        if pod.owner_uid != session.ref.uid:
            session.deleting_pod_uid = pod.uid
            await self._kube.delete_pod(namespace, pod.name)
            return None
        if pod.failed:
            session.pod_lost = True
            session.pod_failures += 1
            delay = self._settings.backoff(session.pod_failures)
            session.not_before = time.monotonic() + delay
            reason = f": {pod.reason}" if pod.reason else ""
            session.problem = f"worker pod {pod.name} failed{reason}; recreating it"
            session.deleting_pod_uid = pod.uid
            await self._kube.delete_pod(namespace, pod.name)
            await self._publish(session, spec)
            return None
        if not await self._pod_is_current(session, spec, pod):
            return await self._update_pod(session, spec, pod, waiting_since)
        if pod.drain_deadline is not None:  # the spec changed back during a wait
            await self._kube.annotate_pod(namespace, pod.name, {ANNOTATION_DRAIN_DEADLINE: None})
        if pod.ready:
            session.pod_failures = 0
        session.problem = session.waiting = None
        session.problem_retries = 0
        session.replacing = False
        session.applied_generation = session.generation
        await self._publish(session, spec)
        return None

    async def _update_pod(
        self, session: Session, spec: SessionSpec, pod: PodState, waiting_since: float | None
    ) -> float | None:
        """Replaces the pod for the changed spec, unless it serves a call: then it waits for the
        call to end, at most drainTimeout from when the wait began."""
        namespace = session.key[0]
        hold = self._update_hold(session, pod)
        now = time.time()
        since = now if waiting_since is None else waiting_since
        deadline = since + spec.drain_timeout
        if hold is not None and now < deadline:
            cause, reason = hold
            session.pending_since = since
            session.pending = PendingUpdate(session.generation, since, deadline, cause, reason)
            if pod.drain_deadline != phase.timestamp(deadline):
                annotation = {ANNOTATION_DRAIN_DEADLINE: phase.timestamp(deadline)}
                await self._kube.annotate_pod(namespace, pod.name, annotation)
            if waiting_since is None:
                self._event(
                    session,
                    "Normal",
                    "UpdatePending",
                    f"spec generation {session.generation}: {reason}; worker pod {pod.name} is"
                    f" replaced then, or at {phase.timestamp(deadline)} (drainTimeout"
                    f" {spec.drain_timeout}s) at the latest",
                )
            await self._publish(session, spec)
            return (
                min(deadline - now, STATUS_RECHECK) if reason == WAIT_FOR_STATUS else deadline - now
            )
        kind, why = "Normal", ""
        if hold is not None:
            kind = "Warning"
            why = f" although a call may be in progress: drainTimeout {spec.drain_timeout}s passed"
        elif waiting_since is not None:
            why = " now that no call is in progress"
        session.replacing = True
        session.deleting_pod_uid = pod.uid
        await self._kube.delete_pod(namespace, pod.name)
        self._event(
            session,
            kind,
            "Replacing",
            f"spec generation {session.generation}: replacing worker pod {pod.name}{why}",
        )
        await self._publish(session, spec)
        return None

    def _update_hold(self, session: Session, pod: PodState) -> tuple[str, str] | None:
        """(condition reason, message) of why a spec change waits; None if it need not."""
        if not (pod.phase == "Running" and pod.ready):
            return None  # not serving, so not in a call
        if not self._mirror.has_read(session.key):
            return "WorkerStatusUnknown", WAIT_FOR_STATUS
        if phase.call_in_progress(pod, session.statuses):
            return "CallInProgress", WAIT_FOR_CALL
        return None

    async def _fail(
        self, session: Session, spec: SessionSpec, problem: str, kind: ErrorKind
    ) -> float:
        metrics.reconcile_failed(kind)
        session.problem = problem
        session.problem_retries += 1
        await self._publish(session, spec)
        return self._settings.backoff(session.problem_retries)

    async def _ensure_children(self, ref: SessionRef) -> str | None:
        """Creates (or adopts) the token Secret and the Service; a problem message if blocked."""
        names = child_names(ref.name)
        problem = await self._ensure_owned(
            ref,
            "Secret",
            names.token_secret,
            lambda: self._kube.create_secret(build_token_secret(ref, new_token())),
            lambda: self._kube.read_secret(ref.namespace, names.token_secret),
            lambda: self._kube.delete_secret(ref.namespace, names.token_secret),
            usable=lambda secret: _has_key(secret, TOKEN_KEY),
        )
        if problem:
            return problem
        return await self._ensure_owned(
            ref,
            "Service",
            names.service,
            lambda: self._kube.create_service(build_service(ref, self._settings)),
            lambda: self._kube.read_service(ref.namespace, names.service),
            lambda: self._kube.delete_service(ref.namespace, names.service),
            usable=lambda service: True,
        )

    async def _ensure_owned(
        self,
        ref: SessionRef,
        kind: str,
        name: str,
        create: Callable[[], Any],
        read: Callable[[], Any],
        delete: Callable[[], Any],
        usable: Callable[[dict[str, Any]], bool],
    ) -> str | None:
        try:
            await create()
            return None
        except AlreadyExists:
            existing = await read()
        if existing is None:
            raise KubeError(f"adopt {kind} {ref.namespace}/{name}", 409, "created and gone")
        owner = controller_uid(existing)
        if owner == ref.uid and usable(existing):
            return None
        if owner is None:
            return (
                f"{kind} {ref.namespace}/{name} exists and is not controlled by this SipSession;"
                " delete or rename it"
            )
        # Left over from a deleted namesake (or unusable): replace it.
        await delete()
        await create()
        return None

    async def _secret_problem(self, namespace: str, spec: SessionSpec) -> str | None:
        """Why the pod could not start for want of a Secret or key (checked before creating it)."""
        wanted: list[tuple[SecretKeyRef, str]] = []
        if spec.password_ref is not None:
            wanted.append((spec.password_ref, "spec.account.passwordSecretRef"))
        if self._settings.redis_password_secret is not None:
            wanted.append(
                (self._settings.redis_password_secret, "SIP_OPERATOR_REDIS_PASSWORD_SECRET")
            )
        for ref, source in wanted:
            problem = await self._missing(namespace, ref, source)
            if problem:
                return problem
        return None

    async def _tls_keys(self, namespace: str, spec: SessionSpec) -> frozenset[str] | str:
        """The certificate keys spec.tls's Secret holds, or why they cannot be used."""
        if spec.tls_secret is None:
            return frozenset()
        where = f"Secret {namespace}/{spec.tls_secret} (named by spec.tls.secretRef)"
        secret = await self._kube.read_secret(namespace, spec.tls_secret)
        if secret is None:
            return f"{where} not found"
        keys = frozenset(key for key in TLS_KEYS if _has_key(secret, key))
        if ("tls.crt" in keys) != ("tls.key" in keys):
            return f"{where}: tls.crt and tls.key go together (mutual TLS)"
        if not keys:
            return f"{where} has none of {', '.join(TLS_KEYS)}"
        return keys

    async def _missing(self, namespace: str, ref: SecretKeyRef, source: str) -> str | None:
        secret = await self._kube.read_secret(namespace, ref.name)
        if secret is None:
            return f"Secret {namespace}/{ref.name} not found (named by {source})"
        if not _has_key(secret, ref.key):
            return f"Secret {namespace}/{ref.name} has no key {ref.key!r} (named by {source})"
        return None

    async def _create_pod(
        self, session: Session, spec: SessionSpec, slot: int | None, tls_keys: frozenset[str]
    ) -> PodState | str | None:
        """The new (or adopted) pod; a problem message; None if it vanished meanwhile."""
        ref = session.ref
        body = build_pod(ref, spec, self._settings, session.generation, slot, tls_keys)
        name = body["metadata"]["name"]
        try:
            created = await self._kube.create_pod(body)
        except AlreadyExists:
            found = await self._kube.read_pod(ref.namespace, name)
            if found is None:
                return None
            owner = controller_uid(found)
            if owner is None:
                return (
                    f"Pod {ref.namespace}/{name} exists and is not controlled by this SipSession;"
                    " delete or rename it"
                )
            session.pod = _pod_state(found, owner)
            session.pod_lost = False  # whoever created it, it was not this pass
            return session.pod
        if session.pod_lost:
            metrics.POD_RECREATIONS.inc()
            session.pod_lost = False
        session.settle_update()
        state = _pod_state(created, ref.uid)
        if session.pod is None or session.pod.uid != state.uid:  # the watch may be newer
            session.pod = state
        before = session.waiting or session.problem
        message = f"created worker pod {name}" + (f" (before: {before})" if before else "")
        self._event(session, "Normal", "PodCreated", message)
        return session.pod

    # ---- port slots of hostNetwork sessions ----

    async def _pod_is_current(self, session: Session, spec: SessionSpec, pod: PodState) -> bool:
        """Whether the pod runs this spec and, on hostNetwork, on the session's slot."""
        if not spec.host_network:
            return pod.spec_hash == spec.fingerprint
        async with self._slots_lock:
            slot = await self._held_slot(session)
        # A hostNetwork pod without a slot (made before slots existed) is replaced.
        return slot is not None and pod.spec_hash == pod_fingerprint(spec, slot)

    async def _slot_for_pod(self, session: Session, spec: SessionSpec) -> int | None:
        """The slot a new pod runs on (None off hostNetwork), in `.status.slot` before it."""
        uid = session.ref.uid
        if not spec.host_network:
            self._slots.release(uid)  # the old pod is gone: its ports are free
            return None
        async with self._slots_lock:
            slot = await self._held_slot(session)
            if slot is not None:
                return slot
            slot = self._slots.allocate(uid)
            try:
                written = await self._kube.patch_session_status(
                    session.key[0], session.key[1], {"slot": slot}
                )
            except KubeError:
                self._slots.release(uid)
                raise
            if not written:
                self._slots.release(uid)
                raise KubeError(f"record slot {slot} of {session.label}", 404, "Not Found")
        session.published = {
            **(session.published or session.body.get("status") or {}),
            "slot": slot,
        }
        return slot

    async def _held_slot(self, session: Session) -> int | None:
        """The slot the session holds: the table's, else its status's (the lock is held)."""
        if not self._slots.seeded:
            await self._seed_slots()
        uid = session.ref.uid
        slot = self._slots.slot_of(uid)
        if slot is None:
            claimed = (session.published or session.body.get("status") or {}).get("slot")
            if isinstance(claimed, int) and not isinstance(claimed, bool):
                slot = claimed if self._slots.claim(uid, claimed) else None
        return slot

    async def _seed_slots(self) -> None:
        """Fills the table from every SipSession's status (one list per namespace), so that no
        slot another session holds is handed out: after a start, a restart, a peering hand-over."""
        namespaces: Sequence[str | None] = (
            [None] if self._session_namespaces is None else self._session_namespaces
        )
        claims = []
        for namespace in namespaces:
            for body in await self._kube.list_sessions(namespace):
                slot = (body.get("status") or {}).get("slot")
                if isinstance(slot, int) and not isinstance(slot, bool):
                    claims.append((str(body["metadata"].get("uid", "")), slot))
        self._slots.seed(claims)
        logger.info("port slots: %d held by existing SipSessions", len(claims))

    def _status_slot(
        self, session: Session, spec: SessionSpec | None, previous: Mapping[str, Any]
    ) -> int | None:
        """What `.status.slot` says (None removes it): the slot the session holds."""
        held = self._slots.slot_of(session.ref.uid)
        if held is None and (spec is None or spec.host_network):
            # Not (yet) in the table, which may not be seeded: the recorded slot stands.
            return previous.get("slot")
        return held

    # ---- status and events ----

    async def _publish(self, session: Session, spec: SessionSpec | None) -> None:
        ref = session.ref
        names = child_names(ref.name)
        observation = Observation(
            problem=session.problem,
            waiting=session.waiting,
            pod=session.pod,
            replacing=session.replacing,
            statuses=session.statuses,
            start_session=spec.start_session if spec else True,
            registers=spec.register if spec else True,
            pending_update=session.pending,
        )
        previous = session.published or session.body.get("status") or {}
        applied = session.replacing or session.pending is not None
        status = phase.build_status(
            observation,
            generation=session.applied_generation if applied else session.generation,
            pod_name=names.pod,
            endpoint=endpoint(ref, self._settings),
            token_secret={"name": names.token_secret, "key": TOKEN_KEY},
            previous=previous,
            now=phase.now_timestamp(),
        )
        status["slot"] = self._status_slot(session, spec, previous)
        self._announce_transitions(session, status, spec)
        if all(previous.get(k) == v for k, v in status.items()):
            return
        if not await self._kube.patch_session_status(ref.namespace, ref.name, status):
            return
        accepted = time.time()
        session.published = status
        worker = observation.statuses.newest
        if worker and worker.timestamp and status["lastStatus"] != previous.get("lastStatus"):
            metrics.observe_mirror_lag(worker.timestamp, accepted)

    def _announce_transitions(
        self, session: Session, status: Mapping[str, Any], spec: SessionSpec | None
    ) -> None:
        new_phase, message = status["phase"], status["message"]
        if new_phase == phase.FAILED:
            if session.last_phase != phase.FAILED or session.last_failure != message:
                self._event(session, "Warning", "Failed", message)
            session.last_failure = message
        elif session.last_phase == phase.FAILED:
            self._event(session, "Normal", "Recovered", message)
            session.last_failure = None
        registered = any(
            c["type"] == "Registered" and c["status"] == "True" for c in status["conditions"]
        )
        if registered and not session.registered:
            account = spec.account_name if spec else "the account"
            self._event(session, "Normal", "Registered", f"{account} is registered")
        session.registered = registered
        session.last_phase = new_phase

    def _event(self, session: Session, kind: str, reason: str, message: str) -> None:
        logger.info("SipSession %s: %s: %s", session.label, reason, message)
        self._post_event(session.body, kind, reason, message)
