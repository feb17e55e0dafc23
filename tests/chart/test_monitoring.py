"""Opt-in monitoring: the PodMonitors select the pods that serve metrics (worker pods as the
operator builds them, the operator's own), on the port those pods name "metrics"; the Grafana
dashboard ConfigMap carries the chart's dashboard file; the NetworkPolicies let the configured
scrapers, and only them, reach both metrics ports."""

from typing import Any

import helm_python
import pytest

from sip_operator.pod_builder import SessionRef, build_pod
from sip_operator.session_spec import parse_spec
from sip_operator.settings import load_settings
from tests.chart.rendering import (
    CHART,
    MONITORING,
    MONITORING_NAMESPACE,
    NAMESPACE,
    Manifest,
    of_kind,
    one_of_kind,
    render,
)

MONITORS_ON = {"podMonitor": {"enabled": True}, "operatorMonitor": {"enabled": True}}
SCRAPERS = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]


def _monitor(manifests: list[Manifest], name: str) -> Manifest:
    return next(m for m in of_kind(manifests, "PodMonitor") if m["metadata"]["name"] == name)


def _dashboards(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in of_kind(manifests, "ConfigMap") if "sip-operator.json" in m["data"]]


def _operator_pod(manifests: list[Manifest]) -> dict[str, Any]:
    template: dict[str, Any] = one_of_kind(manifests, "Deployment")["spec"]["template"]
    return template


def _environment(manifests: list[Manifest]) -> dict[str, str]:
    (container,) = _operator_pod(manifests)["spec"]["containers"]
    return {e["name"]: e.get("value", "from-a-secret-or-field") for e in container["env"]}


def _worker_pod(manifests: list[Manifest], namespace: str) -> dict[str, Any]:
    """The worker pod the operator would create from the rendered Deployment's settings."""
    settings = load_settings(_environment(manifests))
    spec = parse_spec(
        {
            "account": {
                "name": "alice@pbx.example.com",
                "passwordSecretRef": {"name": "s", "key": "k"},
            }
        }
    )
    return build_pod(SessionRef(namespace, "alice", "uid-1"), spec, settings, generation=1)


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def _port(container: dict[str, Any], name: str) -> int | None:
    return next((p["containerPort"] for p in container["ports"] if p["name"] == name), None)


def test_no_monitors_and_no_dashboard_by_default() -> None:
    manifests = render({})
    assert not of_kind(manifests, "PodMonitor")
    assert not _dashboards(manifests)


@pytest.mark.parametrize(
    ("enabled", "monitors", "dashboards"),
    [
        ("podMonitor", ["demo-sip-operator-worker"], 0),
        ("operatorMonitor", ["demo-sip-operator"], 0),
        ("dashboard", [], 1),
    ],
)
def test_each_part_renders_only_when_enabled(
    enabled: str, monitors: list[str], dashboards: int
) -> None:
    manifests = render({"metrics": {enabled: {"enabled": True}}})
    assert [m["metadata"]["name"] for m in of_kind(manifests, "PodMonitor")] == monitors
    assert len(_dashboards(manifests)) == dashboards


