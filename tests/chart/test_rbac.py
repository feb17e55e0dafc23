"""The chart's RBAC grants exactly what the operator's code uses: read off the code, not restated.

The permissions the operator needs are derived from its code: every public method of
`KubeApi` (its only Kubernetes client) is run against a stand-in API server that records the
requests (POST .../pods -> create pods, ...); the resources its kopf handlers follow are read
off the decorators (on.event -> list+watch; on.delete -> list+watch+patch for the finalizer
and progress annotations); plus the kopf events it posts and what kopf itself does.
A verb the chart grants that the code does not use fails the test, and so does a call the code
makes that the chart does not grant.
"""

import ast
import asyncio
import functools
import http.server
import inspect
import os
import tempfile
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import kopf
import pytest
import yaml
from kubernetes.config import kube_config

from sip_operator import session_spec
from sip_operator.kube import KubeApi
from sip_operator.main import kopf_settings, parse_args
from tests.chart.rendering import (
    EXTERNAL_ALL_NAMESPACES,
    NAMESPACE,
    PEERING_ALL_NAMESPACES,
    PEERING_NAMESPACED,
    VALUE_SETS,
    Manifest,
    of_kind,
    render,
)

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "sip_operator"
Permission = tuple[str, str, str]  # (apiGroup, resource, verb)

_WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# kopf handlers that keep state on the object (finalizer, progress annotations) patch it.
_PATCHING_HANDLERS = {"create", "update", "delete", "resume", "field", "timer", "daemon"}
_WATCHING_HANDLERS = _PATCHING_HANDLERS | {"event", "index"}


def _permission(method: str, url: str) -> Permission:
    """The RBAC (apiGroup, resource[/subresource], verb) one API request needs."""
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    assert rest[0] == "namespaces", f"a cluster-scoped request: {method} {url}"
    resource = "/".join([rest[2], *rest[4:5]])
    named = len(rest) > 3
    verb = _WRITE_VERBS.get(method) or (
        "get" if named else "watch" if "watch=" in query else "list"
    )
    return (group, resource, verb)


class _RecordingApiServer(http.server.ThreadingHTTPServer):
    """A stand-in API server on 127.0.0.1 that answers 200 {} and records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append((self.command, self.path))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)


def _argument(parameter: inspect.Parameter) -> Any:
    samples: dict[str, Any] = {
        "namespace": "ns",
        "name": "n",
        "body": {"metadata": {"namespace": "ns", "name": "n"}},
        "status": {},
        "annotations": {},
    }
    assert parameter.name in samples, f"KubeApi takes {parameter.name!r}: teach this test"
    return samples[parameter.name]


@functools.cache
def client_calls() -> frozenset[Permission]:
    """The requests every public KubeApi method sends, recorded from a stand-in API server."""
    server = _RecordingApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            kubeconfig = Path(directory) / "config"
            kubeconfig.write_text(_kubeconfig(server.server_address[1]))
            environ = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
            with (
                mock.patch.dict(os.environ, environ, clear=True),
                mock.patch.object(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)),
            ):
                asyncio.run(_call_every_request_method())
    finally:
        server.shutdown()
        server.server_close()
    return frozenset(_permission(method, url) for method, url in server.requests)


async def _call_every_request_method() -> None:
    api = KubeApi()
    try:
        for name, method in inspect.getmembers(api, inspect.iscoroutinefunction):
            if name.startswith("_") or name == "close":
                continue
            parameters = inspect.signature(method).parameters.values()
            await method(*[_argument(p) for p in parameters])
    finally:
        await api.close()


def _kubeconfig(port: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "stand-in", "user": {"token": "stand-in"}}],
            "contexts": [
                {"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in"}}
            ],
            "current-context": "stand-in",
        }
    )


def _constant(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return str(getattr(session_spec, node.id))
    raise AssertionError(f"cannot resolve the handler argument {ast.dump(node)}")


def kopf_handler_permissions() -> set[Permission]:
    """What kopf does for each @kopf.on.<handler>(group, version, plural) in the operator."""
    found: set[Permission] = set()
    for module in OPERATOR.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "kopf" and node.func.attr == "event":
                found.add(("", "events", "create"))  # kopf.event(...) posts an Event
            is_handler = (
                isinstance(owner, ast.Attribute)
                and owner.attr == "on"
                and isinstance(owner.value, ast.Name)
                and owner.value.id == "kopf"
            )
            if not is_handler or node.func.attr not in _WATCHING_HANDLERS or not node.args:
                continue
            parts = [_constant(arg) for arg in node.args]
            group_version, plural = "/".join(parts[:-1]), parts[-1]
            group = group_version.rpartition("/")[0] if "/" in group_version else ""
            found |= {(group, plural, "list"), (group, plural, "watch")}
            if node.func.attr in _PATCHING_HANDLERS:
                found.add((group, plural, "patch"))
    return found


# What kopf itself does beyond the handlers (kopf/_core/engines/posting.py, peering.py and
# reactor/observation.py): it reports handler failures as Events; with peering it follows the
# peering objects and patches its own keep-alive into one; watching the whole cluster with
# scanning on, it follows CRDs.
KOPF_EVENTS = {("", "events", "create")}
PEERING_NAMESPACED_PERMISSIONS = {
    ("kopf.dev", "kopfpeerings", "list"),
    ("kopf.dev", "kopfpeerings", "watch"),
    ("kopf.dev", "kopfpeerings", "patch"),
}
PEERING_CLUSTER_PERMISSIONS = {
    ("kopf.dev", "clusterkopfpeerings", "list"),
    ("kopf.dev", "clusterkopfpeerings", "watch"),
    ("kopf.dev", "clusterkopfpeerings", "patch"),
}
CRD_SCANNING = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}


def operator_permissions() -> set[Permission]:
    return set(client_calls()) | kopf_handler_permissions() | KOPF_EVENTS


def granted(role: Manifest) -> set[Permission]:
    permissions = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    permissions.add((group, resource, verb))
    return permissions


def test_kube_api_is_the_operators_only_kubernetes_client() -> None:
    """What KubeApi sends is all the operator sends itself (the rest goes through kopf)."""
    for module in OPERATOR.glob("*.py"):
        if module.name != "kube.py":
            source = module.read_text()
            assert "import kubernetes" not in source, module.name
            assert "from kubernetes" not in source, module.name


def test_the_operator_code_is_understood() -> None:
    """The derivation sees the operator's real calls (a guard against deriving nothing)."""
    calls = client_calls()
    assert ("", "pods", "create") in calls
    assert (session_spec.GROUP, "sipsessions/status", "patch") in calls
    handlers = kopf_handler_permissions()
    assert (session_spec.GROUP, "sipsessions", "watch") in handlers
    assert ("", "pods", "watch") in handlers


