"""The e2e manifests are valid Kubernetes objects, offline (the kind run itself may be skipped)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.e2e.kind import MANIFESTS, NAMESPACE

PEER = MANIFESTS / "sipp-peer.yaml"


@pytest.mark.parametrize("manifest", [PEER], ids=lambda path: Path(path).name)
def test_manifest_validates_against_the_kubernetes_schemas(manifest: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, "1.32", strict=True)


def test_the_peer_containers_are_locked_down_and_do_not_clash() -> None:
    pod = next(d for d in yaml.safe_load_all(PEER.read_text()) if d["kind"] == "Pod")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    containers = pod["spec"]["containers"]
    for container in containers:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["requests"]
    # One network namespace: sipp's SIP, control (-cp) and media (-mp) ports must all differ.
    for flag in ("-p", "-cp", "-mp"):
        ports = [c["args"][c["args"].index(flag) + 1] for c in containers]
        assert len(set(ports)) == len(ports), flag


def test_the_session_registers_at_the_peer_service_of_the_e2e_namespace() -> None:
    session = yaml.safe_load((MANIFESTS / "sipsession.yaml").read_text())
    service = next(d for d in yaml.safe_load_all(PEER.read_text()) if d["kind"] == "Service")
    host_port = session["spec"]["account"]["name"].split("@", 1)[1]
    assert host_port == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:5060"
    registrar = next(p for p in service["spec"]["ports"] if p["name"] == "registrar")
    assert registrar["port"] == 5060
