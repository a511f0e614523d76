"""The fusion network: shapes, the padding mask, gradients, the join switch, and that it can learn."""

import pytest
import torch

from launch.config import ConfigError, from_dict
from model.fusion import FusionConfig, build_fusion_model

VARIANTS = ("bimodal", "bimodal_no_sca", "text", "audio")
AUDIO_DIM, TEXT_DIM = 40, 24


def small_config(variant: str, **overrides) -> FusionConfig:
    return FusionConfig(variant=variant, hidden_size=16, attention_heads=2, feedforward_size=32,
                        classifier_hidden=16, **overrides)


def batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    audio = torch.randn(len(lengths), longest, AUDIO_DIM, generator=generator)
    text = torch.randn(len(lengths), longest, TEXT_DIM, generator=generator)
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    return audio, text, mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shape(variant):
    model = build_fusion_model(small_config(variant), AUDIO_DIM, TEXT_DIM)
    audio, text, mask = batch([5, 3, 1])
    assert model(audio, text, mask).shape == (3, 5, 7)
    assert model.uses_audio == (variant != "text") and model.uses_text == (variant != "audio")


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_never_changes_real_outputs(variant):
    torch.manual_seed(0)
    model = build_fusion_model(small_config(variant), AUDIO_DIM, TEXT_DIM).eval()
    audio, text, mask = batch([6, 2, 4])
    with torch.no_grad():
        logits = model(audio, text, mask)
        noisy_audio, noisy_text = audio.clone(), text.clone()
        noisy_audio[~mask] = 1e3 * torch.randn(int((~mask).sum()), AUDIO_DIM)
        noisy_text[~mask] = -1e3
        perturbed = model(noisy_audio, noisy_text, mask)
        alone = model(audio[1:2, :2], text[1:2, :2], mask[1:2, :2])
    assert torch.isfinite(logits).all() and torch.isfinite(perturbed).all()
    torch.testing.assert_close(perturbed[mask], logits[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], logits[1, :2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_reaches_every_parameter(variant):
    torch.manual_seed(1)
    model = build_fusion_model(small_config(variant, dropout=0.0, input_dropout=0.0), AUDIO_DIM, TEXT_DIM)
    audio, text, mask = batch([4, 3])
    labels = torch.randint(0, 7, mask.shape)
    loss = torch.nn.functional.cross_entropy(model(audio, text, mask)[mask], labels[mask])
    loss.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_variants_hold_only_their_parts():
    names = {v: {n.split(".")[0] for n, _ in build_fusion_model(small_config(v), AUDIO_DIM, TEXT_DIM).named_parameters()}
             for v in VARIANTS}
    assert names["bimodal"] == {"audio", "text", "sca", "mid", "classifier"}
    assert names["bimodal_no_sca"] == {"audio", "text", "mid", "classifier"}
    assert names["text"] == {"text", "classifier"}
    assert names["audio"] == {"audio", "classifier"}


def test_join_switch_changes_the_network():
    concat = build_fusion_model(small_config("bimodal"), AUDIO_DIM, TEXT_DIM)
    residual = build_fusion_model(small_config("bimodal", sublayer_join="residual"), AUDIO_DIM, TEXT_DIM)
    projections = [n for n, _ in concat.named_parameters() if ".project." in n]
    assert len(projections) == 2 * 2 * 4 * 2  # layers x blocks x joins x (weight, bias)
    assert not any(".project." in n for n, _ in residual.named_parameters())
    assert sum(p.numel() for p in concat.parameters()) > sum(p.numel() for p in residual.parameters())


def test_missing_modality_is_a_clear_error():
    model = build_fusion_model(small_config("bimodal"), AUDIO_DIM, TEXT_DIM)
    audio, _, mask = batch([2])
    with pytest.raises(ValueError, match="needs text features"):
        model(audio, None, mask)
    with pytest.raises(ValueError, match="reads audio, but the audio width is 0"):
        build_fusion_model(small_config("audio"), 0, TEXT_DIM)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"variant": "trimodal"}, "must be one of"),
        ({"hidden_size": 30, "attention_heads": 4}, "multiple of attention_heads"),
        ({"dropout": 1.0}, "dropout must be within"),
        ({"hidden_size": 15, "attention_heads": 1}, "must be even"),
    ],
)
def test_bad_config_is_a_clear_error(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(FusionConfig, data)


def test_overfits_a_tiny_batch():
    torch.manual_seed(2)
    model = build_fusion_model(small_config("bimodal", dropout=0.0, input_dropout=0.0), AUDIO_DIM, TEXT_DIM)
    audio, text, mask = batch([6, 5, 4], seed=3)
    labels = torch.randint(0, 7, mask.shape, generator=torch.Generator().manual_seed(4))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(audio, text, mask)[mask], labels[mask])
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
