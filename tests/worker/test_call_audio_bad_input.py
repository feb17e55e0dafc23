"""SipStreamCallAudio's bad inputs: each a clear gRPC error, nothing changed, still serving."""

import time
from collections.abc import Callable

import grpc
import pytest

from ondewo.sip import sip_pb2
from tests.support.audio import tone_wav
from tests.support.audio_stream import AudioStream, Request, config, talk_config
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerProcess

SippFactory = Callable[..., Sipp]
Code = grpc.StatusCode
LISTEN, TALK = sip_pb2.SIP_CALL_AUDIO_MODE_LISTEN, sip_pb2.SIP_CALL_AUDIO_MODE_TALK


def refused(worker: WorkerProcess, *requests: Request) -> grpc.RpcError:
    """Opens a stream with `requests`, and returns the error it ended with."""
    stream = AudioStream(worker.stub, None, timeout=20)
    stream.send(*requests)
    stream.wait(timeout=15)
    assert stream.error is not None, [r.WhichOneof("response") for r in stream.responses]
    return stream.error


def assert_unchanged(worker: WorkerProcess, before: list[sip_pb2.SipStatus]) -> None:
    assert worker.alive()
    assert worker.history() == before
    # A new stream still works and hears the call.
    stream = AudioStream(worker.stub, config())
    stream.wait_for("audio", count=5)
    stream.close()
    stream.ended()


def frame(size: int) -> Request:
    return Request(audio=sip_pb2.SipCallAudioFrame(pcm_s16le=b"\0" * size, sequence=1))


def test_no_call_is_failed_precondition(session: WorkerProcess) -> None:
    error = refused(session, config())
    assert error.code() == Code.FAILED_PRECONDITION
    assert "no call" in (error.details() or "")


@pytest.mark.parametrize(
    ("case", "requests", "says"),
    [
        ("audio first", [frame(640)], "first request must be a config"),
        ("mark first", [Request(mark="m")], "first request must be a config"),
        ("rate 44100", [config(sample_rate_hz=44100)], "sample_rate_hz"),
        ("rate 12000", [config(sample_rate_hz=12000)], "sample_rate_hz"),
        ("rate -8000", [config(sample_rate_hz=-8000)], "sample_rate_hz"),
        (
            "frame 10 ms",
            [Request(config=sip_pb2.SipCallAudioConfig(frame_ms=10))],
            "frame_ms",
        ),
        (
            "frame 40 ms",
            [Request(config=sip_pb2.SipCallAudioConfig(frame_ms=40))],
            "frame_ms",
        ),
        ("talk without take_over", [config(TALK)], "take_over"),
        ("unknown mode", [config(7)], "mode"),
        ("negative max duration", [config(max_duration_s=-1)], "max_duration_s"),
        ("control characters in the id", [config(stream_id="a\nb")], "stream_id"),
        ("a second config", [config(), config()], "once"),
        ("a frame on a LISTEN stream", [config(), frame(640)], "TALK"),
        ("a short frame", [talk_config(16000), frame(639)], "640"),
        ("an 8 kHz frame at 16 kHz", [talk_config(16000), frame(320)], "640"),
        ("a 16 kHz frame at 8 kHz", [talk_config(8000), frame(640)], "320"),
        ("an empty frame", [talk_config(8000), frame(0)], "320"),
        ("an empty request", [config(), Request()], "empty"),
    ],
)
def test_bad_requests_are_invalid_argument(
    echo_call: WorkerProcess, case: str, requests: list[Request], says: str
) -> None:
    before = echo_call.history()
    error = refused(echo_call, *requests)
    assert error.code() == Code.INVALID_ARGUMENT, case
    assert says in (error.details() or ""), (case, error.details())
    assert_unchanged(echo_call, before)


def test_no_config_within_two_seconds_is_invalid_argument(echo_call: WorkerProcess) -> None:
    before = echo_call.history()
    started = time.monotonic()
    error = refused(echo_call)
    assert error.code() == Code.INVALID_ARGUMENT
    assert "within 2 s" in (error.details() or "")
    assert 1.9 <= time.monotonic() - started < 5.0
    assert_unchanged(echo_call, before)


