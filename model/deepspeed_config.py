"""DeepSpeed's JSON config: ZeRO, precision, clipping, accumulation, and DeepSpeed's own monitor.

RoBERTa-Large with Adam holds about 5.7 GB of fp32 optimizer state (355M parameters x 16 bytes
with master weights and gradients); ZeRO stage 2 partitions the optimizer state and the gradients
across ranks, which is what lets several of them fit beside activations on one GPU each. Stage 1
(optimizer state only) and stage 3 (the weights too) can be chosen. The fusion head alone is
small, so head-only runs (text_mode 'frozen' or 'finetuned') default to stage 0 and fp32
(`model.run_config.TrainConfig`); an encoder that trains uses `EngineConfig`. One rank in fp32 has
nothing to partition and runs stage 0 (`engine_zero_stage`).

Precision 'auto' trains in bf16 on a GPU that supports it (Ampere and later) and in fp32 anywhere
else, a CPU included; DeepSpeed then keeps fp32 master weights in the ZeRO optimizer.

`MonitorConfig` switches on DeepSpeed's monitor, so a person can watch a SLURM job while it runs:
TensorBoard event files (`tensorboard --logdir RUN/monitor`; needs the `tensorboard` package) and
CSV files, one per series, `RUN/monitor/<job>/Train_Samples_lr.csv` and the like. DeepSpeed itself
writes the first group's learning rate at every optimizer step; the training loop adds the train
loss of every global batch, every parameter group's rate, and the dev loss and weighted F1 of
every epoch (`model.train`).
"""

