"""The one builder of a run's DeepSpeed engine: the model, its optimizer and schedule, and DeepSpeed's config.

Training builds an engine with an optimizer (`initialize_engine` given `steps_per_epoch`); evaluation,
export and `predict` build one without, around the weights of a checkpoint (`load_inference_engine`).
A run's precision and ZeRO stage come from `end_to_end.engine` when the encoder trains with the head,
else from `train`. `deterministic_kernels` asks torch for the same kernels every time a run computes.
"""

import dataclasses
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from extract.feature_store import FeatureStore
from extract.labels import LabelSet
from model.checkpoint import Checkpoints, RunFolderError
from model.deepspeed_config import (
    build_deepspeed_config,
    initialize_deepspeed,
    micro_batch_dialogues,
    resolve_precision,
)
from model.dialogue_data import Modalities, select_modalities, store_modalities
from model.end_to_end import build_end_to_end_model, build_end_to_end_optimizer
from model.fusion import build_fusion_model
from model.layer_mix import LayerMix, LayerMixedHead
from model.lr_schedule import build_lr_scheduler
from model.param_groups import build_optimizer, head_param_groups
from model.run_config import RunConfig
from model.weights_fit import model_shapes, weights_misfit

log = logging.getLogger(__name__)


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


def initialize_engine(
    model: torch.nn.Module,
    config: RunConfig,
    world_size: int,
    steps_per_epoch: int | None,
    monitor_folder: Path | None = None,
) -> Any:
    """The DeepSpeed engine around `model`; with an optimizer when training (`steps_per_epoch` given).

    Head only: torch's Adam at train.learning_rate with the coupled L2 train.weight_decay, constant,
    as in the paper. End to end: the same for the head, plus layer-wise groups of the encoder with
    decoupled decay under the warmup/decay schedule (the head's rate stays constant), which DeepSpeed
    steps and checkpoints.
    DeepSpeed's monitor writes into `monitor_folder` (unless [monitor] names another) when the config switches it
    on and `monitor_folder` is given.
    """
    # deferred: deepspeed takes seconds to import, and importing this module (predict, the CLI) needs none of it
    import deepspeed

    # DeepSpeed logs its whole config at INFO on every start; keep its INFO for -v runs only.
    deepspeed.utils.logger.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    train = config.train
    monitor = (
        config.monitor.deepspeed_sections(monitor_folder)
        if monitor_folder is not None and config.monitor.enabled
        else None
    )
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
    return initialize_deepspeed(model, optimizer, scheduler, ds_config, world_size)


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
