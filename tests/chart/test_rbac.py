"""The chart's RBAC grants exactly what the operator's code uses: read off the code, not restated.

The permissions the operator needs are derived from its source: the Kubernetes client calls in
`kube.py` (create_namespaced_pod -> create pods, ...), the resources its kopf handlers follow
in `reconcile.py` (on.event -> list+watch; on.delete -> list+watch+patch for the finalizer
and progress annotations), the kopf events it posts, and what kopf itself does around them.
A verb the chart grants that the code does not use fails the test, and so does a call the code
makes that the chart does not grant.
"""

import ast
import re
from pathlib import Path
from typing import Any

import kopf
import pytest

from sip_operator import session_spec
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

_CLIENT_VERBS = {
    "create": "create",
    "read": "get",
    "list": "list",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}
_CLIENT_CALL = re.compile(r"^(create|read|list|patch|replace|delete)_namespaced_(\w+)$")
# kopf handlers that keep state on the object (finalizer, progress annotations) patch it.
_PATCHING_HANDLERS = {"create", "update", "delete", "resume", "field", "timer", "daemon"}
_WATCHING_HANDLERS = _PATCHING_HANDLERS | {"event", "index"}


def _client_permission(method: str) -> Permission:
    match = _CLIENT_CALL.match(method)
    assert match, f"operator calls {method}, which this test cannot map to a verb"
    verb, what = _CLIENT_VERBS[match.group(1)], match.group(2)
    if what == "custom_object":
        return (session_spec.GROUP, session_spec.PLURAL, verb)
    if what == "custom_object_status":
        return (session_spec.GROUP, f"{session_spec.PLURAL}/status", verb)
    # CoreV1Api: pod -> pods, service -> services, config_map -> configmaps.
    return ("", what.replace("_", "") + "s", verb)


def client_calls() -> set[Permission]:
    """Every Kubernetes client method KubeApi calls (self._core.x / self._custom.x)."""
    tree = ast.parse((OPERATOR / "kube.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("_core", "_custom")
        ):
            found.add(_client_permission(node.attr))
    return found


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
    return client_calls() | kopf_handler_permissions() | KOPF_EVENTS


def granted(role: Manifest) -> set[Permission]:
    permissions = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    permissions.add((group, resource, verb))
    return permissions


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


def test_the_operator_patches_only_its_own_peering_object() -> None:
    (cluster_role,) = of_kind(render(PEERING_ALL_NAMESPACES), "ClusterRole")
    patch_rules = [r for r in cluster_role["rules"] if "clusterkopfpeerings" in r["resources"]]
    patching = [r for r in patch_rules if "patch" in r["verbs"]]
    own = [kopf.OperatorSettings().peering.name]  # the operator gives kopf no other name
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
