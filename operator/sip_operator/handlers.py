"""The kopf handlers: they feed watch events to the SessionController and run its lifecycle.

The reconciling itself is the controller's (controller.py). kopf owns the watches, the
finalizer, event posting, logging and peering, configured by `configure_kopf` (main.py applies
it to the settings it hands to kopf.run). SipSession, worker-pod and Service events only
update the controller's view and wake the session's loop; deletion runs through an on.delete
handler so that cleanup and the history expiry happen before the SipSession disappears.
"""

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf

from sip_operator import metrics
from sip_operator.controller import STOP_TIMEOUT, RetentionError, SessionController
from sip_operator.kube import KubeApi
from sip_operator.pod_builder import LABEL_MANAGED_BY, MANAGER
from sip_operator.session_spec import GROUP, PLURAL, VERSION
from sip_operator.settings import load_settings
from sip_operator.status_mirror import StatusMirror

PREFIX = "sip-operator.dev"
FINALIZER = f"{PREFIX}/cleanup"
RETENTION_ATTEMPTS = 5


def _post_event(body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(kopf.Body(cast(kopf.RawBody, dict(body))), type=kind, reason=reason, message=message)


class NoDiffBase(kopf.DiffBaseStorage):
    """Keeps no last-handled spec: the controller is level-based and never diffs specs.

    kopf would otherwise write an annotation on every spec change, a write for nothing, and
    deep-copy every watched object on every event to compare it with the stored one.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class HandlerProgress(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations (the delete handler's retries), minus the cleaning of the
    diff-base essence on every event: NoDiffBase's essence is always empty, so there is
    nothing to clean, and the cleaning was about a twentieth of the operator's CPU."""

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """What this operator needs of kopf, whatever the command line says."""
    # Our own events say what matters; kopf's per-handler INFO chatter stays in the log only.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "sip-operator"
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = HandlerProgress(prefix=PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660


@kopf.on.startup()
async def start_operator(memo: kopf.Memo, **_: Any) -> None:
    operator_settings = load_settings(os.environ)
    kube = KubeApi()
    mirror = StatusMirror(operator_settings.redis_url, operator_settings.redis_password)
    controller = SessionController(
        kube, mirror, operator_settings, _post_event, FINALIZER, memo.session_namespaces
    )
    metrics.watch_sessions(controller.phases)
    memo.kube = kube
    memo.mirror = mirror
    memo.controller = controller
    memo.mirror_task = asyncio.get_running_loop().create_task(
        mirror.run(controller.observe_worker_status), name="status mirror"
    )


@kopf.on.cleanup()
async def stop_operator(memo: kopf.Memo, **_: Any) -> None:
    await memo.controller.close()
    memo.mirror_task.cancel()
    await asyncio.gather(memo.mirror_task, return_exceptions=True)
    await memo.mirror.close()
    await memo.kube.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def session_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if event["type"] == "DELETED":
        memo.controller.forget_session(body)
    else:
        memo.controller.observe_session(body)


@kopf.on.event("v1", "pods", labels={LABEL_MANAGED_BY: MANAGER})
async def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.observe_pod(event["type"], body)


@kopf.on.event("v1", "services", labels={LABEL_MANAGED_BY: MANAGER})
async def service_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.observe_service(event["type"], body)


@kopf.on.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=STOP_TIMEOUT + 5)
async def session_lease(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Lasts while kopf lets this operator serve the session.

    The controller's session loops are its own tasks, which kopf cannot pause. When peering
    pauses this replica (one of higher priority serves), kopf stops the daemons, and the
    controller lets go of the session; kopf's listing on resuming brings it back.
    """
    await stopped.wait()
    if stopped.reason is not None and kopf.DaemonStoppingReason.OPERATOR_PAUSING in stopped.reason:
        await memo.controller.release(body)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def session_deleted(
    body: kopf.Body,
    memo: kopf.Memo,
    retry: int,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    try:
        await memo.controller.finalize(body)
    except RetentionError as error:
        if retry + 1 < RETENTION_ATTEMPTS:
            raise kopf.TemporaryError(str(error), delay=2 ** (retry + 1)) from error
        # Deleting must not hang on Redis: the stream then stays until someone removes it.
        logger.warning("%s; the history stream keeps no expiry", error)
