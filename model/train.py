"""Training the fusion head with DeepSpeed, from a feature store into a run folder.

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
In every mode the head trains with the paper's Adam and coupled L2 (`model.param_groups`), sees text
vectors standardised with train statistics (`model.end_to_end`), and can cut each global batch into
`train.gradient_accumulation_steps` micro-batches whose gradients add up to the whole batch's. A
run whose encoder trains exports it in Hugging Face format to `encoder/`.

A run folder holds:
    config.toml                 the resolved RunConfig
    feature_statistics.npz      train-split standardisation, applied again at evaluation
    encoder/                    the trained text encoder (end_to_end), selected epoch, Hugging Face format
    monitor/                    DeepSpeed's monitor files, when [monitor] switches them on
    metrics.jsonl               one line per epoch: losses, dev scores, seconds (the epoch, its
                                training pass, and the batch assembly within it)
    checkpoints/                DeepSpeed checkpoints `epoch-NNNN` (latest and best) and
                                progress.json, which names them
    learning_curves.png, confusion_test.png, predictions.jsonl
    test_metrics.json           written last: its presence means the run is finished

Resuming (`resume=True`) reloads the latest checkpoint and replays from the next epoch. Each
epoch's shuffle and dropout are seeded from (seed, epoch, rank) rather than carried over, so a
resumed run takes exactly the steps an uninterrupted one takes, on any number of ranks. A kill at
any point leaves a folder that `train(..., resume=True)` finishes: checkpoints and progress.json
are written before anything points at them, and metrics.jsonl is rewritten from the checkpoint.
"""

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from cluster.rendezvous import Rendezvous, export_rendezvous, resolve_rendezvous
from extract.feature_store import FeatureStore, FeatureStoreError
from extract.labels import EMOTIONS
from cluster.config import RESOLVED_CONFIG_NAME, load_config, to_dict, write_resolved_config
from model.deepspeed_config import (
    EngineConfig,
    MonitorConfig,
    build_deepspeed_config,
    micro_batch_dialogues,
    precision_dtype,
    resolve_precision,
)
from model.dialogue_data import (
    DialogueBatchSampler,
    DialogueDataConfig,
    DialogueDataset,
    FeatureStatistics,
    LengthBucketSampler,
    Modalities,
    load_datasets,
    select_modalities,
    store_modalities,
)
from model.evaluate import (
    TEST_METRICS_NAME,
    SplitEvaluation,
    batch_loss_sum,
    evaluate_split,
    evaluation_record,
    majority_label,
    metrics_file,
    write_evaluation,
    write_json_atomic,
    write_lines_atomic,
)
from model.end_to_end import (
    EndToEndConfig,
    attach_tokens,
    build_end_to_end_model,
    build_end_to_end_optimizer,
    fit_text_standardisation,
)
from model.finetune_text import FinetuneConfig, finetuned_family, resolve_finetune, run_finetune_chain
from model.fusion import FusionConfig, build_fusion_model
from model.lr_schedule import build_lr_scheduler
from model.param_groups import build_optimizer, head_param_groups
from model.text_encoder import STORE_ENCODER, TextEncoderConfig, export_encoder, load_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
METRICS_NAME = "metrics.jsonl"
STATISTICS_NAME = "feature_statistics.npz"
ENCODER_FOLDER = "encoder"
CURVES_NAME = "learning_curves.png"
CHECKPOINT_FOLDER = "checkpoints"
PROGRESS_NAME = "progress.json"
_DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RunFolderError(Exception):
    """A run folder that cannot be used as asked: already holds a run, or holds no trained model."""


