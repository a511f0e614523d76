"""Utterance-level openSMILE features: the paper's 6552-dim emo_large set, or ComParE 2016 / eGeMAPS.

The engine is the `opensmile` package. It ships ComParE_2016 (6373 features) and eGeMAPSv02
(88) but not emo_large, so this project carries its own emo_large config
(`extract/opensmile_configs/emo_large.conf`): 56 low-level descriptors from 25 ms frames
every 10 ms, smoothed, with deltas and delta-deltas (168 contours), times 39 functionals.
Column names are openSMILE's, e.g. `mfcc_sma[3]_quartile1`, `mfcc_sma_de[3]_range`,
`F0_sma_de_de_amean`, the names the emo_large literature uses.

Like the original set, emo_large finds pitch on the 25 ms frames, which hold too few periods
of a low voice: on synthetic voices F0 under about 150 Hz is mostly judged unvoiced (F0 = 0).
ComParE and eGeMAPS use 60 ms pitch frames and track low voices.

Input is one mono utterance at 16 kHz, float samples in [-1, 1].
"""

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import opensmile
from tqdm import tqdm

log = logging.getLogger(__name__)

EMO_LARGE_CONFIG = Path(__file__).parent / "opensmile_configs" / "emo_large.conf"

# The functionals level that emo_large.conf writes and the package's external sink reads.
_EMO_LARGE_SINK_LEVEL = "func"

# ComParE 2016 and eGeMAPS compute pitch on 60 ms frames; a clip shorter than one such frame
# yields no functionals at all (emo_large needs only half a 25 ms frame).
_LONGEST_FRAME_SECONDS = 0.06

# The package scales by 32768 and casts to int16 without clipping, so +1.0 would wrap to
# -32768; the largest sample that survives the cast is 32767 / 32768.
_FULL_SCALE = 32767 / 32768

_FEATURE_SET_DIMS = {"emo_large": 6552, "ComParE_2016": 6373, "eGeMAPSv02": 88}


@dataclass(kw_only=True)
class OpenSmileConfig:
    """Which openSMILE feature set to extract, and how to treat clips too short for it."""

    feature_set: Literal["emo_large", "ComParE_2016", "eGeMAPSv02"] = "emo_large"
    """emo_large: the paper's 6552 features (project config); ComParE_2016 (6373) and
    eGeMAPSv02 (88): the sets the `opensmile` package ships, as alternatives."""
    min_seconds: float = 0.1
    """Clips shorter than this are padded with trailing silence up to it, since openSMILE
    returns nothing for a clip shorter than its longest frame (60 ms for ComParE/eGeMAPS)."""

    def __post_init__(self) -> None:
        if self.feature_set not in _FEATURE_SET_DIMS:
            raise ValueError(
                f"OpenSmileConfig.feature_set must be one of {', '.join(_FEATURE_SET_DIMS)}, not {self.feature_set!r}"
            )
        if not self.min_seconds >= _LONGEST_FRAME_SECONDS:
            raise ValueError(
                f"OpenSmileConfig.min_seconds must be at least {_LONGEST_FRAME_SECONDS} (one 60 ms pitch frame), "
                f"not {self.min_seconds}"
            )


def _build_smile(feature_set: str, sample_rate: int) -> opensmile.Smile:
    if feature_set == "emo_large":
        if not EMO_LARGE_CONFIG.is_file():
            raise FileNotFoundError(
                f"the emo_large openSMILE config is missing at {EMO_LARGE_CONFIG}; reinstall cmroberta "
                "(the config ships as package data of `extract`)"
            )
        return opensmile.Smile(
            feature_set=str(EMO_LARGE_CONFIG), feature_level=_EMO_LARGE_SINK_LEVEL, sampling_rate=sample_rate
        )
    return opensmile.Smile(
        feature_set=opensmile.FeatureSet[feature_set],
        feature_level=opensmile.FeatureLevel.Functionals,
        sampling_rate=sample_rate,
    )


class OpenSmileExtractor:
    """One fixed-length openSMILE feature vector per utterance.

    Non-finite values in the output (none were seen on speech, silence or DC) are replaced by
    0 with a logged warning naming the columns, so one odd clip keeps its other features.
    """

    SAMPLE_RATE = 16000

    def __init__(self, config: OpenSmileConfig):
        self.config = config
        self._smile = _build_smile(config.feature_set, self.SAMPLE_RATE)
        self.feature_names: list[str] = list(self._smile.feature_names)
        self.dim = len(self.feature_names)
        if self.dim != _FEATURE_SET_DIMS[config.feature_set]:
            raise RuntimeError(
                f"openSMILE {config.feature_set} gave {self.dim} features, expected "
                f"{_FEATURE_SET_DIMS[config.feature_set]}; check the installed opensmile version"
            )

    def __reduce__(self) -> tuple[type["OpenSmileExtractor"], tuple[OpenSmileConfig]]:
        # Ray ships extractors to workers by pickling; rebuilding from the config there is
        # cheap and does not depend on the engine's own state being picklable.
        return OpenSmileExtractor, (self.config,)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Features of one mono 16 kHz utterance (float samples in [-1, 1]) as float32 [dim]."""
        samples = self._prepare(samples)
        with warnings.catch_warnings():
            # The package warns and returns NaNs for a too-short segment; _prepare pads
            # every clip past that length, and any NaN left is handled below.
            warnings.simplefilter("ignore", UserWarning)
            table = self._smile.process_signal(samples, self.SAMPLE_RATE)
        features = table.to_numpy(dtype=np.float32).reshape(-1)
        if features.shape != (self.dim,):
            raise RuntimeError(f"openSMILE returned {features.shape} values for one clip, expected ({self.dim},)")
        bad = ~np.isfinite(features)
        if bad.all():
            raise ValueError(f"openSMILE produced no features for a clip of {samples.size / self.SAMPLE_RATE:.3f} s")
        if bad.any():
            columns = [self.feature_names[i] for i in np.flatnonzero(bad)]
            shown = ", ".join(columns[:5]) + (", ..." if len(columns) > 5 else "")
            log.warning("openSMILE gave %d non-finite values (set to 0): %s", len(columns), shown)
            features[bad] = 0.0
        return features

    def extract_batch(self, clips: Sequence[np.ndarray], progress: bool = True) -> np.ndarray:
        """Features of several utterances as float32 [n, dim], in the order given."""
        out = np.empty((len(clips), self.dim), dtype=np.float32)
        for row, samples in enumerate(tqdm(clips, desc=f"openSMILE {self.config.feature_set}", disable=not progress)):
            out[row] = self(samples)
        return out

    def _prepare(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"openSMILE input must be mono samples of shape [n], not {samples.shape}")
        if not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"openSMILE input must be float samples in [-1, 1], not dtype {samples.dtype}")
        if samples.size == 0:
            raise ValueError("openSMILE input is empty: the utterance has no audio samples")
        if not np.isfinite(samples).all():
            raise ValueError("openSMILE input holds NaN or infinite samples")
        samples = np.clip(samples.astype(np.float32), -1.0, _FULL_SCALE)
        min_samples = int(np.ceil(self.config.min_seconds * self.SAMPLE_RATE))
        if samples.size < min_samples:
            log.debug("padding a %d-sample clip with silence to %d samples", samples.size, min_samples)
            samples = np.pad(samples, (0, min_samples - samples.size))
        return samples
