"""The learned weighted sum of stored speech-encoder layers in front of the fusion head."""

import torch

from model.fusion import FusionConfig, build_fusion_model
from model.layer_mix import LayerBlock, LayerMix, LayerMixedHead, mixed_width

BLOCK = LayerBlock(offset=3, layers=4, width=5)
AUDIO_DIM = 3 + 4 * 5 + 2


def test_an_untrained_mix_is_the_mean_of_the_layers_and_leaves_other_columns_alone():
    audio = torch.randn(2, 6, AUDIO_DIM)
    mixed = LayerMix([BLOCK])(audio)
    assert mixed.shape == (2, 6, mixed_width(AUDIO_DIM, [BLOCK])) == (2, 6, 3 + 5 + 2)
    torch.testing.assert_close(mixed[..., :3], audio[..., :3])
    torch.testing.assert_close(mixed[..., 3:8], audio[..., 3:23].unflatten(-1, (4, 5)).mean(-2))
    torch.testing.assert_close(mixed[..., 8:], audio[..., 23:])


def test_the_head_learns_the_layer_weights_and_padding_stays_harmless():
    config = FusionConfig(variant="audio", hidden_size=4, feedforward_size=8, classifier_hidden=8)
    mix = LayerMix([BLOCK])
    model = LayerMixedHead(mix, build_fusion_model(config, mixed_width(AUDIO_DIM, [BLOCK]), 0)).eval()
    assert model.uses_audio and not model.uses_text
    audio = torch.randn(2, 5, AUDIO_DIM)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    logits = model(audio, None, mask)
    assert logits.shape == (2, 5, 7)
    logits[mask].sum().backward()
    assert mix.layer_logits[0].grad is not None and mix.layer_logits[0].grad.abs().sum() > 0
    padded = audio.clone()
    padded[1, 3:] = 100.0
    torch.testing.assert_close(model(padded, None, mask)[mask], logits[mask].detach())