@dataclass(kw_only=True)
class TrainConfig:
    """The optimisation: the paper's section 4.3 by default, plus DeepSpeed's settings."""

    batch_dialogues: int = 32
    """Dialogues per optimiser step, over all ranks together (the paper's batch size 32)."""
    learning_rate: float = 1e-4
    """Adam's learning rate."""
    weight_decay: float = 3e-4
    """The head's L2 penalty, added to the gradient as torch's Adam does (the paper's 'L2 weight decay'),
    in every text mode; a training encoder's decay is end_to_end.param_groups.encoder_weight_decay."""
    max_epochs: int = 200
    """Most epochs to train."""
    patience: int = 15
    """Stop after this many epochs in a row without a lower dev loss."""
    class_weights: Literal["none", "balanced"] = "none"
    """'balanced' weights each class's cross-entropy by N / (7 · count in train); 'none' is the paper's plain loss."""
    gradient_clipping: float = 0.0
    """Clip the gradient norm to this value; 0 leaves gradients unclipped (the paper does not clip)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches each rank cuts its share of a global batch into; their gradients add up to the
    whole batch's, so the step is the same, with less activation memory (every text mode)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3 of a head-only run (text_mode frozen or finetuned); the fusion head is
    small, so stage 0 (plain data parallel) is the default. End to end: end_to_end.engine.zero_stage."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision of a head-only run; bf16 suits A100/H100 GPUs, fp32 a CPU. End to end:
    end_to_end.engine.precision."""
    deterministic: bool = True
    """Ask torch for deterministic kernels, so a seed gives the same run (always true of CPU runs)."""

    def __post_init__(self) -> None:
        if self.batch_dialogues < 1:
            raise ValueError(f"batch_dialogues must be at least 1, not {self.batch_dialogues}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, not {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or more, not {self.weight_decay}")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, not {self.max_epochs}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, not {self.patience}")
        if self.gradient_clipping < 0:
            raise ValueError(f"gradient_clipping must be 0 (off) or positive, not {self.gradient_clipping}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, not {self.zero_stage}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be at least 1, not {self.gradient_accumulation_steps}")

    @property
    def engine(self) -> EngineConfig:
        """These settings as the DeepSpeed engine config of a head-only run."""
        return EngineConfig(
            zero_stage=self.zero_stage, precision=self.precision, gradient_clipping=self.gradient_clipping
        )


TextMode = Literal["end_to_end", "finetuned", "frozen"]


@dataclass(kw_only=True)
class RunConfig:
    """One training run: which store, which model, how to train it, and the seed."""

    store: str
    """Feature store folder, as `cmroberta extract` printed it."""
    model: FusionConfig = field(default_factory=FusionConfig)
    """The fusion network and its variant (bimodal, bimodal_no_sca, text, audio)."""
    data: DialogueDataConfig = field(default_factory=DialogueDataConfig)
    """Which families make up each modality, and their standardisation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and DeepSpeed settings."""
    text_mode: TextMode = "end_to_end"
    """Where text vectors come from: 'end_to_end', a text encoder fed token ids that trains with the
    head ([end_to_end]); 'finetuned', the paper's recipe: an encoder fine-tuned alone on utterance
    emotion, its vectors extracted into the store, the head trained on them ([finetune]); 'frozen',
    the store's vectors of a pretrained encoder (the fast ablation). A variant without text
    (audio) reads none, and is recorded as 'frozen'."""
    end_to_end: EndToEndConfig = field(default_factory=EndToEndConfig)
    """The text encoder and its optimisation; read only when text_mode is 'end_to_end'."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """The utterance-level fine-tuning of the encoder; read only when text_mode is 'finetuned'."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """DeepSpeed's TensorBoard and CSV monitor, to watch a running job's losses and learning rates."""
    seed: int = 0
    """Seed of the initial weights, the shuffle and dropout."""
    runs_root: str = "runs"
    """Where `cmroberta train` makes the run folder when --run-dir is not given."""

    def __post_init__(self) -> None:
        if not self.store.strip():
            raise ValueError("store must be a feature store folder, as printed by `cmroberta extract`")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, not {self.seed}")
        if not self.model.uses_text:
            # Nothing to encode: one recorded mode for every audio-only run, whatever the sweep asked.
            self.text_mode = "frozen"
        if self.text_mode == "end_to_end":
            defaults = TrainConfig()
            for name in ("zero_stage", "precision", "gradient_clipping"):
                if getattr(self.train, name) != getattr(defaults, name):
                    raise ValueError(
                        f"train.{name} does not apply to text_mode 'end_to_end'; set end_to_end.engine.{name} instead"
                    )

    @property
    def end_to_end_mode(self) -> bool:
        """Whether the text encoder trains with the head."""
        return self.text_mode == "end_to_end"


def default_run_dir(config: RunConfig) -> Path:
    """`<runs_root>/<store folder name>/<variant>-<text mode>-seed<seed>` (audio: `audio-seed<seed>`)."""
    mode = f"-{config.text_mode}" if config.model.uses_text else ""
    return Path(config.runs_root) / Path(config.store).name / f"{config.model.variant}{mode}-seed{config.seed}"


def store_text_encoder(store: FeatureStore, family: str) -> str:
    """The encoder the store's text `family` was extracted with, as its manifest records it."""
    info = store.manifest["families"].get(family, {})
    encoder = info.get("provenance", {}).get("encoder")
    if encoder is None and family == "text":
        encoder = store.manifest.get("config", {}).get("text", {}).get("model")
    if not encoder:
        raise FeatureStoreError(
            f"store {store.path} records no text encoder for family {family!r}; name one with "
            "end_to_end.encoder.model=NAME_OR_FOLDER"
        )
    return str(encoder)


