"""SIGTERM/SIGINT: stop taking calls, keep the call in progress until it ends (the drain), end
it softly once the drain is over, unregister, exit 0 within the bound."""

import io
import signal
import time
import wave
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2
from sip_contract.status import stream_key
from tests.support import worker_probes
from tests.support.redis_server import RedisServer
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerFactory, WorkerProcess, start_session

GRACE = 8.0
# Process start-up aside, how much longer than --shutdown-grace a test waits for the exit.
SLACK = 10.0


def _silence_wav(seconds: float, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()


def _stored(redis_server: RedisServer, worker: WorkerProcess) -> list[sip_pb2.SipStatus]:
    """The statuses in the worker's Redis stream: what survives the process."""
    key = stream_key(f"test-{worker.grpc_port}")
    entries = redis_server.client().xrange(key)
    return [sip_pb2.SipStatus.FromString(fields[b"status"]) for _id, fields in entries]


def _stored_types(redis_server: RedisServer, worker: WorkerProcess) -> list[str]:
    return [
        sip_pb2.SipStatus.StatusType.Name(status.status_type)
        for status in _stored(redis_server, worker)
    ]


def _in_a_call(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
    *args: str,
    uas: str = "uas",
    uas_args: tuple[str, ...] = (),
) -> tuple[WorkerProcess, Sipp]:
    """A worker (with `args`) in a connected outgoing call to a sipp `uas`."""
    worker = worker_factory("--shutdown-grace", str(GRACE), *args)
    start_session(worker, registrar, auto_answer_interval=1)
    far_end = sipp_factory(uas, args=list(uas_args))
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"svc@{far_end.address}"), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
    return worker, far_end


def _hang_up_description(redis_server: RedisServer, worker: WorkerProcess) -> str:
    hang_ups = [
        s
        for s in _stored(redis_server, worker)
        if s.status_type == sip_pb2.SipStatus.soft_hangup_initiated
    ]
    assert len(hang_ups) == 1, _stored_types(redis_server, worker)
    return hang_ups[0].description


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_idle_worker_exits_0_on_a_signal(
    worker_factory: WorkerFactory, signum: signal.Signals
) -> None:
    worker = worker_factory("--shutdown-grace", str(GRACE))
    worker_probes.wait_health(worker.channel, "SERVING")
    worker.process.send_signal(signum)
    assert worker.process.wait(timeout=GRACE + SLACK) == 0
    log = worker.log()
    assert f"shutting down ({signum.name})" in log
    assert "stopped" in log
    assert "Traceback" not in log


def test_sigterm_during_a_call_without_a_drain_sends_bye_unregisters_and_exits_0(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
    redis_server: RedisServer,
) -> None:
    worker, uas = _in_a_call(worker_factory, registrar, sipp_factory, "--drain-timeout", "0")

    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=GRACE + SLACK) == 0
    took = time.monotonic() - signalled

    assert len(uas.received("BYE")) == 1, uas.messages()
    unregister = [r for r in registrar.received("REGISTER") if "Expires: 0" in r]
    assert unregister, registrar.messages()
    assert took < GRACE + SLACK
    # The statuses of the soft end were written before the process went.
    stored = _stored_types(redis_server, worker)
    assert stored[-2:] == ["soft_hangup_initiated", "outgoing_call_finished"], stored
    assert _hang_up_description(redis_server, worker) == (
        "the worker is shutting down (SIGTERM): no drain (--drain-timeout 0)"
    )
    assert "Traceback" not in worker.log()


@pytest.mark.slow
def test_while_shutting_down_new_calls_get_503_and_health_is_not_serving(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
) -> None:
    worker, uas = _in_a_call(worker_factory, registrar, sipp_factory, "--drain-timeout", "0")
    # Queued audio keeps the soft end going for a while (bounded by the grace).
    worker.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[_silence_wav(GRACE)]), timeout=10
    )

    worker.process.send_signal(signal.SIGTERM)
    worker.wait_for_status("soft_hangup_initiated")
    assert uas.received("BYE") == [], "the BYE waits for the queued audio"
    assert worker_probes.health(worker.channel) == "NOT_SERVING"
    assert worker_probes.health(worker.channel, worker_probes.SIP_SERVICE) == "NOT_SERVING"
    caller = sipp_factory("uac", remote=f"127.0.0.1:{worker.sip_port}", args=["-m", "1"])
    caller.wait_for(r"SIP/2\.0 503 ", timeout=GRACE)

    assert worker.process.wait(timeout=GRACE + SLACK) == 0
    uas.wait_for(r"^BYE sip:", timeout=1)
    assert "Traceback" not in worker.log()


