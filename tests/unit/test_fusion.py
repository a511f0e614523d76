"""The fusion network: shapes, the padding mask, gradients, the join switch, the SCA paths, config errors, learning."""

import pytest
import torch
import torch.nn.functional as F

from cluster.config import ConfigError, from_dict
from model.fusion import FusionConfig, build_fusion_model
from model.sca import MaskedAttention, SCAUnit

VARIANTS = ("bimodal", "bimodal_no_sca", "text", "audio")
AUDIO_DIM, TEXT_DIM = 40, 24


def small_config(variant: str, **overrides) -> FusionConfig:
    sizes = {"hidden_size": 8, "feedforward_size": 32, "classifier_hidden": 16} | overrides
    return FusionConfig(variant=variant, **sizes)


def batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    audio = torch.randn(len(lengths), longest, AUDIO_DIM, generator=generator)
    text = torch.randn(len(lengths), longest, TEXT_DIM, generator=generator)
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    return audio, text, mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shape_and_modalities(variant):
    model = build_fusion_model(small_config(variant), AUDIO_DIM, TEXT_DIM)
    audio, text, mask = batch([5, 3, 1])
    assert model(audio, text, mask).shape == (3, 5, 7)
    assert model.uses_audio == (variant != "text") and model.uses_text == (variant != "audio")
    unread_audio = None if variant == "text" else audio
    unread_text = None if variant == "audio" else text
    assert model(unread_audio, unread_text, mask).shape == (3, 5, 7)


MASK_CASES = [
    *[(variant, {}) for variant in VARIANTS],
    ("bimodal", {"attention_heads": 4}),
    ("bimodal", {"sublayer_join": "residual"}),
    ("bimodal", {"audio_projection": 12}),
    ("bimodal", {"mid_fusion_input": "encodings"}),
    ("bimodal_no_sca", {"mid_fusion_input": "encodings"}),
]


