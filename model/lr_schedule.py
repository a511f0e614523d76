"""Warmup then decay of the encoder's learning rates, as a multiplier of each group's own rate; the head's is constant.

DeepSpeed's `WarmupLR` and `WarmupDecayLR` write one scalar (`warmup_max_lr`) into every parameter
group, which silently erases layer-wise learning rates. This schedule is a torch `LambdaLR`: at
optimizer step s every encoder group's rate is its base rate times `multiplier(s)`, so the ratios between
its groups set in `model.param_groups` hold at every step. The fusion head's group (named 'head') keeps
its base rate throughout, the paper's constant Adam, as in a head-only run: the head trains the same
way in every text mode, and only the pretrained encoder, which a large early step would damage, warms
up and decays. Pass it to `deepspeed.initialize(lr_scheduler=...)`;
the engine steps it once per optimizer step (after the last micro-batch of an accumulation) and
saves and restores its state with each checkpoint.

The schedule is set in epochs and turned into optimizer steps once the run knows its steps per
epoch, so one config means the same on MELD (33 steps an epoch at 32 dialogues) and on the demo
corpus (a handful):

    warmup   s < W:  (s + 1) / W, so the first step already learns (W = warmup_epochs x steps/epoch)
    decay    from W up to the horizon H = min(decay_epochs, train.max_epochs) x steps/epoch, from 1
             down to min_lr_ratio: 'constant' stays at 1, 'linear' falls in a straight line,
             'cosine' along half a cosine; after H the rate stays at min_lr_ratio

The horizon is its own key, not train.max_epochs: the paper's 200 epochs are a ceiling that early
stopping (15 epochs of patience) never lets an end-to-end run reach, and a decay spread over them
would leave the rate near its peak for the whole run.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch

from model.param_groups import HEAD_GROUP


@dataclass(kw_only=True)
class LRScheduleConfig:
    """Warmup and decay of every group's learning rate, in epochs of the train split."""

    warmup_epochs: float = 1.0
    """Epochs of linear warmup from base / warmup_steps up to the base rate (0: none); one epoch is
    33 optimizer steps on MELD at 32 dialogues a step."""
    decay: Literal["constant", "linear", "cosine"] = "linear"
    """Shape after warmup, until the horizon."""
    decay_epochs: float = 20.0
    """Horizon: the decay reaches min_lr_ratio after this many epochs (or train.max_epochs, if fewer)
    and holds there. End-to-end MELD runs reach their best dev loss within 5-15 epochs and early
    stopping ends them 15 epochs later, so 20 lets the rate fall while the run still learns."""
    min_lr_ratio: float = 0.0
    """Fraction of the base rate the decay ends at."""

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be 0 or more, not {self.warmup_epochs}")
        if not self.decay_epochs > 0:
            raise ValueError(f"decay_epochs must be positive, not {self.decay_epochs}")
        if self.warmup_epochs > self.decay_epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must not exceed decay_epochs ({self.decay_epochs}), "
                "the horizon the warmup and the decay share"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], not {self.min_lr_ratio}")


@dataclass(kw_only=True)
class WarmupDecay:
    """The schedule's multiplier as a callable object, so LambdaLR saves it with its state."""

    warmup_steps: int
    """Steps of warmup."""
    total_steps: int
    """The horizon in optimizer steps: where the decay ends."""
    decay: str
    """'constant', 'linear' or 'cosine'."""
    min_lr_ratio: float
    """Where the decay ends."""
    hold_steps: int = 0
    """Steps at rate 0 before the warmup starts (the head's warm start, `model.end_to_end`)."""

    def __call__(self, step: int) -> float:
        step -= self.hold_steps
        if step < 0:
            return 0.0
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


def schedule_steps(config: LRScheduleConfig, steps_per_epoch: int, max_epochs: int) -> tuple[int, int]:
    """(warmup steps, horizon steps) of `config` for a run of `steps_per_epoch` optimizer steps an epoch."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, not {steps_per_epoch}")
    horizon = max(1, math.ceil(min(config.decay_epochs, max_epochs) * steps_per_epoch))
    warmup = min(horizon, round(config.warmup_epochs * steps_per_epoch))
    return warmup, horizon


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    config: LRScheduleConfig,
    steps_per_epoch: int,
    max_epochs: int,
    hold_epochs: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule for a run of `steps_per_epoch` optimizer steps an epoch, scaling each encoder group's own
    rate; the group named 'head' (`model.param_groups.HEAD_GROUP`) stays at its base rate. With `hold_epochs`,
    the encoder's rates are 0 for that many epochs, and its warmup and decay start after them."""
    warmup, horizon = schedule_steps(config, steps_per_epoch, max_epochs - hold_epochs)
    encoder = WarmupDecay(
        warmup_steps=warmup,
        total_steps=horizon,
        decay=config.decay,
        min_lr_ratio=config.min_lr_ratio,
        hold_steps=hold_epochs * steps_per_epoch,
    )
    constant = WarmupDecay(warmup_steps=0, total_steps=1, decay="constant", min_lr_ratio=1.0)
    multipliers = [constant if group.get("name") == HEAD_GROUP else encoder for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=multipliers)
