"""OpenSmileExtractor on synthetic voices, with the real openSMILE engine."""

import pickle

import numpy as np
import opensmile
import pytest

from cluster.config import ConfigError, from_dict
from extract.opensmile_features import EMO_LARGE_CONFIG, OpenSmileConfig, OpenSmileExtractor

SR = OpenSmileExtractor.SAMPLE_RATE

# The emo_large definition from the paper's issue: 56 descriptors, each smoothed ("_sma"),
# with delta and delta-delta, and 39 functionals per contour.
LLD_NAMES = (
    ["pcm_LOGenergy"]
    + [f"mfcc[{i}]" for i in range(13)]
    + [f"pcm_fftMag_melspec[{i}]" for i in range(26)]
    + ["pcm_zcr", "voiceProb", "F0", "F0env"]
    + [f"pcm_fftMag_fband{band}" for band in ("0-250", "0-650", "250-650", "1000-4000")]
    + [f"pcm_fftMag_spectralRollOff{point}.0" for point in (25, 50, 75, 90)]
    + [f"pcm_fftMag_spectral{name}" for name in ("Flux", "Centroid", "MaxPos", "MinPos")]
)
FUNCTIONALS = (
    ["range", "maxPos", "minPos", "maxameandist", "minameandist"]
    + ["linregc1", "linregc2", "linregerrA", "linregerrQ", "qregc1", "qregc2", "qregc3", "qregerrA", "qregerrQ"]
    + ["centroid", "variance", "stddev", "skewness", "kurtosis"]
    + ["quartile1", "quartile2", "quartile3", "iqr1-2", "iqr2-3", "iqr1-3", "percentile95.0", "percentile98.0"]
    + ["zcr", "numPeaks", "meanPeakDist", "peakMean", "peakMeanMeanDist"]
    + ["amean", "absmean", "qmean", "nzabsmean", "nzqmean", "nzgmean", "nnz"]
)


def contour_name(lld: str, suffix: str) -> str:
    """openSMILE puts the suffix before an array index: mfcc[3] + _sma_de -> mfcc_sma_de[3]."""
    if lld.endswith("]"):
        base, index = lld[:-1].split("[")
        return f"{base}{suffix}[{index}]"
    return lld + suffix


