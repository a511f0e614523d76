"""Training the fusion head with DeepSpeed, from a feature store into a run folder: the training loop.

This module owns the loop (epochs, step checkpoints, early stopping, the test score at the end). The
run's config and its resolution are `model.run_config`, the DeepSpeed engine `model.engine`, what a run
reads `model.run_inputs`, scoring a checkpoint (and a finished run again) `model.evaluate`, the process's
distributed session `cluster.distributed_session`. (Some 520 lines: the epoch loop, its in-epoch
checkpoints and its resume read as one story, so they stay in one file.)

One process on a CPU by default; many GPUs under torchrun, srun or any launcher that sets the
torch.distributed variables (see `cluster.rendezvous`). The loop follows the paper's section 4.3:
batches of 32 dialogues, Adam (learning rate 1e-4, L2 weight decay 3e-4), cross-entropy, up to 200
epochs, early stopping once the dev loss has not improved for 15 epochs. The model with the best
dev loss is selected, and the test split is scored once, at the end, with that checkpoint.

Every rank draws the same global batch and computes the loss of its share summed and divided by
the global batch's utterance count (times world_size, since DeepSpeed averages gradients over
ranks), so N ranks take the same steps as one rank with the same global batch.

`text_mode` chooses where the text vectors come from. The paper fine-tuned RoBERTa-Large (its section
4.1.3) and read the fine-tuned encoder's 4096-value vectors, as COSMIC (its reference [25]) does:

- 'end_to_end' (the default whenever the variant reads text) feeds each utterance's token ids to a
  Hugging Face encoder that trains with the head (`model.end_to_end`): layer-wise learning rates, a
  warmup/decay schedule, ZeRO-2 and bf16 where the GPU has it. Unless `end_to_end.encoder.model`
  names another, the encoder is the one the store's text family was extracted with.
- 'finetuned' is the paper's recipe as one chain (`model.finetune_text`): the encoder is fine-tuned
  alone on utterance-level emotion, exported, its vectors extracted into the store as a family of
  their own, and the head trains on them; each step is skipped when its result exists.
- 'frozen' reads the store's vectors of a pretrained encoder: the fast ablation.

An audio-only variant reads no text, so its text_mode is recorded as 'frozen' whatever was asked.
In every mode the head trains the same way: the paper's Adam at the constant rate train.learning_rate
with the coupled L2 train.weight_decay (`model.param_groups`; end to end only the encoder's groups
warm up and decay, `model.lr_schedule`), on well-conditioned text vectors (stored ones column-standardised
with train statistics, `model.dialogue_data`; in-graph ones layer-normalised, `model.end_to_end`), and
it can cut each global batch into `train.gradient_accumulation_steps` micro-batches whose gradients add
up to the whole batch's. One difference is documented rather than removed: DeepSpeed clips the norm of
the whole gradient, so end to end (end_to_end.engine.gradient_clipping, 1 by default) the head's gradient
is clipped together with the encoder's, while a head-only run clips by train.gradient_clipping (0, off,
as in the paper); both are config keys, so a report can see whether two runs match. A
run whose encoder trains exports it in Hugging Face format to `encoder/`.

The run folder's files are listed in `model.run_folder`. metrics.jsonl holds one line per epoch: losses,
dev scores, seconds (the epoch, its training pass, and the batch assembly within it), its phase ('single',
or 'warm_start' / 'fine_tune' with a warm start); test_metrics.json, written last, names the selected epoch
and phase (selected_epoch, selected_phase).

One job writes a run folder at a time (its lock names the holder). Resuming (`resume=True`) reloads
the latest good checkpoint: one taken at an epoch's end replays from the next epoch, one taken inside
an epoch (every `checkpoint.every_steps` optimizer steps, or when a requeue signal asks) from the next
batch, with each rank's RNG and loss sum as they were. Each epoch's shuffle and dropout are seeded from
(seed, epoch, rank) rather than carried over, so a resumed run takes exactly the steps an uninterrupted
one takes, on any number of ranks. A kill at any point leaves a folder that `train(..., resume=True)`
finishes: checkpoints and progress.json are written before anything points at them, and metrics.jsonl
is rewritten from the checkpoint. A non-finite loss stops the run before it is checkpointed.
"""

