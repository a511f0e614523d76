"""Optimizer parameter groups: layer-wise learning-rate decay in the encoder, the fusion head at its own rate.

Fine-tuning a pretrained encoder moves its lower layers, which hold general features, less than
its upper ones (layer-wise learning-rate decay, as in ELECTRA and BEiT): the top layer learns at
`encoder_lr`, each layer below at `layer_decay` times the one above, and the embeddings, the
lowest, at `encoder_lr * layer_decay ** num_layers`. The randomly initialised fusion head learns at
its own rate, the run's `train.learning_rate` (1e-4, ten times the encoder's top layer).

The groups are for AdamW, whose weight decay is decoupled from the gradient. It follows nanoGPT's
rule: matrices and embeddings decay; vectors (biases, LayerNorm and LSTM biases) do not, since
shrinking a bias or a normalisation gain towards zero is no regularisation.

Each group carries its own `lr`; a scheduler must scale those (see `model.lr_schedule`), never
overwrite them with one value.
"""

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks)\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|embed_positions|wte|wpe)\.")


@dataclass(kw_only=True)
class ParamGroupsConfig:
    """Learning rates and weight decay of the encoder's layers (the head's are the run's train settings)."""

    encoder_lr: float = 1e-5
    """Learning rate of the encoder's top layer."""
    layer_decay: float = 0.95
    """Factor per layer going down the encoder (1: every layer at encoder_lr)."""
    encoder_weight_decay: float = 0.01
    """Decoupled weight decay of the encoder's matrices (RoBERTa's fine-tuning value)."""

    def __post_init__(self) -> None:
        if not self.encoder_lr > 0:
            raise ValueError(f"encoder_lr must be positive, not {self.encoder_lr}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must lie in (0, 1], not {self.layer_decay}")
        if self.encoder_weight_decay < 0:
            raise ValueError(f"encoder_weight_decay must be 0 or more, not {self.encoder_weight_decay}")


def layer_depth(parameter_name: str, num_layers: int) -> int:
    """Depth of an encoder parameter: 0 for the embeddings, i + 1 for layer i, num_layers for anything above."""
    if _EMBEDDINGS.search(parameter_name):
        return 0
    match = _LAYER_INDEX.search(parameter_name)
    if match is not None:
        return int(match.group(1)) + 1
    return num_layers


def encoder_layer_lr(depth: int, num_layers: int, config: ParamGroupsConfig) -> float:
    """Learning rate at `depth` (0: embeddings, num_layers: the top layer)."""
    return config.encoder_lr * config.layer_decay ** (num_layers - depth)


def _decays(parameter: nn.Parameter) -> bool:
    return parameter.ndim >= 2


def build_param_groups(
    encoder: nn.Module,
    num_layers: int,
    head: nn.Module,
    config: ParamGroupsConfig,
    *,
    head_lr: float,
    head_weight_decay: float,
) -> list[dict[str, Any]]:
    """Parameter groups for AdamW: one per encoder depth and decay kind, two for the head.

    Parameters that need no gradient (a frozen encoder) are left out. Each group has `params`,
    `lr`, `weight_decay` and a readable `name` ('encoder.depth03', 'head', with '.no_decay').
    """
    groups: dict[str, dict[str, Any]] = {}

    def add(name: str, parameter: nn.Parameter, lr: float, weight_decay: float) -> None:
        if not _decays(parameter):
            name, weight_decay = f"{name}.no_decay", 0.0
        group = groups.setdefault(name, {"name": name, "params": [], "lr": lr, "weight_decay": weight_decay})
        group["params"].append(parameter)

    for parameter_name, parameter in encoder.named_parameters():
        if parameter.requires_grad:
            depth = layer_depth(parameter_name, num_layers)
            lr = encoder_layer_lr(depth, num_layers, config)
            add(f"encoder.depth{depth:02d}", parameter, lr, config.encoder_weight_decay)
    for parameter in head.parameters():
        if parameter.requires_grad:
            add("head", parameter, head_lr, head_weight_decay)
    return list(groups.values())
