"""RegisterAccount / StartSession / EndSession against a sipp registrar with MD5 digest auth."""

from collections.abc import Callable

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2
from tests.support.sipp import Sipp, free_udp_port
from tests.worker.conftest import (
    SIPP_PASSWORD,
    SIPP_USER,
    WorkerProcess,
    account_of,
    start_session,
)


def register(worker: WorkerProcess, account: str, password: str) -> None:
    worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=account, password=password), timeout=30
    )


def test_right_password_registers_with_digest_auth(worker: WorkerProcess, registrar: Sipp) -> None:
    register(worker, account_of(registrar), SIPP_PASSWORD)

    status = worker.status()
    assert sip_pb2.SipStatus.StatusType.Name(status.status_type) == "registered"
    assert status.account_name == account_of(registrar)
    assert status.timestamp.seconds > 0
    registers = registrar.received("REGISTER")
    assert len(registers) == 2, "one challenge, then the answer"
    assert "Authorization:" not in registers[0]
    assert f'username="{SIPP_USER}"' in registers[1]
    assert "algorithm=MD5" in registers[1]
    assert SIPP_PASSWORD not in registrar.messages()
    assert SIPP_PASSWORD not in worker.log()


def test_wrong_password_is_refused_and_records_nothing(
    worker: WorkerProcess, registrar: Sipp
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        register(worker, account_of(registrar), "wrong-password")

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "403" in refused.value.details()
    assert "wrong-password" not in refused.value.details()
    assert worker.history() == []
    assert "wrong-password" not in worker.log()
    # A session needs a registered account.
    with pytest.raises(grpc.RpcError) as no_session:
        worker.stub.StartSession(
            sip_pb2.StartSessionRequest(account_name=account_of(registrar)), timeout=10
        )
    assert no_session.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert worker.history() == []


@pytest.mark.slow  # waits for the registration timeout (10 s)
def test_registrar_that_is_not_there_is_unavailable(worker: WorkerProcess) -> None:
    closed_port = free_udp_port()  # nobody listens: ICMP port unreachable, or a timeout
    with pytest.raises(grpc.RpcError) as unreachable:
        register(worker, f"{SIPP_USER}@127.0.0.1:{closed_port}", SIPP_PASSWORD)

    assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
    assert worker.history() == []
    assert worker.alive()


def test_session_lifecycle_unregisters_at_the_end(worker: WorkerProcess, registrar: Sipp) -> None:
    account = start_session(worker, registrar, auto_answer_interval=3)
    assert worker.types() == ["registered", "ready"]

    worker.stub.EndSession(Empty(), timeout=20)

    assert worker.types() == ["registered", "ready", "no_session"]
    assert worker.status().account_name == account
    unregister = registrar.received("REGISTER")[-1]
    assert "Expires: 0" in unregister or "expires=0" in unregister
    # The registrar scenario ends (exit code 0) once the un-REGISTER was answered 200.
    assert registrar.wait(timeout=20) == 0
    with pytest.raises(grpc.RpcError) as ended:
        worker.stub.EndSession(Empty(), timeout=10)
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_start_session_for_another_account_is_refused(
    worker: WorkerProcess, registrar: Sipp
) -> None:
    start_session(worker, registrar, auto_answer_interval=1)
    before = worker.history()

    with pytest.raises(grpc.RpcError) as refused:
        worker.stub.StartSession(
            sip_pb2.StartSessionRequest(account_name="bob@127.0.0.1:5999"), timeout=10
        )

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert worker.history() == before


@pytest.mark.parametrize("scheme", ["sip:", ""])
def test_account_name_with_or_without_scheme(
    worker: WorkerProcess, registrar: Sipp, scheme: str
) -> None:
    register(worker, f"{scheme}{account_of(registrar)}", SIPP_PASSWORD)
    assert worker.status().account_name == account_of(registrar)


def test_sips_account_is_refused_without_tls(worker: WorkerProcess, registrar: Sipp) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        register(worker, f"sips:{account_of(registrar)}", SIPP_PASSWORD)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TLS" in refused.value.details()
    assert worker.history() == []
    assert registrar.received("REGISTER") == []


def test_auth_username_is_the_digest_user(
    worker_factory: Callable[..., WorkerProcess], sipp_factory: Callable[..., Sipp]
) -> None:
    registrar = sipp_factory(
        "registrar_auth.xml",
        variables={"user": "agent-7", "pass": SIPP_PASSWORD},
        args=["-m", "1"],
    )
    worker = worker_factory("--auth-username", "agent-7")

    register(worker, account_of(registrar), SIPP_PASSWORD)

    assert worker.types() == ["registered"]
    answer = registrar.received("REGISTER")[1]
    assert 'username="agent-7"' in answer
    assert f"<sip:{SIPP_USER}@127.0.0.1" in answer  # the account itself is unchanged


def test_outbound_proxy_carries_the_register(
    worker_factory: Callable[..., WorkerProcess], registrar: Sipp
) -> None:
    worker = worker_factory("--outbound-proxy", f"sip:{registrar.address};lr")

    # Nothing listens at the account's host (a loopback address, so that no name is looked up
    # anywhere): the REGISTER can only arrive through the proxy.
    register(worker, f"{SIPP_USER}@127.0.0.3", SIPP_PASSWORD)

    assert worker.types() == ["registered"]
    request = registrar.received("REGISTER")[-1]
    assert request.startswith("REGISTER sip:127.0.0.3 SIP/2.0")
    assert f"Route: <sip:{registrar.address};lr>" in request


def test_registering_again_keeps_the_new_binding(
    worker: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    registrar = sipp_factory(
        "registrar_auth.xml",
        variables={"user": SIPP_USER, "pass": SIPP_PASSWORD},
        args=["-m", "2"],
    )
    register(worker, account_of(registrar), SIPP_PASSWORD)
    register(worker, account_of(registrar), SIPP_PASSWORD)

    assert worker.types() == ["registered", "registered"]
    registrar.wait_for(r"Expires: 0|expires=0")

    def contact(request: str) -> str:
        line = next(line for line in request.splitlines() if line.startswith("Contact:"))
        return line.split(";expires")[0]

    def is_unregister(request: str) -> bool:
        return "Expires: 0" in request or "expires=0" in request

    requests = registrar.received("REGISTER")
    registered = list(dict.fromkeys(contact(r) for r in requests if not is_unregister(r)))
    unregistered = {contact(r) for r in requests if is_unregister(r)}
    # Each account object has its own Contact; deleting the replaced account un-REGISTERs its
    # binding only, not the one just registered.
    assert len(registered) == 2
    assert unregistered == {registered[0]}