import contextlib
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from cluster.config import write_resolved_config
from cluster.distributed_session import distributed_session
from cluster.durable_files import atomic_write_json_lines
from cluster.rendezvous import Rendezvous
from extract.feature_store import FeatureStore
from model.batch_samplers import DialogueBatchSampler, LengthBucketSampler
from model.checkpoint import (
    Checkpoints,
    NonFiniteLossError,
    Restored,
    RunFolderError,
    checkpoint_tag,
    require_supported,
)
from model.checkpoint_request import CheckpointRequest, TrainingInterrupted
from model.deepspeed_config import precision_dtype, reduction_in_parameter_order
from model.dialogue_data import DialogueDataset
from model.end_to_end import WARM_START_PHASE, training_phase
from model.engine import deterministic_kernels, initialize_engine, run_precision
from model.evaluate import (
    batch_loss_sum,
    evaluate_checkpoint,
    evaluate_split,
    export_run_encoder,
    write_evaluation,
)
from model.finetune_text import run_finetune_chain
from model.run_config import SPLITS, RunConfig, TrainConfig, resolve_run_config
from model.run_folder import RunFolder
from model.run_inputs import RunInputs, class_weight_vector, prepare_inputs
from model.run_store import open_run_store, record_run_store

log = logging.getLogger(__name__)



@dataclass(kw_only=True)
class TrainingState:
    """What a checkpoint's client_state holds besides the weights: progress and early stopping."""

    epoch: int = 0
    """Last completed epoch (0 before the first)."""
    best_epoch: int = 0
    """Epoch with the lowest dev loss so far."""
    best_dev_loss: float = math.inf
    """That dev loss."""
    epochs_without_improvement: int = 0
    """Epochs since the dev loss last improved."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """metrics.jsonl's records, one per completed epoch."""

    def record(self, metrics: dict[str, Any]) -> bool:
        """Add a completed epoch's metrics; True if its dev loss is the best so far."""
        self.epoch = metrics["epoch"]
        self.history.append(metrics)
        if metrics["dev_loss"] < self.best_dev_loss:
            self.best_dev_loss = metrics["dev_loss"]
            self.best_epoch = self.epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    def finished(self, train: TrainConfig, warm_start_epochs: int = 0) -> bool:
        """Whether training is over: out of epochs, or out of patience (never inside a warm start: the encoder
        gets its epochs whatever the head alone did)."""
        if self.epoch >= train.max_epochs:
            return True
        return self.epoch >= warm_start_epochs and self.epochs_without_improvement >= train.patience

    def start_fine_tuning(self) -> None:
        """At the end of a warm start: patience counts again from here, the best epoch so far stays selectable."""
        self.epochs_without_improvement = 0

    def to_client_state(self) -> dict[str, Any]:
        """Plain values for DeepSpeed's client_state."""
        return {"training_state": dataclasses.asdict(self)}

    @classmethod
    def from_client_state(cls, client_state: dict[str, Any]) -> "TrainingState":
        """Inverse of `to_client_state`."""
        return cls(**client_state["training_state"])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of one rank's dropout in one epoch: independent of how many epochs this process ran."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


@dataclass(kw_only=True)
class EpochProgress:
    """How far the epoch in progress has come: what a checkpoint taken inside an epoch resumes from."""

    epoch: int
    """The epoch in progress."""
    steps: int = 0
    """Global batches (optimizer steps) of it done."""
    weight_sum: float = 0.0
    """Summed utterance weight of those batches, over all ranks."""
    data_seconds: float = 0.0
    """Seconds this rank spent assembling their batches."""
    seconds: float = 0.0
    """Seconds the training pass has taken on them, in earlier attempts too."""


@dataclass(kw_only=True)
class StepCheckpoints:
    """What the loop needs to checkpoint inside an epoch, and to stop when asked."""

    checkpoints: Checkpoints
    """The run's checkpoints."""
    state: TrainingState
    """Progress and early stopping up to the last finished epoch."""
    every_steps: int
    """Checkpoint after every this many optimizer steps (0: never inside an epoch)."""
    request: CheckpointRequest | None
    """A signal's request to checkpoint and stop, when the run has one."""

    def after_step(self, engine: Any, epoch: EpochProgress, loss_sum: torch.Tensor, finite: bool,
                   world_size: int, last: bool) -> None:
        """Stop on a non-finite loss; checkpoint when due or asked; stop after checkpointing when asked."""
        requested = self.request is not None and self.request.requested
        flags = torch.tensor([0 if finite else 1, 1 if requested else 0], dtype=torch.int64, device=engine.device)
        if world_size > 1:
            # Every rank must stop, or checkpoint, at the same step: the flags are agreed on.
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0]:
            last_good = self.checkpoints.progress()
            where = f"checkpoint {last_good.latest[0]}" if last_good else "the start (no checkpoint was saved yet)"
            raise NonFiniteLossError(
                f"the train loss is not finite at epoch {epoch.epoch}, step {epoch.steps}; training stopped, and "
                f"the run folder resumes from {where}: lower train.learning_rate or check the features"
            )
        due = self.every_steps and engine.global_steps % self.every_steps == 0 and not last
        if not (flags[1] or due):
            return
        self.checkpoints.save(
            engine,
            checkpoint_tag(epoch.epoch, epoch.steps),
            client_state={**self.state.to_client_state(), "epoch_progress": dataclasses.asdict(epoch)},
            rank_state={"epoch_loss_sum": loss_sum},
            end_of_epoch=False,
            best_epoch=self.state.best_epoch,
        )
        if flags[1]:
            raise TrainingInterrupted(
                f"training stopped, as a signal asked, after checkpoint {checkpoint_tag(epoch.epoch, epoch.steps)}"
            )


