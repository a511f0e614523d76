"""The text encoder and the fusion head as one model: token ids of each dialogue's utterances -> emotion logits.

The model is called like the fusion head, `model(audio, text, mask)`, except that `text` is the
token ids of the batch's N real utterances (`model.token_cache.TokenBatch`: [N, L], padded to the
longest utterance of the batch) instead of stored text vectors, so one training and evaluation
loop serves both. The dialogue mask [B, T] marks the real utterances of B dialogues. The encoder
turns the ids into N text vectors [N, 4H] in the graph; they are standardised, scattered into
[B, T, 4H] in row-major order of the mask (zeros at padding, where the feature pipeline also puts
zeros) and go to the fusion head with the audio features from the store, so one backward pass
trains both. Encoding only the real utterances spends no encoder compute on padded positions.

What the head sees is well conditioned. Each of the four layer vectors of an utterance is
layer-normalised on its own (`normalise_layers`: centred and divided by its own standard deviation
over its H values, no learned gain), so the head sees four unit-scale vectors whatever the encoder
does, and the scale moves with the encoder as it trains. Column statistics, as stored vectors get
them ('frozen', 'finetuned', `model.dialogue_data`), would not do here: many first-token columns of
a pretrained encoder barely vary across utterances (for MiniLM on the demo corpus the median
column's sd is 7e-3), so dividing by a column's spread magnifies the encoder's dropout noise, its
updates and bf16 rounding by up to five orders of magnitude (the head trained on noise and was
scored on clean vectors). A layer's norm is a property of the whole vector, so dropout or rounding
noise e in a vector y moves the normalised vector by at most 2 |Pe| / |Py| relative to its length
(P: centring), never more than it moves the raw vector (tests/integration/test_conditioning.py). A run with
`data.standardize = false` skips the normalisation, as it skips standardisation in every mode.

Run folders trained before this (with fixed column statistics in the buffers `text_mean` and
`text_scale`) are refused when loaded, in one line that says to train the run again.

The warm start (linear probing, then fine-tuning: LP-FT, `warm_start_epochs`) trains the head alone for
its first epochs, on the pretrained encoder's vectors exactly as a run with a frozen encoder does (the
encoder evaluates, without dropout or gradients, and its rates are held at 0; its vectors are computed
again each step rather than cached), and only then unfreezes the encoder at its low layer-wise rates,
whose warmup and decay start there. A randomly initialised head's first gradients would otherwise
reach the pretrained encoder in full. Selection on dev covers both phases, so a run whose fine-tuning
never lowers the dev loss keeps its best warm-start epoch; `test_metrics.json` names the selected
epoch and phase (`selected_epoch`, `selected_phase`), and each line of `metrics.jsonl` its phase.

A run chooses this with `text_mode = "end_to_end"` (`model.run_config.RunConfig`, the default whenever
the variant reads text); `EndToEndConfig` holds the encoder, its layer-wise learning rates, the
warmup/decay schedule and the DeepSpeed engine settings (ZeRO-2 and bf16 where the GPU has it, by
default).
"""

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from extract.feature_store import FeatureStore
from extract.labels import MELD_EMOTIONS
from model.checkpoint import RunFolderError
from model.deepspeed_config import EngineConfig
from model.dialogue_data import DialogueDataset
from model.fusion import FusionConfig, build_fusion_model
from model.lr_schedule import LRScheduleConfig
from model.param_groups import ParamGroupsConfig, build_optimizer, build_param_groups
from model.text_encoder import LAST_LAYERS, TextEncoder, TextEncoderConfig, load_tokenizer
from model.token_cache import TokenBatch, build_token_cache, read_token_split


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
    """Warmup and decay of the encoder's rates, in epochs; the head's rate stays constant, as in every mode."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """ZeRO stage, precision and gradient clipping; they replace train.zero_stage, train.precision
    and train.gradient_clipping, which must stay at their defaults. DeepSpeed clips the norm of the
    whole gradient, the head's included."""
    bucket_by_length: bool = False
    """Batch dialogues of similar longest utterance together: less token padding, less random batches."""
    warm_start_epochs: int = 0
    """Linear probing, then fine-tuning (LP-FT): for this many epochs only the head trains, on the
    pretrained encoder's vectors as a frozen run reads them (the encoder in eval mode, without gradients,
    its rates held at 0); then the encoder trains too, its warmup and decay starting then. Selection on
    dev covers both phases. 0: the encoder trains from the first step."""

    def __post_init__(self) -> None:
        if self.warm_start_epochs < 0:
            raise ValueError(f"warm_start_epochs must be 0 or more, not {self.warm_start_epochs}")