def test_the_default_role_grants_exactly_what_the_operator_uses() -> None:
    manifests = render({})
    assert not of_kind(manifests, "ClusterRole")
    assert not of_kind(manifests, "ClusterRoleBinding")
    (role,) = of_kind(manifests, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert granted(role) == operator_permissions()


def test_the_cluster_role_grants_exactly_what_the_operator_uses_cluster_wide() -> None:
    """With all namespaces the operator runs kopf with scanning on, which follows CRDs."""
    assert "settings.scanning.disabled = True" in (OPERATOR / "main.py").read_text()
    manifests = render(EXTERNAL_ALL_NAMESPACES)
    assert not of_kind(manifests, "Role")
    (role,) = of_kind(manifests, "ClusterRole")
    assert granted(role) == operator_permissions() | CRD_SCANNING


def test_peering_adds_only_the_peering_objects() -> None:
    for role in of_kind(render(PEERING_NAMESPACED), "Role"):
        assert granted(role) == operator_permissions() | PEERING_NAMESPACED_PERMISSIONS
    (cluster_role,) = of_kind(render(PEERING_ALL_NAMESPACES), "ClusterRole")
    expected = operator_permissions() | CRD_SCANNING | PEERING_CLUSTER_PERMISSIONS
    assert granted(cluster_role) == expected


@pytest.mark.parametrize(
    ("values", "kind", "resource"),
    [
        (PEERING_ALL_NAMESPACES, "ClusterRole", "clusterkopfpeerings"),
        (PEERING_NAMESPACED, "Role", "kopfpeerings"),
    ],
)
def test_the_operator_patches_only_its_own_peering_object(
    values: dict[str, Any], kind: str, resource: str
) -> None:
    manifests = render(values)
    deployment = of_kind(manifests, "Deployment")[0]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    environ = {e["name"]: e.get("value", "from-a-secret-or-field") for e in container["env"]}
    own = [kopf_settings(parse_args(container["args"], environ)).peering.name]
    assert own != [kopf.OperatorSettings().peering.name]
    for role in of_kind(manifests, kind):
        rules = [r for r in role["rules"] if resource in r["resources"]]
        patching = [r for r in rules if "patch" in r["verbs"]]
        assert patching and all(r.get("resourceNames") == own for r in patching)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_no_wildcards_and_no_secret_listing(values: dict[str, Any]) -> None:
    for role in of_kind(render(values), "Role") + of_kind(render(values), "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            if "secrets" in rule["resources"]:
                assert not {"list", "watch"} & set(rule["verbs"]), "Secrets are never enumerated"


def test_no_cluster_wide_secret_access_by_default() -> None:
    manifests = render({})
    for role in of_kind(manifests, "ClusterRole"):
        assert not any("secrets" in rule["resources"] for rule in role["rules"])
    for binding in of_kind(manifests, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"


def test_bindings_name_only_the_operator_service_account() -> None:
    for values in VALUE_SETS.values():
        manifests = render(values)
        (account,) = of_kind(manifests, "ServiceAccount")
        deployment = of_kind(manifests, "Deployment")[0]
        name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        assert account["metadata"]["name"] == name
        for binding in of_kind(manifests, "RoleBinding") + of_kind(manifests, "ClusterRoleBinding"):
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}
            ]
