"""The operator's own Prometheus metrics: the real operator on the emulator, scraped over HTTP."""

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sip_operator.main import parse_args
from sip_operator.metrics import ErrorKind
from sip_operator.phase import PHASES
from tests.support.operator_harness import (
    OPERATOR_BIN,
    Cluster,
    OperatorProcess,
    account_spec,
    sip_status_entry,
    stream_key,
    wait_for,
)
from tests.support.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def answers(port: int) -> bool:
    try:
        scrape(port)
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def by_phase(samples: Samples) -> dict[str, float]:
    return {p: value(samples, "sip_operator_sessions", phase=p) for p in PHASES}


def errors(samples: Samples) -> dict[str, float]:
    return {k: value(samples, "sip_operator_reconcile_errors_total", kind=k) for k in ErrorKind}


def recreations(samples: Samples) -> float:
    return value(samples, "sip_operator_pod_recreations_total")


def lags(samples: Samples) -> tuple[float, float]:
    """How many status-mirror lags were observed, and their sum."""
    name = "sip_operator_status_mirror_lag_seconds"
    return value(samples, f"{name}_count"), value(samples, f"{name}_sum")


def listening_ports(operator: OperatorProcess) -> set[int]:
    assert operator.process is not None
    connections = psutil.Process(operator.process.pid).net_connections(kind="inet")
    return {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}


@pytest.fixture()
def metrics_port(
    cluster: Cluster, redis_server: RedisServer, namespace: str, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, int]]:
    """The operator watching `namespace` with --metrics-port; Secret `alice-sip` there."""
    cluster.create_secret(namespace, "alice-sip", {"password": "alice-sip-password"})
    operator = OperatorProcess(cluster, redis_server.url, tmp_path / "operator.log")
    port = free_port()
    operator.start(["--namespace", namespace, "--metrics-port", str(port)])
    try:
        wait_for(lambda: answers(port), what="/metrics answering")
        yield operator, port
    finally:
        operator.stop()
        operator.kill()
    assert "Traceback" not in operator.log(), operator.log()[-5000:]


def test_sessions_reconciles_recreations_errors_and_mirror_lag_move(
    cluster: Cluster,
    metrics_port: tuple[OperatorProcess, int],
    namespace: str,
    redis_server: RedisServer,
) -> None:
    operator, port = metrics_port
    assert listening_ports(operator) == {port}
    start = scrape(port)
    assert by_phase(start) == dict.fromkeys(PHASES, 0)  # every phase there from the start
    assert errors(start) == dict.fromkeys(ErrorKind, 0)
    assert recreations(start) == 0 and lags(start) == (0, 0)
    reconciles = value(start, "sip_operator_reconcile_duration_seconds_count")

    cluster.create_session(namespace, "alice", account_spec())
    cluster.wait_phase(namespace, "alice", "Pending")
    wait_for(lambda: by_phase(scrape(port))["Pending"] == 1, what="one session Pending")
    wait_for(
        lambda: value(scrape(port), "sip_operator_reconcile_duration_seconds_count") > reconciles,
        what="reconcile passes timed",
    )
    cluster.set_pod_status(namespace, "sip-alice", "Running", ready=True)
    cluster.wait_phase(namespace, "alice", "Starting")
    assert by_phase(scrape(port)) == {**dict.fromkeys(PHASES, 0), "Starting": 1}
    assert recreations(scrape(port)) == 0  # the first pod is no recreation

    # A status mirrored: one lag, measured from the status's own timestamp (3 s ago).
    written = time.time() - 3
    redis = redis_server.client()
    redis.xadd(stream_key(namespace, "alice"), sip_status_entry("ready", 1, timestamp=written))
    cluster.wait_phase(namespace, "alice", "Ready")
    mirrored = wait_for(lambda: (s := scrape(port)) and lags(s)[0] == 1 and s, what="the lag")
    assert 3 <= lags(mirrored)[1] <= time.time() - written
    assert by_phase(mirrored)["Ready"] == 1

    # A pod deleted (by someone else) and a pod failed: each recreation counts.
    first = cluster.pods(namespace)["sip-alice"]["metadata"]["uid"]
    cluster.core.delete_namespaced_pod("sip-alice", namespace)
    second = wait_for(lambda: new_pod(cluster, namespace, first), what="a recreated pod")
    wait_for(lambda: recreations(scrape(port)) == 1, what="one recreation")
    cluster.set_pod_status(namespace, "sip-alice", "Failed", ready=False)
    third = wait_for(lambda: new_pod(cluster, namespace, second), what="a replacement pod")
    wait_for(lambda: recreations(scrape(port)) == 2, what="two recreations")

    # A pod the operator replaces for a changed spec is no recreation.
    cluster.patch_session(namespace, "alice", {"spec": {"autoAnswerInterval": 5}})
    wait_for(lambda: new_pod(cluster, namespace, third), what="the pod of the new spec")
    wait_for(lambda: cluster.status(namespace, "alice").get("observedGeneration") == 2)
    after = scrape(port)
    assert recreations(after) == 2
    assert lags(after)[0] == 1  # the later patches carried the same status: no new lag

    # Errors by kind: a missing password Secret, a pod of the session's name it does not own.
    cluster.create_session(namespace, "nopass", account_spec(secret="absent"))
    container = {"name": "sip-worker", "image": "stranger"}
    cluster.core.create_namespaced_pod(
        namespace, {"metadata": {"name": "sip-bob"}, "spec": {"containers": [container]}}
    )
    cluster.create_session(namespace, "bob", account_spec())
    cluster.wait_phase(namespace, "nopass", "Failed")
    cluster.wait_phase(namespace, "bob", "Failed")
    failed = wait_for(
        lambda: (s := scrape(port)) and errors(s)["secret"] and errors(s)["name_conflict"] and s,
        what="the secret and name_conflict errors counted",
    )
    assert errors(failed)["spec"] == errors(failed)["unexpected"] == 0
    assert by_phase(failed)["Failed"] == 2

    # A session being deleted counts as Terminating until it is gone, then not at all.
    cluster.delete_session(namespace, "nopass")
    wait_for(lambda: "nopass" not in cluster.sessions(namespace), what="nopass deleted")
    wait_for(
        lambda: by_phase(scrape(port)) == {**dict.fromkeys(PHASES, 0), "Pending": 1, "Failed": 1},
        what="nopass no longer counted, not even as Terminating",
    )