def test_labels_interval_and_timeout_reach_the_monitors() -> None:
    manifests = render(
        {
            "metrics": {
                "podMonitor": {
                    "enabled": True,
                    "labels": {"release": "prometheus"},
                    "interval": "15s",
                    "scrapeTimeout": "10s",
                },
                "operatorMonitor": {"enabled": True, "labels": {"team": "voice"}},
            }
        }
    )
    worker = _monitor(manifests, "demo-sip-operator-worker")
    assert worker["metadata"]["labels"]["release"] == "prometheus"
    assert worker["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    operator = _monitor(manifests, "demo-sip-operator")
    assert operator["metadata"]["labels"]["team"] == "voice"
    assert "release" not in operator["metadata"]["labels"]
    # No timeout given: Prometheus's own default applies.
    assert operator["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]


@pytest.mark.parametrize(
    ("watch", "namespaces"),
    [
        ({}, [NAMESPACE]),
        ({"namespaces": ["team-a", "team-b"]}, ["team-a", "team-b"]),
        ({"allNamespaces": True, "sessionNamespaces": ["calls"]}, ["calls", "elsewhere"]),
    ],
    ids=["release-namespace", "watched-namespaces", "all-namespaces"],
)
def test_the_worker_monitor_selects_the_pods_the_operator_creates(
    watch: dict[str, Any], namespaces: list[str]
) -> None:
    manifests = render({"watch": watch, "metrics": MONITORS_ON})
    monitor = _monitor(manifests, "demo-sip-operator-worker")["spec"]
    if watch.get("allNamespaces"):
        assert monitor["namespaceSelector"] == {"any": True}
    else:
        assert monitor["namespaceSelector"] == {"matchNames": namespaces}
    for namespace in namespaces:
        pod = _worker_pod(manifests, namespace)
        assert _matches(monitor["selector"], pod["metadata"]["labels"])
        assert set(monitor["podTargetLabels"]) <= set(pod["metadata"]["labels"])
        (container,) = pod["spec"]["containers"]
        (endpoint,) = monitor["podMetricsEndpoints"]
        assert _port(container, endpoint["port"]) == 9464
    # The operator's pod is not a worker.
    assert not _matches(monitor["selector"], _operator_pod(manifests)["metadata"]["labels"])


def test_the_operator_monitor_selects_the_operator_pod_and_its_metrics_port() -> None:
    manifests = render({"metrics": MONITORS_ON, "operator": {"metricsPort": 9100}})
    monitor = _monitor(manifests, "demo-sip-operator")["spec"]
    assert monitor["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    pod = _operator_pod(manifests)
    assert _matches(monitor["selector"], pod["metadata"]["labels"])
    assert not _matches(
        monitor["selector"], _worker_pod(manifests, NAMESPACE)["metadata"]["labels"]
    )
    (container,) = pod["spec"]["containers"]
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert _port(container, endpoint["port"]) == 9100
    # ...which is the port the operator is told to serve its metrics on.
    assert _environment(manifests)["SIP_OPERATOR_METRICS_PORT"] == "9100"


def test_operator_metrics_port_zero_turns_the_endpoint_off() -> None:
    manifests = render({"operator": {"metricsPort": 0}})
    (container,) = _operator_pod(manifests)["spec"]["containers"]
    assert _port(container, "metrics") is None
    assert "SIP_OPERATOR_METRICS_PORT" not in _environment(manifests)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"worker": {"metricsPort": 0}, "metrics": {"podMonitor": {"enabled": True}}},
            "metrics.podMonitor.enabled needs worker.metricsPort",
        ),
        (
            {"operator": {"metricsPort": 0}, "metrics": {"operatorMonitor": {"enabled": True}}},
            "metrics.operatorMonitor.enabled needs operator.metricsPort",
        ),
        ({"operator": {"metricsPort": 8080}}, "operator.metricsPort must differ"),
        (
            {"metrics": {"podMonitor": {"interval": "30s", "scrapeTimeout": "1m"}}},
            r"metrics.podMonitor.scrapeTimeout \(1m\) must not exceed its interval \(30s\)",
        ),
        (
            {"metrics": {"operatorMonitor": {"interval": "1s", "scrapeTimeout": "1001ms"}}},
            "metrics.operatorMonitor.scrapeTimeout",
        ),
    ],
    ids=["worker-port-off", "operator-port-off", "port-clash", "timeout-minutes", "timeout-ms"],
)
def test_values_no_schema_can_refuse_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(values)


def test_a_timeout_equal_to_the_interval_in_other_units_is_accepted() -> None:
    manifests = render(
        {"metrics": {"podMonitor": {"enabled": True, "interval": "1m", "scrapeTimeout": "60000ms"}}}
    )
    (endpoint,) = _monitor(manifests, "demo-sip-operator-worker")["spec"]["podMetricsEndpoints"]
    assert endpoint["scrapeTimeout"] == "60000ms"


def test_the_dashboard_config_map_carries_the_dashboard_file_for_the_sidecar() -> None:
    (default,) = _dashboards(render({"metrics": {"dashboard": {"enabled": True}}}))
    assert default["metadata"]["namespace"] == NAMESPACE
    assert default["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in default["metadata"]
    dashboard_file = CHART / "dashboards" / "sip-operator.json"
    assert default["data"] == {"sip-operator.json": dashboard_file.read_text().rstrip("\n")}

    (placed,) = _dashboards(
        render(
            {
                "metrics": {
                    "dashboard": {
                        "enabled": True,
                        "namespace": MONITORING_NAMESPACE,
                        # Helm merges maps: null drops the default label.
                        "labels": {"dashboards": "sip", "grafana_dashboard": None},
                        "annotations": {"grafana_folder": "SIP"},
                    }
                }
            }
        )
    )
    assert placed["metadata"]["namespace"] == MONITORING_NAMESPACE
    assert placed["metadata"]["labels"]["dashboards"] == "sip"
    assert "grafana_dashboard" not in placed["metadata"]["labels"]
    assert placed["metadata"]["annotations"] == {"grafana_folder": "SIP"}


def _operator_policy(manifests: list[Manifest]) -> Manifest:
    return next(
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["metadata"]["name"] == "demo-sip-operator"
    )


def _worker_metrics_rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
    policy = next(
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["metadata"]["name"] == "demo-sip-operator-worker"
    )
    return [r for r in policy["spec"]["ingress"] if {"port": 9464, "protocol": "TCP"} in r["ports"]]


def test_the_configured_scrapers_reach_the_operator_and_worker_metrics_ports() -> None:
    manifests = render(MONITORING)
    scrapers = MONITORING["networkPolicy"]["metricsClients"]
    policy = _operator_policy(manifests)
    assert _matches(policy["spec"]["podSelector"], _operator_pod(manifests)["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {"from": scrapers, "ports": [{"port": 9465, "protocol": "TCP"}]}
    ]
    (worker_rule,) = _worker_metrics_rules(manifests)
    assert worker_rule["from"] == scrapers


@pytest.mark.parametrize(
    "values",
    [{}, {"operator": {"metricsPort": 0}, "networkPolicy": {"metricsClients": SCRAPERS}}],
    ids=["no-scrapers", "no-metrics-port"],
)
def test_nothing_reaches_the_operator_without_scrapers_and_a_metrics_port(
    values: dict[str, Any],
) -> None:
    assert _operator_policy(render(values))["spec"]["ingress"] == []
