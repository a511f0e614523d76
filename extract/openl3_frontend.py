"""OpenL3's audio front end in torch: 1-second windows and their decibel spectrograms.

The official weights were trained on, and in openl3 0.4.x are served with, kapre's
spectrogram layers, so this module reproduces kapre's conventions rather than
librosa's defaults:

- STFT with a periodic Hann window, hop 242 samples, no centring (tf.signal.stft).
  `linear` uses n_fft 512 on the bare window: 257 bins x 197 frames. `mel128` and
  `mel256` use n_fft 2048 with tf.signal.stft's `pad_end`, which appends 1964 zeros
  so that ceil(48000 / 242) = 199 frames fit: n_mels x 199.
- The filterbank is applied to the STFT *magnitude* (kapre's `Magnitude` layer, and
  openl3's librosa front end uses `power=1.0`), with librosa's Slaney mel scale and
  Slaney area normalisation over 0-24 kHz.
- "Decibels" are then 10 * log10(max(S, 1e-10)) of that magnitude (openl3's
  `kapre_v0_1_4_magnitude_to_decibel`, equal to `librosa.power_to_db` on a
  magnitude), minus the window's maximum, floored at -80. This is half the usual
  amplitude-dB scale, but it is what the network saw in training, so it is kept.
"""

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 48000
"""OpenL3 runs on 48 kHz audio only."""
WINDOW_SAMPLES = SAMPLE_RATE
"""One embedding covers one second."""
STFT_HOP = 242
"""kapre hop length in samples, for every input representation."""
DB_FLOOR = -80.0
"""Dynamic range of the decibel spectrogram, below the window's maximum."""
MAGNITUDE_FLOOR = 1e-10
"""Smallest magnitude the logarithm sees (kapre's amin)."""

InputRepr = Literal["linear", "mel128", "mel256"]

_N_FFT: dict[str, int] = {"linear": 512, "mel128": 2048, "mel256": 2048}
_N_MELS: dict[str, int] = {"mel128": 128, "mel256": 256}

# Slaney's mel scale (librosa with htk=False): linear below 1 kHz at 200/3 Hz per mel,
# logarithmic above, with 27 mels per factor 6.4 in frequency.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Frequencies in Hz to Slaney mels."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_BREAK_MEL + np.log(np.maximum(hz, _SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_BREAK_HZ, logarithmic, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Slaney mels to frequencies in Hz."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (np.maximum(mel, _SLANEY_BREAK_MEL) - _SLANEY_BREAK_MEL))
    return np.where(mel >= _SLANEY_BREAK_MEL, logarithmic, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular Slaney-normalised mel filters over 0 Hz to Nyquist, shape (n_mels, n_fft // 2 + 1).

    Band i rises from edge i to peak i + 1 and falls to edge i + 2, the n_mels + 2 edges
    equally spaced in mels; each triangle is scaled to height 2 / (its width in Hz), so
    every band has unit area and a wide high band is not louder than a narrow low one.
    """
    bin_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2.0), n_mels + 2))
    lower, peak, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - lower) / (peak - lower)
    falling = (upper - bin_hz[None, :]) / (upper - peak)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return (triangles * (2.0 / (upper - lower))).astype(np.float32)


def spectrogram_shape(input_repr: InputRepr) -> tuple[int, int]:
    """(frequency bins, frames) of one window's spectrogram: what the network's input layer expects."""
    n_fft = _N_FFT[input_repr]
    if input_repr == "linear":
        return n_fft // 2 + 1, 1 + (WINDOW_SAMPLES - n_fft) // STFT_HOP
    return _N_MELS[input_repr], -(-WINDOW_SAMPLES // STFT_HOP)


def count_windows(n_samples: int, hop_samples: int) -> int:
    """How many windows `frame_windows` cuts from a clip of `n_samples` samples."""
    overhang = n_samples + WINDOW_SAMPLES // 2 - WINDOW_SAMPLES
    return 1 if overhang <= 0 else 1 + -(-overhang // hop_samples)


def frame_windows(samples: torch.Tensor, hop_samples: int) -> torch.Tensor:
    """Cut a mono clip into 1-second windows, shape (n_windows, 48000), as openl3 does with center=True.

    Half a window of zeros goes in front, so window k is centred on time k * hop; the end
    is zero-padded so the last window is full and no sample is dropped.
    """
    n_windows = count_windows(samples.numel(), hop_samples)
    front = WINDOW_SAMPLES // 2
    back = (n_windows - 1) * hop_samples + WINDOW_SAMPLES - front - samples.numel()
    return F.pad(samples, (front, back)).unfold(0, WINDOW_SAMPLES, hop_samples)


class OpenL3Spectrogram(nn.Module):
    """Windows (batch, 48000) to decibel spectrograms (batch, 1, bins, frames), frequency ascending.

    The (bins, frames) orientation is Keras's (rows, cols), so the ported 3x3 kernels see
    frequency along their first axis as they did in training.
    """

    def __init__(self, input_repr: InputRepr):
        super().__init__()
        self.input_repr = input_repr
        self.n_fft = _N_FFT[input_repr]
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        filterbank = None
        if input_repr != "linear":
            filterbank = torch.from_numpy(mel_filterbank(SAMPLE_RATE, self.n_fft, _N_MELS[input_repr]))
        self.register_buffer("filterbank", filterbank, persistent=False)
        self.shape = spectrogram_shape(input_repr)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if self.filterbank is not None:
            n_frames = self.shape[1]
            windows = F.pad(windows, (0, (n_frames - 1) * STFT_HOP + self.n_fft - windows.shape[-1]))
        stft = torch.stft(
            windows.float(),
            n_fft=self.n_fft,
            hop_length=STFT_HOP,
            window=self.window,
            center=False,
            return_complex=True,
        )
        magnitude = stft.abs()
        if self.filterbank is not None:
            magnitude = torch.matmul(self.filterbank, magnitude)
        decibels = 10.0 * torch.log10(magnitude.clamp_min(MAGNITUDE_FLOOR))
        decibels = decibels - decibels.amax(dim=(1, 2), keepdim=True)
        return decibels.clamp_min(DB_FLOOR).unsqueeze(1)
