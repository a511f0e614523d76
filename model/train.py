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

A run folder holds:
    config.toml                 the resolved RunConfig
    feature_statistics.npz      train-split standardisation, applied again at evaluation
    encoder/                    the trained text encoder (end_to_end), selected epoch, Hugging Face format
    monitor/                    DeepSpeed's monitor files, when [monitor] switches them on
    metrics.jsonl               one line per epoch: losses, dev scores, seconds (the epoch, its
                                training pass, and the batch assembly within it), its phase
                                ('single', or 'warm_start' / 'fine_tune' with a warm start)
    checkpoints/                the last two checkpoints and the best one, and progress.json, which
                                names them (format, rotation and fallback: `model.checkpoint`)
    learning_curves.png, confusion_test.png, predictions.jsonl
    test_metrics.json           written last: its presence means the run is finished; it names the
                                selected epoch and phase (selected_epoch, selected_phase)

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
import os
import random
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

from cluster.config import RESOLVED_CONFIG_NAME, load_config, to_dict, write_resolved_config
from cluster.durable_files import atomic_write_json_lines
from cluster.rendezvous import Rendezvous, export_rendezvous, resolve_rendezvous
from extract.feature_store import FeatureStore, FeatureStoreError
from extract.labels import EMOTIONS, NO_LABEL, LabelSet
from model.checkpoint import (
    CheckpointConfig,
    CheckpointRequest,
    Checkpoints,
    NonFiniteLossError,
    Progress,
    Restored,
    RunFolderError,
    TrainingInterrupted,
    checkpoint_tag,
    require_supported,
    run_folder_lock,
)
from model.deepspeed_config import (
    EngineConfig,
    MonitorConfig,
    build_deepspeed_config,
    micro_batch_dialogues,
    precision_dtype,
    reduction_in_parameter_order,
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
from model.end_to_end import (
    WARM_START_PHASE,
    EndToEndConfig,
    attach_tokens,
    build_end_to_end_model,
    build_end_to_end_optimizer,
    training_phase,
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
)
from model.finetune_text import FinetuneConfig, finetuned_family, resolve_finetune, run_finetune_chain
from model.fusion import FusionConfig, build_fusion_model
from model.layer_mix import LayerMix, LayerMixedHead
from model.lr_schedule import build_lr_scheduler
from model.param_groups import build_optimizer, head_param_groups
from model.run_store import open_run_store, read_run_store_record, record_run_store
from model.text_encoder import STORE_ENCODER, TextEncoderConfig, export_encoder, load_tokenizer
from model.weights_fit import model_shapes, weights_misfit

log = logging.getLogger(__name__)

# Seeds are Python ints, but generators take bounded ones (numpy's legacy seed at most 2**32 - 1);
# 2**31 - 1 fits every one, and a SLURM array index too.
MAX_SEED = 2**31 - 1

SPLITS = ("train", "dev", "test")
METRICS_NAME = "metrics.jsonl"
STATISTICS_NAME = "feature_statistics.npz"
ENCODER_FOLDER = "encoder"
CURVES_NAME = "learning_curves.png"
_DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")


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
    """Stop after this many epochs in a row without a lower dev loss (with a warm start, counted from its
    end: the encoder always gets its epochs)."""
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
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """When to checkpoint besides epoch ends (it does not change results, so a resume may change it)."""
    seed: int = 0
    """Seed of the initial weights, the shuffle and dropout."""
    runs_root: str = "runs"
    """Where `cmroberta train` makes the run folder when --run-dir is not given."""

    def __post_init__(self) -> None:
        if not self.store.strip():
            raise ValueError("store must be a feature store folder, as printed by `cmroberta extract`")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, not {self.seed}")
        if not self.model.uses_text:
            # Nothing to encode: one recorded mode for every audio-only run, whatever the sweep asked.
            self.text_mode = "frozen"
        if self.text_mode == "end_to_end" and self.end_to_end.warm_start_epochs:
            if self.end_to_end.warm_start_epochs >= self.train.max_epochs:
                raise ValueError(
                    f"end_to_end.warm_start_epochs ({self.end_to_end.warm_start_epochs}) leaves no epoch of "
                    f"train.max_epochs ({self.train.max_epochs}) to fine-tune the encoder in; lower it"
                )
            if self.end_to_end.encoder.freeze:
                raise ValueError("end_to_end.warm_start_epochs needs an encoder that trains; unset encoder.freeze")
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

    @property
    def warm_start_epochs(self) -> int:
        """Epochs in which only the head trains before the encoder does (end to end with a warm start; else 0)."""
        return self.end_to_end.warm_start_epochs if self.end_to_end_mode else 0


def default_run_dir(config: RunConfig) -> Path:
    """`<runs_root>/<store folder name>/<variant>-<text mode>[-mdrop<p>]-seed<seed>` (audio: `audio-seed<seed>`).

    Modality dropout is in the name, so a bimodal run trained with it never lands in the folder of
    the same run trained without it.
    """
    mode = f"-{config.text_mode}" if config.model.uses_text else ""
    dropout = f"-mdrop{config.model.modality_dropout:g}" if config.model.modality_dropout > 0 else ""
    name = f"{config.model.variant}{mode}{dropout}-seed{config.seed}"
    return Path(config.runs_root) / Path(config.store).name / name


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


def class_weight_vector(train_labels: np.ndarray, mode: str, num_classes: int = len(EMOTIONS)) -> np.ndarray | None:
    """Per-class loss weights: None for 'none'; N / (C · count) for 'balanced' (0 for a class absent from train).

    N counts the labelled utterances: one without a label (NO_LABEL) has no loss to weigh.
    """
    if mode == "none":
        return None
    labelled = np.asarray(train_labels)[np.asarray(train_labels) != NO_LABEL]
    counts = np.bincount(labelled, minlength=num_classes).astype(np.float64)
    weights = np.divide(len(labelled), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
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
    """Label indices of the train split (class weights, the majority-class floor); NO_LABEL where unlabelled."""
    label_set: LabelSet
    """The store's label set, the run's own: the model's output width, the metrics and the reports follow it."""


def build_model(config: RunConfig, modalities: Modalities, label_set: LabelSet) -> torch.nn.Module:
    """The fusion network for the modalities' widths (behind the text encoder, end to end), seeded by the run,
    with one output per label of the run's `label_set`.

    `config` must be resolved (`resolve_run_config`): an end-to-end encoder named, not 'store'.
    Stored speech-encoder layers are mixed by learned weights in front of the head (model.layer_mix).
    """
    mix = LayerMix(modalities.layer_blocks) if modalities.layer_blocks else None
    if config.end_to_end_mode:
        model = build_end_to_end_model(
            config.end_to_end,
            config.model,
            modalities.head_audio_dim,
            config.seed,
            normalise=config.data.standardize,
            num_classes=len(label_set),
        )
        if mix is not None:
            model.head = LayerMixedHead(mix, model.head)
        return model
    torch.manual_seed(config.seed)
    head = build_fusion_model(config.model, modalities.head_audio_dim, modalities.text_dim, len(label_set))
    return LayerMixedHead(mix, head) if mix is not None else head


def run_modalities(config: RunConfig, store: FeatureStore) -> Modalities:
    """The families the configured variant reads from `store`; a FeatureStoreError if the store lacks one.

    End to end, text comes from token ids, so the store's text family is neither needed nor read.
    """
    reads_text = config.model.uses_text and not config.end_to_end_mode
    return select_modalities(store_modalities(store, config.data), store, config.model.uses_audio, reads_text)


def prepare_inputs(
    config: RunConfig, splits: tuple[str, ...], statistics: FeatureStatistics | None = None
) -> RunInputs:
    """Open the store, build the model for its label set, load the splits it needs.

    A run follows its store's label set; a run reopened (evaluate, predict, --resume) was checked against
    its recorded set by `open_run_store` before its store reaches here.
    """
    store = FeatureStore.open(config.store)
    modalities = run_modalities(config, store)
    model = build_model(config, modalities, store.label_set)
    datasets, statistics = load_datasets(store, modalities, splits, config.data.standardize, statistics)
    if config.end_to_end_mode:
        attach_tokens(store, datasets, config.end_to_end.encoder)
    if "train" in datasets:
        train_labels = datasets["train"].labels
    else:
        train_labels = store.read_split("train", families=[]).emotion
    return RunInputs(
        model=model,
        modalities=modalities,
        datasets=datasets,
        statistics=statistics,
        train_labels=train_labels,
        label_set=store.label_set,
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
    decoupled decay under the warmup/decay schedule (the head's rate stays constant), which DeepSpeed
    steps and checkpoints.
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
        scheduler = build_lr_scheduler(
            optimizer, config.end_to_end.schedule, steps_per_epoch, train.max_epochs, config.warm_start_epochs
        )
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
    """An engine without optimizer holding the weights of checkpoint `tag`, read without unpickling.

    It always runs without ZeRO partitioning (the model fits on one device to evaluate).
    """
    weights = checkpoints.load_weights(tag)
    # A config.toml edited after training (another hidden_size) builds another model: one line, not
    # torch's list of every mismatched tensor.
    saved = {name: tuple(value.shape) for name, value in weights.items()}
    misfit = weights_misfit(tag, checkpoints.run_dir, model_shapes(model), saved)
    if misfit:
        raise RunFolderError(misfit)
    model.load_state_dict(weights)
    return initialize_engine(model, _without_zero(config), world_size, steps_per_epoch=None)


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
        for micro_batch in rank_batch.micro_batches(accumulation):
            started = time.perf_counter()
            batch = dataset.batch(micro_batch.indices, micro_batch.counted).to(engine.device, dtype)
            epoch.data_seconds += time.perf_counter() - started
            logits = engine(batch.audio, batch.text, batch.mask)
            batch_loss = batch_loss_sum(logits, batch.labels, class_weights)
            with reduction_in_parameter_order(engine, rendezvous.world_size):
                engine.backward(batch_loss * (rendezvous.world_size / global_weight), scale_wrt_gas=False)
            engine.step()
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


def _check_run_folder(run_dir: Path, config: RunConfig, resume: bool, checkpoints: Checkpoints) -> None:
    """Refuse to overwrite a run, and to resume one with a different config."""
    started = checkpoints.progress() is not None or (run_dir / TEST_METRICS_NAME).is_file()
    if started and not resume:
        raise RunFolderError(
            f"run folder {run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir"
        )
    saved_path = run_dir / RESOLVED_CONFIG_NAME
    if started and saved_path.is_file():
        saved = saved_run_config(run_dir)
        # A run that records its store's identity was checked against it (`open_run_store`): the path may move.
        free = ("store",) if read_run_store_record(run_dir) is not None else ()
        differences = _config_differences(to_dict(saved), to_dict(config), free=free)
        if differences:
            raise RunFolderError(
                f"run folder {run_dir} was trained with another config ({'; '.join(differences)}); "
                "resume it with the same config, or choose another --run-dir"
            )


def saved_run_config(run_dir: Path) -> RunConfig:
    """The resolved config a run folder was trained with; a RunFolderError when it is not a TOML text."""
    path = Path(run_dir) / RESOLVED_CONFIG_NAME
    try:
        return load_config(RunConfig, path)
    except (UnicodeDecodeError, OSError) as error:
        raise RunFolderError(
            f"{path} cannot be read ({type(error).__name__}); it is not the config this project wrote: train the "
            "run again in a new folder"
        ) from None


def _config_differences(
    saved: dict[str, Any], current: dict[str, Any], prefix: str = "", free: tuple[str, ...] = ()
) -> list[str]:
    """Dotted keys whose values differ, as 'key: saved -> current'.

    runs_root and checkpoint do not change results, nor do the dotted keys in `free`.
    """
    differences = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in ("runs_root", "checkpoint", *free):
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences.extend(_config_differences(a, b, f"{dotted}.", free))
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


def train(
    config: RunConfig, run_dir: Path, resume: bool = False, request: CheckpointRequest | None = None
) -> dict[str, Any]:
    """Train `config` into `run_dir`, select the best dev-loss epoch, score test once; return test_metrics.json.

    `request`, when given, is armed while the epochs run: a signal it handles checkpoints the step in
    progress and stops training with TrainingInterrupted (a Submitit job then requeues itself).
    """
    run_dir = Path(run_dir)
    with (
        distributed_session() as rendezvous,
        run_folder_lock(run_dir, rendezvous.is_main),
        deterministic_kernels(config.train.deterministic),
    ):
        checkpoints = Checkpoints(run_dir, rendezvous.rank, rendezvous.world_size)
        if resume:
            config = dataclasses.replace(config, store=str(open_run_store(run_dir, config.store).path))
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
        if rendezvous.is_main:
            write_resolved_config(config, run_dir)
            record_run_store(run_dir, FeatureStore.open(config.store, verify=False))
            inputs.statistics.save(run_dir / STATISTICS_NAME)
        steps_per_epoch = math.ceil(len(inputs.datasets["train"]) / config.train.batch_dialogues)
        engine = initialize_engine(inputs.model, config, rendezvous.world_size, steps_per_epoch, run_dir)
        require_supported(engine)
        restored = checkpoints.restore(engine) if resume else None
        if resume and restored is None:
            log.info("run %s has no checkpoint yet; starting from the first epoch", run_dir)
        state = TrainingState() if restored is None else TrainingState.from_client_state(restored.client_state)
        if restored is not None:
            log.info("resuming %s from checkpoint %s (best so far: epoch %d)", run_dir, restored.tag, state.best_epoch)
        if rendezvous.is_main:
            atomic_write_json_lines(run_dir / METRICS_NAME, state.history)
        step_checkpoints = StepCheckpoints(
            checkpoints=checkpoints, state=state, every_steps=config.checkpoint.every_steps, request=request
        )
        with request.armed() if request is not None else contextlib.nullcontext():
            _fit(engine, config, inputs, state, restored, step_checkpoints, rendezvous, run_dir)
        del engine
        return _test(config, inputs, checkpoints, rendezvous, run_dir)


def _fit(
    engine: Any,
    config: RunConfig,
    inputs: RunInputs,
    state: TrainingState,
    restored: Restored | None,
    step_checkpoints: StepCheckpoints,
    rendezvous: Rendezvous,
    run_dir: Path,
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
                atomic_write_json_lines(run_dir / METRICS_NAME, state.history)
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
    if progress is None or progress.best is None:
        raise RunFolderError(f"run {run_dir} has no checkpoint to test")
    evaluation, record = _evaluate_checkpoint(config, inputs, checkpoints, progress, rendezvous, "test")
    if config.end_to_end_mode and not config.end_to_end.encoder.freeze:
        _export_run_encoder(config, inputs, checkpoints, progress.best, rendezvous, run_dir / ENCODER_FOLDER)
    if rendezvous.is_main:
        history = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text(encoding="utf-8").splitlines()]
        plot_learning_curves(history, run_dir / CURVES_NAME, best_epoch=progress.best_epoch)
        write_evaluation(run_dir, evaluation, record)
        checkpoints.keep_only_best()
    if rendezvous.world_size > 1:
        dist.barrier()
    return record


def _export_run_encoder(
    config: RunConfig, inputs: RunInputs, checkpoints: Checkpoints, tag: str, rendezvous: Rendezvous, folder: Path
) -> None:
    """Export the text encoder of checkpoint `tag` (the selected epoch) as a Hugging Face folder (rank 0 writes)."""
    model = build_model(config, inputs.modalities, inputs.label_set)
    engine = load_inference_engine(model, config, rendezvous.world_size, checkpoints, tag)
    if rendezvous.is_main:
        export_encoder(engine.module.encoder.model, load_tokenizer(config.end_to_end.encoder), folder)
    if rendezvous.world_size > 1:
        dist.barrier()


def _evaluate_checkpoint(
    config: RunConfig,
    inputs: RunInputs,
    checkpoints: Checkpoints,
    progress: Progress,
    rendezvous: Rendezvous,
    split: str,
) -> tuple[SplitEvaluation, dict[str, Any]]:
    """The best checkpoint's evaluation on `split`, and the record its metrics file holds.

    The model is built afresh: training may have cast or partitioned the first one.
    """
    model = build_model(config, inputs.modalities, inputs.label_set)
    engine = load_inference_engine(model, config, rendezvous.world_size, checkpoints, progress.best)
    weights = class_weight_vector(inputs.train_labels, config.train.class_weights, len(inputs.label_set))
    evaluation = evaluate_split(
        engine,
        inputs.datasets[split],
        batch_dialogues=config.train.batch_dialogues,
        device=engine.device,
        dtype=precision_dtype(run_precision(config)),
        class_weights=None if weights is None else torch.from_numpy(weights).to(engine.device),
        rank=rendezvous.rank,
        world_size=rendezvous.world_size,
        label_set=inputs.label_set,
    )
    floor_label = majority_label(inputs.train_labels, len(inputs.label_set))
    record = evaluation_record(evaluation, floor_label, progress.best, progress.best_epoch)
    record["selected_epoch"] = progress.best_epoch
    record["selected_phase"] = training_phase(config.warm_start_epochs, progress.best_epoch)
    return evaluation, record


def evaluate_run(run_dir: Path, split: str = "test") -> dict[str, Any]:
    """Score a trained run's selected checkpoint on `split` again; writes `<split>_metrics.json` and predictions."""
    run_dir = Path(run_dir)
    config_path = run_dir / RESOLVED_CONFIG_NAME
    if not config_path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder: it has no {RESOLVED_CONFIG_NAME}; train one first")
    config = saved_run_config(run_dir)
    config = dataclasses.replace(config, store=str(open_run_store(run_dir, config.store).path))
    with distributed_session() as rendezvous, run_folder_lock(run_dir, rendezvous.is_main):
        checkpoints = Checkpoints(run_dir, rendezvous.rank, rendezvous.world_size)
        progress = checkpoints.progress()
        if progress is None or progress.best is None:
            raise RunFolderError(
                f"run {run_dir} has no finished epoch yet; finish training it with `cmroberta train --resume`"
            )
        statistics = FeatureStatistics.load(run_dir / STATISTICS_NAME)
        with deterministic_kernels(config.train.deterministic):
            inputs = prepare_inputs(config, (split,), statistics)
            evaluation, record = _evaluate_checkpoint(config, inputs, checkpoints, progress, rendezvous, split)
            if rendezvous.is_main:
                write_evaluation(run_dir, evaluation, record)
                log.info("wrote %s", run_dir / metrics_file(split))
            return record
