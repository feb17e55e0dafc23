"""Live audio against a far end that records and plays (a second PJSUA2 process): what TALK
sends is what the caller hears, LISTEN hears the caller mixed with what we send, and
take_over, agent_muted and clear silence what they should."""

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ondewo.sip import sip_pb2
from tests.support.audio import dominant_frequency, read_wav, rms, tone_seconds, tone_wav, windows
from tests.support.audio_stream import AudioStream, Request, config, talk_config, tone_frames
from tests.support.recording_peer import RecordingPeer
from tests.worker.conftest import WorkerProcess

RATE = 16000


@pytest.fixture()
def peer_call(
    session: WorkerProcess, tmp_path: Path
) -> Iterator[tuple[WorkerProcess, RecordingPeer]]:
    peer = RecordingPeer(tmp_path / "peer")
    session.stub.StartCall(sip_pb2.StartCallRequest(callee_id=peer.uri), timeout=10)
    session.wait_for_status("outgoing_call_connected")
    peer.wait_for("MEDIA")
    yield session, peer
    peer.stop()


def spectrum_has(samples: np.ndarray, rate: int, frequency: float) -> bool:
    """Whether `frequency` is one of the spectrum's strong peaks (at least a tenth of the
    strongest)."""
    spectrum = np.abs(np.fft.rfft(samples))
    bins = np.fft.rfftfreq(len(samples), 1 / rate)
    near = spectrum[np.abs(bins - frequency) < 15]
    return bool(near.size and near.max() > 0.1 * spectrum.max())


def test_what_talk_sends_the_far_end_records_and_playback_waits_for_it(
    peer_call: tuple[WorkerProcess, RecordingPeer], tmp_path: Path
) -> None:
    worker, peer = peer_call
    worker.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(440, 2.0)]), timeout=10
    )
    time.sleep(0.5)
    talk = AudioStream(worker.stub, talk_config(RATE))
    talk.wait_for("started")
    talk.talk(tone_frames(1000.0, 1.5, RATE))
    recording = peer.record(tmp_path / "talk.wav", 1.5)
    talk.wait_for("stats", count=2)
    talk.close()
    talk.ended()
    # While TALK was connected the caller heard TALK only: the WAV was paused, not lost.
    assert tone_seconds(recording, 1000.0) >= 1.0
    assert tone_seconds(recording, 440.0) < 0.2
    # 1.5 s of the WAV were left when TALK took over; they play now.
    resumed = peer.record(tmp_path / "after.wav", 2.0)
    assert tone_seconds(resumed, 440.0) >= 1.2


