"""The chart renders with a real Helm (the Go SDK), lints clean, and every object validates offline
against the Kubernetes 1.32 schemas; the value sets change what they should."""

import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.rendering import (
    CHART,
    EXTERNAL_ALL_NAMESPACES,
    KUBERNETES_VERSION,
    NAMESPACE,
    PEERING_ALL_NAMESPACES,
    PEERING_NAMESPACED,
    VALUE_SETS,
    Manifest,
    chart_crds,
    of_kind,
    one_of_kind,
    render,
)

PODMONITOR_SCHEMA = Path(__file__).parent / "schemas" / "podmonitor-v1.json"


def _operator_container(manifests: list[Manifest]) -> dict[str, Any]:
    deployment = one_of_kind(manifests, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: dict[str, Any] = containers[0]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD the chart ships, and the strict schema
    of the Prometheus Operator's PodMonitor (its CRD is the cluster's, not the chart's)."""
    schemas = {
        ("monitoring.coreos.com/v1", "PodMonitor"): json.loads(PODMONITOR_SCHEMA.read_text())
    }
    for crd_file in chart_crds():
        for crd in yaml.safe_load_all(crd_file["data"]):
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    report = helm_python.lint(CHART, values, namespace=NAMESPACE, kube_version="v1.32.0")
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; 1 (info) is only the "icon is recommended" hint.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_helm_lint_catches_a_broken_template(tmp_path: Any) -> None:
    """The lint above is a real one: the same chart with one broken template fails it."""
    with helm_python.Chart.load(CHART) as chart:
        copy = chart.save_dir(tmp_path)
    broken = tmp_path / copy / "templates" / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.x.y.z }\n")
    report = helm_python.lint(tmp_path / copy)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] == 3]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_validates_against_the_kubernetes_schemas(values: dict[str, Any]) -> None:
    manifests = render(values)
    custom = _crd_schemas()
    assert manifests
    for manifest in manifests:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in custom:
            jsonschema.validate(manifest, custom[key])
        else:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_crds_validate_against_the_kubernetes_schemas() -> None:
    crds = [crd for f in chart_crds() for crd in yaml.safe_load_all(f["data"])]
    assert {crd["metadata"]["name"] for crd in crds} == {
        "sipsessions.sip-operator.dev",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    }
    for crd in crds:
        kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)


def test_the_validation_rejects_a_wrong_manifest() -> None:
    """The offline validation is not a formality: a typo in a rendered field is caught."""
    deployment = one_of_kind(render({}), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_podmonitor_validation_rejects_a_misspelt_field() -> None:
    """A field the API server would silently prune (a typo) fails the PodMonitor schema."""
    monitor = one_of_kind(render({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    schema = _crd_schemas()[("monitoring.coreos.com/v1", "PodMonitor")]
    jsonschema.validate(monitor, schema)
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, schema)


def test_default_values_render_a_namespaced_operator_with_its_own_redis() -> None:
    manifests = render({})
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
            "StatefulSet",
        ]
    )
    assert all(m["metadata"]["namespace"] == NAMESPACE for m in manifests)
    container = _operator_container(manifests)
    assert container["args"][:2] == [f"--namespace={NAMESPACE}", "--standalone"]
    env = _env(container)
    assert (
        env["SIP_OPERATOR_REDIS_URL"] == f"redis://demo-sip-operator-redis.{NAMESPACE}.svc:6379/0"
    )
    redis_secret = {"secretKeyRef": {"name": "demo-sip-operator-redis", "key": "password"}}
    assert env["REDIS_PASSWORD"] == redis_secret
    assert env["SIP_OPERATOR_REDIS_PASSWORD_SECRET"] == "demo-sip-operator-redis"
    assert env["SIP_OPERATOR_WORKER_IMAGE"] == "sip-worker:0.1.0"
    assert env["SIP_OPERATOR_GRPC_PORT"] == "50099"
    assert one_of_kind(manifests, "Deployment")["spec"]["strategy"]["type"] == "Recreate"


def test_external_redis_all_namespaces_and_no_network_policy() -> None:
    manifests = render(EXTERNAL_ALL_NAMESPACES)
    kinds = {m["kind"] for m in manifests}
    assert kinds == {"ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"}
    container = _operator_container(manifests)
    assert "--all-namespaces" in container["args"]
    assert not [a for a in container["args"] if a.startswith("--namespace")]
    env = _env(container)
    assert env["SIP_OPERATOR_REDIS_URL"] == "redis://redis.shared.svc:6379/2"
    assert env["REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": "shared-redis", "key": "redis-password"}
    }
    assert env["SIP_OPERATOR_REDIS_PASSWORD_SECRET"] == "shared-redis"
    assert env["SIP_OPERATOR_REDIS_PASSWORD_SECRET_KEY"] == "redis-password"


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis-cluster.shared.svc:6379?cluster=true",
        "rediss://redis.shared.svc:6380?cluster=true&ssl_ca_certs=/etc/redis-ca/ca.crt",
    ],
)
def test_an_external_redis_cluster_url_reaches_the_operator_and_its_workers(url: str) -> None:
    """The schema admits what the operator (and so the worker) accepts: ?cluster=true, TLS."""
    from sip_operator.settings import load_settings

    container = _operator_container(render({"redis": {"external": {"url": url}}}))
    environ = {e["name"]: e.get("value", "from-a-secret-or-field") for e in container["env"]}
    settings = load_settings(environ)
    assert settings.redis_url == settings.worker_redis_url == url


