"""Scoring a model on one split, and the files that hold the scores in a run folder.

`evaluate_split` runs the model over a split's dialogues, sharded across ranks like training, and
gathers the predictions of every utterance on every rank. `write_evaluation` writes
`<split>_metrics.json`, the per-utterance predictions with each emotion's probability
(`predictions.jsonl` for test) and a
confusion-matrix plot.

A run's selected checkpoint is scored by `evaluate_checkpoint`, on test once at the end of training
(`model.train`) and on any split again afterwards (`evaluate_run`, which reopens a finished run
folder); `export_run_encoder` writes the selected epoch's trained text encoder in Hugging Face format.
"""

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cluster.distributed_session import distributed_session
from cluster.durable_files import atomic_write_json, atomic_write_json_lines
from cluster.rendezvous import Rendezvous
from extract.labels import MELD_EMOTIONS, NO_LABEL, LabelSet
from model.batch_samplers import DialogueBatchSampler
from model.checkpoint import Checkpoints, Progress, RunFolderError
from model.deepspeed_config import precision_dtype
from model.dialogue_data import IGNORE_LABEL, DialogueDataset
from model.end_to_end import training_phase
from model.engine import build_model, deterministic_kernels, load_inference_engine, run_precision
from model.feature_statistics import FeatureStatistics
from model.metrics import ClassificationMetrics, classification_metrics, constant_prediction_metrics
from model.run_config import RunConfig
from model.run_folder import RunFolder
from model.run_inputs import RunInputs, class_weight_vector, prepare_inputs
from model.run_store import open_run_store
from model.text_encoder import export_encoder, load_tokenizer

log = logging.getLogger(__name__)

@dataclass(kw_only=True)
class SplitEvaluation:
    """A model's loss, scores and per-utterance predictions on one split."""

    split: str
    """Which split."""
    loss: float
    """Mean cross-entropy per utterance (class-weighted when training is)."""
    metrics: ClassificationMetrics
    """Weighted F1, accuracy, macro F1, per-class F1, confusion matrix."""
    keys: list[str]
    """Keys of the scored utterances (those with a label), in the split's row order."""
    gold: np.ndarray
    """int64 [N] true label indices."""
    pred: np.ndarray
    """int64 [N] predicted label indices."""
    probabilities: np.ndarray | None = None
    """float32 [N, classes] softmax of the logits, in the label set's order (None where not kept)."""
    label_set: LabelSet = MELD_EMOTIONS
    """The run's label set: what the indices and probability columns name."""


