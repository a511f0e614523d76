"""Decoding round-trips generated tones at the rates the extractors need."""

import numpy as np
import pytest

from extract.audio import AudioDecodeError, decode_audio, encode_clip, probe_clip


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("suffix", [".mp4", ".wav", ".flac"])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_tone_round_trip(tmp_path, suffix, rate):
    source_rate, seconds, freq = 44100, 1.5, 440.0
    t = np.arange(int(source_rate * seconds)) / source_rate
    path = tmp_path / f"tone{suffix}"
    encode_clip(0.5 * np.sin(2 * np.pi * freq * t), source_rate, path)
    decoded = decode_audio(path, rate)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    # AAC adds encoder priming at the start, a few milliseconds at most.
    assert abs(len(decoded) / rate - seconds) < 0.05
    assert abs(dominant_frequency(decoded, rate) - freq) < 2.0
    middle = decoded[len(decoded) // 4 : -len(decoded) // 4]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_max_seconds_caps_decoding(tmp_path):
    path = tmp_path / "long.wav"
    encode_clip(np.zeros(16000 * 5, dtype=np.float32), 16000, path)
    assert len(decode_audio(path, 16000, max_seconds=2.0)) == 32000


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="nothere.mp4.*file not found") as missing:
        decode_audio(tmp_path / "nothere.mp4", 16000)
    assert missing.value.kind == "missing"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    with pytest.raises(AudioDecodeError, match="broken.mp4") as corrupt:
        decode_audio(broken, 16000)
    assert corrupt.value.kind == "corrupt"
    with pytest.raises(AudioDecodeError, match="broken.mp4"):
        probe_clip(broken)


def test_probe_reads_duration(tmp_path):
    path = tmp_path / "two.wav"
    encode_clip(np.zeros(32000, dtype=np.float32), 16000, path)
    info = probe_clip(path)
    assert info.has_audio and info.duration == pytest.approx(2.0, abs=0.01)