def test_external_redis_without_a_password_sets_no_password_variables() -> None:
    manifests = render({"redis": {"external": {"url": "redis://redis.shared.svc:6379/0"}}})
    env = _env(_operator_container(manifests))
    assert "REDIS_PASSWORD" not in env
    assert "SIP_OPERATOR_REDIS_PASSWORD_SECRET" not in env
    assert not of_kind(manifests, "StatefulSet")


def test_more_than_one_replica_turns_kopf_peering_on_in_each_namespace() -> None:
    manifests = render(PEERING_NAMESPACED)
    container = _operator_container(manifests)
    assert "--standalone" not in container["args"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    peerings = of_kind(manifests, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert sorted(r["metadata"]["namespace"] for r in of_kind(manifests, "Role")) == [
        "team-a",
        "team-b",
    ]
    assert one_of_kind(manifests, "Deployment")["spec"]["replicas"] == 2


def test_peering_across_the_cluster_uses_a_cluster_peering_object() -> None:
    manifests = render(PEERING_ALL_NAMESPACES)
    assert "--standalone" not in _operator_container(manifests)["args"]
    assert len(of_kind(manifests, "ClusterKopfPeering")) == 1
    assert not of_kind(manifests, "KopfPeering")


def _rendered_kopf_settings(manifests: list[Manifest]) -> Any:
    """The kopf settings the operator builds from the rendered container's args and env."""
    from sip_operator.main import kopf_settings, parse_args

    container = _operator_container(manifests)
    environ = {e["name"]: e.get("value", "from-a-secret-or-field") for e in container["env"]}
    return kopf_settings(parse_args(container["args"], environ))


@pytest.mark.parametrize("values", [PEERING_ALL_NAMESPACES, PEERING_NAMESPACED])
def test_the_peering_objects_have_the_name_the_operator_peers_under(
    values: dict[str, Any],
) -> None:
    """A release-specific name (not kopf's "default"), mandatory: no replica runs alone."""
    import kopf

    manifests = render(values)
    settings = _rendered_kopf_settings(manifests)
    peerings = of_kind(manifests, "ClusterKopfPeering") + of_kind(manifests, "KopfPeering")
    assert peerings
    assert {p["metadata"]["name"] for p in peerings} == {settings.peering.name}
    assert settings.peering.name == "demo-sip-operator" != kopf.OperatorSettings().peering.name
    assert settings.peering.mandatory and not settings.peering.standalone


def test_replicas_peer_with_distinct_priorities() -> None:
    """kopf pauses every operator that sees a live peer of its own priority."""
    manifests = render(PEERING_NAMESPACED)
    priorities = {_rendered_kopf_settings(manifests).peering.priority for _ in range(20)}
    assert len(priorities) == 20 and 0 not in priorities


def test_watched_namespaces_get_the_worker_network_policy_and_redis_secret() -> None:
    manifests = render({"watch": {"namespaces": ["team-a", "team-b"]}})
    worker_policies = [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "sip-worker"}}
    ]
    assert sorted(p["metadata"]["namespace"] for p in worker_policies) == ["team-a", "team-b"]
    secrets = of_kind(manifests, "Secret")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == [NAMESPACE, "team-a", "team-b"]
    passwords = {s["data"]["password"] for s in secrets}
    assert len(passwords) == 1, "every namespace must get the one Redis password"


