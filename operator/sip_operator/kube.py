"""The Kubernetes API calls the controller makes, as coroutines over the official client.

Requests go through the kubernetes client's ApiClient (its configuration, authentication,
TLS and connection pool) with plain JSON bodies and replies: the typed wrappers would validate
every body into models and back, which costs more CPU than the request itself. The client is
synchronous; calls run in a small thread pool so that many sessions reconcile at once without
blocking kopf's event loop. Errors are reduced to status and reason: an API error body can
echo what was sent, and what is sent can be a Secret.
"""

import asyncio
import functools
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes

from sip_operator.session_spec import GROUP, PLURAL, VERSION

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"

# The client's config loaders carry no annotations.
_load_incluster_config: Callable[..., None] = kubernetes.config.load_incluster_config
_load_kube_config: Callable[..., None] = kubernetes.config.load_kube_config


class KubeError(Exception):
    """An API call failed; the message holds the HTTP status and reason, never the body."""

    def __init__(self, action: str, status: int, reason: str) -> None:
        super().__init__(f"{action}: {status} {reason}".strip())
        self.status = status


class AlreadyExists(KubeError):
    pass


def _load_configuration(pool_size: int) -> Any:
    configuration = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        _load_incluster_config(client_configuration=configuration)
    else:
        _load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return configuration


def _core_path(kind: str, named: bool) -> str:
    path = f"/api/v1/namespaces/{{namespace}}/{kind}"
    return path + "/{name}" if named else path


class KubeApi:
    """Pods, Services, Secrets, and SipSessions' status (and their list) of one cluster."""

    def __init__(self, pool_size: int = 16) -> None:
        self._client = kubernetes.client.ApiClient(_load_configuration(pool_size))
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="kube-api")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        close: Callable[[], None] = self._client.close
        close()

    def _request(
        self,
        method: str,
        path: str,
        path_params: dict[str, str],
        body: Any,
        content_type: str,
    ) -> tuple[int, str, bytes]:
        """One blocking request: HTTP status, reason and the reply's body."""
        request = self._client.param_serialize(
            method=method,
            resource_path=path,
            path_params=path_params,
            header_params={"Accept": JSON, "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._client.call_api(*request)
        read: Callable[[], bytes | None] = response.read  # unannotated in the client
        return int(response.status), str(response.reason or ""), read() or b""

    async def _call(
        self,
        action: str,
        method: str,
        path: str,
        path_params: dict[str, str],
        body: Any = None,
        content_type: str = JSON,
    ) -> Any:
        """The decoded JSON reply; AlreadyExists for 409, KubeError for other errors."""
        call = functools.partial(self._request, method, path, path_params, body, content_type)
        loop = asyncio.get_running_loop()
        status, reason, data = await loop.run_in_executor(self._executor, call)
        if status == 409:
            raise AlreadyExists(action, status, reason)
        if not 200 <= status <= 299:
            raise KubeError(action, status, reason)
        return json.loads(data) if data else {}

    async def _create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        created: dict[str, Any] = await self._call(
            f"create {kind} {namespace}/{name}",
            "POST",
            _core_path(kind, named=False),
            {"namespace": namespace},
            body,
        )
        return created

    async def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._call(
                f"read {kind} {namespace}/{name}",
                "GET",
                _core_path(kind, named=True),
                {"namespace": namespace, "name": name},
            )
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return found

    async def _delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            await self._call(
                f"delete {kind} {namespace}/{name}",
                "DELETE",
                _core_path(kind, named=True),
                {"namespace": namespace, "name": name},
            )
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def _merge_patch(
        self, action: str, path: str, params: dict[str, str], patch: dict[str, Any]
    ) -> bool:
        """False if the object is gone (404)."""
        try:
            await self._call(action, "PATCH", path, params, patch, MERGE_PATCH)
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._create("pods", body)

    async def create_service(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._create("services", body)

    async def create_secret(self, body: dict[str, Any]) -> None:
        await self._create("secrets", body)

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read("pods", namespace, name)

    async def read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read("services", namespace, name)

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret with its data: callers look at keys and must never log values."""
        return await self._read("secrets", namespace, name)

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Deletes with the pod's own grace period, so the worker shuts down softly."""
        return await self._delete("pods", namespace, name)

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, Any]) -> bool:
        """Merge-patches the pod's annotations (None removes one); False if the pod is gone."""
        return await self._merge_patch(
            f"annotate pod {namespace}/{name}",
            _core_path("pods", named=True),
            {"namespace": namespace, "name": name},
            {"metadata": {"annotations": annotations}},
        )

    async def delete_service(self, namespace: str, name: str) -> bool:
        return await self._delete("services", namespace, name)

    async def delete_secret(self, namespace: str, name: str) -> bool:
        return await self._delete("secrets", namespace, name)

    async def list_sessions(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every SipSession in `namespace` (None: in the whole cluster)."""
        if namespace is None:
            action, path, params = "list sipsessions", f"/apis/{GROUP}/{VERSION}/{PLURAL}", {}
        else:
            action = f"list sipsessions in {namespace}"
            path = f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}"
            params = {"namespace": namespace}
        found: dict[str, Any] = await self._call(action, "GET", path, params)
        return list(found.get("items") or [])

    async def patch_session_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patches `.status` through the status subresource; False if the session is gone."""
        return await self._merge_patch(
            f"patch sipsession {namespace}/{name} status",
            f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}/status",
            {"namespace": namespace, "name": name},
            {"status": status},
        )