def _train_epoch(
    engine: Any,
    dataset: DialogueDataset,
    sampler: DialogueBatchSampler,
    class_weights: torch.Tensor | None,
    rendezvous: Rendezvous,
    dtype: torch.dtype,
    progress: tqdm,
    epoch: EpochProgress,
    loss_sum: torch.Tensor,
    step_checkpoints: StepCheckpoints,
    monitor: bool = False,
) -> float:
    """The epoch's remaining batches (from `epoch.steps` on); returns the mean train loss over all ranks.

    `epoch` and `loss_sum` (this rank's summed loss) carry the part of the epoch done before a resume,
    and are updated as batches run. With gradient accumulation, each rank's share of a global batch
    runs as that many micro-batches, each normalised by the whole global batch, so their gradients add
    up to the global batch's (DeepSpeed's own 1/accumulation scaling is off) and every global batch
    ends on an optimizer step, where a checkpoint can be taken. With `monitor`, each global batch's
    loss and every group's learning rate go to DeepSpeed's monitor.
    """
    engine.train()
    weights = None if class_weights is None else class_weights.cpu().numpy()
    accumulation = engine.gradient_accumulation_steps()
    batches = list(sampler)
    progress.update(sum(len(b.global_indices) for b in batches[: epoch.steps]))
    seconds_before, pass_started = epoch.seconds, time.perf_counter()
    for index in range(epoch.steps, len(batches)):
        rank_batch = batches[index]
        global_weight = dataset.label_weight(rank_batch.global_indices, weights)
        step_loss = torch.zeros((), dtype=torch.float64, device=engine.device)
        with reduction_in_parameter_order(engine, rendezvous.world_size) as end_micro_batch:
            for micro_batch in rank_batch.micro_batches(accumulation):
                started = time.perf_counter()
                batch = dataset.batch(micro_batch.indices, micro_batch.counted).to(engine.device, dtype)
                epoch.data_seconds += time.perf_counter() - started
                logits = engine(batch.audio, batch.text, batch.mask)
                batch_loss = batch_loss_sum(logits, batch.labels, class_weights)
                engine.backward(batch_loss * (rendezvous.world_size / global_weight), scale_wrt_gas=False)
                end_micro_batch()
                step_loss += batch_loss.detach().double()
        loss_sum += step_loss
        epoch.weight_sum += global_weight
        epoch.steps = index + 1
        epoch.seconds = seconds_before + time.perf_counter() - pass_started
        if monitor:
            _monitor_step(engine, step_loss, global_weight, rendezvous)
        progress.update(len(rank_batch.global_indices))
        finite = bool(torch.isfinite(step_loss).item())
        step_checkpoints.after_step(
            engine, epoch, loss_sum, finite, rendezvous.world_size, last=epoch.steps == len(batches)
        )
    total = loss_sum.clone()
    if rendezvous.world_size > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total.item() / epoch.weight_sum)


def _monitor_step(engine: Any, step_loss: torch.Tensor, global_weight: float, rendezvous: Rendezvous) -> None:
    """The global batch's mean loss and each parameter group's rate, into DeepSpeed's monitor (rank 0 writes)."""
    if rendezvous.world_size > 1:
        dist.all_reduce(step_loss, op=dist.ReduceOp.SUM)
    if rendezvous.is_main:
        samples = engine.global_samples
        events = [("Train/Samples/train_loss", float(step_loss.item() / global_weight), samples)]
        for index, group in enumerate(engine.optimizer.param_groups):
            events.append((f"Train/Samples/lr_{group.get('name', index)}", float(group["lr"]), samples))
        engine.monitor.write_events(events)