def test_all_namespaces_prepares_the_listed_session_namespaces() -> None:
    manifests = render({"watch": {"allNamespaces": True, "sessionNamespaces": ["calls"]}})
    # The worker policy goes to the listed namespace; the operator's and Redis's stay with them.
    assert sorted(p["metadata"]["namespace"] for p in of_kind(manifests, "NetworkPolicy")) == [
        "calls",
        NAMESPACE,
        NAMESPACE,
    ]
    assert sorted(s["metadata"]["namespace"] for s in of_kind(manifests, "Secret")) == [
        "calls",
        NAMESPACE,
    ]


def test_an_rtp_range_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="rtpPortEnd"):
        render({"worker": {"rtpPortStart": 5000, "rtpPortEnd": 4000}})


def test_the_port_slot_values_reach_the_operator() -> None:
    from sip_operator.settings import load_settings

    slots = {"slotsPerNode": 10, "slotRtpPort": 30000, "slotRtpPorts": 40}
    container = _operator_container(render({"worker": slots}))
    environ = {e["name"]: e.get("value", "from-a-secret-or-field") for e in container["env"]}
    plan = load_settings(environ).port_plan
    assert (plan.slots, plan.rtp_base, plan.rtp_per_slot) == (10, 30000, 40)


def test_pod_network_workers_keep_rtp_within_the_network_policys_range() -> None:
    from sip_operator.settings import load_settings

    manifests = render({"worker": {"rtpPortStart": 5000, "rtpPortEnd": 5199}})
    container = _operator_container(manifests)
    environ = {e["name"]: e.get("value", "from-a-secret-or-field") for e in container["env"]}
    ports = load_settings(environ).worker_ports(None)
    assert (ports.rtp, ports.rtp_count) == (5000, 200)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_operator_accepts_the_rendered_arguments_and_environment(
    values: dict[str, Any],
) -> None:
    """The chart speaks the operator's interface: its own parser and settings loader agree."""
    from sip_operator.main import parse_args
    from sip_operator.settings import load_settings

    container = _operator_container(render(values))
    environ = {e["name"]: e.get("value", "from-a-secret-or-field") for e in container["env"]}
    args = parse_args(container["args"], environ)
    settings = load_settings(environ)

    watch = values.get("watch", {})
    if watch.get("allNamespaces"):
        assert args.all_namespaces and not args.namespaces
    else:
        assert args.namespaces == (watch.get("namespaces") or [NAMESPACE])
    single = values.get("operator", {}).get("replicas", 1) == 1
    assert args.standalone == single
    assert args.peering == (None if single else "demo-sip-operator")
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    assert settings.worker_image == "sip-worker:0.1.0"
    assert (settings.grpc_port, settings.sip_port, settings.metrics_port) == (50099, 5060, 9464)
    assert (settings.slots_per_node, settings.slot_rtp_port, settings.slot_rtp_ports) == (
        50,
        20000,
        100,
    )
    external = values.get("redis", {}).get("external", {})
    secret = external.get("existingSecret", "demo-sip-operator-redis")
    assert settings.redis_password_secret is not None
    assert settings.redis_password_secret.name == secret