def _with_encoder(encoder: TextEncoderConfig, store: FeatureStore, family: str) -> TextEncoderConfig:
    if encoder.model != STORE_ENCODER:
        return encoder
    return dataclasses.replace(encoder, model=store_text_encoder(store, family))


def resolve_run_config(config: RunConfig) -> RunConfig:
    """The config as it will run, cheaply (no training): 'store' encoders named, the finetuned family named.

    This is what config.toml records and what a resumed run is compared with.
    """
    if config.text_mode == "frozen":
        return config
    store = FeatureStore.open(config.store)
    if config.text_mode == "end_to_end":
        encoder = _with_encoder(config.end_to_end.encoder, store, config.data.text_family)
        return dataclasses.replace(config, end_to_end=dataclasses.replace(config.end_to_end, encoder=encoder))
    finetune = resolve_finetune(
        dataclasses.replace(
            config.finetune, encoder=_with_encoder(config.finetune.encoder, store, config.data.text_family)
        ),
        config.seed,
    )
    data = dataclasses.replace(config.data, text_family=finetuned_family(store, finetune))
    return dataclasses.replace(config, finetune=finetune, data=data)


@contextmanager
def distributed_session() -> Iterator[Rendezvous]:
    """This process's rendezvous, exported for DeepSpeed; on exit the variables are as they were.

    Restoring them keeps a stale RANK or MASTER_PORT from the processes this one starts later.
    The process group itself stays up until the process ends: DeepSpeed caches its groups in
    module globals, and a later `deepspeed.initialize` in this process (a second run of a
    queue, a test) fails on a destroyed one, but reuses a live one.
    """
    rendezvous = resolve_rendezvous()
    saved = {name: os.environ.get(name) for name in _DISTRIBUTED_VARIABLES}
    export_rendezvous(rendezvous)
    try:
        yield rendezvous
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_precision(config: RunConfig) -> str:
    """The precision the run trains in: the end-to-end engine's (its 'auto' resolved here), else train's."""
    return resolve_precision(config.end_to_end.engine.precision) if config.end_to_end_mode else config.train.precision


def zero_stage(config: RunConfig) -> int:
    """The ZeRO stage the run trains with."""
    return config.end_to_end.engine.zero_stage if config.end_to_end_mode else config.train.zero_stage


def deepspeed_config(config: RunConfig, world_size: int, monitor: dict[str, Any] | None = None) -> dict[str, Any]:
    """DeepSpeed's JSON config for this run: the encoder's engine settings end to end, train's otherwise.

    The loop draws its own batches, so the batch sizes here only satisfy DeepSpeed's bookkeeping
    (micro batch x accumulation x world size); the real global batch is `batch_dialogues`.
    """
    train = config.train
    engine = config.end_to_end.engine if config.end_to_end_mode else train.engine
    micro = micro_batch_dialogues(train.batch_dialogues, world_size, train.gradient_accumulation_steps)
    return build_deepspeed_config(engine, micro, world_size, train.gradient_accumulation_steps, monitor)