def train(
    config: RunConfig, run_dir: Path, resume: bool = False, request: CheckpointRequest | None = None
) -> dict[str, Any]:
    """Train `config` into `run_dir`, select the best dev-loss epoch, score test once; return test_metrics.json.

    `request`, when given, is armed while the epochs run: a signal it handles checkpoints the step in
    progress and stops training with TrainingInterrupted (a Submitit job then requeues itself).
    """
    run = RunFolder(run_dir)
    run_dir = run.path
    with (
        distributed_session() as rendezvous,
        run.lock(rendezvous.is_main),
        deterministic_kernels(config.train.deterministic),
    ):
        checkpoints = run.checkpoints(rendezvous.rank, rendezvous.world_size)
        if resume:
            config = dataclasses.replace(config, store=str(open_run_store(run_dir, config.store).path))
        config = resolve_run_config(config)
        run.check_new_or_resumable(config, resume)
        if run.finished:
            log.info("run %s is finished; returning its test metrics", run_dir)
            if rendezvous.is_main:
                checkpoints.keep_only_best()
            return json.loads(run.test_metrics_path.read_text(encoding="utf-8"))
        if config.text_mode == "finetuned":
            run_finetune_chain(config.store, config.finetune, config.data.text_family, config.runs_root, rendezvous)
        seed_everything(config.seed)
        inputs = prepare_inputs(config, SPLITS)
        if rendezvous.is_main:
            write_resolved_config(config, run_dir)
            record_run_store(run_dir, FeatureStore.open(config.store, verify=False))
            inputs.statistics.save(run.statistics_path)
        steps_per_epoch = math.ceil(len(inputs.datasets["train"]) / config.train.batch_dialogues)
        engine = initialize_engine(inputs.model, config, rendezvous.world_size, steps_per_epoch, run.monitor_folder)
        require_supported(engine)
        restored = checkpoints.restore(engine) if resume else None
        if resume and restored is None:
            log.info("run %s has no checkpoint yet; starting from the first epoch", run_dir)
        state = TrainingState() if restored is None else TrainingState.from_client_state(restored.client_state)
        if restored is not None:
            log.info("resuming %s from checkpoint %s (best so far: epoch %d)", run_dir, restored.tag, state.best_epoch)
        if rendezvous.is_main:
            atomic_write_json_lines(run.metrics_path, state.history)
        step_checkpoints = StepCheckpoints(
            checkpoints=checkpoints, state=state, every_steps=config.checkpoint.every_steps, request=request
        )
        with request.armed() if request is not None else contextlib.nullcontext():
            _fit(engine, config, inputs, state, restored, step_checkpoints, rendezvous, run)
        del engine
        return _test(config, inputs, checkpoints, rendezvous, run)