def test_sigterm_mid_call_keeps_the_call_until_it_ends_then_exits(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
    redis_server: RedisServer,
) -> None:
    """The default drain: no new calls or clients, the call and its RPCs go on until it ends."""
    worker, uas = _in_a_call(worker_factory, registrar, sipp_factory)
    worker.process.send_signal(signal.SIGTERM)
    wait_for_log(worker, "keeping the call in progress")

    assert worker_probes.health(worker.channel) == "NOT_SERVING"
    caller = sipp_factory("uac", remote=f"127.0.0.1:{worker.sip_port}", args=["-m", "1"])
    caller.wait_for(r"SIP/2\.0 503 ", timeout=GRACE)
    with pytest.raises(grpc.RpcError) as refused:
        worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id="someone"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in str(refused.value.details())
    # The call's RPCs still work, and the call is still up.
    worker.stub.Mute(Empty(), timeout=10)
    worker.stub.UnMute(Empty(), timeout=10)
    time.sleep(2)  # well past anything the old shutdown would have waited
    assert worker.alive()
    assert uas.received("BYE") == []
    assert worker.status().status_type == sip_pb2.SipStatus.outgoing_call_connected

    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    assert worker.process.wait(timeout=GRACE + SLACK) == 0
    assert len(uas.received("BYE")) == 1
    stored = _stored_types(redis_server, worker)
    assert stored[-2:] == ["hard_hangup_initiated", "outgoing_call_finished"], stored
    unregister = [r for r in registrar.received("REGISTER") if "Expires: 0" in r]
    assert unregister, registrar.messages()
    assert "Traceback" not in worker.log()


def test_a_drained_call_the_far_end_hangs_up_ends_the_worker(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
    redis_server: RedisServer,
) -> None:
    worker, uas = _in_a_call(
        worker_factory,
        registrar,
        sipp_factory,
        uas="uas_bye.xml",
        uas_args=("-d", "3000", "-m", "1"),
    )
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=GRACE + SLACK) == 0
    assert uas.received("BYE") == [], "the far end hung up, not the worker"
    stored = _stored_types(redis_server, worker)
    assert stored[-2:] == ["outgoing_call_connected", "outgoing_call_finished"], stored
    assert "the call in progress ended" in worker.log()


def test_the_drain_timeout_bounds_the_call(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
    redis_server: RedisServer,
) -> None:
    worker, uas = _in_a_call(worker_factory, registrar, sipp_factory, "--drain-timeout", "2")
    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=2 + GRACE + SLACK) == 0
    assert time.monotonic() - signalled >= 2, "the call was kept for the drain timeout"
    assert len(uas.received("BYE")) == 1
    stored = _stored_types(redis_server, worker)
    assert stored[-2:] == ["soft_hangup_initiated", "outgoing_call_finished"], stored
    assert _hang_up_description(redis_server, worker) == (
        "the worker is shutting down (SIGTERM): the call outlasted --drain-timeout 2 s"
    )


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_ends_the_drain_at_once(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
    redis_server: RedisServer,
    second: signal.Signals,
) -> None:
    worker, uas = _in_a_call(worker_factory, registrar, sipp_factory)
    worker.process.send_signal(signal.SIGTERM)
    wait_for_log(worker, "keeping the call in progress")
    assert uas.received("BYE") == []
    worker.process.send_signal(second)
    assert worker.process.wait(timeout=GRACE + SLACK) == 0
    assert len(uas.received("BYE")) == 1
    assert _hang_up_description(redis_server, worker) == (
        f"the worker is shutting down (SIGTERM): a second {second.name}"
    )


def test_the_drain_deadline_file_ends_the_drain_when_its_time_has_come(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """The operator's deadline, as the kubelet writes it into the pod (possibly late)."""
    deadline_file = tmp_path / "deadline"
    deadline_file.write_text("")  # no annotation: an empty file
    worker, uas = _in_a_call(
        worker_factory, registrar, sipp_factory, "--drain-deadline-file", str(deadline_file)
    )
    worker.process.send_signal(signal.SIGTERM)
    wait_for_log(worker, "keeping the call in progress")
    deadline_file.write_text("not a time")
    wait_for_log(worker, "is not an RFC 3339 time; ignored")
    assert worker.alive() and uas.received("BYE") == []

    deadline_file.write_text("2020-01-01T00:00:00Z")
    assert worker.process.wait(timeout=GRACE + SLACK) == 0
    assert len(uas.received("BYE")) == 1
    assert _hang_up_description(redis_server, worker) == (
        "the worker is shutting down (SIGTERM): the drain deadline 2020-01-01T00:00:00Z passed"
    )


def wait_for_log(worker: WorkerProcess, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log():
        assert worker.alive(), worker.log()
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{worker.log()}"
        time.sleep(0.05)