# LayerNorm's epsilon, added to each layer vector's variance: far below any hidden state's (about 1).
LAYER_NORM_EPS = 1e-5
# Buffers of run folders written before the layer normalisation (fixed column statistics).
_COLUMN_STATISTICS_BUFFERS = ("text_mean", "text_scale")


def normalise_layers(vectors: torch.Tensor, layers: int) -> torch.Tensor:
    """Each of the `layers` blocks of `vectors` [N, layers x H] layer-normalised on its own (no gain), in float32
    whatever the input's dtype, returned in that dtype."""
    blocks = vectors.float().unflatten(-1, (layers, -1))
    normalised = nn.functional.layer_norm(blocks, blocks.shape[-1:], eps=LAYER_NORM_EPS)
    return normalised.flatten(-2).to(vectors.dtype)


class EndToEndModel(nn.Module):
    """A `TextEncoder` feeding a fusion head: forward(audio, token ids, mask) -> logits."""

    def __init__(self, encoder: TextEncoder, head: nn.Module, *, normalise: bool = True):
        super().__init__()
        if not getattr(head, "uses_text", True):
            raise ValueError(
                "end-to-end training fine-tunes the text encoder, but this fusion variant does not read text; "
                "choose a variant with text (bimodal, bimodal_no_sca or text)"
            )
        self.encoder = encoder
        self.head = head
        self.normalise = normalise
        self.encoder_learns = True
        """False in a warm start's first phase: the encoder evaluates, without dropout or gradients."""

    def train(self, mode: bool = True) -> "EndToEndModel":
        """Train or evaluate; the encoder evaluates while it does not learn (a warm start's first phase)."""
        super().train(mode)
        self.encoder.train(mode and self.encoder_learns)
        return self

    def _load_from_state_dict(
        self, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # torch calls this hook for every module load_state_dict reaches, whichever path loads the weights.
        if any(f"{prefix}{name}" in state_dict for name in _COLUMN_STATISTICS_BUFFERS):
            raise RunFolderError(
                "this checkpoint was trained with the old end-to-end text standardisation (fixed column "
                "statistics, before layer normalisation); train the run again in a new folder"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        """Text vectors [N, 4H] of the batch's utterances as the head sees them: each layer normalised."""
        with contextlib.nullcontext() if self.encoder_learns else torch.no_grad():
            vectors = self.encoder(text.input_ids, text.attention_mask)
        return normalise_layers(vectors, LAST_LAYERS) if self.normalise else vectors

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


def build_end_to_end_model(
    config: EndToEndConfig,
    head: FusionConfig,
    audio_dim: int,
    seed: int,
    *,
    normalise: bool = True,
    num_classes: int = len(MELD_EMOTIONS),
) -> EndToEndModel:
    """The pretrained encoder and a fusion head for its vector width with `num_classes` outputs (the run's
    label set), the head initialised from `seed`."""
    encoder = TextEncoder(config.encoder)
    torch.manual_seed(seed)
    return EndToEndModel(encoder, build_fusion_model(head, audio_dim, encoder.dim, num_classes), normalise=normalise)


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


WARM_START_PHASE = "warm_start"
FINE_TUNE_PHASE = "fine_tune"
SINGLE_PHASE = "single"


def training_phase(warm_start_epochs: int, epoch: int) -> str:
    """The phase epoch `epoch` (from 1) belongs to: 'warm_start' (head only), 'fine_tune' (the encoder too, after
    a warm start), or 'single' (a run without a warm start)."""
    if warm_start_epochs == 0:
        return SINGLE_PHASE
    return WARM_START_PHASE if epoch <= warm_start_epochs else FINE_TUNE_PHASE


def attach_tokens(store: FeatureStore, datasets: dict[str, DialogueDataset], encoder: TextEncoderConfig) -> None:
    """Give each dataset its split's token ids, tokenizing the store once per tokenizer and input format.

    Every rank may build the cache at once: each writes its own temporary file and renames it
    onto the same name, so readers always find a whole file.
    """
    path = build_token_cache(store, load_tokenizer(encoder), encoder)
    for split, dataset in datasets.items():
        dataset.tokens = read_token_split(path, split, dataset.keys)
