"""A real Kamailio registrar (digest auth, memory-only bindings) and its outages: refused and
unanswered REGISTERs at boot and mid-session, restarts that forget the bindings."""

import time

import grpc
import pytest

from ondewo.sip import sip_pb2
from tests.support import worker_probes
from tests.support.kamailio import Kamailio
from tests.support.sip_peers import SIPP_PASSWORD, SippFactory
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerFactory, WorkerProcess

WRONG_PASSWORD = "not-the-password"
SAVED = "saved the binding of alice"


def register(worker: WorkerProcess, kamailio: Kamailio, password: str) -> None:
    worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=kamailio.account, password=password),
        timeout=30,
    )


def start_session(worker: WorkerProcess, kamailio: Kamailio) -> None:
    register(worker, kamailio, SIPP_PASSWORD)
    worker.stub.StartSession(
        sip_pb2.StartSessionRequest(account_name=kamailio.account, auto_answer_interval=1),
        timeout=10,
    )


def call_through(sipp_factory: SippFactory, kamailio: Kamailio, hold_ms: int = 500) -> Sipp:
    """A sipp UAC calling alice at Kamailio, which routes the INVITE to her binding."""
    return sipp_factory(
        "uac", remote=kamailio.address, args=["-m", "1", "-d", str(hold_ms), "-s", "alice"]
    )


def boot_worker(worker_factory: WorkerFactory, kamailio: Kamailio, password: str) -> WorkerProcess:
    return worker_factory(
        "--start-session",
        "--account",
        kamailio.account,
        "--register-retry-max",
        "2",
        env={"SIP_WORKER_PASSWORD": password},
    )


def test_kamailio_accepts_the_right_password_and_refuses_a_wrong_one(
    worker: WorkerProcess, kamailio: Kamailio
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        register(worker, kamailio, WRONG_PASSWORD)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "403 Forbidden" in refused.value.details()
    assert worker.history() == []  # an API client's attempt: the client decides what next

    register(worker, kamailio, SIPP_PASSWORD)

    assert worker.types() == ["registered"]
    kamailio.wait_for_log(SAVED)
    assert SIPP_PASSWORD not in worker.log() and WRONG_PASSWORD not in worker.log()


def test_a_refused_boot_registration_keeps_the_worker_up_and_retrying(
    worker_factory: WorkerFactory, kamailio: Kamailio
) -> None:
    worker = boot_worker(worker_factory, kamailio, WRONG_PASSWORD)

    failed = worker.wait_for_status("session_registration_failed")
    assert failed.description == "403 Forbidden"
    assert failed.account_name == kamailio.account
    # It keeps trying (1 s, then 2 s apart), and says the same reason only once.
    offset = kamailio.wait_for_log("REGISTER of alice refused")
    kamailio.wait_for_log("REGISTER of alice refused", after=offset, timeout=10)
    assert worker_probes.health(worker.channel) == "NOT_SERVING"
    assert worker.types() == ["session_registration_failed"]
    # The registrar learns the password the worker has (as a fixed Secret would): no restart.
    kamailio.restart(password=WRONG_PASSWORD)

    worker_probes.wait_health(worker.channel, "SERVING", timeout=15)
    assert worker.types() == ["session_registration_failed", "registered", "ready"]
    assert worker.alive()
    assert worker.log().count("serving ondewo.sip.Sip") == 1
    assert WRONG_PASSWORD not in worker.log()


def test_a_registrar_down_at_boot_is_registered_at_once_it_is_up(
    worker_factory: WorkerFactory, kamailio: Kamailio
) -> None:
    kamailio.stop()
    started = time.monotonic()
    worker = boot_worker(worker_factory, kamailio, SIPP_PASSWORD)

    failed = worker.wait_for_status("session_registration_failed", timeout=20)
    assert failed.description == "no answer to the REGISTER within 10 s"
    assert worker_probes.health(worker.channel) == "NOT_SERVING"
    time.sleep(max(0.0, 20 - (time.monotonic() - started)))
    kamailio.start()

    worker_probes.wait_health(worker.channel, "SERVING", timeout=30)
    assert worker.types() == ["session_registration_failed", "registered", "ready"]
    assert worker.alive()
    assert worker.log().count("serving ondewo.sip.Sip") == 1


def test_a_restart_that_forgets_the_binding_is_repaired_by_the_next_refresh(
    worker_factory: WorkerFactory, kamailio: Kamailio, sipp_factory: SippFactory
) -> None:
    worker = worker_factory("--register-expiry", "10")
    start_session(worker, kamailio)
    assert call_through(sipp_factory, kamailio).wait(timeout=30) == 0
    worker.wait_for_status("incoming_call_finished")
    restarted_at = len(kamailio.log())
    kamailio.restart()

    # The new Kamailio knows no alice until her refresh, due 5 s after the last one.
    forgotten = call_through(sipp_factory, kamailio)
    assert forgotten.wait(timeout=30) != 0
    assert " 404 Not Registered" in forgotten.messages()
    kamailio.wait_for_log(SAVED, after=restarted_at, timeout=10)
    assert call_through(sipp_factory, kamailio).wait(timeout=30) == 0

    call = ["incoming_call_initiated", "incoming_call_connected", "incoming_call_finished"]
    worker.wait_for_status("incoming_call_finished", after=5)
    # The worker never lost its registration (the refresh was accepted): nothing else.
    assert worker.types() == ["registered", "ready", *call, *call]


def test_a_refused_refresh_mid_call_is_reported_retried_and_leaves_the_call_alone(
    worker_factory: WorkerFactory, kamailio: Kamailio, sipp_factory: SippFactory
) -> None:
    worker = worker_factory(
        "--register-expiry", "10", "--register-retry-max", "2", "--media-timeout", "0"
    )
    start_session(worker, kamailio)
    caller = call_through(sipp_factory, kamailio, hold_ms=20000)
    worker.wait_for_status("incoming_call_connected")

    # The registrar now wants another password: the next refresh (within 5 s) is refused.
    kamailio.restart(password=WRONG_PASSWORD)
    failed = worker.wait_for_status("session_registration_failed", timeout=15)
    assert failed.description == "403 Forbidden"
    offset = kamailio.wait_for_log("REGISTER of alice refused", timeout=5)
    kamailio.wait_for_log("REGISTER of alice refused", after=offset, timeout=10)
    kamailio.restart(password=SIPP_PASSWORD)
    worker.wait_for_status("registered", after=4, timeout=10)

    assert caller.wait(timeout=30) == 0, caller.output()
    worker.wait_for_status("incoming_call_finished")
    assert worker.types() == [
        "registered",
        "ready",
        "incoming_call_initiated",
        "incoming_call_connected",
        "session_registration_failed",
        "registered",
        "incoming_call_finished",
    ]
    assert worker_probes.health(worker.channel) == "SERVING"
