"""A training run's config and its resolution: what `cmroberta train` reads, records and compares on resume.

`RunConfig` names the store, the model, the optimisation (`TrainConfig`), the text mode and the seed.
`resolve_run_config` turns it into the config as it will run (a 'store' encoder named, the finetuned
family named): that is what a run folder's config.toml records (`model.run_folder.RunFolder.saved_config`
reads it back) and what a resumed run is compared with (`model.run_folder.config_differences`).
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from extract.feature_store import FeatureStore, FeatureStoreError
from extract.manifest import family_encoder
from model.checkpoint import CheckpointConfig
from model.deepspeed_config import EngineConfig, MonitorConfig
from model.dialogue_data import DialogueDataConfig
from model.end_to_end import EndToEndConfig
from model.finetune_text import FinetuneConfig, finetuned_family, resolve_finetune
from model.fusion import FusionConfig
from model.text_encoder import STORE_ENCODER, TextEncoderConfig

# Seeds are Python ints, but generators take bounded ones (numpy's legacy seed at most 2**32 - 1);
# 2**31 - 1 fits every one, and a SLURM array index too.
MAX_SEED = 2**31 - 1

SPLITS = ("train", "dev", "test")


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
    encoder = family_encoder(store.manifest, family)
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
