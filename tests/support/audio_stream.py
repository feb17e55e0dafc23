"""A SipStreamCallAudio client for tests: requests from a queue, responses read on a thread."""

import queue
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np

from ondewo.sip import sip_pb2, sip_pb2_grpc

Request = sip_pb2.SipCallAudioRequest
Response = sip_pb2.SipCallAudioResponse


def config(
    mode: int = sip_pb2.SIP_CALL_AUDIO_MODE_LISTEN,
    sample_rate_hz: int = 16000,
    *,
    take_over: bool = False,
    max_duration_s: int = 0,
    stream_id: str = "test-stream",
) -> Request:
    return Request(
        config=sip_pb2.SipCallAudioConfig(
            mode=mode,  # type: ignore[arg-type]
            sample_rate_hz=sample_rate_hz,
            take_over=take_over,
            max_duration_s=max_duration_s,
            stream_id=stream_id,
        )
    )


def talk_config(sample_rate_hz: int = 16000, **kwargs: object) -> Request:
    return config(sip_pb2.SIP_CALL_AUDIO_MODE_TALK, sample_rate_hz, take_over=True, **kwargs)  # type: ignore[arg-type]


def tone_frames(
    frequency: float, seconds: float, sample_rate: int, amplitude: float = 0.3
) -> list[bytes]:
    """A sine tone cut into 20 ms LINEAR16 frames."""
    samples = int(seconds * sample_rate)
    t = np.arange(samples) / sample_rate
    pcm = (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2").tobytes()
    size = sample_rate // 50 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


class AudioStream:
    """One open stream. `send` queues requests; `close` half-closes; responses accumulate."""

    def __init__(
        self,
        stub: sip_pb2_grpc.SipStub,
        first: Request | None,
        *,
        timeout: float = 60.0,
        metadata: tuple[tuple[str, str], ...] = (),
        read: bool = True,
    ) -> None:
        self._requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        if first is not None:
            self._requests.put(first)
        self.responses: list[Response] = []
        self.error: grpc.RpcError | None = None
        self.finished = threading.Event()
        self.reading = threading.Event()
        if read:
            self.reading.set()
        self._call = stub.SipStreamCallAudio(self._iterate(), timeout=timeout, metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _iterate(self) -> Iterator[Request]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                self.reading.wait()
                self.responses.append(response)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.finished.set()

    def send(self, *requests: Request) -> None:
        for request in requests:
            self._requests.put(request)

    def talk(self, frames: list[bytes], pace_s: float = 0.0) -> None:
        for number, pcm in enumerate(frames, 1):
            self.send(Request(audio=sip_pb2.SipCallAudioFrame(pcm_s16le=pcm, sequence=number)))
            if pace_s:
                time.sleep(pace_s)

    def close(self) -> None:
        self._requests.put(None)

    def cancel(self) -> None:
        self._call.cancel()

    def wait(self, timeout: float = 15.0) -> None:
        assert self.finished.wait(timeout), f"the stream did not end within {timeout} s"

    def wait_for(self, kind: str, timeout: float = 10.0, count: int = 1) -> list[Response]:
        deadline = time.monotonic() + timeout
        while len(found := self.of(kind)) < count:
            if time.monotonic() > deadline or self.finished.is_set():
                if len(found := self.of(kind)) >= count:
                    return found
                kinds = [r.WhichOneof("response") for r in self.responses][-20:]
                raise AssertionError(f"{count} {kind} not received: {kinds} error={self.error}")
            time.sleep(0.01)
        return found

    def of(self, kind: str) -> list[Response]:
        return [r for r in list(self.responses) if r.WhichOneof("response") == kind]

    def audio(self) -> np.ndarray:
        pcm = b"".join(r.audio.pcm_s16le for r in self.of("audio"))
        return np.frombuffer(pcm, "<i2").astype(np.float64)

    def ended(self) -> sip_pb2.SipCallAudioEnded:
        self.wait()
        assert self.error is None, self.error
        (ended,) = self.of("ended")
        assert self.responses[-1].HasField("ended"), "ended is the last response"
        return ended.ended

    def last_stats(self) -> sip_pb2.SipCallAudioStats:
        return self.of("stats")[-1].stats

    def code(self) -> grpc.StatusCode:
        self.wait()
        assert self.error is not None, "the stream ended OK"
        return self.error.code()
