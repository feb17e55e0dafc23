"""The emulator behaves like a kube-apiserver where the operator (and kopf) rely on it."""

import json
from typing import Any

import kubernetes
import pytest
import urllib3

from tests.support.operator_harness import Cluster, account_spec

NS = "emu"


def _error_status(call: Any) -> int:
    with pytest.raises(kubernetes.client.ApiException) as error:
        call()
    return int(error.value.status)


def _pod(
    name: str, labels: dict[str, str] | None = None, owner: str | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "SipSession",
                "name": "o",
                "uid": owner,
                "controller": True,
            }
        ]
    return {"metadata": metadata, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def test_create_read_conflict_and_versions(cluster: Cluster) -> None:
    created = cluster.create_session(NS, "s", account_spec())
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1
    assert _error_status(lambda: cluster.create_session(NS, "s", account_spec())) == 409
    assert _error_status(lambda: cluster.core.read_namespaced_pod("nope", NS)) == 404

    cluster.patch_session(NS, "s", {"spec": account_spec()})
    assert cluster.session(NS, "s")["metadata"]["generation"] == 1  # no real change
    cluster.patch_session(NS, "s", {"spec": {"autoAnswerInterval": 4}})
    assert cluster.session(NS, "s")["metadata"]["generation"] == 2
    stale = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "spec": {"transport": "tcp"}}
    assert _error_status(lambda: cluster.patch_session(NS, "s", stale)) == 409


def test_the_status_subresource_is_isolated(cluster: Cluster) -> None:
    cluster.create_session(NS, "s", account_spec())
    cluster.patch_session(NS, "s", {"status": {"phase": "Ready"}})
    assert "status" not in cluster.session(NS, "s")
    cluster.custom.patch_namespaced_custom_object_status(
        "sip-operator.dev", "v1alpha1", NS, "sipsessions", "s",
        {"status": {"phase": "Ready"}, "spec": {"transport": "tcp"}},
    )  # fmt: skip
    session = cluster.session(NS, "s")
    assert session["status"] == {"phase": "Ready"} and "transport" not in session["spec"]


def test_finalizers_hold_deletion_and_owners_take_dependents_along(cluster: Cluster) -> None:
    owner = cluster.create_session(NS, "s", account_spec())
    cluster.core.create_namespaced_pod(NS, _pod("child", owner=owner["metadata"]["uid"]))
    cluster.patch_session(NS, "s", {"metadata": {"finalizers": ["test/hold"]}})
    cluster.delete_session(NS, "s")
    assert cluster.session(NS, "s")["metadata"]["deletionTimestamp"]
    assert "child" in cluster.pods(NS)
    cluster.patch_session(NS, "s", {"metadata": {"finalizers": None}})
    assert cluster.sessions(NS) == {}
    assert cluster.pods(NS) == {}  # garbage-collected with its owner


def test_label_selectors_and_watching_from_a_version(cluster: Cluster) -> None:
    cluster.core.create_namespaced_pod(NS, _pod("a", {"app": "x"}))
    cluster.core.create_namespaced_pod(NS, _pod("b", {"app": "y"}))
    listed = cluster.core.list_namespaced_pod(NS, label_selector="app=x")
    assert [p.metadata.name for p in listed.items] == ["a"]
    version = listed.metadata.resource_version
    cluster.core.create_namespaced_pod(NS, _pod("c", {"app": "x"}))
    cluster.core.delete_namespaced_pod("a", NS)

    url = f"{cluster.emulator.url}/api/v1/namespaces/{NS}/pods"
    query = f"?watch=true&labelSelector=app%3Dx&resourceVersion={version}"
    with urllib3.PoolManager().request("GET", url + query, preload_content=False) as stream:
        events = [json.loads(stream.readline()) for _ in range(2)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "c"),
        ("DELETED", "a"),
    ]