def class_weight_vector(train_labels: np.ndarray, mode: str) -> np.ndarray | None:
    """Per-class loss weights: None for 'none'; N / (C · count) for 'balanced' (0 for a class absent from train)."""
    if mode == "none":
        return None
    counts = np.bincount(train_labels, minlength=len(EMOTIONS)).astype(np.float64)
    weights = np.divide(len(train_labels), len(EMOTIONS) * counts, out=np.zeros_like(counts), where=counts > 0)
    return weights.astype(np.float32)


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

    def finished(self, train: TrainConfig) -> bool:
        """Whether training is over: out of epochs, or out of patience."""
        return self.epoch >= train.max_epochs or self.epochs_without_improvement >= train.patience

    def to_client_state(self) -> dict[str, Any]:
        """Plain values for DeepSpeed's client_state."""
        return {"training_state": dataclasses.asdict(self)}

    @classmethod
    def from_client_state(cls, client_state: dict[str, Any]) -> "TrainingState":
        """Inverse of `to_client_state`."""
        return cls(**client_state["training_state"])


def checkpoint_tag(epoch: int) -> str:
    """DeepSpeed checkpoint tag of the checkpoint taken after `epoch`."""
    return f"epoch-{epoch:04d}"


class Checkpoints:
    """The run's DeepSpeed checkpoints: the latest epoch's and the best epoch's, named by progress.json.

    progress.json is rewritten (atomically) only after DeepSpeed has finished writing a
    checkpoint, so it never names a partial one; folders it does not name are leftovers of an
    interrupted save and are removed.
    """

    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / CHECKPOINT_FOLDER
        self.progress_path = self.folder / PROGRESS_NAME

    def progress(self) -> dict[str, Any] | None:
        """{'latest': tag, 'best': tag, 'best_epoch': n}, or None before the first checkpoint."""
        if not self.progress_path.is_file():
            return None
        try:
            return json.loads(self.progress_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise RunFolderError(
                f"{self.progress_path} cannot be read ({error}); delete the run folder and train again"
            ) from None

    def save(self, engine: Any, state: TrainingState, is_main: bool) -> None:
        """Checkpoint after `state.epoch` (every rank writes its part), then point progress.json at it."""
        tag = checkpoint_tag(state.epoch)
        engine.save_checkpoint(str(self.folder), tag=tag, client_state=state.to_client_state(), save_latest=False)
        if is_main:
            best = checkpoint_tag(state.best_epoch)
            write_json_atomic(self.progress_path, {"latest": tag, "best": best, "best_epoch": state.best_epoch})
            self.prune({tag, best})

    def prune(self, keep: set[str]) -> None:
        """Remove checkpoint folders other than `keep`."""
        for path in self.folder.iterdir():
            if path.is_dir() and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def keep_only_best(self) -> None:
        """At the end of a run: drop the latest checkpoint unless it is the best."""
        progress = self.progress()
        if progress is None:
            return
        write_json_atomic(self.progress_path, {**progress, "latest": progress["best"]})
        self.prune({progress["best"]})


@dataclass(kw_only=True)
class RunInputs:
    """Everything a run reads before training or evaluating: the model and its data."""

    model: torch.nn.Module
    """The fusion network, freshly initialised."""
    modalities: Modalities
    """Families read per modality, and the input widths the model was built for."""
    datasets: dict[str, DialogueDataset]
    """The requested splits."""
    statistics: FeatureStatistics
    """Standardisation, fitted on train or loaded from the run."""
    train_labels: np.ndarray
    """Emotion indices of the train split (class weights, the majority-class floor)."""


def build_model(config: RunConfig, modalities: Modalities) -> torch.nn.Module:
    """The fusion network for the modalities' widths (behind the text encoder, end to end), seeded by the run.

    `config` must be resolved (`resolve_run_config`): an end-to-end encoder named, not 'store'.
    """
    if config.end_to_end_mode:
        return build_end_to_end_model(config.end_to_end, config.model, modalities.audio_dim, config.seed)
    torch.manual_seed(config.seed)
    return build_fusion_model(config.model, modalities.audio_dim, modalities.text_dim)


def run_modalities(config: RunConfig, store: FeatureStore) -> Modalities:
    """The families the configured variant reads from `store`; a FeatureStoreError if the store lacks one.

    End to end, text comes from token ids, so the store's text family is neither needed nor read.
    """
    reads_text = config.model.uses_text and not config.end_to_end_mode
    return select_modalities(store_modalities(store, config.data), store, config.model.uses_audio, reads_text)


def prepare_inputs(
    config: RunConfig, splits: tuple[str, ...], statistics: FeatureStatistics | None = None
) -> RunInputs:
    """Open the store, build the model for its widths, and load the splits it needs."""
    store = FeatureStore.open(config.store)
    modalities = run_modalities(config, store)
    model = build_model(config, modalities)
    datasets, statistics = load_datasets(store, modalities, splits, config.data.standardize, statistics)
    if config.end_to_end_mode:
        attach_tokens(store, datasets, config.end_to_end.encoder)
    if "train" in datasets:
        train_labels = datasets["train"].labels
    else:
        train_labels = store.read_split("train", families=[]).emotion
    return RunInputs(
        model=model, modalities=modalities, datasets=datasets, statistics=statistics, train_labels=train_labels
    )


def initialize_engine(
    model: torch.nn.Module,
    config: RunConfig,
    world_size: int,
    steps_per_epoch: int | None,
    run_dir: Path | None = None,
) -> Any:
    """The DeepSpeed engine around `model`; with an optimizer when training (`steps_per_epoch` given).

    Head only: torch's Adam at train.learning_rate with the coupled L2 train.weight_decay, constant,
    as in the paper. End to end: the same for the head, plus layer-wise groups of the encoder with
    decoupled decay, all under the warmup/decay schedule, which DeepSpeed steps and checkpoints.
    DeepSpeed's monitor writes into `run_dir` when the config switches it on and `run_dir` is given.
    """
    import deepspeed

    # DeepSpeed logs its whole config at INFO on every start; keep its INFO for -v runs only.
    deepspeed.utils.logger.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    train = config.train
    monitor = config.monitor.deepspeed_sections(run_dir) if run_dir is not None and config.monitor.enabled else None
    ds_config = deepspeed_config(config, world_size, monitor)
    optimizer = scheduler = None
    if steps_per_epoch is not None and config.end_to_end_mode:
        optimizer = build_end_to_end_optimizer(model, config.end_to_end, train.learning_rate, train.weight_decay)
        scheduler = build_lr_scheduler(optimizer, config.end_to_end.schedule, steps_per_epoch, train.max_epochs)
    elif steps_per_epoch is not None:
        optimizer = build_optimizer(
            head_param_groups(model, head_lr=train.learning_rate, head_weight_decay=train.weight_decay)
        )
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


def _without_zero(config: RunConfig) -> RunConfig:
    """The same run with ZeRO partitioning off, for an engine that only evaluates."""
    if config.end_to_end_mode:
        engine = dataclasses.replace(config.end_to_end.engine, zero_stage=0)
        return dataclasses.replace(config, end_to_end=dataclasses.replace(config.end_to_end, engine=engine))
    return dataclasses.replace(config, train=dataclasses.replace(config.train, zero_stage=0))


def load_inference_engine(
    model: torch.nn.Module, config: RunConfig, world_size: int, checkpoints: Checkpoints, tag: str
) -> Any:
    """An engine without optimizer holding the weights of checkpoint `tag`.

    It always runs without ZeRO partitioning (the model fits on one device to evaluate). Weights
    come from the checkpoint's module file, or, for a ZeRO-3 run whose weights are partitioned
    across ranks, are consolidated from its partitions first.
    """
    inference = _without_zero(config)
    if zero_stage(config) == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        model.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(checkpoints.folder), tag=tag))
        return initialize_engine(model, inference, world_size, steps_per_epoch=None)
    engine = initialize_engine(model, inference, world_size, steps_per_epoch=None)
    path, _ = engine.load_checkpoint(
        str(checkpoints.folder),
        tag=tag,
        load_optimizer_states=False,
        load_lr_scheduler_states=False,
        load_module_only=True,
    )
    if path is None:
        raise RunFolderError(f"checkpoint {tag} in {checkpoints.folder} cannot be loaded; train the run again")
    return engine


