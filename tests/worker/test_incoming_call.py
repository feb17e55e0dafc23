"""Incoming INVITEs from sipp UACs: caller and X- headers, auto-answer delay, decline, busy."""

from collections.abc import Callable

from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerProcess, start_session

SippFactory = Callable[..., Sipp]


def call_worker(
    sipp_factory: SippFactory, worker: WorkerProcess, scenario: str, hold_ms: int = 500
) -> Sipp:
    return sipp_factory(
        scenario,
        remote=f"127.0.0.1:{worker.sip_port}",
        args=["-m", "1", "-d", str(hold_ms), "-s", "worker"],
    )


def test_incoming_call_is_reported_and_answered_after_the_interval(
    worker: WorkerProcess, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    start_session(worker, registrar, auto_answer_interval=2)
    uac = call_worker(sipp_factory, worker, "uac_xhdr.xml")

    initiated = worker.wait_for_status("incoming_call_initiated")
    assert initiated.callee_id == f"sip:sipp@127.0.0.1:{uac.port}"
    assert dict(initiated.headers) == {"X-Custom-Caller": "sipp-uac-1", "X-Session-Id": "sess-42"}
    connected = worker.wait_for_status("incoming_call_connected")
    finished = worker.wait_for_status("incoming_call_finished")
    assert uac.wait(timeout=30) == 0

    waited = (connected.timestamp.ToNanoseconds() - initiated.timestamp.ToNanoseconds()) / 1e9
    assert 1.9 <= waited < 10.0
    timeline = uac.timeline()
    invite_sent = next(
        t for t, way, line in timeline if way == "sent" and line.startswith("INVITE")
    )
    ringing = next(t for t, way, line in timeline if way == "received" and " 180 " in line)
    answered = next(t for t, way, line in timeline if way == "received" and " 200 " in line)
    assert ringing < answered
    assert (answered - invite_sent).total_seconds() >= 1.9
    assert finished.callee_id == initiated.callee_id
    assert worker.types()[-3:] == [
        "incoming_call_initiated",
        "incoming_call_connected",
        "incoming_call_finished",
    ]


def test_auto_answer_interval_zero_declines_with_486(
    worker: WorkerProcess, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    start_session(worker, registrar, auto_answer_interval=0)
    uac = call_worker(sipp_factory, worker, "uac_busy.xml")

    assert uac.wait(timeout=30) == 0, uac.output()  # the scenario requires a 486
    failed = worker.wait_for_status("incoming_call_failed")
    assert failed.description == "486 Busy Here"
    assert worker.types()[-2:] == ["incoming_call_initiated", "incoming_call_failed"]
    assert dict(worker.history()[-2].headers) == {"X-Attempt": "busy-check"}


def test_second_invite_during_a_call_gets_486(
    worker: WorkerProcess, registrar: Sipp, sipp_factory: SippFactory
) -> None:
    start_session(worker, registrar, auto_answer_interval=1)
    first = call_worker(sipp_factory, worker, "uac_xhdr.xml", hold_ms=2500)
    worker.wait_for_status("incoming_call_connected")
    during_call = worker.history()

    second = call_worker(sipp_factory, worker, "uac_busy.xml")

    assert second.wait(timeout=30) == 0, second.output()
    assert worker.history() == during_call, "the refused INVITE changed the status"
    worker.wait_for_status("incoming_call_finished", timeout=30)
    assert first.wait(timeout=30) == 0


def test_incoming_call_without_a_session_is_refused(
    worker: WorkerProcess, sipp_factory: SippFactory
) -> None:
    uac = call_worker(sipp_factory, worker, "uac_xhdr.xml")

    assert uac.wait(timeout=30) != 0  # no 200 OK
    final = [line for _, way, line in uac.timeline() if way == "received"]
    assert any(" 480 " in line for line in final), final
    assert worker.history() == []
