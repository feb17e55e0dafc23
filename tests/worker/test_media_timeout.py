"""The media timeout through a real worker process: set by its flag or its env var, a far end
that goes silent without a BYE is hung up and the worker takes the next call."""

from ondewo.sip import sip_pb2
from tests.support.sip_peers import SippFactory
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerFactory, start_session
from tests.worker.test_outgoing_call import start_call

DESCRIPTION = "no RTP from the far end for 1 s (media timeout)"


def test_the_flag_hangs_up_a_silent_callee_and_the_next_call_works(
    worker_factory: WorkerFactory, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    worker = worker_factory("--media-timeout", "1")
    start_session(worker, registrar, auto_answer_interval=1)
    silent = sipp_factory("uas_silent.xml", args=["-m", "1"])

    start_call(worker, f"service@{silent.address}")
    finished = worker.wait_for_status("outgoing_call_finished")
    assert finished.description == DESCRIPTION
    silent.wait_for(r"^BYE received", source="logs")
    assert silent.wait(timeout=10) == 0, silent.output()

    answering = sipp_factory("uas", args=["-m", "1"])
    after = len(worker.history())
    start_call(worker, f"service@{answering.address}")
    worker.wait_for_status("outgoing_call_connected", after=after)
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    assert worker.wait_for_status("outgoing_call_finished", after=after).description != (
        DESCRIPTION
    )


def test_the_env_var_hangs_up_a_silent_caller(
    worker_factory: WorkerFactory, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    worker = worker_factory(env={"SIP_WORKER_MEDIA_TIMEOUT": "1"})
    start_session(worker, registrar, auto_answer_interval=1)
    silent = sipp_factory("uac_silent.xml", remote=f"127.0.0.1:{worker.sip_port}", args=["-m", "1"])

    finished = worker.wait_for_status("incoming_call_finished")
    assert finished.description == DESCRIPTION
    assert worker.types()[-3:] == [
        "incoming_call_initiated",
        "incoming_call_connected",
        "incoming_call_finished",
    ]
    silent.wait_for(r"^BYE received", source="logs")
    assert silent.wait(timeout=10) == 0, silent.output()
