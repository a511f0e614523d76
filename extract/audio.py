"""Audio decoding: any clip ffmpeg reads (MELD's mp4/AAC, wav, flac) to mono float32.

ffmpeg comes from imageio-ffmpeg, a static build on PyPI, so decoding MELD needs no
system package. Resampling is ffmpeg's (swr), always to the rate the caller names:
openSMILE wants 16 kHz and OpenL3 48 kHz, and a library default such as librosa's
22.05 kHz would silently change every feature.
"""

import logging
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class AudioDecodeError(RuntimeError):
    """A clip that cannot be decoded: missing, corrupt, or without an audio stream."""

    def __init__(self, path: str | Path, reason: str, kind: str = "corrupt"):
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"cannot decode audio from {self.path}: {reason}")


@cache
def ffmpeg_executable() -> str:
    """Path of the static ffmpeg binary shipped by imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def decode_audio(
    path: str | Path, sample_rate: int, max_seconds: float | None = None, start_s: float = 0.0
) -> np.ndarray:
    """Decode the first audio stream of `path` to mono float32 at `sample_rate`, from `start_s` seconds on.

    Channels are averaged by ffmpeg's downmix. `max_seconds` stops decoding early, so a
    wrongly cut 305-second MELD clip costs no more than the cap.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(path, "file not found", kind="missing")
    cmd = [ffmpeg_executable(), "-nostdin", "-v", "error"]
    if start_s > 0:
        # As an input option -ss seeks before decoding; ffmpeg's -accurate_seek (on by default when
        # decoding) drops the samples decoded before start_s, so the cut starts at start_s.
        cmd += ["-ss", f"{start_s:.3f}"]
    cmd += ["-i", str(path), "-map", "0:a:0", "-vn"]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.3f}"]
    cmd += ["-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    result = subprocess.run(cmd, capture_output=True, check=False)
    stderr = result.stderr.decode("utf-8", errors="replace").strip()
    if result.returncode != 0:
        if "matches no streams" in stderr:
            raise AudioDecodeError(path, "the file has no audio stream", kind="no_audio")
        last_line = stderr.splitlines()[-1] if stderr else f"ffmpeg exited with {result.returncode}"
        raise AudioDecodeError(path, last_line)
    samples = np.frombuffer(result.stdout, dtype="<f4").astype(np.float32, copy=True)
    if samples.size == 0:
        raise AudioDecodeError(path, "the audio stream is empty", kind="no_audio")
    return samples


@dataclass(frozen=True)
class ClipInfo:
    """What the container header says about a clip, read without decoding it."""

    duration: float
    """Container duration in seconds."""
    has_audio: bool
    """Whether the container has at least one audio stream."""
    sample_rate: int | None = None
    """The first audio stream's sampling rate in Hz, when the header gives it."""


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_AUDIO_RATE = re.compile(r"Stream #\S+.*Audio:.*?(\d+) Hz")


def probe_clip(path: str | Path) -> ClipInfo:
    """Read the duration and stream list of a clip from its header (tens of milliseconds a clip)."""
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(path, "file not found", kind="missing")
    result = subprocess.run(
        [ffmpeg_executable(), "-nostdin", "-hide_banner", "-i", str(path)], capture_output=True, check=False
    )
    header = result.stderr.decode("utf-8", errors="replace")
    match = _DURATION.search(header)
    if match is None:
        last_line = header.strip().splitlines()[-1] if header.strip() else "no header"
        raise AudioDecodeError(path, f"ffmpeg cannot read the container ({last_line})")
    hours, minutes, seconds = match.groups()
    duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    rate = _AUDIO_RATE.search(header)
    return ClipInfo(
        duration=duration,
        has_audio=bool(re.search(r"Stream #\S+.*Audio:", header)),
        sample_rate=int(rate.group(1)) if rate else None,
    )


def encode_clip(samples: np.ndarray, sample_rate: int, path: str | Path) -> None:
    """Write mono float samples to `path`; the format follows the suffix (.mp4 gives AAC, as MELD has)."""
    path = Path(path)
    codec = {".mp4": ["-c:a", "aac", "-b:a", "96k"], ".wav": ["-c:a", "pcm_s16le"], ".flac": ["-c:a", "flac"]}
    if path.suffix not in codec:
        raise ValueError(f"cannot write {path}: the suffix must be one of {', '.join(codec)}")
    pcm = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0).astype("<f4").tobytes()
    cmd = [ffmpeg_executable(), "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1"]
    cmd += ["-i", "pipe:0", *codec[path.suffix], str(path)]
    result = subprocess.run(cmd, input=pcm, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg could not write {path}: {result.stderr.decode(errors='replace').strip()}")