def accelerator_device(rendezvous: Rendezvous) -> torch.device:
    """The device this rank trains on (the one DeepSpeed will move the model to)."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().device_name(rendezvous.local_rank))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of one rank's dropout in one epoch: independent of how many epochs this process ran."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _train_epoch(
    engine: Any,
    dataset: DialogueDataset,
    sampler: DialogueBatchSampler,
    class_weights: torch.Tensor | None,
    rendezvous: Rendezvous,
    dtype: torch.dtype,
    progress: tqdm,
    monitor: bool = False,
) -> tuple[float, float]:
    """One pass over the train split; returns (mean train loss over all ranks, seconds spent making batches).

    With gradient accumulation, each rank's share of a global batch runs as that many micro-batches,
    each normalised by the whole global batch, so their gradients add up to the global batch's
    (DeepSpeed's own 1/accumulation scaling is off) and every epoch ends on an optimizer step.
    With `monitor`, each global batch's loss and every group's learning rate go to DeepSpeed's monitor.
    """
    engine.train()
    weights = None if class_weights is None else class_weights.cpu().numpy()
    accumulation = engine.gradient_accumulation_steps()
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    weight_sum = 0.0
    data_seconds = 0.0
    for rank_batch in sampler:
        global_weight = dataset.label_weight(rank_batch.global_indices, weights)
        step_loss = torch.zeros((), dtype=torch.float64, device=engine.device)
        for micro_batch in rank_batch.micro_batches(accumulation):
            started = time.perf_counter()
            batch = dataset.batch(micro_batch.indices, micro_batch.counted).to(engine.device, dtype)
            data_seconds += time.perf_counter() - started
            logits = engine(batch.audio, batch.text, batch.mask)
            batch_loss = batch_loss_sum(logits, batch.labels, class_weights)
            engine.backward(batch_loss * (rendezvous.world_size / global_weight), scale_wrt_gas=False)
            engine.step()
            step_loss += batch_loss.detach().double()
        loss_sum += step_loss
        weight_sum += global_weight
        if monitor:
            _monitor_step(engine, step_loss, global_weight, rendezvous)
        progress.update(len(rank_batch.global_indices))
    if rendezvous.world_size > 1:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
    return float(loss_sum.item() / weight_sum), data_seconds


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


def _check_run_folder(run_dir: Path, config: RunConfig, resume: bool, checkpoints: Checkpoints) -> None:
    """Refuse to overwrite a run, and to resume one with a different config."""
    started = checkpoints.progress() is not None or (run_dir / TEST_METRICS_NAME).is_file()
    if started and not resume:
        raise RunFolderError(
            f"run folder {run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir"
        )
    saved_path = run_dir / RESOLVED_CONFIG_NAME
    if started and saved_path.is_file():
        saved = load_config(RunConfig, saved_path)
        differences = _config_differences(to_dict(saved), to_dict(config))
        if differences:
            raise RunFolderError(
                f"run folder {run_dir} was trained with another config ({'; '.join(differences)}); "
                "resume it with the same config, or choose another --run-dir"
            )


def _config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as 'key: saved -> current'; runs_root does not change results."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted == "runs_root":
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences.extend(_config_differences(a, b, f"{dotted}."))
        elif a != b:
            differences.append(f"{dotted}: {a!r} -> {b!r}")
    return differences


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Ask torch for deterministic kernels inside the block; the process's own setting returns after it."""
    before = torch.are_deterministic_algorithms_enabled()
    if enabled:
        # cuBLAS reproduces results only with a fixed workspace; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def train(config: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train `config` into `run_dir`, select the best dev-loss epoch, score test once; return test_metrics.json."""
    run_dir = Path(run_dir)
    checkpoints = Checkpoints(run_dir)
    with distributed_session() as rendezvous, deterministic_kernels(config.train.deterministic):
        config = resolve_run_config(config)
        _check_run_folder(run_dir, config, resume, checkpoints)
        test_path = run_dir / TEST_METRICS_NAME
        if test_path.is_file():
            log.info("run %s is finished; returning its test metrics", run_dir)
            if rendezvous.is_main:
                checkpoints.keep_only_best()
            return json.loads(test_path.read_text(encoding="utf-8"))
        if config.text_mode == "finetuned":
            run_finetune_chain(config.store, config.finetune, config.data.text_family, config.runs_root, rendezvous)
        seed_everything(config.seed)
        inputs = prepare_inputs(config, SPLITS)
        if config.end_to_end_mode and config.data.standardize:
            fit_text_standardisation(inputs.model, inputs.datasets["train"], accelerator_device(rendezvous))
        if rendezvous.is_main:
            write_resolved_config(config, run_dir)
            inputs.statistics.save(run_dir / STATISTICS_NAME)
        steps_per_epoch = math.ceil(len(inputs.datasets["train"]) / config.train.batch_dialogues)
        engine = initialize_engine(inputs.model, config, rendezvous.world_size, steps_per_epoch, run_dir)
        state = _restore(engine, checkpoints, resume, rendezvous, run_dir)
        _fit(engine, config, inputs, state, checkpoints, rendezvous, run_dir)
        del engine
        return _test(config, inputs, checkpoints, rendezvous, run_dir)


def _restore(
    engine: Any, checkpoints: Checkpoints, resume: bool, rendezvous: Rendezvous, run_dir: Path
) -> TrainingState:
    """The training state of the latest checkpoint (weights and optimizer loaded into `engine`), or a fresh one."""
    progress = checkpoints.progress() if resume else None
    if progress is None:
        if resume:
            log.info("run %s has no checkpoint yet; starting from the first epoch", run_dir)
        return TrainingState()
    path, client_state = engine.load_checkpoint(str(checkpoints.folder), tag=progress["latest"])
    if path is None:
        raise RunFolderError(
            f"checkpoint {progress['latest']} in {checkpoints.folder} cannot be loaded; delete the run folder and train again"
        )
    state = TrainingState.from_client_state(client_state)
    log.info("resuming %s after epoch %d (best so far: epoch %d)", run_dir, state.epoch, state.best_epoch)
    if rendezvous.is_main:
        write_lines_atomic(run_dir / METRICS_NAME, state.history)
    return state


def _fit(
    engine: Any,
    config: RunConfig,
    inputs: RunInputs,
    state: TrainingState,
    checkpoints: Checkpoints,
    rendezvous: Rendezvous,
    run_dir: Path,
) -> None:
    """Epochs until early stopping or max_epochs, a checkpoint and a metrics line after each."""
    train_set, dev_set = inputs.datasets["train"], inputs.datasets["dev"]
    dtype = precision_dtype(run_precision(config))
    weights = class_weight_vector(inputs.train_labels, config.train.class_weights)
    class_weights = None if weights is None else torch.from_numpy(weights).to(engine.device)
    placement = {"rank": rendezvous.rank, "world_size": rendezvous.world_size, "seed": config.seed}
    if config.end_to_end_mode and config.end_to_end.bucket_by_length:
        lengths = train_set.tokens.dialogue_lengths(train_set.dialogues)
        sampler = LengthBucketSampler(lengths, config.train.batch_dialogues, **placement)
    else:
        sampler = DialogueBatchSampler(len(train_set), config.train.batch_dialogues, shuffle=True, **placement)
    with tqdm(
        total=config.train.max_epochs, initial=state.epoch, desc="epochs", unit="epoch", disable=not rendezvous.is_main
    ) as epochs_bar:
        while not state.finished(config.train):
            epoch = state.epoch + 1
            started = time.perf_counter()
            torch.manual_seed(epoch_seed(config.seed, epoch, rendezvous.rank))
            sampler.set_epoch(epoch)
            with tqdm(
                total=len(train_set),
                desc=f"epoch {epoch}",
                unit="dialogue",
                leave=False,
                disable=not rendezvous.is_main,
            ) as batches_bar:
                train_loss, data_seconds = _train_epoch(
                    engine, train_set, sampler, class_weights, rendezvous, dtype, batches_bar, config.monitor.enabled
                )
            train_seconds = time.perf_counter() - started
            dev = evaluate_split(
                engine,
                dev_set,
                batch_dialogues=config.train.batch_dialogues,
                device=engine.device,
                dtype=dtype,
                class_weights=class_weights,
                rank=rendezvous.rank,
                world_size=rendezvous.world_size,
            )
            state.record(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "dev_loss": dev.loss,
                    "dev_weighted_f1": dev.metrics.weighted_f1,
                    "dev_accuracy": dev.metrics.accuracy,
                    "seconds": time.perf_counter() - started,
                    "train_seconds": train_seconds,
                    "data_seconds": data_seconds,
                }
            )
            if config.monitor.enabled and rendezvous.is_main:
                engine.monitor.write_events(
                    [
                        ("Epoch/train_loss", train_loss, epoch),
                        ("Epoch/dev_loss", dev.loss, epoch),
                        ("Epoch/dev_weighted_f1", dev.metrics.weighted_f1, epoch),
                    ]
                )
            checkpoints.save(engine, state, rendezvous.is_main)
            if rendezvous.is_main:
                write_lines_atomic(run_dir / METRICS_NAME, state.history)
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
    config: RunConfig, inputs: RunInputs, checkpoints: Checkpoints, rendezvous: Rendezvous, run_dir: Path
) -> dict[str, Any]:
    """Score the test split once with the best checkpoint; write predictions, plots, then test_metrics.json."""
    from model.plots import plot_learning_curves

    progress = checkpoints.progress()
    if progress is None:
        raise RunFolderError(f"run {run_dir} has no checkpoint to test")
    evaluation, record = _evaluate_checkpoint(config, inputs, checkpoints, progress, rendezvous, "test")
    if config.end_to_end_mode and not config.end_to_end.encoder.freeze:
        _export_run_encoder(config, inputs, checkpoints, progress["best"], rendezvous, run_dir / ENCODER_FOLDER)
    if rendezvous.is_main:
        history = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text(encoding="utf-8").splitlines()]
        plot_learning_curves(history, run_dir / CURVES_NAME, best_epoch=progress["best_epoch"])
        write_evaluation(run_dir, evaluation, record)
        checkpoints.keep_only_best()
    if rendezvous.world_size > 1:
        dist.barrier()
    return record


