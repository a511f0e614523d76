"""Tiny random WavLM, HuBERT and Whisper encoders, saved as local Hugging Face model folders.

Tests, benches and offline demos need a speech encoder that downloads nothing. These are
the real architectures (the 7-layer convolutional feature encoder with its 320-sample
stride, the convolutional position embedding, transformer layers) at a few channels wide,
with seeded random weights and a `Wav2Vec2FeatureExtractor`, so `AutoModel` and
`AutoFeatureExtractor` load the folder like any hub model.

The two kinds differ where padding matters, as their hub checkpoints do:
- wavlm: layer-norm feature encoder and an extractor that returns an attention mask
  (like microsoft/wavlm-base-plus), so batches are padded and masked;
- hubert: group-norm feature encoder and no attention mask (like facebook/hubert-base-ls960),
  so each utterance runs alone;
- whisper: an encoder-decoder on 80 log-mel bins whose feature extractor pads every clip to 30 s
  (like openai/whisper-base); the speech family uses its encoder.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2FeatureExtractor,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)


@dataclass(kw_only=True)
class TinySpeechEncoderConfig:
    """Shape of a tiny speech encoder."""

    kind: Literal["wavlm", "hubert", "whisper"] = "wavlm"
    """Architecture: WavLM (layer norm, attention mask), HuBERT (group norm, no mask) or Whisper (30-s log-mels)."""
    hidden_size: int = 16
    """Width of the transformer layers: the stored width per layer and statistic."""
    num_layers: int = 2
    """Transformer layers; the encoder gives num_layers + 1 hidden states."""
    conv_channels: int = 8
    """Channels of each of the 7 feature-encoder convolutions."""
    seed: int = 0
    """Seed of the random weights."""

    def __post_init__(self) -> None:
        if self.kind not in ("wavlm", "hubert", "whisper"):
            raise ValueError(f"kind must be 'wavlm', 'hubert' or 'whisper', not {self.kind!r}")
        if self.hidden_size < 2 or self.hidden_size % 2:
            raise ValueError(f"hidden_size must be even and at least 2 (2 attention heads), not {self.hidden_size}")
        if self.num_layers < 1 or self.conv_channels < 1:
            raise ValueError("num_layers and conv_channels must be at least 1")


def build_tiny_speech_encoder(folder: str | Path, config: TinySpeechEncoderConfig) -> Path:
    """Write a random tiny encoder and its feature extractor into `folder`; return the folder."""
    folder = Path(folder)
    torch.manual_seed(config.seed)
    if config.kind == "whisper":
        _build_tiny_whisper(folder, config)
        return folder
    shape = dict(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=2,
        intermediate_size=2 * config.hidden_size,
        conv_dim=(config.conv_channels,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
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


def _build_tiny_whisper(folder: Path, config: TinySpeechEncoderConfig) -> None:
    width = config.hidden_size
    whisper = WhisperConfig(
        d_model=width,
        encoder_layers=config.num_layers,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * width,
        decoder_ffn_dim=2 * width,
        num_mel_bins=80,
        vocab_size=64,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=2,
        max_target_positions=16,
    )
    WhisperModel(whisper).eval().save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
