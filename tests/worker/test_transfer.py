"""TransferCall: a blind transfer by REFER to a sipp UAS that accepts it (202 + NOTIFYs)."""

from collections.abc import Callable

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerProcess

TRANSFER_HEADERS = {"X-Transfer-Reason": "blind", "X-Session-Id": "sess-42"}


def test_blind_transfer_sends_refer_and_ends_our_leg(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    uas = sipp_factory("uas_refer.xml", args=["-m", "1"])
    callee = f"service@{uas.address}"
    session.stub.StartCall(sip_pb2.StartCallRequest(callee_id=callee), timeout=10)
    session.wait_for_status("outgoing_call_connected")

    session.stub.TransferCall(
        sip_pb2.TransferCallRequest(transfer_id="queue7@127.0.0.1:5099", headers=TRANSFER_HEADERS),
        timeout=10,
    )
    finished = session.wait_for_status("outgoing_call_finished", timeout=20)

    assert session.types()[-4:] == [
        "outgoing_call_initiated",
        "outgoing_call_connected",
        "transfer_call_initiated",
        "outgoing_call_finished",
    ]
    transfer = session.history()[-2]
    assert transfer.transfer_call_id == "queue7@127.0.0.1:5099"
    assert transfer.callee_id == callee
    assert dict(transfer.headers) == TRANSFER_HEADERS
    assert finished.transfer_call_id == "queue7@127.0.0.1:5099"
    refer = uas.received("REFER")[0].replace("\r\n", "\n")
    assert "\nRefer-To: <sip:queue7@127.0.0.1:5099>\n" in refer or (
        "\nRefer-To: sip:queue7@127.0.0.1:5099\n" in refer
    )
    for name, value in TRANSFER_HEADERS.items():
        assert f"\n{name}: {value}\n" in refer
    # sipp answered 202 and both NOTIFYs, then got our BYE: the scenario passes.
    assert uas.wait(timeout=20) == 0, uas.output()
    lines = [line for _, _, line in uas.timeline()]
    after_refer = lines[next(i for i, line in enumerate(lines) if line.startswith("REFER")) :]
    assert any(" 202 " in line for line in after_refer)
    assert sum(line.startswith("NOTIFY") for line in after_refer) == 2
    assert after_refer[-2].startswith("BYE")


def test_transfer_without_a_call_is_refused(session: WorkerProcess) -> None:
    before = session.history()
    with pytest.raises(grpc.RpcError) as refused:
        session.stub.TransferCall(sip_pb2.TransferCallRequest(transfer_id="queue7"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert session.history() == before
    session.stub.GetSipStatus(Empty(), timeout=10)


def test_refused_transfer_keeps_the_call(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    uas = sipp_factory("uas_refer_reject.xml", args=["-m", "1"])
    session.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"svc@{uas.address}"), timeout=10)
    session.wait_for_status("outgoing_call_connected")
    before = len(session.history())

    session.stub.TransferCall(sip_pb2.TransferCallRequest(transfer_id="queue7"), timeout=10)
    again = session.wait_for_status("outgoing_call_connected", after=before)

    assert session.types()[before:] == ["transfer_call_initiated", "outgoing_call_connected"]
    assert again.description == "transfer failed: 403 Forbidden"
    assert again.transfer_call_id == "queue7"
    refer = uas.received("REFER")[0]
    # A bare transfer target is placed in the account's domain.
    assert f"sip:queue7@{session.status().account_name.split('@')[1]}" in refer
    # The call goes on: it can be transferred again or ended.
    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    session.wait_for_status("outgoing_call_finished", after=before)
    assert uas.wait(timeout=20) == 0