def _export_run_encoder(
    config: RunConfig, inputs: RunInputs, checkpoints: Checkpoints, tag: str, rendezvous: Rendezvous, folder: Path
) -> None:
    """Export the text encoder of checkpoint `tag` (the selected epoch) as a Hugging Face folder (rank 0 writes)."""
    model = build_model(config, inputs.modalities)
    engine = load_inference_engine(model, config, rendezvous.world_size, checkpoints, tag)
    if rendezvous.is_main:
        export_encoder(engine.module.encoder.model, load_tokenizer(config.end_to_end.encoder), folder)
    if rendezvous.world_size > 1:
        dist.barrier()


def _evaluate_checkpoint(
    config: RunConfig,
    inputs: RunInputs,
    checkpoints: Checkpoints,
    progress: dict[str, Any],
    rendezvous: Rendezvous,
    split: str,
) -> tuple[SplitEvaluation, dict[str, Any]]:
    """The best checkpoint's evaluation on `split`, and the record its metrics file holds.

    The model is built afresh: training may have cast or (under ZeRO-3) partitioned the first one.
    """
    model = build_model(config, inputs.modalities)
    engine = load_inference_engine(model, config, rendezvous.world_size, checkpoints, progress["best"])
    weights = class_weight_vector(inputs.train_labels, config.train.class_weights)
    evaluation = evaluate_split(
        engine,
        inputs.datasets[split],
        batch_dialogues=config.train.batch_dialogues,
        device=engine.device,
        dtype=precision_dtype(run_precision(config)),
        class_weights=None if weights is None else torch.from_numpy(weights).to(engine.device),
        rank=rendezvous.rank,
        world_size=rendezvous.world_size,
    )
    record = evaluation_record(
        evaluation, majority_label(inputs.train_labels), progress["best"], progress["best_epoch"]
    )
    return evaluation, record


def evaluate_run(run_dir: Path, split: str = "test") -> dict[str, Any]:
    """Score a trained run's selected checkpoint on `split` again; writes `<split>_metrics.json` and predictions."""
    run_dir = Path(run_dir)
    config_path = run_dir / RESOLVED_CONFIG_NAME
    if not config_path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: it has no {RESOLVED_CONFIG_NAME}; train one first")
    config = load_config(RunConfig, config_path)
    checkpoints = Checkpoints(run_dir)
    progress = checkpoints.progress()
    if progress is None:
        raise RunFolderError(f"run {run_dir} has no checkpoint yet; finish training it with `cmroberta train --resume`")
    statistics = FeatureStatistics.load(run_dir / STATISTICS_NAME)
    with distributed_session() as rendezvous, deterministic_kernels(config.train.deterministic):
        inputs = prepare_inputs(config, (split,), statistics)
        evaluation, record = _evaluate_checkpoint(config, inputs, checkpoints, progress, rendezvous, split)
        if rendezvous.is_main:
            write_evaluation(run_dir, evaluation, record)
            log.info("wrote %s", run_dir / metrics_file(split))
        return record
