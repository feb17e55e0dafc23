"""Test audio: tones as WAV bytes in any layout, and what a recording holds (level, pitch)."""

import io
import struct
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt


def tone_wav(
    frequency: float,
    seconds: float,
    sample_rate: int = 16000,
    channels: int = 1,
    sample_width: int = 2,
    amplitude: float = 0.5,
) -> bytes:
    """A sine tone as a PCM WAV file (8/16/24/32-bit), the same signal in every channel."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = amplitude * np.sin(2 * np.pi * frequency * t)
    frames = np.repeat(signal[:, None], channels, axis=1).reshape(-1)
    if sample_width == 1:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif sample_width == 3:
        ints = np.round(frames * (2**23 - 1)).astype("<i4").tobytes()
        data = b"".join(ints[i : i + 3] for i in range(0, len(ints), 4))
    else:
        dtype = "<i2" if sample_width == 2 else "<i4"
        data = np.round(frames * (2 ** (8 * sample_width - 1) - 1)).astype(dtype).tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(sample_width)
        wav.setframerate(sample_rate)
        wav.writeframes(data)
    return buffer.getvalue()


def mulaw_tone(frequency: float, seconds: float, amplitude: float = 0.5) -> bytes:
    """A sine tone at 8 kHz as raw G.711 mu-law bytes (PCMU's payload, no header)."""
    t = np.arange(int(seconds * 8000)) / 8000
    linear = np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int64)
    magnitude = np.minimum(np.abs(linear), 32635) + 0x84  # clip, then G.711's bias
    exponent = np.floor(np.log2(magnitude)).astype(np.int64) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    sign = (linear < 0).astype(np.int64) << 7
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def float_tone_wav(frequency: float, seconds: float, sample_rate: int, bits: int) -> bytes:
    """A mono IEEE-float WAV (format tag 3) with `bits` per sample as declared in its header."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    signal = 0.5 * np.sin(2 * np.pi * frequency * t)
    data = signal.astype("<f8" if bits == 64 else "<f4").tobytes()
    width = bits // 8
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * width, width, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def read_wav(path: Path) -> tuple[npt.NDArray[np.float64], int]:
    """Mono samples scaled to [-1, 1] and the sample rate of a 16-bit PCM WAV recording."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2, "the recorder writes 16-bit PCM"
        rate = wav.getframerate()
        channels = wav.getnchannels()
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1), rate


def rms(samples: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


def dominant_frequency(samples: npt.NDArray[np.float64], rate: int) -> float:
    """The frequency (Hz) with the most energy, by FFT over a Hann window."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    spectrum[0] = 0.0
    return float(np.fft.rfftfreq(len(samples), 1.0 / rate)[int(np.argmax(spectrum))])


def windows(
    samples: npt.NDArray[np.float64], rate: int, seconds: float = 0.1
) -> list[npt.NDArray[np.float64]]:
    size = int(rate * seconds)
    return [samples[i : i + size] for i in range(0, len(samples) - size + 1, size)]


def tone_seconds(path: Path, frequency: float, tolerance: float = 25.0) -> float:
    """How many seconds of the recording carry a clear tone at `frequency`."""
    samples, rate = read_wav(path)
    return tone_seconds_in(samples, rate, frequency, tolerance)


def tone_seconds_in(
    samples: npt.NDArray[np.float64], rate: int, frequency: float, tolerance: float = 25.0
) -> float:
    """How many seconds of `samples` (scaled to [-1, 1]) carry a clear tone at `frequency`."""
    window = 0.05
    loud = [
        w
        for w in windows(samples, rate, window)
        if rms(w) > 0.02 and abs(dominant_frequency(w, rate) - frequency) <= tolerance
    ]
    return len(loud) * window
