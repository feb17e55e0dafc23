"""Sessions without REGISTER (`--no-register`, env SIP_WORKER_NO_REGISTER), for trunks that
authenticate by source address: a worker against sipp with no registrar at all."""

import signal
from collections.abc import Callable

from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2
from tests.support import worker_probes
from tests.support.sipp import Sipp, free_tcp_port
from tests.worker.conftest import WorkerFactory


def test_the_boot_session_needs_no_register_nor_password_and_takes_and_places_calls(
    worker_factory: WorkerFactory, sipp_factory: Callable[..., Sipp]
) -> None:
    trunk = sipp_factory("uas")
    metrics_port = free_tcp_port()
    worker = worker_factory(
        *("--no-register", "--start-session", "--account", f"alice@{trunk.address}"),
        *("--metrics-port", str(metrics_port)),
    )
    worker_probes.wait_health(worker.channel, "SERVING")
    assert worker.types() == ["ready"]
    assert worker.status().account_name == f"alice@{trunk.address}"
    samples = worker_probes.scrape(metrics_port)
    assert worker_probes.sample(samples, "sip_worker_registered") == 1  # the session runs

    # An INVITE addressed to the worker's IP is taken by the session's account.
    caller = sipp_factory("uac", remote=f"127.0.0.1:{worker.sip_port}", args=["-m", "1"])
    worker.wait_for_status("incoming_call_connected")
    assert caller.wait() == 0, caller.output()
    after_incoming = len(worker.history())

    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="service"), timeout=10)
    worker.wait_for_status("outgoing_call_connected", after=after_incoming)
    (invite,) = trunk.received("INVITE")
    assert invite.startswith(f"INVITE sip:service@{trunk.address} SIP/2.0")
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished", after=after_incoming)
    assert "registered" not in worker.types()

    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0, worker.log()
    assert trunk.received("REGISTER") == []


def test_register_account_and_start_session_send_no_register_and_calls_use_the_proxy(
    worker_factory: WorkerFactory, sipp_factory: Callable[..., Sipp]
) -> None:
    proxy = sipp_factory("uas")  # the trunk's proxy, answering the INVITE itself
    worker = worker_factory(
        "--outbound-proxy", f"sip:{proxy.address};lr", env={"SIP_WORKER_NO_REGISTER": "true"}
    )
    # Nothing listens there: a call that went to the account's host instead would fail.
    account = "alice@127.0.0.2:5999"
    worker.stub.RegisterAccount(sip_pb2.RegisterAccountRequest(account_name=account), timeout=10)
    worker.stub.StartSession(
        sip_pb2.StartSessionRequest(account_name=account, auto_answer_interval=1), timeout=10
    )
    assert worker.types() == ["ready"]

    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="service"), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
    (invite,) = proxy.received("INVITE")
    assert invite.startswith("INVITE sip:service@127.0.0.2:5999 SIP/2.0")
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished")
    worker.stub.EndSession(Empty(), timeout=10)
    assert worker.types()[-1] == "no_session"
    assert proxy.received("REGISTER") == []
