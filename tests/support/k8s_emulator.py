"""A Kubernetes API emulator for operator tests: kmock's KubernetesEmulator with real semantics.

kmock 0.8 (pinned: this subclass uses its private `_lock`, `_objects`, `_buses`, `_requests`) serves
the Kubernetes REST API over HTTP but lacks what kopf and a controller rely on. `K8sEmulator` adds:

* metadata.uid / resourceVersion / creationTimestamp / generation on create, generateName;
* a resourceVersion bump on every write, a generation bump when a patch touches spec;
* JSON-patch `test` failures as 422 (kopf retries its finalizer patch) instead of 500;
* optimistic concurrency: a stale metadata.resourceVersion in a merge patch or PUT gives 409;
* equality-based labelSelector on LIST and WATCH (`a=b`, `a!=b`, `a`, `!a`);
* LIST with a real resourceVersion, WATCH replaying from `?resourceVersion=N` (no stale ADDED
  for objects that existed before the watcher started, no lost events between list and watch);
* background garbage collection of dependents by ownerReferences[].uid;
* status-subresource isolation (main endpoint ignores .status, /status ignores the rest);
* PUT (replace), discovery the way kubectl expects it;
* O(1) request dispatch (kmock matches every request against the whole request history).

What it does not emulate: a kubelet (tests patch pod .status themselves), admission, CRD
defaulting and validation, strategic-merge list semantics, field selectors, namespaces.

Run it as its own process (used by the benchmark): `python -m tests.support.k8s_emulator`.
"""

import argparse
import asyncio
import collections
import contextvars
import datetime
import gc
import itertools
import signal
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import enums

GROUP = "sip-operator.dev"
VERSION = "v1alpha1"
SIPSESSIONS = f"{GROUP}/{VERSION}/sipsessions"
PODS = "v1/pods"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
KOPF_PEERINGS = "kopf.dev/v1/kopfpeerings"

_ONE_OBJECT_ACTIONS = frozenset(
    {enums.action.FETCH, enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE}
)
_ALL_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})
_CONFLICT = (
    "Operation cannot be fulfilled: the object has been modified; "
    "please apply your changes to the latest version and try again"
)

Selector = list[tuple[str, str, str | None]]


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_selector(text: str | None) -> Selector:
    requirements: Selector = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            requirements.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            requirements.append((key.strip(), "=", value.strip()))
        elif term.startswith("!"):
            requirements.append((term[1:].strip(), "absent", None))
        else:
            requirements.append((term, "exists", None))
    return requirements


def _labels_match(obj: dict[str, Any], requirements: Selector) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, value in requirements:
        if (
            (op == "=" and labels.get(key) != value)
            or (op == "!=" and labels.get(key) == value)
            or (op == "exists" and key not in labels)
            or (op == "absent" and key in labels)
        ):
            return False
    return True


