"""--max-message-bytes: a larger request gets RESOURCE_EXHAUSTED and the worker goes on serving."""

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2, sip_pb2_grpc
from tests.support import worker_probes
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerFactory, start_session

LIMIT = 64 * 1024


def _play(stub: sip_pb2_grpc.SipStub, size: int) -> grpc.RpcError:
    request = sip_pb2.PlayWavFilesRequest(wav_files=[b"\0" * size])
    with pytest.raises(grpc.RpcError) as refused:
        stub.PlayWavFiles(request, timeout=10)
    return refused.value


def test_a_request_over_the_limit_is_resource_exhausted_and_changes_nothing(
    worker_factory: WorkerFactory, registrar: Sipp
) -> None:
    worker = worker_factory("--max-message-bytes", str(LIMIT))
    start_session(worker, registrar, auto_answer_interval=1)
    before = worker.history()

    too_large = _play(worker.stub, LIMIT + 1)
    assert too_large.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Just under the limit the request reaches the phone, which refuses it for what it is.
    under = _play(worker.stub, LIMIT - 64)
    assert under.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "RIFF" in (under.details() or "")

    too_large_call = sip_pb2.StartCallRequest(
        callee_id="bob@127.0.0.1", headers={"X-Big": "x" * LIMIT}
    )
    with pytest.raises(grpc.RpcError) as refused:
        worker.stub.StartCall(too_large_call, timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    assert worker.alive()
    assert worker.history() == before
    assert worker_probes.health(worker.channel) == "SERVING"
    assert sip_pb2.SipStatus.StatusType.Name(worker.status().status_type) == "ready"
    worker.stub.GetSipStatusHistory(Empty(), timeout=10)


def test_the_default_limit_takes_a_large_wav_request(worker_factory: WorkerFactory) -> None:
    worker = worker_factory()
    # 8 MiB: well over gRPC's own 4 MiB default, under the worker's 16 MiB default.
    refused = _play(worker.stub, 8 * 1024 * 1024)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT  # not a WAV, but not too large
