"""SipStreamCallAudio against real calls: sipp echoing RTP, LISTEN and TALK, end reasons."""

import time
from collections.abc import Callable

import grpc
import pytest

from ondewo.sip import sip_pb2, sip_pb2_grpc
from tests.support.audio import dominant_frequency
from tests.support.audio_stream import AudioStream, Request, config, talk_config, tone_frames
from tests.support.sipp import Sipp
from tests.worker.conftest import WorkerProcess

SippFactory = Callable[..., Sipp]
Reason = sip_pb2.SipCallAudioEndReason


def open_stream(worker: WorkerProcess, first: Request, **kwargs: object) -> AudioStream:
    stream = AudioStream(worker.stub, first, **kwargs)  # type: ignore[arg-type]
    stream.wait_for("started")
    return stream


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_tone_sent_on_talk_comes_back_on_listen_paced_by_the_call(
    echo_call: WorkerProcess, rate: int
) -> None:
    listen = open_stream(echo_call, config(sample_rate_hz=rate, stream_id="ears"))
    talk = open_stream(echo_call, talk_config(rate, stream_id="mouth"))
    (started,) = listen.of("started")
    assert started.started == sip_pb2.SipCallAudioStarted(
        stream_id="ears", sample_rate_hz=rate, frame_ms=20, mode=sip_pb2.SIP_CALL_AUDIO_MODE_LISTEN
    )
    frames = tone_frames(1000.0, 2.0, rate)
    talk.talk(frames)  # a burst: buffered, played at the call's pace
    talk.send(Request(mark="said"))
    sent_at = time.monotonic()
    talk.wait_for("mark", timeout=10)
    played_for = time.monotonic() - sent_at
    time.sleep(0.3)  # the echo of the last frames
    listen.close()
    talk.close()

    assert listen.ended().reason == Reason.SIP_CALL_AUDIO_END_REASON_CLIENT_CLOSED
    assert talk.ended().reason == Reason.SIP_CALL_AUDIO_END_REASON_CLIENT_CLOSED
    assert 1.8 <= played_for <= 3.0  # 2 s of audio played in real time, not at once
    for stream in (listen, talk):
        frames_in = stream.of("audio")
        assert {len(r.audio.pcm_s16le) for r in frames_in} == {rate // 50 * 2}
        sequences = [r.audio.sequence for r in frames_in]
        assert sequences == list(range(1, len(sequences) + 1))
        assert abs(dominant_frequency(stream.audio(), rate) - 1000.0) < 25
        stats = stream.last_stats()
        assert stats.frames_sent == len(frames_in)
        assert stats.frames_dropped == 0
    talk_stats = talk.last_stats()
    assert talk_stats.frames_received == len(frames)
    assert talk_stats.frames_discarded == 0
    assert talk_stats.underruns == 0  # the mark ended the utterance
    assert listen.last_stats().frames_received == 0


def test_listen_hears_the_caller_and_what_we_send_talk_hears_the_caller_only(
    echo_call: WorkerProcess,
) -> None:
    listen = open_stream(echo_call, config())
    talk = open_stream(echo_call, talk_config())
    # 1 kHz from us; the echo comes back 1 kHz too. With the agent muted, the caller gets
    # silence, so both streams hear nothing loud.
    talk.send(Request(agent_muted=True))
    talk.talk(tone_frames(1000.0, 1.0, 16000))
    talk.send(Request(mark="muted"))
    talk.wait_for("mark")
    time.sleep(0.2)
    quiet_listen, quiet_talk = len(listen.of("audio")), len(talk.of("audio"))
    talk.send(Request(agent_muted=False))
    talk.talk(tone_frames(1000.0, 1.0, 16000))
    talk.send(Request(mark="loud"))
    talk.wait_for("mark", count=2)
    listen.close()
    talk.close()
    listen.ended()
    talk.ended()

    muted_part = listen.audio()[: quiet_listen * 320]
    loud_part = listen.audio()[quiet_listen * 320 :]
    assert float(abs(muted_part).max()) < 500
    assert float(abs(loud_part).max()) > 5000
    assert float(abs(talk.audio()[: quiet_talk * 320]).max()) < 500


def test_the_stream_ends_with_the_call(echo_call: WorkerProcess) -> None:
    streams = [open_stream(echo_call, config()), open_stream(echo_call, talk_config())]
    echo_call.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    for stream in streams:
        assert stream.ended().reason == Reason.SIP_CALL_AUDIO_END_REASON_CALL_ENDED
    hangup = echo_call.wait_for_status("hard_hangup_initiated")
    finished = echo_call.wait_for_status("outgoing_call_finished")
    assert hangup.call_audio_streams == 2  # connected while the hangup began
    assert finished.call_audio_streams == 0  # they ended with the call


def test_max_duration_ends_the_stream(echo_call: WorkerProcess) -> None:
    started = time.monotonic()
    stream = open_stream(echo_call, config(max_duration_s=1))
    assert stream.ended().reason == Reason.SIP_CALL_AUDIO_END_REASON_MAX_DURATION
    assert 0.9 <= time.monotonic() - started < 3.0
    assert 40 <= len(stream.of("audio")) <= 60  # one second of audio, paced
    assert echo_call.status().status_type == sip_pb2.SipStatus.outgoing_call_connected


def test_a_transfer_ends_the_stream_as_transferred(
    session: WorkerProcess, sipp_factory: SippFactory
) -> None:
    uas = sipp_factory("uas_refer.xml", args=["-m", "1"])
    session.stub.StartCall(sip_pb2.StartCallRequest(callee_id=f"service@{uas.address}"), timeout=10)
    connected = session.wait_for_status("outgoing_call_connected")
    stream = open_stream(session, config())
    session.stub.TransferCall(
        sip_pb2.TransferCallRequest(transfer_id="queue7@127.0.0.1"), timeout=10
    )
    assert stream.ended().reason == Reason.SIP_CALL_AUDIO_END_REASON_CALL_TRANSFERRED
    finished = session.wait_for_status("outgoing_call_finished", timeout=20)
    assert finished.sip_response_code == 202
    assert finished.call_id == connected.call_id != ""


@pytest.mark.slow
def test_a_client_that_stops_reading_loses_frames_then_is_ended_stalled(
    echo_call: WorkerProcess,
) -> None:
    # Without BDP probing the client's HTTP/2 window stays at 64 KiB: once the client takes
    # nothing, the worker's writes back up within about 2 s (with it, the client's gRPC
    # library would buffer much more before the worker could notice).
    channel = grpc.insecure_channel(
        f"127.0.0.1:{echo_call.grpc_port}", options=[("grpc.http2.bdp_probe", 0)]
    )
    stalled = AudioStream(sip_pb2_grpc.SipStub(channel), config())
    stalled.wait_for("started")
    healthy = open_stream(echo_call, config())
    stalled.reading.clear()  # takes no more responses
    time.sleep(12.0)
    healthy_frames = len(healthy.of("audio"))
    stalled.reading.set()
    assert stalled.ended().reason == Reason.SIP_CALL_AUDIO_END_REASON_STALLED
    assert stalled.last_stats().frames_dropped > 0
    # The other stream and the call never noticed.
    assert healthy_frames >= 12.0 * 50 * 0.9
    assert healthy.last_stats().frames_dropped == 0
    assert echo_call.status().status_type == sip_pb2.SipStatus.outgoing_call_connected
    healthy.close()
    assert healthy.ended().reason == Reason.SIP_CALL_AUDIO_END_REASON_CLIENT_CLOSED
    channel.close()