@pytest.mark.parametrize("variant, overrides", MASK_CASES)
def test_padding_never_changes_real_outputs(variant, overrides):
    torch.manual_seed(0)
    model = build_fusion_model(small_config(variant, **overrides), AUDIO_DIM, TEXT_DIM).eval()
    audio, text, mask = batch([6, 2, 4, 0])
    with torch.no_grad():
        logits = model(audio, text, mask)
        noisy_audio, noisy_text = audio.clone(), text.clone()
        noisy_audio[~mask] = 1e3 * torch.randn(int((~mask).sum()), AUDIO_DIM)
        noisy_text[~mask] = -1e3
        perturbed = model(noisy_audio, noisy_text, mask)
        alone = model(audio[1:2, :2], text[1:2, :2], mask[1:2, :2])
        longest_alone = model(audio[:1], text[:1], mask[:1])
    assert torch.isfinite(logits).all() and torch.isfinite(perturbed).all()  # padded rows and the empty dialogue too
    torch.testing.assert_close(perturbed[mask], logits[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], logits[1, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(longest_alone[0], logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_reaches_every_parameter(variant):
    torch.manual_seed(1)
    model = build_fusion_model(small_config(variant, attention_heads=2), AUDIO_DIM, TEXT_DIM)
    audio, text, mask = batch([4, 3])
    labels = torch.randint(0, 7, mask.shape)
    loss = F.cross_entropy(model(audio, text, mask)[mask], labels[mask])
    loss.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_variants_hold_only_their_parts():
    models = {v: build_fusion_model(small_config(v), AUDIO_DIM, TEXT_DIM) for v in VARIANTS}
    names = {v: {name.split(".")[0] for name, _ in model.named_parameters()} for v, model in models.items()}
    assert names["bimodal"] == {"audio", "text", "sca", "mid", "classifier"}
    assert names["bimodal_no_sca"] == {"audio", "text", "mid", "classifier"}
    assert names["text"] == {"text", "classifier"}
    assert names["audio"] == {"audio", "classifier"}


def test_join_switch_changes_the_parameters():
    concat = dict(build_fusion_model(small_config("bimodal"), AUDIO_DIM, TEXT_DIM).named_parameters())
    residual = dict(build_fusion_model(small_config("bimodal", sublayer_join="residual"), AUDIO_DIM, TEXT_DIM)
                    .named_parameters())
    only_concat = set(concat) - set(residual)
    assert set(residual) < set(concat)
    # 2 layers x 4 blocks x 2 joins, each a projection of [x ⊕ f(x)] (2d wide) back to d, with a bias.
    assert len(only_concat) == 2 * 4 * 2 * 2
    assert all(".project." in name for name in only_concat)
    d = 2 * 8
    assert all(concat[name].shape == (d, 2 * d) for name in only_concat if name.endswith("weight"))


def test_mid_fusion_reads_the_inputs_or_the_encodings():
    torch.manual_seed(2)
    inputs = build_fusion_model(small_config("bimodal"), AUDIO_DIM, TEXT_DIM)
    encodings = build_fusion_model(small_config("bimodal", mid_fusion_input="encodings"), AUDIO_DIM, TEXT_DIM)
    shapes = {name: tuple(p.shape) for name, p in encodings.mid.named_parameters()}
    assert {name.split(".")[0] for name in shapes} == {"joint_lstm", "feedforward"}, "no LSTMs of its own over x_a, x_t"
    d = 2 * 8
    assert shapes["joint_lstm.lstm.weight_ih_l0"] == (4 * 8, 2 * d), "the BiLSTM joins H_a ⊕ H_t"
    assert {name.split(".")[0] for name, _ in inputs.mid.named_parameters()} == {
        "audio_lstm", "text_lstm", "joint_lstm", "feedforward"
    }
    assert inputs.mid.audio_lstm.lstm.num_layers == 2 and inputs.mid.audio_lstm.lstm.input_size == AUDIO_DIM
    # With 'encodings' the mid-level path is fed by the modality encoders: their gradient flows through it.
    audio, text, mask = batch([4, 3])
    h_a = torch.randn(2, 4, d, requires_grad=True)
    h_t = torch.randn(2, 4, d, requires_grad=True)
    encodings.mid(audio, text, h_a, h_t, mask).sum().backward()
    assert h_a.grad.abs().sum() > 0 and h_t.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mid_fusion_input"):
        small_config("bimodal", mid_fusion_input="both")


def test_cross_path_mixes_modalities_and_self_path_does_not():
    torch.manual_seed(3)
    unit = SCAUnit(layers=2, size=16, heads=2, feedforward_size=32, dropout=0.0, join="concat").eval()
    audio, text = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    with torch.no_grad():
        cross_a, cross_t, self_a, self_t = unit(audio, text, mask)
        other = unit(audio, text + torch.randn_like(text), mask)
    torch.testing.assert_close(other[2], self_a)  # audio's self path never reads text
    assert not torch.allclose(other[0][mask], cross_a[mask], atol=1e-3)  # audio's cross path does
    assert not torch.allclose(other[3][mask], self_t[mask], atol=1e-3)


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_matches_scaled_dot_product_attention(heads):
    torch.manual_seed(4)
    attention = MaskedAttention(16, heads, dropout=0.0)
    query, context = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    context_mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(2, -1, heads, 16 // heads).transpose(1, 2)

    expected = F.scaled_dot_product_attention(
        split(attention.query(query)), split(attention.key(context)), split(attention.value(context)),
        attn_mask=context_mask[:, None, None, :],
    ).transpose(1, 2).reshape(2, 3, 16)
    torch.testing.assert_close(attention(query, context, context_mask), attention.output(expected))


def test_bad_inputs_are_clear_errors():
    model = build_fusion_model(small_config("bimodal"), AUDIO_DIM, TEXT_DIM)
    audio, text, mask = batch([2, 1])
    with pytest.raises(ValueError, match="reads text features, but none were given"):
        model(audio, None, mask)
    with pytest.raises(ValueError, match=r"audio features must be \[batch, utterances, 40\]"):
        model(audio[..., :30], text, mask)
    with pytest.raises(ValueError, match="reads audio, but the audio width is 0"):
        build_fusion_model(small_config("audio"), 0, TEXT_DIM)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"variant": "trimodal"}, "must be one of"),
        ({"sublayer_join": "sum"}, "sublayer_join"),
        ({"hidden_size": 15, "attention_heads": 4}, r"attention_heads \(4\) must divide"),
        ({"hidden_size": 0}, "hidden_size must be at least 1"),
        ({"dropout": 1.0}, "dropout must be within"),
        ({"audio_projection": 0}, "audio_projection must be at least 1"),
        ({"hidden_sise": 64}, "Did you mean 'hidden_size'"),
    ],
)
def test_bad_config_is_a_clear_error(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(FusionConfig, data)


def test_bad_config_is_rejected_without_the_loader():
    with pytest.raises(ValueError, match="sublayer_join must be 'concat' or 'residual'"):
        FusionConfig(sublayer_join="sum")


@pytest.mark.parametrize("variant", ["bimodal", "audio"])
def test_overfits_a_tiny_batch(variant):
    torch.manual_seed(2)
    model = build_fusion_model(small_config(variant, dropout=0.0, input_dropout=0.0), AUDIO_DIM, TEXT_DIM)
    audio, text, mask = batch([6, 5, 4], seed=3)
    labels = torch.randint(0, 7, mask.shape, generator=torch.Generator().manual_seed(4))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(audio, text, mask)[mask], labels[mask])
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
