"""The text encoder and the fusion head as one model: token ids of each dialogue's utterances -> emotion logits.

The model is called like the fusion head, `model(audio, text, mask)`, except that `text` is the
token ids of the batch's N real utterances (`model.token_cache.TokenBatch`: [N, L], padded to the
longest utterance of the batch) instead of stored text vectors, so one training and evaluation
loop serves both. The dialogue mask [B, T] marks the real utterances of B dialogues. The encoder
turns the ids into N text vectors [N, 4H] in the graph; they are scattered into [B, T, 4H] in
row-major order of the mask (zeros at padding, where the feature pipeline also puts zeros) and go
to the fusion head with the audio features from the store, so one backward pass trains both. Encoding only the real utterances spends no encoder compute on
padded dialogue positions.

A run chooses this with `text_mode = "end_to_end"` (`model.train.RunConfig`); `EndToEndConfig` holds
the encoder, its layer-wise learning rates, the warmup/decay schedule and the DeepSpeed engine
settings (ZeRO-2 and bf16 where the GPU has it, by default).
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from extract.feature_store import FeatureStore
from model.deepspeed_config import EngineConfig
from model.dialogue_data import DialogueDataset
from model.fusion import FusionConfig, build_fusion_model
from model.lr_schedule import LRScheduleConfig
from model.param_groups import ParamGroupsConfig, build_param_groups
from model.text_encoder import TextEncoder, TextEncoderConfig, load_tokenizer
from model.token_cache import TokenBatch, build_token_cache, read_token_split



@dataclass(kw_only=True)
class EndToEndConfig:
    """The text encoder that trains with the fusion head, and how it trains (text_mode = 'end_to_end')."""

    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """Which Hugging Face encoder, its input format, activation checkpointing, freezing."""
    param_groups: ParamGroupsConfig = field(default_factory=ParamGroupsConfig)
    """Layer-wise learning rates of the encoder; the head learns at train.learning_rate."""
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    """Warmup and decay of every group's rate, over train.max_epochs."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """ZeRO stage, precision, gradient clipping and accumulation; they replace train.zero_stage,
    train.precision and train.gradient_clipping, which must stay at their defaults."""
    bucket_by_length: bool = False
    """Batch dialogues of similar longest utterance together: less token padding, less random batches."""


class EndToEndModel(nn.Module):
    """A `TextEncoder` feeding a fusion head: forward(audio, token ids, mask) -> logits."""

    def __init__(self, encoder: TextEncoder, head: nn.Module):
        super().__init__()
        if not getattr(head, "uses_text", True):
            raise ValueError(
                "end-to-end training fine-tunes the text encoder, but this fusion variant does not read text; "
                "choose a variant with text (bimodal, bimodal_no_sca or text)"
            )
        self.encoder = encoder
        self.head = head

    @property
    def uses_audio(self) -> bool:
        """Whether the head reads the audio features."""
        return bool(getattr(self.head, "uses_audio", True))

    @property
    def uses_text(self) -> bool:
        """Always: the text comes from the encoder."""
        return True

    @property
    def frozen(self) -> bool:
        """Whether the encoder keeps its pretrained weights (only the head trains)."""
        return self.encoder.frozen

    def forward(self, audio: torch.Tensor | None, text: TokenBatch, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, classes] from audio [B, T, Da] (or None), the utterances' token ids and the mask [B, T]."""
        vectors = self.encoder(text.input_ids, text.attention_mask)
        real = int(mask.sum())
        if vectors.shape[0] != real:
            raise ValueError(
                f"the batch holds token ids of {vectors.shape[0]} utterances but its mask marks {real}; "
                "build the ids from the same batch's rows (TokenSplit.batch)"
            )
        features = vectors.new_zeros(*mask.shape, vectors.shape[-1]).masked_scatter(mask.unsqueeze(-1), vectors)
        return self.head(audio, features, mask)


def build_end_to_end_model(config: EndToEndConfig, head: FusionConfig, audio_dim: int, seed: int) -> EndToEndModel:
    """The pretrained encoder and a fusion head for its vector width, the head initialised from `seed`."""
    encoder = TextEncoder(config.encoder)
    torch.manual_seed(seed)
    return EndToEndModel(encoder, build_fusion_model(head, audio_dim, encoder.dim))


def build_optimizer(
    model: EndToEndModel, config: EndToEndConfig, head_lr: float, head_weight_decay: float
) -> torch.optim.AdamW:
    """AdamW over layer-wise groups of the encoder (none when frozen) and the head's groups."""
    encoder = model.encoder
    groups = build_param_groups(
        encoder.model,
        encoder.num_layers,
        model.head,
        config.param_groups,
        head_lr=head_lr,
        head_weight_decay=head_weight_decay,
    )
    return torch.optim.AdamW(groups)


def attach_tokens(store: FeatureStore, datasets: dict[str, DialogueDataset], encoder: TextEncoderConfig) -> None:
    """Give each dataset its split's token ids, tokenizing the store once per tokenizer and input format.

    Every rank may build the cache at once: each writes its own temporary file and renames it
    onto the same name, so readers always find a whole file.
    """
    path = build_token_cache(store, load_tokenizer(encoder), encoder)
    for split, dataset in datasets.items():
        dataset.tokens = read_token_split(path, split, dataset.keys)
