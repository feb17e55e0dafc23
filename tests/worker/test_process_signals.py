"""SIGTERM/SIGINT: stop taking calls, end the call softly, unregister, exit 0 within the bound."""

import io
import signal
import time
import wave
from collections.abc import Callable

import pytest

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


def _stored_types(redis_server: RedisServer, worker: WorkerProcess) -> list[str]:
    """The status types in the worker's Redis stream: what survives the process."""
    key = stream_key(f"test-{worker.grpc_port}")
    entries = redis_server.client().xrange(key)
    return [
        sip_pb2.SipStatus.StatusType.Name(
            sip_pb2.SipStatus.FromString(fields[b"status"]).status_type
        )
        for _id, fields in entries
    ]


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


def test_sigterm_during_a_call_sends_bye_unregisters_and_exits_0(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
    redis_server: RedisServer,
) -> None:
    worker = worker_factory("--shutdown-grace", str(GRACE))
    start_session(worker, registrar, auto_answer_interval=1)
    uas = sipp_factory("uas")
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"svc@{uas.address}"), timeout=10)
    worker.wait_for_status("outgoing_call_connected")

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
    assert "Traceback" not in worker.log()


@pytest.mark.slow
def test_while_shutting_down_new_calls_get_503_and_health_is_not_serving(
    worker_factory: WorkerFactory,
    registrar: Sipp,
    sipp_factory: Callable[..., Sipp],
) -> None:
    worker = worker_factory("--shutdown-grace", str(GRACE))
    start_session(worker, registrar, auto_answer_interval=1)
    uas = sipp_factory("uas")
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"svc@{uas.address}"), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
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
