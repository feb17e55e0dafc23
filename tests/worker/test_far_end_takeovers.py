"""A far end cannot take the worker's line elsewhere: a REFER from it is declined (PJSUA would
call the Refer-To target, answering its challenge with the account's credentials), and an
INVITE with Replaces is refused (PJSUA would answer it itself, past the source policy). The
call goes on as it was, with its statuses and nothing more."""

import re
import socket
from contextlib import closing

from ondewo.sip import sip_pb2
from tests.support.sip_peers import SippFactory
from tests.worker.conftest import WorkerProcess
from tests.worker.test_hostile_network import VALID_SDP, RawPeer, final_response, status_code
from tests.worker.test_in_dialog import OUTGOING_CALL
from tests.worker.test_outgoing_call import start_call


def test_a_refer_from_the_far_end_is_declined_and_calls_nobody(
    session: WorkerProcess, sipp_factory: SippFactory
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as elsewhere:
        elsewhere.bind(("127.0.0.2", 0))
        elsewhere.settimeout(3.0)
        target = f"sip:premium-line@127.0.0.2:{elsewhere.getsockname()[1]}"
        far_end = sipp_factory("uas_sends_refer.xml", fill={"REFER_TO": target}, args=["-m", "1"])

        start_call(session, f"service@{far_end.address}")
        session.wait_for_status("outgoing_call_connected")
        far_end.wait_for(r"^SIP/2\.0 603 Decline")
        try:
            called, _ = elsewhere.recvfrom(4096)
        except TimeoutError:
            called = b""
    assert called == b""
    assert far_end.wait(timeout=20) == 0, far_end.output()
    session.wait_for_status("outgoing_call_finished")
    assert session.types()[-3:] == OUTGOING_CALL


def _tag(header_line: str) -> str:
    match = re.search(r";tag=([^;\s>]+)", header_line)
    assert match is not None, header_line
    return match[1]


def test_an_invite_that_would_replace_the_call_is_refused(
    session: WorkerProcess, sipp_factory: SippFactory
) -> None:
    far_end = sipp_factory("uas")
    start_call(session, f"service@{far_end.address}")
    session.wait_for_status("outgoing_call_connected")
    before = session.history()
    invite = far_end.received("INVITE")[0]
    call_id = re.search(r"^Call-ID:\s*(\S+)", invite, re.M | re.I)
    worker_from = re.search(r"^From:.*$", invite, re.M | re.I)
    answer = far_end.wait_for(r"^To:.*tag=.*$")  # the To of sipp's 200 OK: its own tag
    assert call_id is not None and worker_from is not None
    replaces = f"Replaces: {call_id[1]};to-tag={_tag(worker_from[0])};from-tag={_tag(answer)}"

    with closing(RawPeer(session.sip_port)) as intruder:
        replacing = "replacing-" + call_id[1]
        intruder.send(
            intruder.request(
                "INVITE", call_id=replacing, extra=(replaces.encode(),), body=VALID_SDP.encode()
            )
        )
        refusal = final_response(intruder, replacing, "Replaces")

    assert status_code(refusal) == 403, refusal
    assert session.history() == before
    assert far_end.received("BYE") == []
    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    session.wait_for_status("outgoing_call_finished")
    assert session.types()[len(before) :] == ["hard_hangup_initiated", "outgoing_call_finished"]
