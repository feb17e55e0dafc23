"""The live-audio tap alone (no PJSUA2): every buffer is bounded and the media thread's side
never waits, whatever the client does."""

import threading
import time

from ondewo.sip.sip_pb2 import SipCallAudioEndReason, SipCallAudioMode
from sip_worker.errors import InvalidArgument
from sip_worker.phone import audio_tap
from sip_worker.phone.audio_tap import AudioTap, Ended, Failed, Frame, Mark, StreamSettings

TALK = StreamSettings("t", SipCallAudioMode.SIP_CALL_AUDIO_MODE_TALK, 8000, 60)
LISTEN = StreamSettings("l", SipCallAudioMode.SIP_CALL_AUDIO_MODE_LISTEN, 16000, 60)


def tap(settings: StreamSettings, stalls: list[int] | None = None) -> AudioTap:
    return AudioTap(settings, 1, 1, lambda: (stalls if stalls is not None else []).append(1))


def drain(audio: AudioTap) -> list[object]:
    items = []
    while (item := audio.take(0.0)) is not None:
        items.append(item)
    return items


def test_a_reader_that_takes_nothing_costs_the_media_thread_nothing() -> None:
    stalls: list[int] = []
    listen = tap(LISTEN, stalls)
    started = time.perf_counter()
    for _ in range(10_000):
        listen.caller_frame(b"\1" * 640)
    assert time.perf_counter() - started < 1.0  # 200 s of audio, no waiting
    stats = listen.stats()
    assert stats.frames_dropped == 10_000 - audio_tap.OUTBOUND_FRAMES
    frames = drain(listen)
    assert len(frames) == audio_tap.OUTBOUND_FRAMES
    assert [f.sequence for f in frames if isinstance(f, Frame)] == list(range(1, 51))
    assert stalls == []  # it took them within STALL_S


def test_a_reader_that_stops_taking_is_reported_once() -> None:
    stalls: list[int] = []
    listen = tap(LISTEN, stalls)
    listen._last_take -= audio_tap.STALL_S + 1  # as if nothing was taken for that long
    for _ in range(audio_tap.OUTBOUND_FRAMES + 10):
        listen.caller_frame(b"\1" * 640)
    assert stalls == [1]


def test_talk_plays_in_order_marks_in_place_and_discards_beyond_its_bound() -> None:
    talk = tap(TALK)
    frame = [bytes([n]) * 320 for n in range(3)]
    talk.talk(frame[0])
    talk.mark("one")
    talk.talk(frame[1])
    assert talk.agent_frame() == frame[0]
    assert drain(talk) == []  # the next tick finds the mark, once frame 0 was handed over
    assert talk.agent_frame() == frame[1]
    assert drain(talk) == [Mark("one")]
    assert talk.agent_frame() == b"\0" * 320  # ran dry after audio without a mark
    assert talk.stats().underruns == 1
    for _ in range(audio_tap.TALK_BUFFER_FRAMES + 7):
        talk.talk(frame[2])
    assert talk.stats().frames_discarded == 7


def test_clear_drops_the_talk_audio_and_returns_its_marks_at_once() -> None:
    talk = tap(TALK)
    for second in range(10):
        for _ in range(50):
            talk.talk(b"\1" * 320)
        talk.mark(f"s{second}")
    talk.clear()
    assert drain(talk) == [Mark(f"s{n}") for n in range(10)]
    assert talk.agent_frame() == b"\0" * 320
    assert talk.stats().underruns == 0  # a clear ends the utterance


def test_agent_muted_plays_silence_and_listen_marks_come_back_at_once() -> None:
    talk = tap(TALK)
    talk.set_agent_muted(True)
    talk.talk(b"\1" * 320)
    assert talk.agent_frame() == b"\0" * 320
    listen = tap(LISTEN)
    listen.mark("now")
    assert drain(listen) == [Mark("now")]


def test_after_the_end_only_the_end_is_told() -> None:
    listen = tap(LISTEN)
    listen.end(SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_CALL_ENDED)
    listen.end(SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_STALLED)
    listen.caller_frame(b"\1" * 640)
    listen.dtmf("5", 100)
    assert drain(listen) == [Ended(SipCallAudioEndReason.SIP_CALL_AUDIO_END_REASON_CALL_ENDED)]


def test_a_bad_request_reaches_the_response_thread_waiting_for_it() -> None:
    listen = tap(LISTEN)
    taken: list[object] = []
    waiter = threading.Thread(target=lambda: taken.append(listen.take(5.0)))
    waiter.start()
    error = InvalidArgument("a second config")
    listen.fail(error)
    waiter.join(timeout=5)
    assert taken == [Failed(error)]
