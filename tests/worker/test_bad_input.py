"""Bad input and wrong state: each request gets its gRPC code, changes nothing, kills nothing."""

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2
from tests.support.audio import tone_wav
from tests.support.sipp import Sipp
from tests.worker.bad_inputs import BAD_ACCOUNT_NAMES, BAD_HEADERS, BAD_TARGETS, BAD_WAV_REQUESTS
from tests.worker.conftest import SIPP_PASSWORD, WorkerProcess, account_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def assert_refused(
    worker: WorkerProcess, method: Callable[..., Any], request: Any, code: grpc.StatusCode
) -> str:
    """Calls `method`; asserts the code, an unchanged history and a worker still serving."""
    before = worker.history()
    with pytest.raises(grpc.RpcError) as refused:
        method(request, timeout=15)
    assert refused.value.code() == code, (request, refused.value.details())
    assert refused.value.details(), "the error must say what was wrong"
    assert worker.history() == before, request
    assert worker.alive()
    worker.stub.GetSipStatus(Empty(), timeout=10)
    return str(refused.value.details())


def test_bad_account_names_and_passwords(worker: WorkerProcess, registrar: Sipp) -> None:
    for name in BAD_ACCOUNT_NAMES:
        assert_refused(
            worker,
            worker.stub.RegisterAccount,
            sip_pb2.RegisterAccountRequest(account_name=name, password="pw"),
            INVALID,
        )
        assert_refused(
            worker,
            worker.stub.StartSession,
            sip_pb2.StartSessionRequest(account_name=name, auto_answer_interval=1),
            INVALID,
        )
    details = assert_refused(
        worker,
        worker.stub.RegisterAccount,
        sip_pb2.RegisterAccountRequest(account_name=account_of(registrar), password="p\0w"),
        INVALID,
    )
    assert "p\0w" not in details
    assert registrar.received("REGISTER") == []


def test_wrong_state_without_a_session(worker: WorkerProcess, registrar: Sipp) -> None:
    assert_refused(
        worker,
        worker.stub.StartSession,
        sip_pb2.StartSessionRequest(account_name=account_of(registrar), auto_answer_interval=1),
        PRECONDITION,
    )
    assert_refused(
        worker,
        worker.stub.StartCall,
        sip_pb2.StartCallRequest(callee_id="bob@127.0.0.1"),
        PRECONDITION,
    )
    assert_refused(worker, worker.stub.EndSession, Empty(), PRECONDITION)
    no_call_requests: list[tuple[Callable[..., Any], Any]] = [
        (worker.stub.EndCall, sip_pb2.EndCallRequest(hard_hangup=True)),
        (worker.stub.EndCall, sip_pb2.EndCallRequest(hard_hangup=False)),
        (worker.stub.TransferCall, sip_pb2.TransferCallRequest(transfer_id="bob")),
        (worker.stub.PlayWavFiles, sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(1000, 0.2)])),
        (worker.stub.Mute, Empty()),
        (worker.stub.UnMute, Empty()),
    ]
    for method, request in no_call_requests:
        assert_refused(worker, method, request, PRECONDITION)
    assert worker.status().status_type == sip_pb2.SipStatus.no_session


def test_bad_session_and_call_requests(session: WorkerProcess, registrar: Sipp) -> None:
    worker = session
    assert_refused(
        worker,
        worker.stub.StartSession,
        sip_pb2.StartSessionRequest(account_name=account_of(registrar), auto_answer_interval=-1),
        INVALID,
    )
    assert_refused(
        worker,
        worker.stub.StartSession,
        sip_pb2.StartSessionRequest(account_name="carol@127.0.0.1:5999", auto_answer_interval=1),
        PRECONDITION,
    )
    for target in BAD_TARGETS:
        assert_refused(
            worker, worker.stub.StartCall, sip_pb2.StartCallRequest(callee_id=target), INVALID
        )
    for headers in BAD_HEADERS:
        assert_refused(
            worker,
            worker.stub.StartCall,
            sip_pb2.StartCallRequest(callee_id="bob@127.0.0.1", headers=headers),
            INVALID,
        )
    no_call_requests: list[tuple[Callable[..., Any], Any]] = [
        (worker.stub.EndCall, sip_pb2.EndCallRequest()),
        (worker.stub.TransferCall, sip_pb2.TransferCallRequest(transfer_id="bob")),
        (worker.stub.Mute, Empty()),
        (worker.stub.UnMute, Empty()),
    ]
    for method, request in no_call_requests:
        assert_refused(worker, method, request, PRECONDITION)
    assert worker.types() == ["registered", "ready"]


@pytest.fixture()
def in_call(
    session: WorkerProcess, sipp_factory: Callable[..., Sipp]
) -> Iterator[tuple[WorkerProcess, Sipp]]:
    uas = sipp_factory("uas")
    session.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"svc@{uas.address}"), timeout=10)
    session.wait_for_status("outgoing_call_connected")
    yield session, uas


def test_bad_requests_during_a_call(in_call: tuple[WorkerProcess, Sipp]) -> None:
    worker, uas = in_call
    for target in BAD_TARGETS:
        assert_refused(
            worker,
            worker.stub.TransferCall,
            sip_pb2.TransferCallRequest(transfer_id=target),
            INVALID,
        )
    for headers in BAD_HEADERS:
        assert_refused(
            worker,
            worker.stub.TransferCall,
            sip_pb2.TransferCallRequest(transfer_id="bob@127.0.0.1", headers=headers),
            INVALID,
        )
    for wav_files in BAD_WAV_REQUESTS:
        assert_refused(
            worker,
            worker.stub.PlayWavFiles,
            sip_pb2.PlayWavFilesRequest(wav_files=wav_files),
            INVALID,
        )
    assert_refused(
        worker,
        worker.stub.StartCall,
        sip_pb2.StartCallRequest(callee_id=f"svc@{uas.address}"),
        PRECONDITION,
    )
    assert uas.received("REFER") == []
    assert len(uas.received("INVITE")) == 1
    # The call is still up and usable.
    worker.stub.PlayWavFiles(sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(1000, 0.2)]))
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished")


def test_request_over_the_size_limit_is_resource_exhausted(
    worker_factory: Callable[..., WorkerProcess], registrar: Sipp
) -> None:
    worker = worker_factory("--max-message-bytes", "65536")
    assert_refused(
        worker,
        worker.stub.PlayWavFiles,
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(1000, 3.0)]),  # 96 kB
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert_refused(
        worker,
        worker.stub.RegisterAccount,
        sip_pb2.RegisterAccountRequest(account_name="a" * 70000 + "@127.0.0.1", password="pw"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    worker.stub.RegisterAccount(
        sip_pb2.RegisterAccountRequest(account_name=account_of(registrar), password=SIPP_PASSWORD),
        timeout=20,
    )
    assert worker.types() == ["registered"]


def test_queued_audio_is_bounded(in_call: tuple[WorkerProcess, Sipp]) -> None:
    worker, _ = in_call
    # 16-bit mono at 16 kHz, just under 15 MiB: four fit in the 64 MiB queue, a fifth does not.
    long_silence = tone_wav(1000, 491.0, amplitude=0.0)
    request = sip_pb2.PlayWavFilesRequest(wav_files=[long_silence])
    for _ in range(4):
        worker.stub.PlayWavFiles(request, timeout=30)

    details = assert_refused(
        worker, worker.stub.PlayWavFiles, request, grpc.StatusCode.RESOURCE_EXHAUSTED
    )

    assert "queued" in details
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished")
