"""Every container the chart runs is locked down and sized; Redis keeps an append-only file on
a PVC; only selected clients reach the workers' gRPC port."""

from typing import Any

import pytest

from tests.chart.rendering import (
    EXTERNAL_ALL_NAMESPACES,
    NAMESPACE,
    VALUE_SETS,
    Manifest,
    of_kind,
    one_of_kind,
    pod_specs,
    render,
)


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = pod_spec["containers"] + pod_spec.get("initContainers", [])
    return containers


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_container_is_non_root_read_only_and_has_requests(values: dict[str, Any]) -> None:
    workloads = list(pod_specs(render(values)))
    assert workloads
    for name, pod_spec in workloads:
        pod_context = pod_spec.get("securityContext", {})
        for container in _containers(pod_spec):
            where = f"{name}/{container['name']}"
            context = container.get("securityContext", {})
            run_as_non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
            assert run_as_non_root is True, f"{where} may run as root"
            run_as_user = context.get("runAsUser", pod_context.get("runAsUser"))
            assert run_as_user is None or run_as_user > 0, f"{where} runs as uid 0"
            assert context.get("readOnlyRootFilesystem") is True, f"{where} root FS is writable"
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{where} has no cpu/memory requests"
            assert container.get("resources", {}).get("limits", {}).get("memory"), where
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}, name


def test_pinned_images_and_no_latest() -> None:
    for _, pod_spec in pod_specs(render({})):
        for container in _containers(pod_spec):
            repository, _, tag = container["image"].rpartition(":")
            assert repository and tag and tag != "latest", container["image"]


def _redis(manifests: list[Manifest]) -> tuple[Manifest, Manifest]:
    statefulset = one_of_kind(manifests, "StatefulSet")
    config = next(m for m in of_kind(manifests, "ConfigMap") if "redis.conf" in m["data"])
    return statefulset, config


def _directives(redis_conf: str) -> dict[str, str]:
    lines = (line.strip() for line in redis_conf.splitlines())
    pairs = (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def test_redis_keeps_an_append_only_file_on_a_persistent_volume() -> None:
    statefulset, config = _redis(render({}))
    directives = _directives(config["data"]["redis.conf"])
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] in ("everysec", "always")
    data_dir = directives["dir"]

    spec = statefulset["spec"]
    pod_spec = spec["template"]["spec"]
    (container,) = pod_spec["containers"]
    # Redis is started with exactly this file...
    assert container["command"] == ["redis-server", "/etc/redis/redis.conf"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_mount = mounts["/etc/redis/redis.conf"]
    assert config_mount["subPath"] == "redis.conf"
    config_volume = next(v for v in pod_spec["volumes"] if v["name"] == config_mount["name"])
    assert config_volume["configMap"]["name"] == config["metadata"]["name"]
    # ...and its data directory is the claim from the volumeClaimTemplate, not an emptyDir.
    data_mount = mounts[data_dir]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == data_mount["name"]
    assert not [v for v in pod_spec["volumes"] if v["name"] == data_mount["name"]]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_redis_requires_a_password_that_is_never_on_a_command_line() -> None:
    manifests = render({})
    statefulset, config = _redis(manifests)
    include = _directives(config["data"]["redis.conf"])["include"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    auth_mount = next(
        m for m in container["volumeMounts"] if include.startswith(m["mountPath"] + "/")
    )
    volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    auth_volume = next(v for v in volumes if v["name"] == auth_mount["name"])
    secret = next(
        s
        for s in of_kind(manifests, "Secret")
        if s["metadata"]["name"] == auth_volume["secret"]["secretName"]
        and s["metadata"]["namespace"] == NAMESPACE
    )
    assert "auth.conf" in secret["data"]
    assert "requirepass" not in " ".join(container["command"] + container.get("args", []))


def test_the_redis_password_is_generated_not_fixed() -> None:
    first = one_of_kind(render({}), "Secret")["data"]["password"]
    second = one_of_kind(render({}), "Secret")["data"]["password"]
    assert first != second  # offline there is no existing Secret to keep it from


def test_an_external_redis_deploys_no_redis() -> None:
    manifests = render(EXTERNAL_ALL_NAMESPACES)
    assert not of_kind(manifests, "StatefulSet")
    assert not of_kind(manifests, "ConfigMap")
    assert not of_kind(manifests, "Secret")


def _worker_policy(manifests: list[Manifest]) -> Manifest:
    return next(
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "sip-worker"}}
    )


def _rules_for_port(policy: Manifest, port: int, protocol: str) -> list[dict[str, Any]]:
    return [
        rule
        for rule in policy["spec"]["ingress"]
        for p in rule["ports"]
        if p["protocol"] == protocol and p["port"] <= port <= p.get("endPort", p["port"])
    ]


def test_only_selected_clients_reach_the_workers_grpc_port() -> None:
    selector = {"matchLabels": {"team": "voice-bots"}}
    namespaces = {"matchLabels": {"kubernetes.io/metadata.name": "bots"}}
    clients = [{"podSelector": selector, "namespaceSelector": namespaces}]
    policy = _worker_policy(render({"networkPolicy": {"grpcClients": clients}}))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = _rules_for_port(policy, 50099, "TCP")
    assert rule["from"] == clients
    # Every ingress rule names its ports: none opens the whole pod.
    assert all(rule.get("ports") for rule in policy["spec"]["ingress"])


def test_the_default_grpc_clients_are_labelled_pods_of_the_same_namespace() -> None:
    policy = _worker_policy(render({}))
    (rule,) = _rules_for_port(policy, 50099, "TCP")
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"sip-operator.dev/grpc-client": "true"}}}
    ]


def test_sip_and_rtp_stay_open_to_the_sip_peers() -> None:
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    policy = _worker_policy(render({"networkPolicy": {"sipPeers": peers}}))
    for port, protocol in ((5060, "UDP"), (5060, "TCP"), (4000, "UDP"), (4099, "UDP")):
        (rule,) = _rules_for_port(policy, port, protocol)
        assert rule["from"] == peers
    assert not _rules_for_port(policy, 50099, "UDP")
    assert not [r for r in _rules_for_port(policy, 50099, "TCP") if r["from"] == peers]


def test_metrics_are_closed_unless_clients_are_named() -> None:
    assert not _rules_for_port(_worker_policy(render({})), 9464, "TCP")
    monitoring = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    policy = _worker_policy(render({"networkPolicy": {"metricsClients": monitoring}}))
    (rule,) = _rules_for_port(policy, 9464, "TCP")
    assert rule["from"] == monitoring


def test_redis_admits_only_the_operator_and_the_workers() -> None:
    policy = next(
        p
        for p in of_kind(render({}), "NetworkPolicy")
        if p["metadata"]["name"] == "demo-sip-operator-redis"
    )
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    names = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]}
    assert names == {"sip-operator", "sip-worker"}


def test_the_network_policy_can_be_turned_off() -> None:
    assert not of_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")
