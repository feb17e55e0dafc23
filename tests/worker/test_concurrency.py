"""Many clients at once during a call: no crash, no deadlock, a history that makes sense."""

import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2
from tests.support.audio import tone_wav
from tests.support.sipp import Sipp
from tests.worker.conftest import (
    SIPP_PASSWORD,
    SIPP_USER,
    WorkerProcess,
    account_of,
    start_session,
)

ALLOWED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
}


def check_sequence(types: list[str]) -> None:
    """Replays the history through the phone's states; fails on an impossible transition."""
    registered = ready = False
    call: str | None = None  # None, "initiated", "connected"
    for index, status_type in enumerate(types):
        where = f"{status_type} at {index} in {types}"
        if status_type == "registered":
            assert call is None, where
            registered = True
        elif status_type == "ready":
            assert registered and call is None, where
            ready = True
        elif status_type == "no_session":
            assert call is None, where
            ready = registered = False
        elif status_type == "outgoing_call_initiated":
            assert ready and call is None, where
            call = "initiated"
        elif status_type == "outgoing_call_connected":
            assert call == "initiated", where
            call = "connected"
        elif status_type in ("soft_hangup_initiated", "hard_hangup_initiated"):
            assert call is not None, where
        elif status_type == "transfer_call_initiated":
            assert call == "connected", where
        elif status_type == "outgoing_call_failed":
            assert call == "initiated", where
            call = None
        elif status_type == "outgoing_call_finished":
            assert call == "connected", where
            call = None
        else:
            raise AssertionError(f"unexpected {where}")


def test_200_concurrent_rpcs_of_every_kind_during_a_call(
    worker: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> None:
    # Each RegisterAccount opens a new registration dialog: let the registrar take several.
    registrar = sipp_factory(
        "registrar_auth.xml",
        variables={"user": SIPP_USER, "pass": SIPP_PASSWORD},
        args=["-m", "50"],
    )
    start_session(worker, registrar, auto_answer_interval=1)
    uas = sipp_factory("uas")
    callee = f"svc@{uas.address}"
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=callee), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
    stub = worker.stub
    tone = tone_wav(1000, 0.2)
    kinds: list[tuple[str, Callable[..., Any], Any]] = [
        ("GetSipStatus", stub.GetSipStatus, Empty()),
        ("GetSipStatusHistory", stub.GetSipStatusHistory, Empty()),
        ("Mute", stub.Mute, Empty()),
        ("UnMute", stub.UnMute, Empty()),
        ("PlayWavFiles", stub.PlayWavFiles, sip_pb2.PlayWavFilesRequest(wav_files=[tone])),
        ("PlayWavFiles bad", stub.PlayWavFiles, sip_pb2.PlayWavFilesRequest(wav_files=[b"x"])),
        ("StartCall", stub.StartCall, sip_pb2.StartCallRequest(callee_id=callee)),
        ("StartCall bad", stub.StartCall, sip_pb2.StartCallRequest(callee_id="a b")),
        (
            "TransferCall bad",
            stub.TransferCall,
            sip_pb2.TransferCallRequest(transfer_id="x", headers={"X-A": "\r\n"}),
        ),
        (
            "StartSession",
            stub.StartSession,
            sip_pb2.StartSessionRequest(account_name=account_of(registrar), auto_answer_interval=1),
        ),
        (
            "RegisterAccount",
            stub.RegisterAccount,
            sip_pb2.RegisterAccountRequest(
                account_name=account_of(registrar), password=SIPP_PASSWORD
            ),
        ),
        ("EndCall soft", stub.EndCall, sip_pb2.EndCallRequest(hard_hangup=False)),
        ("EndCall hard", stub.EndCall, sip_pb2.EndCallRequest(hard_hangup=True)),
    ]
    # Most requests act on the call; the hangups come a few times, spread through the run.
    plan = [kinds[i % 11] for i in range(194)] + [kinds[11]] * 3 + [kinds[12]] * 3
    random.Random(7).shuffle(plan)

    def run(item: tuple[str, Callable[..., Any], Any]) -> tuple[str, grpc.StatusCode]:
        name, method, request = item
        try:
            method(request, timeout=60)
        except grpc.RpcError as error:
            return name, error.code()
        return name, grpc.StatusCode.OK

    with ThreadPoolExecutor(max_workers=16) as clients:
        outcomes = list(clients.map(run, plan))

    assert len(outcomes) == 200
    codes = Counter(code for _, code in outcomes)
    assert set(codes) <= ALLOWED_CODES, codes
    for name, code in outcomes:
        if name.endswith(" bad"):
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
        if name.startswith("Get"):
            assert code == grpc.StatusCode.OK
    assert worker.alive()

    # Settle: end whatever call is left, then the history must be a possible life story.
    try:
        stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=30)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    types = worker.types()
    deadline_index = len(types)
    if any(t.startswith("outgoing_call_initiated") for t in types):
        last_start = max(i for i, t in enumerate(types) if t == "outgoing_call_initiated")
        worker.wait_for_status("outgoing_call_finished", after=last_start, timeout=30)
    types = worker.types()
    assert len(types) >= deadline_index
    check_sequence(types)
    assert worker.status() == worker.history()[-1]
    # Still a working phone: a new call connects.
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=callee), timeout=10)
    worker.wait_for_status("outgoing_call_connected", after=len(types))
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished", after=len(types))
    check_sequence(worker.types())