def _fit(
    engine: Any,
    config: RunConfig,
    inputs: RunInputs,
    state: TrainingState,
    restored: Restored | None,
    step_checkpoints: StepCheckpoints,
    rendezvous: Rendezvous,
    run: RunFolder,
) -> None:
    """Epochs until early stopping or max_epochs, a checkpoint and a metrics line after each.

    A checkpoint taken inside an epoch resumes it at the next batch, with this rank's RNG and loss
    sum as they were, so the epoch ends as it would have without the interruption.
    """
    checkpoints = step_checkpoints.checkpoints
    train_set, dev_set = inputs.datasets["train"], inputs.datasets["dev"]
    dtype = precision_dtype(run_precision(config))
    weights = class_weight_vector(inputs.train_labels, config.train.class_weights, len(inputs.label_set))
    class_weights = None if weights is None else torch.from_numpy(weights).to(engine.device)
    placement = {"rank": rendezvous.rank, "world_size": rendezvous.world_size, "seed": config.seed}
    if config.end_to_end_mode and config.end_to_end.bucket_by_length:
        lengths = train_set.tokens.dialogue_lengths(train_set.dialogues)
        sampler = LengthBucketSampler(lengths, config.train.batch_dialogues, **placement)
    else:
        sampler = DialogueBatchSampler(len(train_set), config.train.batch_dialogues, shuffle=True, **placement)
    part_done = None if restored is None else restored.client_state.get("epoch_progress")
    with tqdm(
        total=config.train.max_epochs, initial=state.epoch, desc="epochs", unit="epoch", disable=not rendezvous.is_main
    ) as epochs_bar:
        while not state.finished(config.train, config.warm_start_epochs):
            loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
            if part_done is not None:
                # The checkpoint restored this rank's RNG as it was at that step.
                epoch = EpochProgress(**part_done)
                loss_sum += restored.rank_state["epoch_loss_sum"].to(engine.device)
                part_done = None
            else:
                epoch = EpochProgress(epoch=state.epoch + 1)
                torch.manual_seed(epoch_seed(config.seed, epoch.epoch, rendezvous.rank))
            sampler.set_epoch(epoch.epoch)
            if config.end_to_end_mode:
                phase = training_phase(config.warm_start_epochs, epoch.epoch)
                engine.module.encoder_learns = phase != WARM_START_PHASE
            with tqdm(
                total=len(train_set),
                desc=f"epoch {epoch.epoch}",
                unit="dialogue",
                leave=False,
                disable=not rendezvous.is_main,
            ) as batches_bar:
                train_loss = _train_epoch(
                    engine, train_set, sampler, class_weights, rendezvous, dtype, batches_bar, epoch, loss_sum,
                    step_checkpoints, config.monitor.enabled,
                )
            dev_started = time.perf_counter()
            dev = evaluate_split(
                engine,
                dev_set,
                batch_dialogues=config.train.batch_dialogues,
                device=engine.device,
                dtype=dtype,
                class_weights=class_weights,
                rank=rendezvous.rank,
                world_size=rendezvous.world_size,
                label_set=inputs.label_set,
            )
            if not math.isfinite(dev.loss):
                raise NonFiniteLossError(
                    f"the dev loss is not finite after epoch {epoch.epoch} (train loss {train_loss}); training "
                    "stopped, and the run folder resumes from its last checkpoint: lower train.learning_rate"
                )
            state.record(
                {
                    "epoch": epoch.epoch,
                    "train_loss": train_loss,
                    "dev_loss": dev.loss,
                    "dev_weighted_f1": dev.metrics.weighted_f1,
                    "dev_accuracy": dev.metrics.accuracy,
                    "seconds": epoch.seconds + time.perf_counter() - dev_started,
                    "train_seconds": epoch.seconds,
                    "data_seconds": epoch.data_seconds,
                    "phase": training_phase(config.warm_start_epochs, epoch.epoch),
                }
            )
            if epoch.epoch == config.warm_start_epochs:
                state.start_fine_tuning()
            if config.monitor.enabled and rendezvous.is_main:
                engine.monitor.write_events(
                    [
                        ("Epoch/train_loss", train_loss, epoch.epoch),
                        ("Epoch/dev_loss", dev.loss, epoch.epoch),
                        ("Epoch/dev_weighted_f1", dev.metrics.weighted_f1, epoch.epoch),
                    ]
                )
            checkpoints.save(
                engine,
                checkpoint_tag(state.epoch),
                client_state=state.to_client_state(),
                rank_state={},
                end_of_epoch=True,
                best_epoch=state.best_epoch,
            )
            if rendezvous.is_main:
                atomic_write_json_lines(run.metrics_path, state.history)
            epochs_bar.update(1)
            epochs_bar.set_postfix(
                train_loss=f"{train_loss:.4f}",
                dev_loss=f"{dev.loss:.4f}",
                dev_wf1=f"{100 * dev.metrics.weighted_f1:.2f}",
            )
    log.info(
        "training stopped after epoch %d; selected epoch %d (dev loss %.4f)",
        state.epoch,
        state.best_epoch,
        state.best_dev_loss,
    )


def _test(
    config: RunConfig, inputs: RunInputs, checkpoints: Checkpoints, rendezvous: Rendezvous, run: RunFolder
) -> dict[str, Any]:
    """Score the test split once with the best checkpoint; write predictions, plots, then test_metrics.json."""
    # deferred: matplotlib costs a second at import, and only the process that finishes a run plots
    from model.plots import plot_learning_curves

    progress = checkpoints.progress()
    if progress is None or progress.best is None:
        raise RunFolderError(f"run {run.path} has no checkpoint to test")
    evaluation, record = evaluate_checkpoint(config, inputs, checkpoints, progress, rendezvous, "test")
    if config.end_to_end_mode and not config.end_to_end.encoder.freeze:
        export_run_encoder(config, inputs, checkpoints, progress.best, rendezvous, run.encoder_folder)
    if rendezvous.is_main:
        history = [json.loads(line) for line in run.metrics_path.read_text(encoding="utf-8").splitlines()]
        plot_learning_curves(history, run.curves_path, best_epoch=progress.best_epoch)
        write_evaluation(run.path, evaluation, record)
        checkpoints.keep_only_best()
    if rendezvous.world_size > 1:
        dist.barrier()
    return record
