"""SIP over TCP, and the public address that Contact and SDP carry for hosts behind NAT."""

from collections.abc import Callable

from ondewo.sip import sip_pb2
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerProcess, start_session, start_tcp_session


def test_register_and_call_over_tcp(
    worker_factory: Callable[..., WorkerProcess], sipp_factory: Callable[..., Sipp]
) -> None:
    worker, registrar = start_tcp_session(worker_factory, sipp_factory)
    uas = sipp_factory("uas", transport="tcp")

    worker.stub.StartCall(
        sip_pb2.StartCallRequest(callee_id=f"sip:svc@{uas.address};transport=tcp"), timeout=10
    )
    worker.wait_for_status("outgoing_call_connected")
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished")

    assert "SIP/2.0/TCP" in registrar.received("REGISTER")[0]
    assert "SIP/2.0/TCP" in uas.received("INVITE")[0]
    uas.wait_for(r"^BYE sip:")


def test_public_address_goes_into_contact_and_sdp(
    worker_factory: Callable[..., WorkerProcess],
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
) -> None:
    worker = worker_factory("--public-address", "192.0.2.10")
    uas = sipp_factory("uas")
    start_session(worker, registrar, auto_answer_interval=1)

    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"svc@{uas.address}"), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished")

    invite = uas.received("INVITE")[0]
    assert "Contact: <sip:alice@192.0.2.10:" in invite
    assert "c=IN IP4 192.0.2.10" in invite
    assert "Contact: <sip:alice@192.0.2.10:" in registrar.received("REGISTER")[-1]
