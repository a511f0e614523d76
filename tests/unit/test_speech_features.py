"""The speech family on tiny random WavLM, HuBERT and Whisper encoders built here: widths, layers, pooling, padding."""

import numpy as np
import pytest
import torch

from cluster.config import ConfigError, from_dict
from extract.speech_features import (
    SpeechEncoderError,
    SpeechFeatureConfig,
    SpeechFeatureExtractor,
    pool_frames,
    speech_feature_dim,
)
from extract.tiny_speech_encoder import TinySpeechEncoderConfig, build_tiny_speech_encoder
from model.dialogue_data import stored_layer_count

HIDDEN = 16
LAYERS = 2


@pytest.fixture(scope="module", params=["wavlm", "hubert", "whisper"])
def encoder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, build_tiny_speech_encoder(
        folder, TinySpeechEncoderConfig(kind=request.param, hidden_size=HIDDEN, num_layers=LAYERS)
    )


def clips(lengths: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = [np.arange(n) / 16000 for n in lengths]
    return [(0.3 * np.sin(2 * np.pi * 180 * x) + 0.05 * rng.standard_normal(x.size)).astype(np.float32) for x in t]


@pytest.mark.parametrize(
    ("layers", "pooling", "width"),
    [
        ("mean_last", "mean", HIDDEN),
        ("mean_last", "mean_std", 2 * HIDDEN),
        ("all", "mean", (LAYERS + 1) * HIDDEN),
        ("all", "mean_std", (LAYERS + 1) * 2 * HIDDEN),
    ],
)
def test_width_follows_layers_and_pooling(encoder, layers, pooling, width):
    _, folder = encoder
    config = SpeechFeatureConfig(model=str(folder), layers=layers, last_layers=2, pooling=pooling)
    extractor = SpeechFeatureExtractor(config)
    features = extractor(clips((16000, 9000)))
    assert features.shape == (2, width) == (2, speech_feature_dim(config))
    assert features.dtype == np.float32 and np.isfinite(features).all()
    assert len(extractor.feature_names) == width
    assert stored_layer_count(extractor.feature_names) == (LAYERS + 1 if layers == "all" else 1)
    # Two different clips give two different vectors.
    assert np.abs(features[0] - features[1]).max() > 1e-4


def test_padding_in_a_batch_does_not_change_an_utterance(encoder):
    kind, folder = encoder
    config = SpeechFeatureConfig(model=str(folder), layers="all", pooling="mean_std", batch_size=4)
    extractor = SpeechFeatureExtractor(config)
    assert extractor.uses_mask == (kind == "wavlm") and extractor.fixed_length == (kind == "whisper")
    batch = clips((8000, 40000, 16321, 24000))
    together = extractor(batch)
    for index, clip in enumerate(batch):
        alone = extractor([clip])[0]
        np.testing.assert_allclose(together[index], alone, rtol=1e-4, atol=1e-5)
    # The longest clip pads the others by seconds, so a mask that leaked would show.
    assert np.abs(together[0] - together[1]).max() > 1e-3


def test_mean_last_is_the_mean_of_the_stored_layers(encoder):
    _, folder = encoder
    every = SpeechFeatureExtractor(SpeechFeatureConfig(model=str(folder), layers="all"))
    last_two = SpeechFeatureExtractor(SpeechFeatureConfig(model=str(folder), layers="mean_last", last_layers=2))
    batch = clips((12000, 20000))
    per_layer = every(batch).reshape(2, LAYERS + 1, HIDDEN)
    np.testing.assert_allclose(last_two(batch), per_layer[:, -2:].mean(1), rtol=1e-4, atol=1e-5)


def test_pooling_counts_only_real_frames():
    states = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(1, 2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pooled = pool_frames(states, mask, "mean_std")
    np.testing.assert_allclose(pooled[0, :3], states[0, 0, :2].mean(0))
    np.testing.assert_allclose(pooled[0, 3:], states[0, 0, :2].std(0, unbiased=False))
    np.testing.assert_allclose(pooled[1, :3], states[0, 1].mean(0))


def test_missing_model_and_bad_settings_are_named(tmp_path):
    with pytest.raises(SpeechEncoderError, match="speech model folder .* does not exist"):
        speech_feature_dim(SpeechFeatureConfig(model=str(tmp_path / "nowhere")))
    with pytest.raises(SpeechEncoderError, match="not available offline.*hf download"):
        speech_feature_dim(SpeechFeatureConfig(model="nobody-has/this-speech-model"))
    with pytest.raises(SpeechEncoderError, match="cannot load a speech encoder from folder"):
        speech_feature_dim(SpeechFeatureConfig(model=str(tmp_path)))
    with pytest.raises(ConfigError, match="layers"):
        from_dict(SpeechFeatureConfig, {"layers": "some"})
    with pytest.raises(ConfigError, match="last_layers"):
        from_dict(SpeechFeatureConfig, {"last_layers": 0})


def test_too_many_last_layers_is_refused(encoder):
    _, folder = encoder
    with pytest.raises(SpeechEncoderError, match="hidden states"):
        speech_feature_dim(SpeechFeatureConfig(model=str(folder), last_layers=LAYERS + 2))
