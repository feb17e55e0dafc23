"""SIP over TLS: REGISTER and calls to Kamailio's TLS listener, certificates checked against a
test CA that the fixture makes; a wrong CA refused with a clear error; mutual TLS."""

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from ondewo.sip import sip_pb2
from tests.support.certificates import TestCa
from tests.support.kamailio import Kamailio, KamailioTls
from tests.support.sip_peers import SIPP_PASSWORD
from tests.worker.conftest import WorkerFactory, WorkerProcess

SAVED = "saved the binding of alice"
SAVED_OVER_TLS = "(received over tls)"
KamailioFactory = Callable[..., Kamailio]


@pytest.fixture()
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "ca")


@pytest.fixture()
def tls_kamailio_factory(tmp_path: Path, ca: TestCa) -> Iterator[KamailioFactory]:
    """Starts Kamailio registrars with a TLS listener whose certificate the test CA signed."""
    started: list[Kamailio] = []

    def factory(require_client_certificate: bool = False) -> Kamailio:
        tls = KamailioTls(ca.issue("kamailio"), ca.certificate, require_client_certificate)
        registrar = Kamailio(tmp_path / f"kamailio-{len(started)}", tls=tls)
        started.append(registrar)
        return registrar.start()

    yield factory
    for registrar in started:
        registrar.stop()


def tls_worker(worker_factory: WorkerFactory, ca_file: Path, *args: str) -> WorkerProcess:
    return worker_factory("--sip-transport", "tls", "--tls-ca-file", str(ca_file), *args)


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
