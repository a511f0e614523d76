"""Tiny random WavLM and HuBERT encoders, saved as local Hugging Face model folders.

Tests, benches and offline demos need a speech encoder that downloads nothing. These are
the real architectures (the 7-layer convolutional feature encoder with its 320-sample
stride, the convolutional position embedding, transformer layers) at a few channels wide,
with seeded random weights and a `Wav2Vec2FeatureExtractor`, so `AutoModel` and
`AutoFeatureExtractor` load the folder like any hub model.

The two kinds differ where padding matters, as their hub checkpoints do:
- wavlm: layer-norm feature encoder and an extractor that returns an attention mask
  (like microsoft/wavlm-base-plus), so batches are padded and masked;
- hubert: group-norm feature encoder and no attention mask (like facebook/hubert-base-ls960),
  so each utterance runs alone.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel


@dataclass(kw_only=True)
class TinySpeechEncoderConfig:
    """Shape of a tiny speech encoder."""

    kind: Literal["wavlm", "hubert"] = "wavlm"
    """Architecture: WavLM (layer norm, attention mask) or HuBERT (group norm, no mask)."""
    hidden_size: int = 16
    """Width of the transformer layers: the stored width per layer and statistic."""
    num_layers: int = 2
    """Transformer layers; the encoder gives num_layers + 1 hidden states."""
    conv_channels: int = 8
    """Channels of each of the 7 feature-encoder convolutions."""
    seed: int = 0
    """Seed of the random weights."""

    def __post_init__(self) -> None:
        if self.kind not in ("wavlm", "hubert"):
            raise ValueError(f"kind must be 'wavlm' or 'hubert', not {self.kind!r}")
        if self.hidden_size < 2 or self.hidden_size % 2:
            raise ValueError(f"hidden_size must be even and at least 2 (2 attention heads), not {self.hidden_size}")
        if self.num_layers < 1 or self.conv_channels < 1:
            raise ValueError("num_layers and conv_channels must be at least 1")


def build_tiny_speech_encoder(folder: str | Path, config: TinySpeechEncoderConfig) -> Path:
    """Write a random tiny encoder and its feature extractor into `folder`; return the folder."""
    folder = Path(folder)
    shape = dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=2,
        intermediate_size=2 * config.hidden_size,
        conv_dim=(config.conv_channels,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(config.seed)
    if config.kind == "wavlm":
        model = WavLMModel(WavLMConfig(feat_extract_norm="layer", num_buckets=32, max_bucket_distance=80, **shape))
    else:
        model = HubertModel(HubertConfig(feat_extract_norm="group", **shape))
    model.eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=config.kind == "wavlm",
    ).save_pretrained(folder)
    return folder
