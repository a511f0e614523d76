"""The text encoder and the fusion head as one model: token ids of each dialogue's utterances -> emotion logits.

The model is called like the fusion head, `model(audio, text, mask)`, except that `text` is the
token ids of the batch's N real utterances (`model.token_cache.TokenBatch`: [N, L], padded to the
longest utterance of the batch) instead of stored text vectors, so one training and evaluation
loop serves both. The dialogue mask [B, T] marks the real utterances of B dialogues. The encoder
turns the ids into N text vectors [N, 4H] in the graph; they are standardised, scattered into
[B, T, 4H] in row-major order of the mask (zeros at padding, where the feature pipeline also puts
zeros) and go to the fusion head with the audio features from the store, so one backward pass
trains both. Encoding only the real utterances spends no encoder compute on padded positions.

The head sees text vectors on one scale in every text mode. Stored vectors ('frozen',
'finetuned') are standardised column by column with the train split's mean and standard
deviation (`model.dialogue_data`). Here the same transform is fitted once, before the first step,
on the pretrained encoder's vectors of the train split (`fit_text_standardisation`), and then held
fixed in the model's buffers (saved with every checkpoint), so the encoder learns on that fixed
scale. One difference: a column's scale is at least the median column's standard deviation. Some
columns of a pretrained encoder's first-token vectors barely vary; dividing by their tiny spread
turns the encoder's first updates into huge jumps of those inputs, and on the demo corpus it cost
end-to-end text 27 points of weighted F1 (49 against 76.5 without any standardisation). With the
floor, the columns that carry the spread are z-scored as in a frozen run and the quiet ones are
not blown up. A run with `data.standardize = false` skips standardisation in every mode.

A run chooses this with `text_mode = "end_to_end"` (`model.train.RunConfig`, the default whenever
the variant reads text); `EndToEndConfig` holds the encoder, its layer-wise learning rates, the
warmup/decay schedule and the DeepSpeed engine settings (ZeRO-2 and bf16 where the GPU has it, by
default).
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from extract.feature_store import FeatureStore
from model.deepspeed_config import EngineConfig
from model.dialogue_data import ColumnStatistics, DialogueDataset
from model.fusion import FusionConfig, build_fusion_model
from model.lr_schedule import LRScheduleConfig
from model.param_groups import ParamGroupsConfig, build_optimizer, build_param_groups
from model.text_encoder import TextEncoder, TextEncoderConfig, load_tokenizer
from model.token_cache import TokenBatch, TokenSplit, build_token_cache, read_token_split

# Utterances per forward pass when the encoder only encodes (no gradient): bounds activation memory.
ENCODE_BATCH = 64


@dataclass(kw_only=True)
class EndToEndConfig:
    """The text encoder that trains with the fusion head, and how it trains (text_mode = 'end_to_end')."""

    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """Which Hugging Face encoder ('store': the one the store's text family came from), its input
    format, activation checkpointing, freezing."""
    param_groups: ParamGroupsConfig = field(default_factory=ParamGroupsConfig)
    """Layer-wise learning rates and decoupled weight decay of the encoder; the head learns at
    train.learning_rate with train.weight_decay, as in every mode."""
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    """Warmup and decay of every group's rate, in epochs."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """ZeRO stage, precision and gradient clipping; they replace train.zero_stage, train.precision
    and train.gradient_clipping, which must stay at their defaults."""
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
        # The standardisation of the text vectors: identity until `fit_text_standardisation`.
        self.register_buffer("text_mean", torch.zeros(encoder.dim))
        self.register_buffer("text_scale", torch.ones(encoder.dim))

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

    def text_vectors(self, text: TokenBatch) -> torch.Tensor:
        """Standardised text vectors [N, 4H] of the batch's utterances."""
        vectors = self.encoder(text.input_ids, text.attention_mask)
        return (vectors - self.text_mean) / self.text_scale

    def forward(self, audio: torch.Tensor | None, text: TokenBatch, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, classes] from audio [B, T, Da] (or None), the utterances' token ids and the mask [B, T]."""
        vectors = self.text_vectors(text)
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


def build_end_to_end_optimizer(
    model: EndToEndModel, config: EndToEndConfig, head_lr: float, head_weight_decay: float
) -> torch.optim.Adam:
    """Adam over layer-wise groups of the encoder (none when frozen, decoupled decay) and the head (coupled L2)."""
    encoder = model.encoder
    groups = build_param_groups(
        encoder.model,
        encoder.num_layers,
        model.head,
        config.param_groups,
        head_lr=head_lr,
        head_weight_decay=head_weight_decay,
    )
    return build_optimizer(groups)


@torch.no_grad()
def encode_rows(encoder: TextEncoder, tokens: TokenSplit, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Text vectors [len(rows), 4H] of the given rows, in eval mode and without a graph, on the CPU."""
    was_training = encoder.training
    encoder.eval()
    parts = []
    for start in range(0, len(rows), ENCODE_BATCH):
        batch = tokens.batch(torch.as_tensor(rows[start : start + ENCODE_BATCH]).view(-1, 1)).to(device)
        parts.append(encoder(batch.input_ids, batch.attention_mask).float().cpu())
    encoder.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, encoder.dim)


def fit_text_standardisation(model: EndToEndModel, train: DialogueDataset, device: torch.device) -> None:
    """Set the model's text standardisation to the column statistics of its encoder's train-split vectors,
    each column's scale floored at the median column's (module docstring)."""
    if train.tokens is None:
        raise ValueError("the train dataset holds no token ids; attach them first (attach_tokens)")
    rows = np.arange(train.num_utterances)
    vectors = encode_rows(model.encoder.to(device), train.tokens, rows, device).numpy()
    statistics = ColumnStatistics.fit(vectors, np.ones(len(rows), dtype=bool))
    # The floor of the module docstring: quiet columns are not blown up as the encoder moves.
    scale = np.maximum(statistics.scale, np.median(statistics.scale))
    model.text_mean.copy_(torch.from_numpy(statistics.mean))
    model.text_scale.copy_(torch.from_numpy(scale.astype(np.float32)))


def attach_tokens(store: FeatureStore, datasets: dict[str, DialogueDataset], encoder: TextEncoderConfig) -> None:
    """Give each dataset its split's token ids, tokenizing the store once per tokenizer and input format.

    Every rank may build the cache at once: each writes its own temporary file and renames it
    onto the same name, so readers always find a whole file.
    """
    path = build_token_cache(store, load_tokenizer(encoder), encoder)
    for split, dataset in datasets.items():
        dataset.tokens = read_token_split(path, split, dataset.keys)
