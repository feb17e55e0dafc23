"""SIP over TLS and SRTP in a SipSession: `transport: tls`, `srtp` and the TLS Secret reach the
worker pod as settings and read-only mounted files (the key never as an env value), and specs
or Secrets the worker could not run with are refused clearly."""

from typing import Any

import pytest

from sip_operator.session_spec import SpecError, parse_spec
from tests.support.certificates import TestCa
from tests.support.operator_harness import Cluster, OperatorProcess, account_spec, wait_for

TLS_DIR = "/etc/sip-worker/tls"


def tls_spec(secret: str | None = None, **extra: Any) -> dict[str, Any]:
    spec = account_spec("alice@pbx.example.com:5061") | {"transport": "tls", **extra}
    if secret is not None:
        spec["tls"] = {"secretRef": {"name": secret}}
    return spec


def worker_container(cluster: Cluster, namespace: str, pod: str) -> dict[str, Any]:
    found = wait_for(lambda: cluster.pods(namespace).get(pod), what=f"the pod {pod}")
    (container,) = found["spec"]["containers"]
    return dict(container)


def test_transport_srtp_and_the_tls_secret_reach_the_pod_as_settings_and_files(
    cluster: Cluster, operator: OperatorProcess, namespace: str, ca: TestCa
) -> None:
    client = ca.issue("worker")
    pem = {
        "ca.crt": ca.certificate.read_text(),
        "tls.crt": client.certificate.read_text(),
        "tls.key": client.key.read_text(),
    }
    cluster.create_secret(namespace, "alice-tls", pem)
    cluster.create_secret(namespace, "carrier-ca", {"ca.crt": pem["ca.crt"]})
    cluster.create_session(namespace, "alice", tls_spec("alice-tls", srtp="mandatory"))
    carrier_ca = {"secretRef": {"name": "carrier-ca"}, "verify": False}
    cluster.create_session(namespace, "bob", tls_spec() | {"tls": carrier_ca})

    container = worker_container(cluster, namespace, "sip-alice")
    env = {e["name"]: e for e in container["env"]}
    assert {
        name: env[name].get("value")
        for name in env
        if "TLS" in name or "SRTP" in name or "TRANSPORT" in name
    } == {
        "SIP_WORKER_SIP_TRANSPORT": "tls",
        "SIP_WORKER_TLS_CA_FILE": f"{TLS_DIR}/ca.crt",
        "SIP_WORKER_TLS_CERT_FILE": f"{TLS_DIR}/tls.crt",
        "SIP_WORKER_TLS_KEY_FILE": f"{TLS_DIR}/tls.key",
        "SIP_WORKER_TLS_VERIFY": "true",
        "SIP_WORKER_SRTP": "mandatory",
    }
    assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in container["volumeMounts"]
    assert {"name": "sip", "containerPort": 5060, "protocol": "TCP"} in container["ports"]
    pod = cluster.pods(namespace)["sip-alice"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "alice-tls"
    assert [item["key"] for item in volume["secret"]["items"]] == ["ca.crt", "tls.crt", "tls.key"]
    assert str(pod).count("PRIVATE KEY") == 0 and pem["tls.key"] not in str(pod)

    # A Secret with the CA only: no client certificate, and verification off when asked.
    bob = {
        e["name"]: e.get("value") for e in worker_container(cluster, namespace, "sip-bob")["env"]
    }
    assert bob["SIP_WORKER_TLS_CA_FILE"] == f"{TLS_DIR}/ca.crt"
    assert "SIP_WORKER_TLS_CERT_FILE" not in bob and "SIP_WORKER_TLS_KEY_FILE" not in bob
    assert bob["SIP_WORKER_TLS_VERIFY"] == "false"
    assert bob["SIP_WORKER_SRTP"] == "off"
    assert pem["tls.key"] not in operator.log()


def test_an_unusable_tls_secret_fails_the_session_clearly(
    cluster: Cluster, operator: OperatorProcess, namespace: str, ca: TestCa
) -> None:
    cluster.create_secret(
        namespace, "half", {"tls.crt": ca.issue("worker").certificate.read_text()}
    )
    cluster.create_session(namespace, "half", tls_spec("half"))
    cluster.create_session(namespace, "absent", tls_spec("absent"))

    cluster.wait_phase(namespace, "half", "Failed")
    assert "tls.crt and tls.key go together" in cluster.status(namespace, "half")["message"]
    cluster.wait_phase(namespace, "absent", "Failed")
    assert (
        f"Secret {namespace}/absent (named by spec.tls.secretRef) not found"
        in (cluster.status(namespace, "absent")["message"])
    )
    assert "sip-half" not in cluster.pods(namespace) and "sip-absent" not in cluster.pods(namespace)


def test_srtp_and_tls_need_transport_tls_and_leave_the_fingerprint_alone_at_defaults() -> None:
    plain = parse_spec(account_spec())
    assert parse_spec(account_spec() | {"srtp": "off"}).fingerprint == plain.fingerprint
    assert parse_spec(tls_spec()).fingerprint != plain.fingerprint
    assert parse_spec(tls_spec(srtp="optional")).fingerprint != parse_spec(tls_spec()).fingerprint
    with pytest.raises(SpecError, match=r"spec\.srtp needs spec\.transport tls"):
        parse_spec(account_spec() | {"srtp": "mandatory"})
    with pytest.raises(SpecError, match=r"spec\.tls needs spec\.transport tls"):
        parse_spec(account_spec() | {"tls": {"secretRef": {"name": "x"}}})
    with pytest.raises(SpecError, match=r"spec\.srtp must be one of off, optional, mandatory"):
        parse_spec(tls_spec(srtp="sdes"))
