"""Renders the Helm chart offline with the Helm Go SDK (helm-python-sdk) and parses the output."""

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sip-operator"
RELEASE = "demo"
NAMESPACE = "sip"
KUBERNETES_VERSION = "1.32"

# The non-default set the issue names: an existing Redis, every namespace, no NetworkPolicy.
EXTERNAL_ALL_NAMESPACES = {
    "watch": {"allNamespaces": True},
    "redis": {
        "external": {
            "url": "redis://redis.shared.svc:6379/2",
            "existingSecret": "shared-redis",
            "existingSecretKey": "redis-password",
        }
    },
    "networkPolicy": {"enabled": False},
}
# kopf peering: more than one operator replica, in two namespaces or cluster-wide.
PEERING_NAMESPACED = {"operator": {"replicas": 2}, "watch": {"namespaces": ["team-a", "team-b"]}}
PEERING_ALL_NAMESPACES = {"operator": {"replicas": 3}, "watch": {"allNamespaces": True}}
# Prometheus Operator monitors and the Grafana dashboard on, scraped from a monitoring namespace.
MONITORING_NAMESPACE = "monitoring"
MONITORING: dict[str, Any] = {
    "metrics": {
        "podMonitor": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "interval": "15s",
            "scrapeTimeout": "10s",
        },
        "operatorMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "dashboard": {"enabled": True, "namespace": MONITORING_NAMESPACE},
    },
    "networkPolicy": {
        "metricsClients": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
                }
            }
        ]
    },
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "external-redis-all-namespaces-no-netpol": EXTERNAL_ALL_NAMESPACES,
    "peering-namespaced": PEERING_NAMESPACED,
    "peering-all-namespaces": PEERING_ALL_NAMESPACES,
    "monitoring": MONITORING,
}

Manifest = dict[str, Any]


def render(values: Mapping[str, Any]) -> list[Manifest]:
    """Every object the chart's templates produce (CRDs excluded), in template order."""
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(dict(values), name=RELEASE, namespace=NAMESPACE)
    manifests: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def render_notes(values: Mapping[str, Any]) -> str:
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(dict(values), name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def chart_crds() -> list[dict[str, str]]:
    """The chart's CRD files as Helm loads (and packages) them."""
    with helm_python.Chart.load(CHART) as chart:
        return chart.crds


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one_of_kind(manifests: list[Manifest], kind: str) -> Manifest:
    found = of_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(object name, pod spec) of every workload."""
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield manifest["metadata"]["name"], manifest["spec"]["template"]["spec"]
        elif manifest["kind"] == "Pod":
            yield manifest["metadata"]["name"], manifest["spec"]