def new_pod(cluster: Cluster, namespace: str, old_uid: str) -> str | None:
    """The uid of alice's pod if it is not the one of `old_uid`."""
    pod = cluster.pods(namespace).get("sip-alice")
    uid = pod["metadata"]["uid"] if pod else None
    return uid if uid and uid != old_uid else None


def test_no_metrics_listener_by_default(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    cluster.create_session(namespace, "alice", account_spec())
    cluster.wait_phase(namespace, "alice", "Pending")  # the operator is up and working
    assert listening_ports(operator) == set()


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--metrics-port", "-1"], {}),
        (["--metrics-port", "65536"], {}),
        (["--metrics-port", "metrics"], {}),
        (["--metrics-port", "9464.5"], {}),
        ([], {"SIP_OPERATOR_METRICS_PORT": "70000"}),
        ([], {"SIP_OPERATOR_METRICS_PORT": "nine"}),
    ],
)
def test_a_bad_metrics_port_is_refused(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(["-n", "calls", *argv], environ)
    assert refused.value.code == 2
    message = capsys.readouterr().err
    assert "--metrics-port" in message and "is not a port number 0-65535" in message
    assert "SIP_OPERATOR_METRICS_PORT" in message


def test_the_metrics_port_comes_from_the_flag_else_the_environment() -> None:
    assert parse_args(["-n", "calls"], {}).metrics_port == 0
    environ = {"SIP_OPERATOR_METRICS_PORT": "9100"}
    assert parse_args(["-n", "calls"], environ).metrics_port == 9100
    assert parse_args(["-n", "calls", "--metrics-port", "9200"], environ).metrics_port == 9200


def test_a_taken_metrics_port_stops_the_operator_at_once() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [str(OPERATOR_BIN), "-n", "calls", "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )
    assert run.returncode == 1
    assert f"cannot serve metrics on port {port}" in run.stderr


def test_the_phase_labels_are_the_crds_phases() -> None:
    crd = yaml.safe_load((REPO / "crds" / "sipsession.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert tuple(status["properties"]["phase"]["enum"]) == PHASES
