"""DeepSpeed's JSON config for end-to-end fine-tuning of the text encoder with the fusion head.

RoBERTa-Large with AdamW holds about 5.7 GB of fp32 optimizer state (355M parameters x 16 bytes
with master weights and gradients); ZeRO stage 2 partitions the optimizer state and the gradients
across ranks, which is what lets several of them fit beside activations on one GPU each. Stage 1
(optimizer state only) and stage 3 (the weights too) can be chosen.

Precision 'auto' trains in bf16 on a GPU that supports it (Ampere and later) and in fp32 anywhere
else, a CPU included; DeepSpeed then keeps fp32 master weights in the ZeRO optimizer.
"""

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(kw_only=True)
class EngineConfig:
    """How DeepSpeed runs the end-to-end model: ZeRO stage, precision, clipping, accumulation."""

    zero_stage: int = 2
    """ZeRO stage: 2 partitions optimizer state and gradients (the default), 1 optimizer state only,
    3 the weights too; 0 turns ZeRO off (plain data parallel)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """'auto': bf16 on a GPU that supports it, fp32 otherwise (a CPU)."""
    gradient_clipping: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches whose gradients add up before each optimizer step."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, not {self.zero_stage}")
        if self.gradient_clipping < 0:
            raise ValueError(f"gradient_clipping must be 0 (off) or positive, not {self.gradient_clipping}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be at least 1, not {self.gradient_accumulation_steps}")


def resolve_precision(precision: str) -> Precision:
    """The precision 'auto' stands for on this machine; any other value as it is."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def build_deepspeed_config(config: EngineConfig, micro_batch_dialogues: int, world_size: int) -> dict[str, Any]:
    """DeepSpeed's config dict for `config`.

    The training loop draws its own batches; the batch sizes here are DeepSpeed's bookkeeping
    (micro batch x accumulation x world size), and the accumulation count is what decides when
    `engine.step()` really steps the optimizer and the learning-rate schedule.
    """
    if micro_batch_dialogues < 1:
        raise ValueError(f"micro_batch_dialogues must be at least 1, not {micro_batch_dialogues}")
    precision = resolve_precision(config.precision)
    return {
        "train_batch_size": micro_batch_dialogues * config.gradient_accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_dialogues,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_clipping": config.gradient_clipping,
        "zero_optimization": {
            "stage": config.zero_stage,
            # Gradients reduce while the backward pass goes on; buckets of 50M elements keep
            # RoBERTa-Large's all-reduces few without a large extra buffer.
            "overlap_comm": config.zero_stage >= 2 and torch.cuda.is_available(),
            "reduce_bucket_size": 5 * 10**7,
            "allgather_bucket_size": 5 * 10**7,
        },
        # torch's AdamW needs no C++ build; DeepSpeed's FusedAdam and CPU-Adam each compile for a minute.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def micro_batch_dialogues(batch_dialogues: int, world_size: int, gradient_accumulation_steps: int) -> int:
    """Dialogues per rank per micro-batch for a global batch of `batch_dialogues` (rounded up)."""
    return math.ceil(batch_dialogues / (world_size * gradient_accumulation_steps))