import contextlib
import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cluster.config import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(kw_only=True)
class EngineConfig:
    """How DeepSpeed runs a model whose text encoder trains: ZeRO stage, precision, clipping."""

    zero_stage: int = 2
    """ZeRO stage: 2 partitions optimizer state and gradients (the default), 1 optimizer state only,
    3 the weights too; 0 turns ZeRO off (plain data parallel). A run of one rank in fp32 runs stage 0
    whatever is set here (`engine_zero_stage`)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """'auto': bf16 on a GPU that supports it, fp32 otherwise (a CPU)."""
    gradient_clipping: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping). It is the norm of the whole model's
    gradient: end to end, the head's and the encoder's together (DeepSpeed has one clip for the model)."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, not {self.zero_stage}")
        if self.gradient_clipping < 0:
            raise ValueError(f"gradient_clipping must be 0 (off) or positive, not {self.gradient_clipping}")


@dataclass(kw_only=True)
class MonitorConfig:
    """DeepSpeed's monitor: live training curves while a job runs (off by default)."""

    tensorboard: bool = False
    """Write TensorBoard event files (needs the `tensorboard` package)."""
    csv: bool = False
    """Write one CSV file per series (step, value), readable with `tail -f` on a cluster."""
    folder: str = ""
    """Where the files go; empty: `monitor/` in the run folder."""
    job_name: str = "train"
    """Sub-folder of `folder` for this job (DeepSpeed's job_name)."""

    def __post_init__(self) -> None:
        if not self.job_name.strip() or "/" in self.job_name:
            raise ValueError(f"job_name must be a plain folder name, not {self.job_name!r}")

    @property
    def enabled(self) -> bool:
        """Whether any monitor writes."""
        return self.tensorboard or self.csv

    def deepspeed_sections(self, default_folder: Path) -> dict[str, Any]:
        """DeepSpeed's `tensorboard` and `csv_monitor` config sections, writing into `folder` when it is set, else
        into `default_folder` (the run folder's `monitor/`, as `model.run_folder.RunFolder` names it)."""
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "monitor.tensorboard=true needs the tensorboard package: pip install 'cmroberta[monitor]' "
                "(or use monitor.csv=true)"
            )
        folder = str(Path(self.folder).expanduser() if self.folder else Path(default_folder))
        return {
            "tensorboard": {"enabled": self.tensorboard, "output_path": folder, "job_name": self.job_name},
            "csv_monitor": {"enabled": self.csv, "output_path": folder, "job_name": self.job_name},
        }


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype DeepSpeed casts the model to for `precision`, so inputs can match it."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_precision(precision: str) -> Precision:
    """The precision 'auto' stands for on this machine; any other value as it is."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def build_deepspeed_config(
    config: EngineConfig,
    micro_batch_dialogues: int,
    world_size: int,
    gradient_accumulation_steps: int = 1,
    monitor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """DeepSpeed's config dict for `config`, plus the monitor sections `MonitorConfig.deepspeed_sections` gave.

    The training loop draws its own batches; the batch sizes here are DeepSpeed's bookkeeping
    (micro batch x accumulation x world size), and the accumulation count is what decides when
    `engine.step()` really steps the optimizer and the learning-rate schedule.
    """
    if micro_batch_dialogues < 1:
        raise ValueError(f"micro_batch_dialogues must be at least 1, not {micro_batch_dialogues}")
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be at least 1, not {gradient_accumulation_steps}")
    precision = resolve_precision(config.precision)
    stage = engine_zero_stage(config.zero_stage, world_size, precision)
    return {
        "train_batch_size": micro_batch_dialogues * gradient_accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_dialogues,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": config.gradient_clipping,
        "zero_optimization": {
            "stage": stage,
            # Gradients reduce while the backward pass goes on; buckets of 50M elements keep
            # RoBERTa-Large's all-reduces few without a large extra buffer.
            "overlap_comm": stage >= 2 and torch.cuda.is_available(),
            "reduce_bucket_size": 5 * 10**7,
            "allgather_bucket_size": 5 * 10**7,
        },
        # torch's Adam needs no C++ build; DeepSpeed's FusedAdam and CPU-Adam each compile for a
        # minute, and neither takes a per-group choice between coupled and decoupled weight decay.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        **(monitor or {}),
    }


def engine_zero_stage(configured: int, world_size: int, precision: Precision) -> int:
    """The ZeRO stage DeepSpeed runs: `configured`, except 0 for one rank in fp32.

    ZeRO partitions across ranks; one rank has nothing to share. In fp32 its stage 1 or 2 optimizer then
    keeps a second fp32 copy of every weight (the 'master' partition, bitwise the weights themselves),
    copies every gradient into a flat buffer from a hook, and writes that copy into every checkpoint. On
    the demo's end-to-end runs (MiniLM, one CPU process) that was a quarter of each checkpoint's bytes and
    26% of the run's time (`bench/bench_demo.py`). Stage 0 steps the same Adam on the same gradients. In
    bf16 or fp16 the fp32 copy is the master weights that the low precision needs, so the stage is kept.
    Checkpoints record the stage that ran, and resume only under it (`model.checkpoint`).
    """
    if world_size == 1 and precision == "fp32" and configured in (1, 2):
        return 0
    return configured


def initialize_deepspeed(
    model: torch.nn.Module, optimizer: Any, lr_scheduler: Any, config: dict[str, Any], world_size: int
) -> Any:
    """DeepSpeed's engine for `model` under `config` (from `build_deepspeed_config`).

    One rank without ZeRO has no peer to reduce gradients with, yet DeepSpeed would flatten every gradient
    into buffers, all-reduce them with itself and copy them back at every step; the engine skips that, as
    DeepSpeed itself does when it has no process group. Dividing by a world size of 1 is exact, so the
    steps are the same.
    """
    # deferred: deepspeed takes seconds to import, and readers of a run's config need none of it
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, config=config)
    if world_size == 1 and engine.zero_optimization_stage() == 0:
        engine.enable_backward_allreduce = False
    return engine


def micro_batch_dialogues(batch_dialogues: int, world_size: int, gradient_accumulation_steps: int) -> int:
    """Dialogues per rank per micro-batch for a global batch of `batch_dialogues` (rounded up)."""
    return math.ceil(batch_dialogues / (world_size * gradient_accumulation_steps))


@contextlib.contextmanager
def reduction_in_parameter_order(engine: Any, world_size: int) -> Iterator[Callable[[], None]]:
    """The block one global batch's micro-batches run in, so ZeRO-2 on several ranks sums the ranks' matching
    gradients; it yields the call that ends each micro-batch, after its `engine.backward`.

    ZeRO stage 2 reduces each gradient from its autograd hook, into a bucket laid out in the order the hooks
    fire on that rank, and sums the ranks' buckets position by position. That order follows the graph,
    and the fusion head's packed LSTMs make the graph depend on the batch's dialogue lengths: measured on
    2 gloo ranks, the hooks of one LSTM's weight_ih and bias_hh fired in swapped order on the two ranks at
    the 4th step, so each rank's weight_ih gradient was summed with the other's bias_hh, silently.

    So there the block is DeepSpeed's `coalesce_grad_reduction`: every micro-batch's backward leaves its
    gradients on the parameters (torch adds them up), and leaving the block reduces them once, in parameter
    order, the same on every rank. DeepSpeed refuses `engine.step()` inside the block, so the yielded call
    does nothing and the engine steps once per micro-batch after it, as it counts them; the last step is the
    accumulation boundary, which applies the reduced gradients. The block must span the whole global batch:
    each block's reduction replaces the partition's gradients, so one block per micro-batch kept only the
    last micro-batch's (measured at accumulation 2). Elsewhere (one rank; stages 0 and 1, which reduce in
    parameter order already; stage 3) the yielded call is `engine.step`.
    """
    if world_size == 1 or engine.zero_optimization_stage() != 2:
        yield engine.step
        return
    with engine.coalesce_grad_reduction():
        yield lambda: None
    for _ in range(engine.gradient_accumulation_steps()):
        engine.step()
