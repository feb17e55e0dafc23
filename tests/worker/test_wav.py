"""WAV checks and conversion in isolation."""

import io
import struct
import wave

import numpy as np
import pytest

from sip_worker.errors import InvalidArgument
from sip_worker.wav import playable_wav
from tests.support.audio import dominant_frequency, float_tone_wav, tone_wav
from tests.worker.bad_inputs import BAD_WAV_REQUESTS


def decode(wav_bytes: bytes) -> tuple[np.ndarray, int, int, int]:
    with wave.open(io.BytesIO(wav_bytes), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        return (
            np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0,
            wav.getframerate(),
            wav.getnchannels(),
            wav.getsampwidth(),
        )


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 32000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_layouts_become_16_bit_mono_at_the_same_rate(
    rate: int, channels: int, width: int
) -> None:
    samples, out_rate, out_channels, out_width = decode(
        playable_wav(tone_wav(1000, 0.25, rate, channels, width), "wav")
    )
    assert (out_rate, out_channels, out_width) == (rate, 1, 2)
    assert len(samples) == int(0.25 * rate)
    assert dominant_frequency(samples, rate) == pytest.approx(1000, abs=10)
    # Averaged, not summed: the tone keeps its 0.5 amplitude.
    assert np.max(np.abs(samples)) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("bits", [32, 64])
def test_float_wavs_are_converted(bits: int) -> None:
    samples, rate, _, _ = decode(playable_wav(float_tone_wav(700, 0.25, 16000, bits), "wav"))
    assert rate == 16000
    assert dominant_frequency(samples, rate) == pytest.approx(700, abs=10)


def test_extensible_format_is_read() -> None:
    plain = tone_wav(500, 0.1, 16000, 2, 2)
    fmt_start = plain.index(b"fmt ")
    data_start = plain.index(b"data")
    extensible = struct.pack("<HHIIHHHHI", 0xFFFE, 2, 16000, 64000, 4, 16, 22, 16, 3)
    extensible += struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = plain[12:fmt_start] + b"fmt " + struct.pack("<I", len(extensible)) + extensible
    body += plain[data_start:]
    wav_bytes = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body
    samples, rate, _, _ = decode(playable_wav(wav_bytes, "wav"))
    assert dominant_frequency(samples, rate) == pytest.approx(500, abs=10)


def test_extra_chunks_are_skipped() -> None:
    plain = tone_wav(500, 0.1)
    with_list = plain[:12] + b"LIST" + struct.pack("<I", 5) + b"abcde\x00" + plain[12:]
    with_list = b"RIFF" + struct.pack("<I", len(with_list) - 8) + with_list[8:]
    assert decode(playable_wav(with_list, "wav"))[1] == 16000


@pytest.mark.parametrize("wav_files", [files for files in BAD_WAV_REQUESTS if len(files) == 1])
def test_bad_wavs_are_refused_with_a_reason(wav_files: list[bytes]) -> None:
    with pytest.raises(InvalidArgument, match=r"wav_files\[0\]"):
        playable_wav(wav_files[0], "wav_files[0]")


def test_16_bit_mono_passes_through_unchanged() -> None:
    original = tone_wav(1000, 0.3, 22050)
    assert playable_wav(original, "wav") == original