def _merge_patched(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch applied to a copy of `target`."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patched(result.get(key), value)
    return result


# One process-wide, monotonic sequence for resourceVersions and watch-event positions.
_SEQUENCE = itertools.count(1000)


class LoggingBus(kmock.Bus):  # type: ignore[misc]
    """A kmock bus that also keeps (sequence, event) pairs, for watches from a resourceVersion."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[int, Any]] = []

    async def put(self, *items: Any) -> None:
        for item in items:
            self.log.append((next(_SEQUENCE), item))
        await super().put(*items)


_DISPATCHING: contextvars.ContextVar[Any] = contextvars.ContextVar("dispatching", default=None)


class _FastDispatchRequests(list[Any]):
    """Keeps every request; while one is dispatched, iterating yields that request only."""

    def __iter__(self) -> Iterator[Any]:
        current = _DISPATCHING.get()
        if current is not None:
            return iter((current,))
        return super().__iter__()


class K8sEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._buses = collections.defaultdict(LoggingBus)
        self._requests = _FastDispatchRequests()

    @staticmethod
    def _next_rv() -> str:
        return str(next(_SEQUENCE))

    def _has_status(self, resource: Any) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    @staticmethod
    def _isolate_status(request: Any) -> None:
        """Like the status subresource: main writes drop .status, /status writes keep only it."""
        data = request.data
        on_status = request.subresource == "status"
        if isinstance(data, dict):
            if on_status:
                sent_rv = (data.get("metadata") or {}).get("resourceVersion")
                kept = {"status": data["status"]} if "status" in data else {}
                data.clear()
                data.update(kept)
                if sent_rv is not None:
                    data["metadata"] = {"resourceVersion": sent_rv}
            else:
                data.pop("status", None)
        elif isinstance(data, list):

            def touches_status(op: dict[str, Any]) -> bool:
                path = str(op.get("path", ""))
                return path == "/status" or path.startswith("/status/")

            data[:] = [
                op for op in data if op.get("op") == "test" or touches_status(op) == on_status
            ]

    async def _replace(self, request: Any) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            obj = self._objects[key]
            current = obj.raw
            sent_rv = ((request.data or {}).get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"].get("resourceVersion"):
                raise kmock.KubernetesError(status=409, reason="Conflict", message=_CONFLICT)
            new = dict(request.data or {})
            meta = dict(new.get("metadata") or {})
            for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
            meta["generation"] = current["metadata"].get("generation", 1) + (
                new.get("spec") != current.get("spec")
            )
            meta["resourceVersion"] = self._next_rv()
            new["metadata"] = meta
            if self._has_status(request.resource):
                if request.subresource == "status":
                    new = dict(
                        current, status=new.get("status"), metadata=dict(current["metadata"])
                    )
                    new["metadata"]["resourceVersion"] = meta["resourceVersion"]
                elif "status" in current:
                    new["status"] = current["status"]
                else:
                    new.pop("status", None)
            obj.create(new)
            await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
            return aiohttp.web.json_response(obj.raw)

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        token = _DISPATCHING.set(request)
        try:
            return await self._handle_k8s(request)
        finally:
            _DISPATCHING.reset(token)

    async def _handle_k8s(self, request: Any) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is not None and request.method == enums.method.PUT and request.name:
            return await self._replace(request)
        if (
            resource is not None
            and request.action in (enums.action.CREATE, enums.action.UPDATE)
            and self._has_status(resource)
        ):
            if request.action == enums.action.UPDATE:
                self._isolate_status(request)
            elif isinstance(request.data, dict):
                request.data.pop("status", None)
        owner_before = None
        if resource is not None and request.action == enums.action.CREATE:
            self._stamp_new(request)
        elif resource is not None and request.action == enums.action.UPDATE and request.name:
            owner_before = await self._stamp_update(request)
        elif resource is not None and request.action == enums.action.DELETE and request.name:
            owner_before = await self._mark_deletion(request)
        try:
            if request.action in _ONE_OBJECT_ACTIONS and request.resource in self.resources:
                return await self._apply_and_serve(request)
            response: aiohttp.web.StreamResponse = await super()._handle(request)
            if request.action == enums.action.CREATE and response.status == 200:
                response.set_status(201)  # as the apiserver; clients decode create replies by it
            return response
        except (
            jsonpatch.JsonPatchTestFailed,
            jsonpatch.JsonPatchConflict,
            jsonpointer.JsonPointerException,
        ) as error:
            raise kmock.KubernetesError(
                status=422, reason="Invalid", message=f"JSON patch failed: {error}"
            ) from error
        finally:
            if owner_before is not None:
                key = (resource, request.namespace, request.name)
                if key in self._objects and self._objects[key].deleted:
                    await self._collect_dependents(owner_before)

    async def _apply_and_serve(self, request: Any) -> aiohttp.web.StreamResponse:
        """kmock's own state change for get/create/patch/delete of one object, and the reply.

        The same as kmock's KubernetesEmulator._handle plus its _serve_* fallbacks, without
        matching every request against every reaction (most of an emulated request's cost).
        """
        action, resource = request.action, request.resource
        bus = self._buses[resource]
        released = None
        async with self._lock:
            if action == enums.action.CREATE:
                meta = request.data.get("metadata", {})
                key = (resource, request.namespace or meta.get("namespace"), meta.get("name"))
                if key not in self._objects:
                    self._objects[key] = request.data
                elif not self._objects[key].deleted:
                    raise kmock.KubernetesError(
                        status=409, reason="AlreadyExists", message=f"{key[2]} already exists"
                    )
                else:
                    self._objects[key].create(request.data)
                obj = self._objects[key]
                await bus.put({"type": "ADDED", "object": obj.last.raw})
            else:
                obj = self._stored(resource, request.namespace, request.name)
                if obj is None or obj.deleted:
                    raise kmock.KubernetesObjectNotFoundError()
                if action == enums.action.UPDATE:
                    obj.patch(request.data)
                    await bus.put({"type": "MODIFIED", "object": obj.raw})
                elif action == enums.action.DELETE and not obj.get("metadata", {}).get(
                    "deletionTimestamp"
                ):
                    obj.delete()  # (with finalizers, _mark_deletion has marked it instead)
                    await bus.put({"type": "DELETED", "object": obj.last.raw})
            payload = obj.raw if action in (enums.action.CREATE, enums.action.FETCH) else None
            if payload is None:
                payload = obj.last.raw
                meta = {} if obj.deleted else obj.get("metadata", {})
                if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                    released = obj  # finalizers gone: the deletion completes now
            if released is not None:
                released.delete()
                await bus.put({"type": "DELETED", "object": payload})
        status = 201 if action == enums.action.CREATE else 200
        return aiohttp.web.json_response(payload, status=status)

    def _stamp_new(self, request: Any) -> None:
        if not isinstance(request.data, dict):
            return
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            # As the API server does since Kubernetes 1.32: a taken name is drawn again, up to
            # 8 times, instead of failing the create with 409 (5 characters collide often).
            for _ in range(8):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if self._stored(request.resource, request.namespace, meta["name"]) is None:
                    break
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace  # else namespaced watches never see it
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self._next_rv()
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1

    async def _stamp_update(self, request: Any) -> dict[str, Any] | None:
        async with self._lock:
            current = self._stored(request.resource, request.namespace, request.name)
            if current is not None and current.deleted:
                current = None
            before = current.raw if current is not None else None
        current_rv = (before or {}).get("metadata", {}).get("resourceVersion")
        new_rv = self._next_rv()
        if isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            sent_rv = meta.get("resourceVersion")
            if sent_rv is not None and current_rv is not None and sent_rv != current_rv:
                raise kmock.KubernetesError(status=409, reason="Conflict", message=_CONFLICT)
            meta["resourceVersion"] = new_rv
            if "spec" in request.data and request.subresource is None and before is not None:
                old_spec = before.get("spec")
                if _merge_patched(old_spec, request.data["spec"]) != old_spec:
                    meta["generation"] = before["metadata"].get("generation", 1) + 1
        elif isinstance(request.data, list):
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": new_rv})
        return before

    async def _mark_deletion(self, request: Any) -> dict[str, Any] | None:
        """With finalizers: mark deletionTimestamp and bump the rv (kmock then waits for them)."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return None
            obj = self._objects[key]
            before: dict[str, Any] = obj.raw
            meta = before.get("metadata") or {}
            if meta.get("finalizers") and not meta.get("deletionTimestamp"):
                obj.patch(
                    {
                        "metadata": {
                            "deletionTimestamp": _now(),
                            "deletionGracePeriodSeconds": 0,
                            "resourceVersion": self._next_rv(),
                        }
                    }
                )
                await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
            return before

    async def _collect_dependents(self, owner: dict[str, Any]) -> None:
        """Background garbage collection: delete objects whose ownerReferences name the owner."""
        uid = (owner.get("metadata") or {}).get("uid")
        if not uid:
            return
        gone = []
        async with self._lock:
            for (resource, _, _), obj in list(self._objects.items()):
                if obj.deleted:
                    continue
                meta = obj.get("metadata") or {}
                if not any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
                    continue
                if meta.get("finalizers"):
                    if not meta.get("deletionTimestamp"):
                        obj.patch(
                            {
                                "metadata": {
                                    "deletionTimestamp": _now(),
                                    "resourceVersion": self._next_rv(),
                                }
                            }
                        )
                        await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
                else:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
                    gone.append(raw)
        for raw in gone:
            await self._collect_dependents(raw)

    def _stored(self, resource: Any, namespace: str | None, name: str | None) -> Any:
        """The stored object (deleted or not) or None; ObjectsArray has no .get()."""
        key = (resource, namespace, name)
        return self._objects[key] if key in self._objects else None  # noqa: SIM401

    async def _serve_version(self, request: Any) -> Any:
        data = await super()._serve_version(request)
        data["groupVersion"] = data["groupVersion"].lstrip("/")
        for item in data.get("resources", []):
            if "/" in item["name"]:
                item["shortNames"], item["categories"] = [], []
        return data

    @staticmethod
    def _matches(request: Any, resource: Any, namespace: str | None, name: str | None) -> bool:
        return (
            resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
        )

    async def _serve_list(self, request: Any) -> Any:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        requirements = _parse_selector(request.params.get("labelSelector"))
        async with self._lock:
            list_rv = self._next_rv()  # under the lock: consistent with the snapshot
            items = [
                obj.raw
                for (resource, namespace, name), obj in self._objects.items()
                if not obj.deleted and self._matches(request, resource, namespace, name)
            ]
        return {
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": list_rv},
            "items": [item for item in items if _labels_match(item, requirements)],
        }

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        yield b""
        requirements = _parse_selector(request.params.get("labelSelector"))
        since = request.params.get("resourceVersion") or ""
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()  # before the snapshot: nothing is lost in between
            if since.isdigit() and since != "0":
                backlog = [event for seq, event in bus.log if seq > int(since)]
            else:
                backlog = [
                    {"type": "ADDED", "object": obj.raw}
                    for (resource, namespace, name), obj in self._objects.items()
                    if not obj.deleted and self._matches(request, resource, namespace, name)
                ]

        def wanted(event: dict[str, Any]) -> bool:
            obj = event.get("object", {})
            meta = obj.get("metadata", {})
            return self._matches(
                request, request.resource, meta.get("namespace"), meta.get("name")
            ) and _labels_match(obj, requirements)

        try:
            for event in backlog:
                if wanted(event):
                    yield event
            async for event in bus.stream(since=marker):
                if wanted(event):
                    yield event
        finally:
            await bus.unmark(marker)


def register_resources(emulator: kmock.KubernetesEmulator) -> None:
    """Discovery: what the operator and kopf look up (kind, namespaced, verbs, subresources)."""
    emulator.resources[SIPSESSIONS] = kmock.ResourceInfo(
        kind="SipSession",
        singular="sipsession",
        shortnames={"sips"},
        namespaced=True,
        subresources={"status"},
        verbs=set(_ALL_VERBS),
    )
    for plural, kind, has_status in [
        ("pods", "Pod", True),
        ("services", "Service", True),
        ("secrets", "Secret", False),
        ("events", "Event", False),
    ]:
        emulator.resources[f"v1/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=True,
            subresources={"status"} if has_status else set(),
            verbs=set(_ALL_VERBS),
        )
    # kopf's peering objects (a plain .status, no subresource), for operators not --standalone.
    emulator.resources[KOPF_PEERINGS] = kmock.ResourceInfo(
        kind="KopfPeering", singular="kopfpeering", namespaced=True, verbs=set(_ALL_VERBS)
    )
    # kopf waits until namespaces are discoverable (kmock cannot serve them as objects).
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs={"get", "list", "watch"}
    )


def write_kubeconfig(url: str, path: Path) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f'clusters: [{{name: emulator, cluster: {{server: "{url}"}}}}]\n'
        "users: [{name: emulator, user: {token: emulator}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: emulator, "
        "namespace: default}}]\n"
        "current-context: emulator\n"
    )