def batch_loss_sum(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Summed (class-weighted) cross-entropy over the labelled positions of a batch, in float32."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        weight=class_weights,
        ignore_index=IGNORE_LABEL,
        reduction="sum",
    )


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module,
    dataset: DialogueDataset,
    *,
    batch_dialogues: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    class_weights: torch.Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
    label_set: LabelSet = MELD_EMOTIONS,
) -> SplitEvaluation:
    """Loss and predictions of `model` on every labelled utterance of `dataset`, classes in `label_set`.

    An utterance without a label (NO_LABEL) is read as its dialogue's context and neither scored nor listed.

    Each rank runs its share of the dialogues (every rank runs the same number of batches, as
    ZeRO-3 needs); predictions and loss are then summed across ranks, so every rank returns the
    whole split's evaluation.
    """
    model.eval()
    sampler = DialogueBatchSampler(len(dataset), batch_dialogues, rank=rank, world_size=world_size)
    predictions = torch.full((dataset.num_utterances,), -1, dtype=torch.int64, device=device)
    probabilities = torch.zeros((dataset.num_utterances, len(label_set)), dtype=torch.float32, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for rank_batch in sampler:
        batch = dataset.batch(rank_batch.indices, rank_batch.counted).to(device, dtype)
        logits = model(batch.audio, batch.text, batch.mask)
        loss_sum += batch_loss_sum(logits, batch.labels, class_weights).double()
        counted = batch.labels != IGNORE_LABEL
        predictions[batch.rows[counted]] = logits.argmax(dim=-1)[counted]
        probabilities[batch.rows[counted]] = torch.softmax(logits.float(), dim=-1)[counted]
    if world_size > 1:
        # Each utterance is predicted by exactly one rank and is -1 (or 0) elsewhere, so MAX (or SUM) gathers them.
        dist.all_reduce(predictions, op=dist.ReduceOp.MAX)
        dist.all_reduce(probabilities, op=dist.ReduceOp.SUM)
        dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
    scored = dataset.labels != NO_LABEL
    pred = predictions.cpu().numpy()[scored]
    if (pred < 0).any():
        raise RuntimeError(f"{int((pred < 0).sum())} utterances of {dataset.split} got no prediction")
    weights = None if class_weights is None else class_weights.cpu().numpy()
    total_weight = dataset.label_weight(range(len(dataset)), weights)
    gold = dataset.labels[scored]
    return SplitEvaluation(
        split=dataset.split,
        loss=float(loss_sum.item() / total_weight) if total_weight else 0.0,
        metrics=classification_metrics(gold, pred, label_set.labels),
        keys=[key for key, is_scored in zip(dataset.keys, scored) if is_scored],
        gold=gold,
        pred=pred,
        probabilities=probabilities.cpu().numpy()[scored],
        label_set=label_set,
    )


def majority_label(train_labels: np.ndarray, num_classes: int = len(MELD_EMOTIONS)) -> int:
    """The most frequent class of the train split (neutral on MELD); ties go to the earlier class.
    Utterances without a label (NO_LABEL) are not counted."""
    labels = np.asarray(train_labels, dtype=np.int64)
    return int(np.argmax(np.bincount(labels[labels != NO_LABEL], minlength=num_classes)))


def evaluation_record(evaluation: SplitEvaluation, floor_label: int, checkpoint: str, epoch: int) -> dict[str, Any]:
    """What `<split>_metrics.json` holds: the scores, the checkpoint scored, and the constant-prediction floor."""
    labels = evaluation.label_set.labels
    floor = constant_prediction_metrics(evaluation.gold, floor_label, labels)
    return {
        "split": evaluation.split,
        "checkpoint": checkpoint,
        "epoch": epoch,
        "loss": evaluation.loss,
        **evaluation.metrics.to_dict(),
        "emotions": list(labels),
        "label_set": evaluation.label_set.to_json(),
        "majority_floor": {"label": labels[floor_label], **floor.to_dict()},
    }


def write_evaluation(run_dir: Path, evaluation: SplitEvaluation, record: dict[str, Any]) -> Path:
    """Predictions, confusion plot, then the metrics file: written last, it marks the evaluation complete."""
    # deferred: matplotlib costs a second at import, and only the writing process needs it.
    from model.plots import plot_confusion_matrix

    run = RunFolder(run_dir)
    labels = evaluation.label_set.labels
    atomic_write_json_lines(
        run.predictions_path(evaluation.split),
        [
            {"key": key, "gold": labels[gold], "pred": labels[pred], **dict(zip(labels, probabilities))}
            for key, gold, pred, probabilities in zip(
                evaluation.keys,
                evaluation.gold.tolist(),
                evaluation.pred.tolist(),
                [[]] * len(evaluation.keys) if evaluation.probabilities is None else evaluation.probabilities.tolist(),
            )
        ],
    )
    plot_confusion_matrix(
        np.asarray(record["confusion"]),
        run.confusion_plot_path(evaluation.split),
        title=f"{evaluation.split}: weighted F1 {100 * record['weighted_f1']:.2f}",
        labels=labels,
    )
    path = run.split_metrics_path(evaluation.split)
    atomic_write_json(path, record)
    log.info(
        "%s: weighted F1 %.2f, accuracy %.2f (always %s: %.2f)",
        evaluation.split,
        100 * record["weighted_f1"],
        100 * record["accuracy"],
        record["majority_floor"]["label"],
        100 * record["majority_floor"]["weighted_f1"],
    )
    return path


def export_run_encoder(
    config: RunConfig, inputs: RunInputs, checkpoints: Checkpoints, tag: str, rendezvous: Rendezvous, folder: Path
) -> None:
    """Export the text encoder of checkpoint `tag` (the selected epoch) as a Hugging Face folder (rank 0 writes)."""
    model = build_model(config, inputs.modalities, inputs.label_set)
    engine = load_inference_engine(model, config, rendezvous.world_size, checkpoints, tag)
    if rendezvous.is_main:
        export_encoder(engine.module.encoder.model, load_tokenizer(config.end_to_end.encoder), folder)
    if rendezvous.world_size > 1:
        dist.barrier()


def evaluate_checkpoint(
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
    run = RunFolder(run_dir)
    run_dir = run.path
    if not run.is_run:
        raise RunFolderError(f"{run_dir} is not a run folder: it has no {run.config_path.name}; train one first")
    config = dataclasses.replace(run.saved_config, store=str(open_run_store(run_dir, run.saved_config.store).path))
    with distributed_session() as rendezvous, run.lock(rendezvous.is_main):
        checkpoints = run.checkpoints(rendezvous.rank, rendezvous.world_size)
        progress = checkpoints.progress()
        if progress is None or progress.best is None:
            raise RunFolderError(
                f"run {run_dir} has no finished epoch yet; finish training it with `cmroberta train --resume`"
            )
        statistics = FeatureStatistics.load(run.statistics_path)
        with deterministic_kernels(config.train.deterministic):
            inputs = prepare_inputs(config, (split,), statistics)
            evaluation, record = evaluate_checkpoint(config, inputs, checkpoints, progress, rendezvous, split)
            if rendezvous.is_main:
                write_evaluation(run_dir, evaluation, record)
                log.info("wrote %s", run.split_metrics_path(split))
            return record
