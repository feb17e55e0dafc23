"""WAV files from clients, checked and converted to what PJSUA2's file player plays well.

Accepted: RIFF/WAVE with PCM integer samples of 8, 16, 24 or 32 bits, or IEEE float samples
of 32 or 64 bits (also inside WAVE_FORMAT_EXTENSIBLE), 1 to 8 channels, 8 to 48 kHz.
Output: 16-bit PCM, mono (channels are averaged, so a stereo file is as loud as its mono
twin), at the input's sample rate (the conference bridge resamples).
Everything else (compressed codecs such as A-law, mu-law or ADPCM, 24-bit float, other rates,
truncated or malformed files) is refused with InvalidArgument, before anything plays.
"""

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sip_worker.errors import InvalidArgument

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_CHANNELS = 8
_SUPPORTED_BITS = {WAVE_FORMAT_PCM: (8, 16, 24, 32), WAVE_FORMAT_IEEE_FLOAT: (32, 64)}


@dataclass(frozen=True)
class WavFormat:
    format_tag: int
    channels: int
    sample_rate: int
    block_align: int
    bits_per_sample: int


def _chunks(data: bytes, what: str) -> dict[bytes, bytes]:
    """The first occurrence of each chunk after the RIFF/WAVE header."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidArgument(f"{what} is not a RIFF/WAVE file")
    chunks: dict[bytes, bytes] = {}
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = data[offset + 8 : offset + 8 + size]
        if len(body) < size:
            raise InvalidArgument(f"{what} is truncated: chunk {chunk_id!r} ends past the file")
        chunks.setdefault(chunk_id, body)
        offset += 8 + size + (size & 1)
    return chunks


def _format(fmt: bytes, what: str) -> WavFormat:
    if len(fmt) < 16:
        raise InvalidArgument(f"{what} has a malformed fmt chunk")
    format_tag, channels, sample_rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if format_tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise InvalidArgument(f"{what} has a malformed WAVE_FORMAT_EXTENSIBLE fmt chunk")
        (format_tag,) = struct.unpack_from("<H", fmt, 24)
    if bits not in _SUPPORTED_BITS.get(format_tag, ()):
        kind = {WAVE_FORMAT_PCM: "PCM", WAVE_FORMAT_IEEE_FLOAT: "float"}.get(
            format_tag, f"format 0x{format_tag:04x}"
        )
        raise InvalidArgument(
            f"{what} is {kind} with {bits} bits per sample, which cannot be converted; "
            "send PCM with 8, 16, 24 or 32 bits or float with 32 or 64 bits"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidArgument(f"{what} has {channels} channels (1 to {MAX_CHANNELS} accepted)")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InvalidArgument(
            f"{what} has a sample rate of {sample_rate} Hz "
            f"({MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz accepted)"
        )
    if block_align != channels * bits // 8:
        raise InvalidArgument(f"{what} has a block align that does not match its format")
    return WavFormat(format_tag, channels, sample_rate, block_align, bits)


def _samples(frames: bytes, fmt: WavFormat) -> "npt.NDArray[np.float64]":
    """Samples scaled to [-1, 1], shaped (frames, channels)."""
    # numpy is loaded on the first conversion, not at start-up, where it would cost the idle
    # worker about 12 MB of RSS and up to 250 ms before SERVING (bench/bench_worker.py).
    import numpy as np

    width = fmt.bits_per_sample // 8
    if fmt.format_tag == WAVE_FORMAT_IEEE_FLOAT:
        floats = np.frombuffer(frames, dtype="<f4" if width == 4 else "<f8").astype(np.float64)
        values = np.nan_to_num(floats, nan=0.0, posinf=1.0, neginf=-1.0)
    elif width == 1:
        values = (np.frombuffer(frames, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        values = ints.astype(np.float64) / float(1 << 23)
    else:
        dtype = "<i2" if width == 2 else "<i4"
        values = np.frombuffer(frames, dtype=dtype).astype(np.float64) / float(1 << (8 * width - 1))
    return values.reshape(-1, fmt.channels)


def wav_bytes(pcm16: bytes, sample_rate: int) -> bytes:
    """A 16-bit mono PCM WAV file holding `pcm16` (little-endian samples)."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm16),
        b"WAVE",
        b"fmt ",
        16,
        WAVE_FORMAT_PCM,
        1,
        sample_rate,
        sample_rate * 2,
        2,
        16,
        b"data",
        len(pcm16),
    )
    return header + pcm16


def playable_wav(data: bytes, what: str) -> bytes:
    """`data` checked and converted to a 16-bit mono PCM WAV at its own sample rate.

    Raises InvalidArgument naming `what` when the file is empty, malformed, truncated or in
    a format that cannot be converted.
    """
    if not data:
        raise InvalidArgument(f"{what} is empty")
    chunks = _chunks(data, what)
    if b"fmt " not in chunks:
        raise InvalidArgument(f"{what} has no fmt chunk")
    if b"data" not in chunks:
        raise InvalidArgument(f"{what} is truncated: it has no data chunk")
    fmt = _format(chunks[b"fmt "], what)
    frames = chunks[b"data"]
    if not frames:
        raise InvalidArgument(f"{what} holds no audio")
    if len(frames) % fmt.block_align:
        raise InvalidArgument(f"{what} is truncated: its data ends inside a sample frame")
    if fmt.format_tag == WAVE_FORMAT_PCM and fmt.bits_per_sample == 16 and fmt.channels == 1:
        return wav_bytes(frames, fmt.sample_rate)  # already playable: no numpy, no copy loop
    import numpy as np

    mono = _samples(frames, fmt).mean(axis=1)
    pcm = np.clip(np.round(mono * 32767.0), -32768, 32767).astype("<i2")
    return wav_bytes(pcm.tobytes(), fmt.sample_rate)
