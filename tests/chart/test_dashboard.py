"""The Grafana dashboard (charts/sip-operator/dashboards/sip-operator.json) is a well-formed
dashboard on a `${datasource}` Prometheus variable, and every metric its queries name is served:
the sip_operator_* ones by a running operator, the others by a running worker."""

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.chart.rendering import CHART, NAMESPACE, one_of_kind, render
from tests.support.k8s_emulator import EmulatorThread
from tests.support.operator_harness import Cluster, OperatorProcess, wait_for
from tests.support.redis_server import RedisServer
from tests.support.sipp import free_tcp_port
from tests.worker.conftest import start_worker

DASHBOARD = CHART / "dashboards" / "sip-operator.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
OPERATOR_PREFIX = "sip_operator_"
# The families the issue asks the dashboard to show.
SHOWN_FAMILIES = {
    "sip_worker_calls",
    "sip_worker_call_active",
    "sip_worker_registered",
    "sip_worker_untrusted_requests",
    "sip_worker_rpc_duration_seconds",
    "sip_worker_history_buffer_depth",
    "sip_worker_history_write_seconds",
    "sip_operator_sessions",
    "sip_operator_reconcile_duration_seconds",
    "sip_operator_reconcile_errors",
    "sip_operator_pod_recreations",
    "sip_operator_status_mirror_lag_seconds",
}
# The sample names each family type puts on /metrics besides (or instead of) its own name.
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
}

# What in a PromQL expression is not a metric name: strings, label matchers, range and subquery
# brackets, grouping label lists, Grafana variables; then function calls and keywords.
_STRINGS = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
# Possessive: a name followed by "(" is a function call, never a shorter metric name.
_IDENTIFIERS = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*+)(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "inf", "nan"}
_LABEL_VALUES = re.compile(r"label_values\((?P<metric>.*),\s*\w+\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _GROUPINGS, _VARIABLES):
        expr = pattern.sub(" ", expr)
    return {name for name in _IDENTIFIERS.findall(expr) if name.lower() not in _KEYWORDS}


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    dashboard = _dashboard()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.fullmatch(variable["query"])
            assert match, f"variable {variable['name']}: not a label_values query"
            exprs.append(match["metric"])
    return exprs


def _queried_names() -> set[str]:
    names: set[str] = set()
    for expr in _queries():
        found = metric_names(expr)
        assert found, f"no metric in {expr!r}"
        names |= found
    return names


def _served_names(metrics_text: str) -> set[str]:
    """Every name a query may select from this /metrics text: each family's samples, also those
    of labelled families with no child yet (only their # TYPE line is there)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.add(family.name)
        names.update(family.name + s for s in _SAMPLE_SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def _family(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


def test_the_metric_name_extraction_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, method) (rate(a_seconds_bucket{x="}", y=~"$ns"}'
        "[$__rate_interval]))) / on (pod) group_left (node) b_info offset 5m"
        " > bool 1e3 or vector(0) unless c:recorded:rate5m[1h:5m]"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_info", "c:recorded:rate5m"}


def test_the_served_names_know_families_without_samples() -> None:
    text = (
        "# HELP r_seconds x\n# TYPE r_seconds histogram\n# HELP e_total x\n# TYPE e_total counter\n"
    )
    served = _served_names(text)
    assert {"r_seconds_bucket", "r_seconds_count", "e_total"} <= served
    assert "r_second_bucket" not in served and "e_totals" not in served


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_datasource_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "sip-operator"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"] and target["refId"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_the_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for column in range(grid["x"], grid["x"] + grid["w"]):
                assert (row, column) not in taken, f"{panel['title']} over {taken[(row, column)]}"
                taken[(row, column)] = panel["title"]


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    assert {_family(name) for name in _queried_names()} >= SHOWN_FAMILIES


def test_every_worker_metric_the_dashboard_queries_is_on_a_running_workers_metrics(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    wanted = {n for n in _queried_names() if not n.startswith(OPERATOR_PREFIX)}
    metrics_port = free_tcp_port()
    worker = start_worker(redis_server.url, tmp_path, ["--metrics-port", str(metrics_port)])
    try:
        served = _served_names(_metrics_text(metrics_port))
    finally:
        worker.stop()
    assert wanted - served == set()


def test_every_operator_metric_the_dashboard_queries_is_on_a_running_operators_metrics(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The operator is started with the metrics variable exactly as the chart renders it."""
    wanted = {n for n in _queried_names() if n.startswith(OPERATOR_PREFIX)}
    metrics_port = free_tcp_port()
    deployment = one_of_kind(render({"operator": {"metricsPort": metrics_port}}), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    metrics_env = {
        e["name"]: e["value"] for e in container["env"] if e.get("value") == str(metrics_port)
    }
    assert list(metrics_env) == ["SIP_OPERATOR_METRICS_PORT"]

    with EmulatorThread() as emulator:
        operator = OperatorProcess(Cluster(emulator), redis_server.url, tmp_path / "operator.log")

        def scraped() -> str:
            """The metrics text, or "" while the operator is not serving it yet."""
            assert operator.process is not None and operator.process.poll() is None, operator.log()
            try:
                return _metrics_text(metrics_port)
            except (urllib.error.URLError, ConnectionError):
                return ""

        operator.start(["--namespace", NAMESPACE], env=metrics_env)
        try:
            text = wait_for(scraped, timeout=30, what=f"the operator's /metrics on {metrics_port}")
        finally:
            operator.stop()
            operator.kill()
    assert wanted - _served_names(text) == set()
