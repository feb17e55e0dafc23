"""The Kubernetes API calls the controller makes, as coroutines over one aiohttp session.

Where the API server is and how to authenticate come from the kubernetes client's config
loaders (the in-cluster service account, else $KUBECONFIG / ~/.kube/config): the server, its CA,
a client certificate, the bearer token (asked for per request, so that a rotating service
account token or a kubeconfig exec plugin's is renewed), tls-server-name and an HTTP proxy.
The requests themselves go out as plain JSON from kopf's event loop, over a bounded pool of
connections: no model (de)serialisation, no threads. Errors are reduced to status and reason:
an API error body can echo what was sent, and what is sent can be a Secret.
"""

import json
import os
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import kubernetes

from sip_operator.session_spec import GROUP, PLURAL, VERSION

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
USER_AGENT = "sip-operator"
# Bounds a hung connection or API server, not the wait for a free connection in the pool
# (thousands of sessions reconciling at once queue there for a while).
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)

# The client's config loaders carry no annotations.
_load_incluster_config: Callable[..., None] = kubernetes.config.load_incluster_config
_load_kube_config: Callable[..., None] = kubernetes.config.load_kube_config


class KubeError(Exception):
    """An API call failed; the message holds the HTTP status and reason, never the body.

    Status 0: no reply (the connection failed or timed out)."""

    def __init__(self, action: str, status: int, reason: str) -> None:
        super().__init__(f"{action}: {status or 'no reply'} {reason}".strip())
        self.status = status


class AlreadyExists(KubeError):
    pass


def _load_configuration() -> Any:
    configuration = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        _load_incluster_config(client_configuration=configuration)
    else:
        _load_kube_config(client_configuration=configuration)
    return configuration


def _ssl_context(configuration: Any) -> ssl.SSLContext:
    """The API server's CA (else the system's), and the client certificate if there is one."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if not configuration.verify_ssl:  # insecure-skip-tls-verify
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def _proxy(configuration: Any) -> str | None:
    proxy: str | None = configuration.proxy or None
    if proxy is not None and not proxy.startswith(("http://", "https://")):
        raise ValueError(
            f"the kubeconfig's proxy-url {proxy!r}: only an HTTP(S) proxy is supported"
        )
    return proxy


def _core_path(kind: str, namespace: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{kind}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


def _session_path(namespace: str | None, name: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}"
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{PLURAL}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


class KubeApi:
    """Pods, Services, Secrets, and SipSessions' status (and their list) of one cluster.

    Made inside the running event loop, which its requests then use."""

    def __init__(self, pool_size: int = 16) -> None:
        self._configuration = _load_configuration()
        self._server = str(self._configuration.host).rstrip("/")
        self._proxy = _proxy(self._configuration)
        self._server_hostname: str | None = self._configuration.tls_server_name or None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, ssl=_ssl_context(self._configuration)),
            timeout=TIMEOUT,
            headers={"Accept": JSON, "User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        await self._session.close()

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        # Asked for each time: the configuration renews an expiring token here.
        bearer = self._configuration.auth_settings().get("BearerToken")
        if bearer is not None:
            headers["Authorization"] = bearer["value"]
        return headers

    async def _call(
        self,
        action: str,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = JSON,
        decode: bool = True,
    ) -> Any:
        """The decoded JSON reply (None unless `decode`: many replies are of no use, and
        decoding an object costs more than sending it); AlreadyExists for 409, KubeError for
        other errors."""
        data = None if body is None else json.dumps(body).encode()
        headers = self._headers(None if body is None else content_type)
        try:
            async with self._session.request(
                method,
                self._server + path,
                data=data,
                headers=headers,
                proxy=self._proxy,
                server_hostname=self._server_hostname,
            ) as response:
                reply = await response.read()
                status, reason = response.status, response.reason or ""
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeError(action, 0, str(error) or type(error).__name__) from None
        if status == 409:
            raise AlreadyExists(action, status, reason)
        if not 200 <= status <= 299:
            raise KubeError(action, status, reason)
        if not decode:
            return None
        return json.loads(reply) if reply else {}

    async def _create(self, kind: str, body: dict[str, Any], decode: bool) -> Any:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        action = f"create {kind} {namespace}/{name}"
        return await self._call(action, "POST", _core_path(kind, namespace), body, decode=decode)

    async def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._call(
                f"read {kind} {namespace}/{name}", "GET", _core_path(kind, namespace, name)
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
                _core_path(kind, namespace, name),
                decode=False,
            )
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def _merge_patch(self, action: str, path: str, patch: dict[str, Any]) -> bool:
        """False if the object is gone (404)."""
        try:
            await self._call(action, "PATCH", path, patch, MERGE_PATCH, decode=False)
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        """The pod as created (its uid, its status)."""
        created: dict[str, Any] = await self._create("pods", body, decode=True)
        return created

    async def create_service(self, body: dict[str, Any]) -> None:
        await self._create("services", body, decode=False)

    async def create_secret(self, body: dict[str, Any]) -> None:
        await self._create("secrets", body, decode=False)

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
            _core_path("pods", namespace, name),
            {"metadata": {"annotations": annotations}},
        )

    async def delete_service(self, namespace: str, name: str) -> bool:
        return await self._delete("services", namespace, name)

    async def delete_secret(self, namespace: str, name: str) -> bool:
        return await self._delete("secrets", namespace, name)

    async def list_sessions(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every SipSession in `namespace` (None: in the whole cluster)."""
        action = "list sipsessions" + ("" if namespace is None else f" in {namespace}")
        found: dict[str, Any] = await self._call(action, "GET", _session_path(namespace))
        return list(found.get("items") or [])

    async def patch_session_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patches `.status` through the status subresource; False if the session is gone."""
        return await self._merge_patch(
            f"patch sipsession {namespace}/{name} status",
            _session_path(namespace, name) + "/status",
            {"status": status},
        )