def test_zero_means_the_defaults(echo_call: WorkerProcess) -> None:
    stream = AudioStream(echo_call.stub, Request(config=sip_pb2.SipCallAudioConfig()))
    (started,) = stream.wait_for("started")
    assert started.started.sample_rate_hz == 16000
    assert started.started.frame_ms == 20
    assert started.started.mode == LISTEN
    (first_frame,) = stream.wait_for("audio")[:1]
    assert len(first_frame.audio.pcm_s16le) == 640
    stream.close()
    stream.ended()


def test_a_second_talk_and_the_stream_cap_are_resource_exhausted(
    echo_call: WorkerProcess,
) -> None:
    talk = AudioStream(echo_call.stub, talk_config())
    talk.wait_for("started")
    before = echo_call.history()
    error = refused(echo_call, talk_config())
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert "TALK" in (error.details() or "")

    listeners = [AudioStream(echo_call.stub, config()) for _ in range(15)]
    for listener in listeners:
        listener.wait_for("started")
    error = refused(echo_call, config())
    assert error.code() == Code.RESOURCE_EXHAUSTED
    assert "16 audio streams" in (error.details() or "")
    # The streams that were open are untouched.
    for stream in (talk, *listeners):
        count = len(stream.of("audio"))
        stream.wait_for("audio", count=count + 5)
        stream.close()
        stream.ended()
    assert echo_call.history() == before


def test_a_stream_during_a_transfer_is_failed_precondition(
    session: WorkerProcess, sipp_factory: SippFactory
) -> None:
    # This UAS accepts the REFER but sends its final NOTIFY only after a pause.
    uas = sipp_factory("uas_refer.xml", args=["-m", "1"])
    session.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"service@{uas.address}"), timeout=10)
    session.wait_for_status("outgoing_call_connected")
    session.stub.TransferCall(
        sip_pb2.TransferCallRequest(transfer_id="queue@127.0.0.1"), timeout=10
    )
    error = refused(session, config())
    assert error.code() == Code.FAILED_PRECONDITION
    assert "transferred" in (error.details() or "")


def test_a_stream_during_a_soft_hangup_is_failed_precondition(echo_call: WorkerProcess) -> None:
    echo_call.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(440.0, 3.0)]), timeout=10
    )
    echo_call.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=False), timeout=10)
    error = refused(echo_call, config())
    assert error.code() == Code.FAILED_PRECONDITION
    assert "hung up" in (error.details() or "")
    echo_call.wait_for_status("outgoing_call_finished", timeout=10)


@pytest.mark.parametrize(
    ("digits", "duration_ms", "method", "says"),
    [
        ("", 0, 0, "empty"),
        ("1" * 65, 0, 0, "64"),
        ("12x", 0, 0, "0-9"),
        ("1 2", 0, 0, "0-9"),
        ("a", 0, 0, "0-9"),
        ("1", 10, 0, "duration_ms"),
        ("1", 6000, 0, "duration_ms"),
        ("1", 0, 7, "method"),
    ],
)
def test_send_dtmf_bad_input_is_invalid_argument(
    echo_call: WorkerProcess, digits: str, duration_ms: int, method: int, says: str
) -> None:
    before = echo_call.history()
    request = sip_pb2.SendDtmfRequest(digits=digits, duration_ms=duration_ms, method=method)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as raised:
        echo_call.stub.SendDtmf(request, timeout=10)
    assert raised.value.code() == Code.INVALID_ARGUMENT
    assert says in (raised.value.details() or "")
    assert_unchanged(echo_call, before)


def test_send_dtmf_without_a_call_is_failed_precondition(session: WorkerProcess) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        session.stub.SendDtmf(sip_pb2.SendDtmfRequest(digits="1"), timeout=10)
    assert raised.value.code() == Code.FAILED_PRECONDITION
