"""The click both loop-latency measurements send and listen for (bench_call_audio.py, and its
floor bare_audio_loop.py): one 20 ms frame of a 1 kHz tone peaking at 16000, among silence."""

import array
import math

FRAME_S = 0.02
# A frame is loud when a sample reaches this (the click peaks at 16000, silence is 0).
LOUD = 4000
# A loud frame later than this after a click belongs to no click.
MAX_LOOP_S = 0.45


def click_frame(rate: int) -> bytes:
    """20 ms of 1 kHz at `rate` Hz, LINEAR16 little-endian mono."""
    return array.array(
        "h", (int(16000 * math.sin(2 * math.pi * 1000 * i / rate)) for i in range(rate // 50))
    ).tobytes()


def is_loud(pcm: bytes) -> bool:
    samples = array.array("h", pcm[: len(pcm) // 2 * 2])
    return bool(samples) and (max(samples) >= LOUD or min(samples) <= -LOUD)


def loop_latencies(sent: list[float], edges: list[float]) -> list[float]:
    """Per click sent (seconds), ms to the first loud edge (a loud frame after a quiet one)
    received after it, for the clicks that came back within MAX_LOOP_S."""
    result = []
    for when in sent:
        later = [edge for edge in edges if edge > when]
        if later and later[0] - when < MAX_LOOP_S:
            result.append((later[0] - when) * 1000.0)
    return result
