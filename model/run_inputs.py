"""What a run reads before training or evaluating: its store's splits, standardised, and a fresh model.

`prepare_inputs` opens the store, builds the model for the store's label set (`model.engine`) and
loads the splits the caller needs; standardisation is fitted on train, or loaded from the run folder's
`feature_statistics.npz` when a finished run is scored again. `class_weight_vector` is the loss's
per-class weights, from the train split's labels.
"""

from dataclasses import dataclass

import numpy as np
import torch

from extract.feature_store import FeatureStore
from extract.labels import EMOTIONS, NO_LABEL, LabelSet
from model.dialogue_data import DialogueDataset, FeatureStatistics, Modalities, load_datasets
from model.end_to_end import attach_tokens
from model.engine import build_model, run_modalities
from model.run_config import RunConfig


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