def voice(f0: float, seconds: float, seed: int = 0, amplitude: float = 0.4) -> np.ndarray:
    """A harmonic tone whose F0 glides +-15% around `f0`, with a syllable-like envelope and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = f0 * (1.0 + 0.15 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t) ** 2
    signal = amplitude * envelope * tone / np.abs(tone).max() + 0.01 * rng.standard_normal(t.size)
    return signal.astype(np.float32)


@pytest.fixture(scope="module")
def emo_large() -> OpenSmileExtractor:
    return OpenSmileExtractor(OpenSmileConfig())


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    return voice(140.0, 2.0)


def test_emo_large_has_6552_named_unique_finite_features(emo_large, utterance):
    features = emo_large(utterance)
    assert features.dtype == np.float32
    assert features.shape == (6552,) and emo_large.dim == 6552
    assert np.isfinite(features).all()
    assert len(set(emo_large.feature_names)) == 6552
    expected = [
        f"{contour_name(lld, suffix)}_{functional}"
        for suffix in ("_sma", "_sma_de", "_sma_de_de")
        for lld in LLD_NAMES
        for functional in FUNCTIONALS
    ]
    assert len(LLD_NAMES) == 56 and len(FUNCTIONALS) == 39
    assert sorted(emo_large.feature_names) == sorted(expected)
    assert "mfcc_sma[3]_quartile1" in emo_large.feature_names
    assert "mfcc_sma_de[3]_quartile1" in emo_large.feature_names
    # a voiced tone has non-constant contours, so the vector is not trivially zero
    assert np.count_nonzero(features) > 6000


def test_contours_are_smoothed_descriptors_and_regression_deltas(utterance):
    def contour(level: str, column: str) -> np.ndarray:
        smile = opensmile.Smile(feature_set=str(EMO_LARGE_CONFIG), feature_level=level)
        return smile.process_signal(utterance, SR)[column].to_numpy(dtype=np.float64)

    raw = contour("log_energy", "pcm_LOGenergy")
    smoothed = contour("lld", "pcm_LOGenergy_sma")
    delta = contour("lld_de", "pcm_LOGenergy_sma_de")
    # one frame every 10 ms
    assert abs(raw.size - utterance.size / SR / 0.010) <= 2
    # 3-frame moving average, away from the edges
    np.testing.assert_allclose(smoothed[1 : raw.size - 1], np.convolve(raw, np.ones(3) / 3, mode="valid"), atol=1e-4)
    # regression delta over +-2 frames: sum_k k (x[t+k] - x[t-k]) / (2 (1 + 4))
    t = np.arange(2, smoothed.size - 2)
    regression = (smoothed[t + 1] - smoothed[t - 1] + 2 * (smoothed[t + 2] - smoothed[t - 2])) / 10
    np.testing.assert_allclose(delta[t], regression, atol=1e-4)


def test_same_clip_gives_same_vector(emo_large, utterance):
    first = emo_large(utterance)
    again = emo_large(utterance.copy())
    other_instance = pickle.loads(pickle.dumps(emo_large))(utterance)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other_instance)


def test_full_scale_samples_do_not_wrap_round(emo_large):
    t = np.arange(SR) / SR
    # a sine driven into hard clipping: long runs of exactly +1.0 and -1.0
    loud = np.clip(1.5 * np.sin(2 * np.pi * 200 * t), -1.0, 1.0).astype(np.float32)
    zcr = emo_large.feature_names.index("pcm_zcr_sma_amean")
    ours = emo_large(loud)[zcr]
    slightly_lower = emo_large(np.clip(loud, -0.999, 0.999))[zcr]
    naive = opensmile.Smile(feature_set=str(EMO_LARGE_CONFIG), feature_level="func")
    wrapped = naive.process_signal(loud, SR).to_numpy().reshape(-1)[zcr]
    # +1.0 cast naively becomes -32768: every positive plateau adds two crossings
    assert wrapped > 1.5 * ours
    assert ours == pytest.approx(slightly_lower, rel=0.02)


def test_higher_voice_has_higher_f0(emo_large):
    # emo_large takes pitch from 25 ms frames, too short for a confident ACF peak below about
    # 150 Hz, so the low voice here is a low alto rather than a bass
    low = emo_large(voice(190.0, 1.5, seed=1))
    high = emo_large(voice(300.0, 1.5, seed=2))
    names = emo_large.feature_names
    for column in ("F0_sma_quartile2", "F0_sma_nzabsmean", "F0env_sma_amean"):
        i = names.index(column)
        assert high[i] > 1.3 * low[i] > 0, column
    median = names.index("F0_sma_quartile2")
    assert 160 < low[median] < 220 and 260 < high[median] < 340


def test_batch_matches_single_calls(emo_large):
    clips = [voice(120.0, 0.5, seed=3), voice(200.0, 0.8, seed=4)]
    batch = emo_large.extract_batch(clips, progress=False)
    assert batch.shape == (2, 6552) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], emo_large(clips[1]))


def test_very_short_clip_is_padded_to_finite_features(emo_large):
    features = emo_large(voice(150.0, 0.02))
    assert np.isfinite(features).all()
    assert not np.array_equal(features, emo_large(np.zeros(SR // 10, dtype=np.float32)))


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros((2, 1600), dtype=np.float32), "mono"),
        (np.zeros(1600, dtype=np.int16), "float"),
        (np.full(1600, np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(emo_large, samples, message):
    with pytest.raises(ValueError, match=message):
        emo_large(samples)


@pytest.mark.parametrize(("feature_set", "dim"), [("ComParE_2016", 6373), ("eGeMAPSv02", 88)])
def test_alternative_feature_sets(feature_set, dim):
    extractor = OpenSmileExtractor(OpenSmileConfig(feature_set=feature_set))
    features = extractor(voice(150.0, 1.0))
    assert extractor.dim == dim == len(set(extractor.feature_names))
    assert features.shape == (dim,) and np.isfinite(features).all()
    # shorter than ComParE's and eGeMAPS' 60 ms pitch frame, so only the padding saves it
    assert np.isfinite(extractor(voice(150.0, 0.03))).all()


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="feature_set"):
        OpenSmileConfig(feature_set="emo_larg")
    with pytest.raises(ValueError, match="min_seconds"):
        OpenSmileConfig(min_seconds=0.01)
    with pytest.raises(ConfigError, match="feature_set.*Did you mean 'emo_large'"):
        from_dict(OpenSmileConfig, {"feature_set": "emo_larg"})