def test_listen_hears_the_far_end_mixed_with_talk_and_talk_hears_the_far_end_only(
    peer_call: tuple[WorkerProcess, RecordingPeer], tmp_path: Path
) -> None:
    worker, peer = peer_call
    wav = tmp_path / "far-end.wav"
    wav.write_bytes(tone_wav(600, 4.0))
    listen = AudioStream(worker.stub, config(sample_rate_hz=RATE))
    talk = AudioStream(worker.stub, talk_config(RATE))
    listen.wait_for("started")
    talk.wait_for("started")
    peer.play(wav, wait=False)
    talk.talk(tone_frames(1000.0, 2.0, RATE))
    talk.send(Request(mark="done"))
    talk.wait_for("mark", timeout=10)
    listen.close()
    talk.close()
    listen.ended()
    talk.ended()
    heard, spoken = listen.audio()[RATE // 2 :], talk.audio()[RATE // 2 :]
    assert spectrum_has(heard, RATE, 600.0) and spectrum_has(heard, RATE, 1000.0)
    assert spectrum_has(spoken, RATE, 600.0)
    assert not spectrum_has(spoken, RATE, 1000.0)


def test_agent_muted_sends_silence_and_the_call_mute_silences_listen_too(
    peer_call: tuple[WorkerProcess, RecordingPeer], tmp_path: Path
) -> None:
    worker, peer = peer_call
    talk = AudioStream(worker.stub, talk_config(RATE))
    talk.wait_for("started")
    talk.send(Request(agent_muted=True))
    talk.talk(tone_frames(1000.0, 1.5, RATE))
    muted = peer.record(tmp_path / "muted.wav", 1.2)
    samples, rate = read_wav(muted)
    assert rms(samples[rate // 4 :]) < 0.01
    talk.send(Request(clear=True), Request(agent_muted=False))
    talk.talk(tone_frames(1000.0, 1.5, RATE))
    unmuted = peer.record(tmp_path / "unmuted.wav", 1.2)
    assert tone_seconds(unmuted, 1000.0) >= 0.8
    talk.close()
    talk.ended()


def test_clear_silences_ten_seconds_of_buffered_talk_at_once_and_returns_the_marks(
    peer_call: tuple[WorkerProcess, RecordingPeer], tmp_path: Path
) -> None:
    worker, peer = peer_call
    talk = AudioStream(worker.stub, talk_config(RATE))
    talk.wait_for("started")
    seconds = tone_frames(1000.0, 1.0, RATE)
    for second in range(10):  # a TTS burst: ten seconds at once, a mark after each second
        talk.talk(seconds)
        talk.send(Request(mark=f"second-{second + 1}"))
    path = tmp_path / "clear.wav"
    peer.command(f"record {path}")
    peer.wait_for("RECORDING")
    recording_started = time.monotonic()
    talk.wait_for("mark")  # the first second has been played
    time.sleep(0.5)
    cleared_at = time.monotonic()
    talk.send(Request(clear=True))
    marks = talk.wait_for("mark", count=10, timeout=2)
    marks_back = time.monotonic()
    time.sleep(0.8)
    peer.command("stop")
    peer.wait_for("STOPPED")
    talk.close()
    talk.ended()

    assert [m.mark.name for m in marks] == [f"second-{n}" for n in range(1, 11)]
    assert marks_back - cleared_at < 0.5
    samples, rate = read_wav(path)
    loud = [i for i, w in enumerate(windows(samples, rate, 0.01)) if rms(w) > 0.02]
    tone_ended = recording_started + (loud[-1] + 1) * 0.01
    # The far end's last tone, measured on the same clock as the clear (its own jitter buffer
    # included): within 60 ms.
    assert tone_ended - cleared_at <= 0.060, tone_ended - cleared_at
    assert tone_ended - recording_started >= 1.0  # it did play before the clear
    assert dominant_frequency(
        samples[: int((tone_ended - recording_started) * rate)], rate
    ) == pytest.approx(1000.0, abs=25)


def test_clear_on_any_stream_drops_the_wav_queue_at_once(
    peer_call: tuple[WorkerProcess, RecordingPeer], tmp_path: Path
) -> None:
    worker, peer = peer_call
    before = worker.history()
    worker.stub.PlayWavFiles(
        sip_pb2.PlayWavFilesRequest(wav_files=[tone_wav(440, 10.0), tone_wav(440, 10.0)]),
        timeout=10,
    )
    listen = AudioStream(worker.stub, config(sample_rate_hz=RATE))
    listen.wait_for("started")
    path = tmp_path / "clear-wav.wav"
    peer.command(f"record {path}")
    peer.wait_for("RECORDING")
    recording_started = time.monotonic()
    time.sleep(1.0)
    cleared_at = time.monotonic()
    listen.send(Request(clear=True), Request(mark="after-clear"))
    listen.wait_for("mark")
    time.sleep(0.8)
    peer.command("stop")
    peer.wait_for("STOPPED")
    listen.close()
    listen.ended()
    samples, rate = read_wav(path)
    loud = [i for i, w in enumerate(windows(samples, rate, 0.01)) if rms(w) > 0.02]
    tone_ended = recording_started + (loud[-1] + 1) * 0.01
    assert tone_ended - cleared_at <= 0.060, tone_ended - cleared_at
    assert worker.history() == before  # a clear is no status; the call goes on
    # The queue is gone, not paused: nothing plays any more.
    assert tone_seconds(peer.record(tmp_path / "later.wav", 1.0), 440.0) == 0.0