class EmulatorThread:
    """K8sEmulator + kmock.Server on 127.0.0.1:<free port> in a background thread and loop."""

    def __init__(self, setup: Callable[[kmock.KubernetesEmulator], None] = register_resources):
        self._setup = setup
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self.url = ""
        self.emulator: K8sEmulator | None = None
        self._kubeconfig_dir = tempfile.TemporaryDirectory(prefix="k8s-emulator-")
        self.kubeconfig = Path(self._kubeconfig_dir.name) / "kubeconfig"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with K8sEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = f"http://{server.host}:{server.port}"
            self._setup(emulator)
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "EmulatorThread":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        write_kubeconfig(self.url, self.kubeconfig)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._kubeconfig_dir.cleanup()

    def objects(self, resource: str, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        """A snapshot of the live objects of `resource` (e.g. "v1/pods"), by name."""

        async def snapshot() -> dict[str, dict[str, Any]]:
            assert self.emulator is not None
            wanted = kmock.resource(resource)
            return {
                name: obj.raw
                for (res, ns, name), obj in list(self.emulator.objects.items())
                if res == wanted and not obj.deleted and namespace in (None, ns)
            }

        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(30)

    def every_version(self) -> list[tuple[str, dict[str, Any]]]:
        """Every version of every object ever stored, deleted ones included.

        As (resource, body) with resources named like "v1/pods".
        """

        async def collect() -> list[tuple[str, dict[str, Any]]]:
            assert self.emulator is not None
            return [
                (f"{resource.group}/{resource.version}/{resource.plural}".lstrip("/"), version.raw)
                for (resource, _, _), obj in list(self.emulator.objects.items())
                for version in obj.history
                if version is not None
            ]

        return asyncio.run_coroutine_threadsafe(collect(), self._loop).result(30)

    def requests(self) -> list[tuple[str, str]]:
        """Every request served so far, as (method, path)."""

        async def collect() -> list[tuple[str, str]]:
            assert self.emulator is not None
            return [(str(r.method.value), r.url.path) for r in list(self.emulator._requests)]

        return asyncio.run_coroutine_threadsafe(collect(), self._loop).result(30)


async def _serve_forever(port: int, kubeconfig: Path | None) -> None:
    server_args = {"port": port} if port else {}
    async with K8sEmulator() as emulator, kmock.Server(emulator, **server_args) as server:
        register_resources(emulator)
        url = f"http://{server.host}:{server.port}"
        if kubeconfig is not None:
            write_kubeconfig(url, kubeconfig)
        print(f"READY {url}", flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the Kubernetes API emulator over HTTP.")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig pointing at it here")
    args = parser.parse_args()
    # It stands in for an API server, which has no stop-the-world pauses of this size: with
    # thousands of objects stored, each full collection of the oldest generation paused every
    # request for about a second. Young cycles are still collected.
    gc.set_threshold(700, 10, 1_000_000)
    asyncio.run(_serve_forever(args.port, args.kubeconfig))


if __name__ == "__main__":
    main()
