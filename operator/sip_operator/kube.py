"""The Kubernetes API calls the controller makes, as coroutines over the official client.

The kubernetes client is synchronous; its calls run in a small thread pool so that many
sessions reconcile at once without blocking kopf's event loop. Replies are read as plain
JSON (no model objects). Errors are reduced to status and reason: an API error body can echo
what was sent, and what is sent can be a Secret.
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


class KubeError(Exception):
    """An API call failed; the message holds the HTTP status and reason, never the body."""

    def __init__(self, action: str, status: int, reason: str) -> None:
        super().__init__(f"{action}: {status} {reason}".strip())
        self.status = status


class AlreadyExists(KubeError):
    pass


# The client's config loaders carry no annotations.
_load_incluster_config: Callable[..., None] = kubernetes.config.load_incluster_config
_load_kube_config: Callable[..., None] = kubernetes.config.load_kube_config


def _load_configuration(pool_size: int) -> Any:
    configuration = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        _load_incluster_config(client_configuration=configuration)
    else:
        _load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return configuration


class KubeApi:
    """Pods, Services, Secrets and SipSession status of one cluster."""

    def __init__(self, pool_size: int = 8) -> None:
        api_client = kubernetes.client.ApiClient(_load_configuration(pool_size))
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._close_client: Callable[[], None] = api_client.close
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="kube-api")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._close_client()

    async def _call(self, action: str, function: Callable[..., Any], *args: Any) -> Any:
        """Runs `function(*args)` in the pool; returns the decoded JSON reply."""
        call = functools.partial(function, *args, _preload_content=False)
        try:
            response = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except kubernetes.client.ApiException as error:
            status = int(error.status or 0)
            kind = AlreadyExists if status == 409 else KubeError
            raise kind(action, status, str(error.reason or "")) from None
        data = response.data
        return json.loads(data) if data else {}

    async def _create(self, kind: str, function: Callable[..., Any], body: dict[str, Any]) -> Any:
        namespace = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        return await self._call(f"create {kind} {namespace}/{name}", function, namespace, body)

    async def _read(
        self, kind: str, function: Callable[..., Any], namespace: str, name: str
    ) -> Any:
        try:
            return await self._call(f"read {kind} {namespace}/{name}", function, name, namespace)
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def _delete(self, kind: str, function: Callable[..., Any], ns: str, name: str) -> bool:
        try:
            await self._call(f"delete {kind} {ns}/{name}", function, name, ns)
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._create("pod", self._core.create_namespaced_pod, body)
        return result

    async def create_service(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._create(
            "service", self._core.create_namespaced_service, body
        )
        return result

    async def create_secret(self, body: dict[str, Any]) -> None:
        await self._create("secret", self._core.create_namespaced_secret, body)

    async def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._read(
            "pod", self._core.read_namespaced_pod, namespace, name
        )
        return result

    async def read_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._read(
            "service", self._core.read_namespaced_service, namespace, name
        )
        return result

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret with its data: callers look at keys and must never log values."""
        result: dict[str, Any] | None = await self._read(
            "secret", self._core.read_namespaced_secret, namespace, name
        )
        return result

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Deletes with the pod's own grace period, so the worker shuts down softly."""
        return await self._delete("pod", self._core.delete_namespaced_pod, namespace, name)

    async def delete_service(self, namespace: str, name: str) -> bool:
        return await self._delete("service", self._core.delete_namespaced_service, namespace, name)

    async def delete_secret(self, namespace: str, name: str) -> bool:
        return await self._delete("secret", self._core.delete_namespaced_secret, namespace, name)

    async def patch_session_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patches `.status` through the status subresource; False if the session is gone."""
        try:
            await self._call(
                f"patch sipsession {namespace}/{name} status",
                self._custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
            )
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True
