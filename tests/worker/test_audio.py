"""Audio into a real call: a second PJSUA2 process answers and records what it hears."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2
from tests.support.audio import (
    dominant_frequency,
    float_tone_wav,
    read_wav,
    rms,
    tone_seconds,
    tone_wav,
    windows,
)
from tests.support.recording_peer import RecordingPeer
from tests.worker.conftest import WorkerProcess

# The first audio after a change still holds what the far end's jitter buffer had queued.
SETTLE = 0.3


def call_peer(worker: WorkerProcess, peer: RecordingPeer) -> None:
    worker.stub.StartCall(sip_pb2.StartCallRequest(callee_id=peer.uri), timeout=10)
    worker.wait_for_status("outgoing_call_connected")
    peer.wait_for("MEDIA")


@pytest.fixture()
def peer(tmp_path: Path) -> Iterator[RecordingPeer]:
    recording_peer = RecordingPeer(tmp_path / "peer")
    yield recording_peer
    recording_peer.stop()


@pytest.fixture()
def call_recording_peer(tmp_path: Path) -> Iterator[RecordingPeer]:
    """A peer that records every call whole, to call-<n>.wav in its workdir."""
    recording_peer = RecordingPeer(tmp_path / "calls", record_calls=True)
    yield recording_peer
    recording_peer.stop()


def test_tone_reaches_far_end_and_mute_silences_it(
    session: WorkerProcess, peer: RecordingPeer, tmp_path: Path
) -> None:
    call_peer(session, peer)
    session.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(1000, 12.0)]), timeout=10
    )

    def heard(name: str) -> tuple[float, float]:
        samples, rate = read_wav(peer.record(tmp_path / name, 1.0 + SETTLE))
        settled = samples[int(SETTLE * rate) :]
        return rms(settled), dominant_frequency(settled, rate)

    level, pitch = heard("before-mute.wav")
    assert level > 0.05
    assert pitch == pytest.approx(1000, abs=20)

    session.stub.Mute(Empty(), timeout=10)
    level, _ = heard("muted.wav")
    assert level < 0.002

    session.stub.UnMute(Empty(), timeout=10)
    level, pitch = heard("unmuted.wav")
    assert level > 0.05
    assert pitch == pytest.approx(1000, abs=20)

    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    session.wait_for_status("outgoing_call_finished")


# (sample rate, channels, bytes per sample) -> a distinct tone frequency for each layout.
LAYOUTS = {
    (8000, 1, 2): 400,
    (16000, 1, 2): 600,
    (44100, 1, 2): 800,
    (8000, 2, 2): 1000,
    (16000, 2, 2): 1200,
    (44100, 2, 2): 1400,
    (22050, 1, 1): 1600,
    (48000, 2, 3): 1800,
    (32000, 1, 4): 2000,
}
TONE_SECONDS = 0.8


@pytest.mark.slow
def test_every_wav_layout_plays_in_order_then_soft_hangup_waits_for_it(
    session: WorkerProcess, call_recording_peer: RecordingPeer
) -> None:
    peer = call_recording_peer
    call_peer(session, peer)
    files = [
        tone_wav(frequency, TONE_SECONDS, rate, channels, width)
        for (rate, channels, width), frequency in LAYOUTS.items()
    ]
    files.append(float_tone_wav(2200, TONE_SECONDS, 16000, 32))
    frequencies = [*LAYOUTS.values(), 2200]
    session.stub.PlayWavFiles(sip_pb2.PlayWavFilesRequest(wav_files=files), timeout=10)
    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=False), timeout=10)
    peer.wait_for("DISCONNECTED", timeout=30)
    session.wait_for_status("outgoing_call_finished")
    assert session.types()[-3:] == [
        "outgoing_call_connected",
        "soft_hangup_initiated",
        "outgoing_call_finished",
    ]

    recording = peer.workdir / "call-1.wav"
    samples, rate = read_wav(recording)
    first_heard = []
    for frequency in frequencies:
        # Every file played to its end before the BYE: the soft hangup waited for the queue.
        assert tone_seconds(recording, frequency) >= TONE_SECONDS - 0.2, frequency
        first_heard.append(
            next(
                index
                for index, window in enumerate(windows(samples, rate, 0.05))
                if rms(window) > 0.02 and abs(dominant_frequency(window, rate) - frequency) <= 25
            )
        )
    assert first_heard == sorted(first_heard), "files played out of order"

    # Stereo is down-mixed by averaging: as loud as the mono file of the same tone.
    def level_of(frequency: int) -> float:
        return max(
            rms(window)
            for window in windows(samples, rate, 0.05)
            if abs(dominant_frequency(window, rate) - frequency) <= 25
        )

    mono, stereo = level_of(LAYOUTS[(8000, 1, 2)]), level_of(LAYOUTS[(8000, 2, 2)])
    assert stereo == pytest.approx(mono, rel=0.25)


def test_hard_hangup_cuts_queued_audio(
    session: WorkerProcess, call_recording_peer: RecordingPeer
) -> None:
    peer = call_recording_peer
    call_peer(session, peer)
    session.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(1000, 6.0)]), timeout=10
    )
    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=True), timeout=10)
    peer.wait_for("DISCONNECTED", timeout=30)
    session.wait_for_status("outgoing_call_finished")
    assert session.types()[-2:] == ["hard_hangup_initiated", "outgoing_call_finished"]
    assert tone_seconds(peer.workdir / "call-1.wav", 1000) < 3.0


def test_soft_hangup_is_bounded(
    worker_factory: object, registrar: object, call_recording_peer: RecordingPeer
) -> None:
    from tests.worker.conftest import start_session

    worker = worker_factory("--soft-hangup-timeout", "1")  # type: ignore[operator]
    start_session(worker, registrar, auto_answer_interval=1)  # type: ignore[arg-type]
    peer = call_recording_peer
    call_peer(worker, peer)
    worker.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(1000, 20.0)]), timeout=10
    )
    worker.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=False), timeout=10)
    peer.wait_for("DISCONNECTED", timeout=30)
    finished = worker.wait_for_status("outgoing_call_finished")
    initiated = worker.wait_for_status("soft_hangup_initiated")
    waited = finished.timestamp.ToNanoseconds() - initiated.timestamp.ToNanoseconds()
    assert 0.9e9 <= waited < 10e9
    assert tone_seconds(peer.workdir / "call-1.wav", 1000) < 10.0


def test_soft_hangup_while_muted_does_not_wait_for_unheard_audio(
    session: WorkerProcess, peer: RecordingPeer
) -> None:
    call_peer(session, peer)
    session.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(1000, 1.5)]), timeout=10
    )
    session.stub.Mute(Empty(), timeout=10)
    session.stub.EndCall(sip_pb2.EndCallRequest(hard_hangup=False), timeout=10)

    initiated = session.wait_for_status("soft_hangup_initiated")
    finished = session.wait_for_status("outgoing_call_finished", timeout=30)
    waited = (finished.timestamp.ToNanoseconds() - initiated.timestamp.ToNanoseconds()) / 1e9
    # Muted audio plays on unheard: the BYE follows its end, well before the 10 s bound.
    assert 1.0 <= waited < 8.0
