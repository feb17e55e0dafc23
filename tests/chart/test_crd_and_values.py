"""One CRD (crds/sipsession.yaml, the chart ships that very file); SipSession examples validate
against its schema; values.schema.json refuses bad values."""

import copy
import re
import textwrap
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.chart.rendering import CHART, VALUE_SETS, chart_crds, render_notes

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "sipsession.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
E2E_SESSION = REPO / "tests" / "e2e" / "manifests" / "sipsession.yaml"


def _session_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _validate_session(session: dict[str, Any]) -> None:
    crd = yaml.safe_load(CRD.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    assert session["apiVersion"] == f"{group}/v1alpha1"
    assert session["kind"] == kind
    jsonschema.validate(session, _session_schema())


def test_the_chart_crd_is_byte_identical_to_crds_sipsession_yaml() -> None:
    in_chart = CHART / "crds" / "sipsession.yaml"
    assert in_chart.read_bytes() == CRD.read_bytes()
    # What Helm loads and packages (it follows the symlink) is that file, byte for byte.
    (loaded,) = [c for c in chart_crds() if c["filename"].endswith("/sipsession.yaml")]
    assert loaded["data"].encode() == CRD.read_bytes()


def test_the_chart_crd_cannot_drift() -> None:
    """The chart holds a link to crds/sipsession.yaml, not a copy."""
    in_chart = CHART / "crds" / "sipsession.yaml"
    assert in_chart.is_symlink()
    assert in_chart.resolve() == CRD.resolve()


def test_the_packaged_chart_carries_the_crd(tmp_path: Path) -> None:
    archive = helm_python.package(CHART, destination=tmp_path)
    with helm_python.Chart.load(archive) as packaged:
        crds = {Path(c["filename"]).name: c["data"] for c in packaged.crds}
    assert crds["sipsession.yaml"].encode() == CRD.read_bytes()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_examples_validate_against_the_crd_schema(example: Path) -> None:
    _validate_session(yaml.safe_load(example.read_text()))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 1


def test_the_e2e_session_validates_against_the_crd_schema() -> None:
    _validate_session(yaml.safe_load(E2E_SESSION.read_text()))


@pytest.mark.parametrize(
    "break_it",
    [
        # A registering account (the default) needs its password.
        lambda s: (
            s["spec"]["account"].pop("passwordSecretRef"),
            s["spec"]["account"].pop("register"),
        ),
        lambda s: s["spec"]["account"].update(name="no-host-part"),
        lambda s: s["spec"].update(transport="sctp"),
        lambda s: s["spec"].update(autoAnswerInterval=-1),
    ],
    ids=["no-password-ref", "account-without-host", "bad-transport", "negative-interval"],
)
def test_the_schema_check_refuses_broken_sessions(break_it: Any) -> None:
    """The validation above can fail: broken variants of an example are refused."""
    session = yaml.safe_load(EXAMPLES[0].read_text())
    broken = copy.deepcopy(session)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        _validate_session(broken)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_notes_show_a_valid_first_session_and_how_to_call_it(values: dict[str, Any]) -> None:
    notes = render_notes(values)
    manifest = re.search(r"<<'YAML'\n(.*?)\n\s*YAML\n", notes, re.DOTALL)
    assert manifest, notes
    session = yaml.safe_load(textwrap.dedent(manifest.group(1)))
    _validate_session(session)
    name = session["metadata"]["name"]
    assert f"get sips {name}" in notes
    assert "tokenSecretRef" in notes
    assert "port-forward svc/sip-" + name in notes
    assert "ondewo.sip.Sip/StartCall" in notes
    # The token and the password stay off command lines.
    assert "-expand-headers -H 'authorization: Bearer ${TOKEN}'" in notes
    assert "--from-literal" not in notes


BAD_VALUES = {
    "replicas-as-text": {"operator": {"replicas": "two"}},
    "no-replicas": {"operator": {"replicas": 0}},
    "unknown-key": {"operator": {"replica": 2}},
    "unknown-top-level-key": {"rbac": {"create": False}},
    "password-in-redis-url": {"redis": {"external": {"url": "redis://:secret@redis:6379/0"}}},
    "not-a-redis-url": {"redis": {"external": {"url": "http://redis:6379"}}},
    "password-in-redis-url-query": {
        "redis": {"external": {"url": "redis://redis:6379?cluster=true&password=secret"}}
    },
    "appendfsync-off": {"redis": {"appendfsync": "no"}},
    "redis-latest": {"redis": {"image": {"tag": "latest"}}},
    "no-cpu-request": {"operator": {"resources": {"requests": {"cpu": None}}}},
    "bad-quantity": {"operator": {"resources": {"requests": {"memory": "lots"}}}},
    "namespace-pattern": {"watch": {"namespaces": ["team-*"]}},
    "port-out-of-range": {"worker": {"grpcPort": 70000}},
    "no-slots": {"worker": {"slotsPerNode": 0}},
    "odd-slot-rtp-ports": {"worker": {"slotRtpPorts": 101}},
    "bad-log-level": {"operator": {"logLevel": "TRACE"}},
    "grpc-clients-empty": {"networkPolicy": {"grpcClients": []}},
    "grpc-client-unknown-field": {"networkPolicy": {"grpcClients": [{"podSelektor": {}}]}},
    "pvc-size-without-unit": {"redis": {"persistence": {"size": "10"}}},
    "operator-metrics-port-out-of-range": {"operator": {"metricsPort": 70000}},
    "interval-without-unit": {"metrics": {"podMonitor": {"interval": "30"}}},
    "interval-fractional": {"metrics": {"operatorMonitor": {"interval": "1.5m"}}},
    "interval-zero": {"metrics": {"podMonitor": {"interval": "0s"}}},
    "scrape-timeout-words": {"metrics": {"podMonitor": {"scrapeTimeout": "soon"}}},
    "monitor-unknown-key": {"metrics": {"podMonitor": {"enable": True}}},
    "monitor-enabled-as-text": {"metrics": {"operatorMonitor": {"enabled": "yes"}}},
    "monitor-label-key-with-space": {"metrics": {"podMonitor": {"labels": {"my release": "x"}}}},
    "monitor-label-value-not-text": {"metrics": {"podMonitor": {"labels": {"release": 1}}}},
    "dashboard-namespace-uppercase": {"metrics": {"dashboard": {"namespace": "Monitoring"}}},
    "dashboard-label-value-with-slash": {"metrics": {"dashboard": {"labels": {"a": "b/c"}}}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_values_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with helm_python.Chart.load(CHART) as chart:
        with pytest.raises(helm_python.HelmValuesError):
            chart.validate_schema(values)
        with pytest.raises(helm_python.HelmValuesError):
            chart.render(values, name="demo", namespace="sip")


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_values_schema_accepts_the_supported_sets(values: dict[str, Any]) -> None:
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values)


def test_default_values_satisfy_the_schema_exactly() -> None:
    """values.yaml and values.schema.json agree (the schema forbids unknown keys)."""
    with helm_python.Chart.load(CHART) as chart:
        schema = chart.schema
        defaults = chart.values
    assert schema is not None
    jsonschema.validate(defaults, schema)
