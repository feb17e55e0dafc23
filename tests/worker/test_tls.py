"""SIP over TLS: REGISTER and calls to Kamailio's TLS listener, certificates checked against a
test CA that the fixture makes; a wrong CA refused with a clear error; mutual TLS."""

import re
import subprocess
from pathlib import Path

import grpc
import pytest

from ondewo.sip import sip_pb2
from tests.support.certificates import Issued, TestCa
from tests.support.kamailio import KamailioFactory
from tests.support.recording_peer import RecordingPeer
from tests.support.sip_peers import SIPP_PASSWORD
from tests.worker.conftest import WorkerFactory, WorkerProcess

SAVED = "saved the binding of alice"
SAVED_OVER_TLS = "(received over tls)"
REFUSED = r"\(NONE\) \(NONE\)"


def tls_worker(worker_factory: WorkerFactory, ca_file: Path, *args: str) -> WorkerProcess:
    """A worker on SIP over TLS that trusts `ca_file` (its SIP port, as every test worker's, is
    below the ephemeral range: no outgoing TCP connection holds it, on which PJSIP's listen()
    would fail silently)."""
    return worker_factory("--sip-transport", "tls", "--tls-ca-file", str(ca_file), *args)


def as_pair(issued: Issued) -> tuple[Path, Path]:
    return issued.certificate, issued.key


def register(worker: WorkerProcess, account: str) -> None:
    worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=account, password=SIPP_PASSWORD), timeout=30
    )


@pytest.mark.parametrize("scheme", ["sip:", "sips:"])
def test_register_over_tls(
    worker_factory: WorkerFactory, tls_kamailio_factory: KamailioFactory, ca: TestCa, scheme: str
) -> None:
    kamailio = tls_kamailio_factory()
    worker = tls_worker(worker_factory, ca.certificate)

    register(worker, f"{scheme}{kamailio.tls_account}")

    assert worker.types() == ["registered"]
    kamailio.wait_for_log(SAVED_OVER_TLS)


def test_a_server_certificate_from_another_ca_is_refused(
    worker_factory: WorkerFactory, tls_kamailio_factory: KamailioFactory, tmp_path: Path
) -> None:
    kamailio = tls_kamailio_factory()
    other = TestCa(tmp_path / "other-ca", name="other-ca")
    worker = tls_worker(worker_factory, other.certificate)

    with pytest.raises(grpc.RpcError) as refused:
        register(worker, kamailio.tls_account)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "TLS: certificate verify failed" in refused.value.details()
    assert SAVED not in kamailio.log()


def test_mutual_tls_needs_the_worker_certificate(
    worker_factory: WorkerFactory, tls_kamailio_factory: KamailioFactory, ca: TestCa
) -> None:
    kamailio = tls_kamailio_factory(require_client_certificate=True)
    anonymous = tls_worker(worker_factory, ca.certificate)
    with pytest.raises(grpc.RpcError) as refused:
        register(anonymous, kamailio.tls_account)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert SAVED not in kamailio.log()

    client = ca.issue("worker")
    worker = tls_worker(
        worker_factory,
        ca.certificate,
        *("--tls-cert-file", str(client.certificate), "--tls-key-file", str(client.key)),
    )
    register(worker, kamailio.tls_account)

    kamailio.wait_for_log(SAVED_OVER_TLS)
    assert client.key.read_text() not in worker.log()


def test_calls_both_ways_over_tls(
    worker_factory: WorkerFactory,
    tls_kamailio_factory: KamailioFactory,
    ca: TestCa,
    tmp_path: Path,
) -> None:
    kamailio = tls_kamailio_factory()
    worker = tls_worker(worker_factory, ca.certificate)
    register(worker, kamailio.tls_account)
    worker.stub.StartSession(
        sip_pb2.StartSessionRequest(account_name=kamailio.tls_account, auto_answer_interval=1),
        timeout=10,
    )
    peer = RecordingPeer(tmp_path / "peer", tls=as_pair(ca.issue("peer")))
    try:
        # In through Kamailio, which relays it over the worker's TLS connection.
        peer.command(f"call sip:alice@{kamailio.tls_address};transport=tls")
        peer.wait_for("CONFIRMED")
        worker.wait_for_status("incoming_call_connected")
        peer.command("hangup")
        worker.wait_for_status("incoming_call_finished")

        # Out to the peer, whose certificate (IP SAN 127.0.0.1) the worker checks.
        worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=peer.uri), timeout=10)
        worker.wait_for_status("outgoing_call_connected")
        worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
        worker.wait_for_status("outgoing_call_finished")
    finally:
        peer.stop()


def test_sips_is_refused_without_tls(worker: WorkerProcess) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        register(worker, "sips:alice@127.0.0.1:5061")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "--sip-transport tls" in refused.value.details()


def handshake(port: int, ca_file: Path, *options: str) -> str:
    """What `openssl s_client` negotiates with the worker's TLS listener: `TLSv1.2 <cipher>`,
    or `(NONE) (NONE)` when the listener refuses."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca_file), *options],
        input="",
        capture_output=True,
        text=True,
        timeout=10,
    )
    found = re.search(r"New, (\S+), Cipher is (\S+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    return f"{found[1]} {found[2]}"


@pytest.mark.parametrize(
    ("options", "negotiated"),
    [
        (["-tls1_2"], r"TLSv1\.2 ECDHE-ECDSA-AES(128|256)-GCM-SHA(256|384)"),
        (
            ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
            r"TLSv1\.2 ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (["-tls1_3"], REFUSED),
        (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], REFUSED),
        (["-tls1_2", "-cipher", "AES128-SHA@SECLEVEL=0"], REFUSED),
        (
            ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA"],
            REFUSED,
        ),
    ],
    ids=["default", "aes128-gcm", "tls1.3", "tls1.1", "no forward secrecy", "cbc"],
)
def test_the_tls_listener_speaks_tls_1_2_with_ecdhe_and_aes_gcm_only(
    worker_factory: WorkerFactory, ca: TestCa, options: list[str], negotiated: str
) -> None:
    certificate = ca.issue("worker")
    worker = tls_worker(
        worker_factory,
        ca.certificate,
        *("--tls-cert-file", str(certificate.certificate), "--tls-key-file", str(certificate.key)),
    )
    assert re.fullmatch(negotiated, handshake(worker.sip_port, ca.certificate, *options))
