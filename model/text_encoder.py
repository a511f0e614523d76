"""The trainable text branch: a Hugging Face encoder whose 4 x hidden utterance vector is built in the graph.

The vector is the one the feature store holds for extracted features (`extract.text_features`): the
first token (`<s>`) of each of the last four hidden layers, concatenated oldest layer first, so
4 x 1024 = 4096 values for RoBERTa-Large. Here it is computed inside the autograd graph, so the
fusion head's loss fine-tunes the encoder. The encoder's input text (speaker prefix, context
window, truncation) is the extraction's format, reused from `extract.text_features`; this makes
`model` depend on `extract.text_features` besides the feature-store reader.

A frozen encoder (`freeze = true`) keeps its pretrained weights: no parameter asks for a gradient,
it stays in eval mode (no dropout) whatever the model around it does, and it runs under
`torch.no_grad`, so it keeps no activations for a backward pass.

The model named `store` (the default) is the encoder the store's text family was extracted with,
as its manifest records it (`model.run_config` resolves it before the encoder loads), so end-to-end
training on any store starts from the encoder its frozen features came from.

`export_encoder` writes a trained encoder as a Hugging Face folder (`save_pretrained` with
safetensors, and the tokenizer), which `AutoModel.from_pretrained` and `cmroberta extract
text.model=FOLDER` load as they are. The pooler is kept, untrained, so the folder holds every
weight its architecture expects.
"""

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from cluster.durable_files import fsync_folder, unique_temp_path
from extract.text_features import TextEncoderError, resolve_model_source

log = logging.getLogger(__name__)

LAST_LAYERS = 4
"""Hidden layers whose first-token vectors make the utterance vector (the paper's choice)."""
STORE_ENCODER = "store"
"""`model` value meaning: the encoder the store's text family was extracted with."""


@dataclass(kw_only=True)
class TextEncoderConfig:
    """Which encoder turns each utterance's token ids into its text vector, and how it trains."""

    model: str = STORE_ENCODER
    """Hugging Face hub name (resolved in the local cache only) or local model folder holding the
    weights and the tokenizer; 'store' (the default): the encoder the store's text family was
    extracted with, as its manifest records it (RoBERTa-Large in the MELD recipe)."""
    with_speaker: bool = False
    """Prefix each utterance with its speaker's name, 'Ross: ...'."""
    context_window: int = 0
    """Neighbouring utterances on each side given as a second segment (0: the utterance alone, as in the paper)."""
    max_tokens: int = 128
    """Longest input in tokens; longer inputs are cut, context first. MELD's utterances need far fewer."""
    activation_checkpointing: bool = False
    """Recompute each encoder layer's activations in the backward pass: less memory, about a third more compute."""
    freeze: bool = False
    """Keep the pretrained weights: only the fusion head trains, and the encoder runs without gradients."""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("model must name a Hugging Face model or a local model folder, not an empty string")
        if self.context_window < 0:
            raise ValueError(f"context_window must be 0 or more utterances, not {self.context_window}")
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, not {self.max_tokens}")
        if self.freeze and self.activation_checkpointing:
            raise ValueError(
                "activation_checkpointing saves memory only for an encoder that trains; "
                "turn it off when freeze is true"
            )


def _locate(config: TextEncoderConfig) -> tuple[str, PretrainedConfig]:
    """(folder or cached hub name, the model's config), with a clear error when it is not here or too shallow."""
    if config.model == STORE_ENCODER:
        raise TextEncoderError(
            "text encoder 'store' stands for the store's own encoder and must be resolved from its manifest "
            "first (model.run_config.resolve_run_config); name an encoder with end_to_end.encoder.model=..."
        )
    source, local = resolve_model_source(config.model)
    try:
        model_config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        if local:
            raise TextEncoderError(
                f"cannot load a text encoder from folder {source} ({error}); it must hold a Hugging Face model: "
                "config.json, the weights and the tokenizer files"
            ) from None
        raise TextEncoderError(
            f"text encoder {source!r} is not available offline. Download it once "
            f"(`hf download {source} --local-dir DIR`) and set text_encoder.model=DIR"
        ) from None
    layers = getattr(model_config, "num_hidden_layers", None)
    if layers is None or layers < LAST_LAYERS:
        raise TextEncoderError(
            f"text encoder {config.model} has {layers} hidden layers; the text vector takes the first token of "
            f"the last {LAST_LAYERS}, so it needs at least {LAST_LAYERS}"
        )
    return source, model_config


