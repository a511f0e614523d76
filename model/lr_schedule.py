"""Warmup then decay, as a multiplier of each parameter group's own learning rate.

DeepSpeed's `WarmupLR` and `WarmupDecayLR` write one scalar (`warmup_max_lr`) into every parameter
group, which silently erases layer-wise learning rates. This schedule is a torch `LambdaLR`: at
optimizer step s every group's rate is its base rate times `multiplier(s)`, so the ratios between
groups set in `model.param_groups` hold at every step. Pass it to `deepspeed.initialize(lr_scheduler=...)`;
the engine steps it once per optimizer step (after the last micro-batch of an accumulation) and
saves and restores its state with each checkpoint.

    warmup   s < warmup_steps:  (s + 1) / warmup_steps, so the first step already learns
    decay    afterwards, over the remaining steps up to total_steps, from 1 down to min_lr_ratio:
             'constant' stays at 1, 'linear' falls in a straight line, 'cosine' along half a cosine
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(kw_only=True)
class LRScheduleConfig:
    """Warmup and decay of every group's learning rate, in optimizer steps."""

    warmup_steps: int = 50
    """Steps of linear warmup from base / warmup_steps up to the base rate (0: none); 50 steps are
    about 1.5 epochs of MELD's train split at 32 dialogues a step."""
    decay: Literal["constant", "linear", "cosine"] = "linear"
    """Shape after warmup, until the last step of the run."""
    min_lr_ratio: float = 0.0
    """Fraction of the base rate the decay ends at."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, not {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], not {self.min_lr_ratio}")


@dataclass(kw_only=True)
class WarmupDecay:
    """The schedule's multiplier as a callable object, so LambdaLR saves it with its state."""

    warmup_steps: int
    """Steps of warmup."""
    total_steps: int
    """Optimizer steps in the whole run."""
    decay: str
    """'constant', 'linear' or 'cosine'."""
    min_lr_ratio: float
    """Where the decay ends."""

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.decay == "linear":
            remaining = 1.0 - progress
        else:
            remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * remaining


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: LRScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule over `total_steps` optimizer steps, scaling each of `optimizer`'s groups' own rate."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, not {total_steps}")
    multiplier = WarmupDecay(
        warmup_steps=config.warmup_steps,
        total_steps=total_steps,
        decay=config.decay,
        min_lr_ratio=config.min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=multiplier)
