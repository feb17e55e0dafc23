"""Prometheus metrics on --metrics-port, counted from real calls through a real sip-worker."""

import time
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2
from tests.support import worker_probes
from tests.support.sipp import Sipp, free_tcp_port
from tests.worker.conftest import WorkerFactory, start_session

sample = worker_probes.sample


def test_metrics_count_real_calls_registration_and_rpcs(
    worker_factory: WorkerFactory, registrar: Sipp, sipp_factory: Callable[..., Sipp]
) -> None:
    metrics_port = free_tcp_port()
    worker = worker_factory("--metrics-port", str(metrics_port))

    idle = worker_probes.scrape(metrics_port)
    assert sample(idle, "sip_worker_registered") == 0
    assert sample(idle, "sip_worker_call_active") == 0
    assert sample(idle, "sip_worker_history_buffer_depth") == 0
    assert sample(idle, "sip_worker_history_write_seconds_count") == 0
    for direction in ("incoming", "outgoing"):
        for outcome in ("connected", "failed"):
            labels = {"direction": direction, "outcome": outcome}
            assert sample(idle, "sip_worker_calls_total", **labels) == 0
    assert "process_resident_memory_bytes" in {name for name, _ in idle}

    start_session(worker, registrar, auto_answer_interval=1)
    assert sample(worker_probes.scrape(metrics_port), "sip_worker_registered") == 1

    # One connected call, ended by us.
    uas = sipp_factory("uas")
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"svc@{uas.address}"), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
    in_call = worker_probes.scrape(metrics_port)
    assert sample(in_call, "sip_worker_call_active") == 1
    finished_at = len(worker.history())
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    worker.wait_for_status("outgoing_call_finished", after=finished_at)

    # One refused call.
    busy = sipp_factory(
        "uas_reject.xml", fill={"CODE": "486", "REASON": "Busy Here"}, args=["-m", "1"]
    )
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"svc@{busy.address}"), timeout=10)
    worker.wait_for_status("outgoing_call_failed")

    # One refused RPC.
    with pytest.raises(grpc.RpcError):
        worker.stub.EndCall(sip_pb2.EndCallRequest(), timeout=10)
    worker.stub.GetSipStatus(Empty(), timeout=10)

    after = worker_probes.scrape(metrics_port)
    outgoing = {"direction": "outgoing"}
    assert sample(after, "sip_worker_calls_total", **outgoing, outcome="connected") == 1
    assert sample(after, "sip_worker_calls_total", **outgoing, outcome="failed") == 1
    assert sample(after, "sip_worker_calls_total", direction="incoming", outcome="connected") == 0
    assert sample(after, "sip_worker_call_duration_seconds_count", **outgoing) == 1
    assert sample(after, "sip_worker_call_active") == 0
    assert sample(after, "sip_worker_registered") == 1

    def rpcs(method: str, code: str) -> float | None:
        return sample(
            after,
            "sip_worker_rpc_duration_seconds_count",
            service="ondewo.sip.Sip",
            method=method,
            code=code,
        )

    assert rpcs("StartCall", "OK") == 2
    assert rpcs("RegisterAccount", "OK") == 1
    assert rpcs("StartSession", "OK") == 1
    assert rpcs("EndCall", "OK") == 1
    assert rpcs("EndCall", "FAILED_PRECONDITION") == 1
    assert (rpcs("GetSipStatus", "OK") or 0) >= 1

    # Each status's write lag is observed once Redis has it: one sample per history entry.
    statuses = len(worker.history())
    deadline = time.monotonic() + 30
    while True:
        written = worker_probes.scrape(metrics_port)
        if sample(written, "sip_worker_history_write_seconds_count") == statuses:
            break
        assert time.monotonic() < deadline, "the history's write lags were not all observed"
        time.sleep(0.05)
    assert (sample(written, "sip_worker_history_write_seconds_sum") or 0) > 0

    worker.stub.EndSession(Empty(), timeout=20)
    assert sample(worker_probes.scrape(metrics_port), "sip_worker_registered") == 0


def test_metrics_are_off_without_a_port(worker_factory: WorkerFactory) -> None:
    worker = worker_factory()
    assert "metrics off" in worker.log()