def load_tokenizer(config: TextEncoderConfig) -> PreTrainedTokenizerBase:
    """The encoder's tokenizer, from its folder (transformers 5 ignores vocab_file=/merges_file= arguments)."""
    source, _ = _locate(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        raise TextEncoderError(f"cannot load the tokenizer of text encoder {config.model} ({error})") from None
    if config.max_tokens > tokenizer.model_max_length:
        raise TextEncoderError(
            f"text_encoder.max_tokens={config.max_tokens} exceeds what {config.model} takes "
            f"({tokenizer.model_max_length} tokens); set it to at most that"
        )
    return tokenizer


def context_separator(tokenizer: PreTrainedTokenizerBase) -> str:
    """The token between the previous and the following utterances of a context segment, as extraction uses it."""
    return tokenizer.sep_token or tokenizer.eos_token or "|"


class TextEncoder(nn.Module):
    """Token ids of N utterances [N, L] and their attention mask -> text vectors [N, 4 x hidden]."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        source, model_config = _locate(config)
        if torch.get_default_device().type == "meta":
            # Shapes only (`cmroberta verify` compares them with a checkpoint's): the architecture from its
            # config, no weight read; transformers refuses `from_pretrained` on the meta device.
            self.model = AutoModel.from_config(model_config, dtype=torch.float32)
        else:
            # float32 master weights whatever the checkpoint's dtype; DeepSpeed casts for bf16 itself.
            self.model = AutoModel.from_pretrained(source, local_files_only=True, dtype=torch.float32)
        # The pooler is never used here. Trainable, its parameters would get no gradient, which
        # ZeRO-3 and DDP treat as an error; kept frozen, the exported folder stays complete.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler.requires_grad_(False)
        self.num_layers = int(model_config.num_hidden_layers)
        self.hidden_size = int(model_config.hidden_size)
        self.dim = LAST_LAYERS * self.hidden_size
        if config.freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        if config.activation_checkpointing:
            self._enable_activation_checkpointing()
        log.info(
            "text encoder %s: %d layers, vector %d, %s",
            config.model,
            self.num_layers,
            self.dim,
            "frozen" if config.freeze else "trained end to end",
        )

    def _enable_activation_checkpointing(self) -> None:
        # Non-reentrant checkpointing works with inputs that need no gradient (token ids) and with ZeRO-3.
        options = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            # transformers 4 names it gradient checkpointing.
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)

    @property
    def frozen(self) -> bool:
        """Whether the pretrained weights are kept as they are."""
        return self.config.freeze

    def train(self, mode: bool = True) -> "TextEncoder":
        """Switch dropout on for training, unless the encoder is frozen: then it always evaluates."""
        return super().train(mode and not self.frozen)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """First-token vectors of the last four layers, [N, 4 x hidden], oldest layer first."""
        if self.frozen:
            with torch.no_grad():
                return self._first_tokens(input_ids, attention_mask)
        return self._first_tokens(input_ids, attention_mask)

    def _first_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # hidden_states holds the embeddings' output, then one tensor per layer.
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        return torch.cat([layer[:, 0] for layer in hidden[-LAST_LAYERS:]], dim=-1)


def export_encoder(model: nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """Write a Hugging Face model and its tokenizer to `folder` (safetensors), replacing it whole.

    The folder is written under a unique temporary name and renamed into place, so a crash leaves
    the previous export or none, never half of one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = unique_temp_path(folder)
    try:
        model.save_pretrained(temp, safe_serialization=True)
        tokenizer.save_pretrained(temp)
        for path in temp.iterdir():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temp, folder)
        fsync_folder(folder.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    log.info("exported the text encoder to %s", folder)
    return folder
