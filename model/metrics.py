"""Classification metrics for emotion recognition: weighted F1 (the paper's metric), accuracy,
macro F1, per-class F1 and the confusion matrix, from integer labels, by scikit-learn.

scikit-learn's conventions, so numbers compare with published code:
- a class's F1 is 2·TP / (2·TP + FP + FN), and 0 when that is 0/0 (never predicted, never true);
- weighted F1 weights each class's F1 by its number of true utterances (support);
- macro F1 is the plain mean over the classes that occur in the gold or the predicted labels.

`weighted_f1_of_confusions` is the same weighted F1 from many confusion matrices at once, for a
bootstrap that rescores thousands of resamples (sklearn scores one label list per call).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as sk

from extract.labels import EMOTIONS


def _check_labels(gold: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    gold = np.asarray(gold, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if gold.shape != pred.shape or gold.ndim != 1:
        raise ValueError(f"gold and pred must be 1-d arrays of the same length, not {gold.shape} and {pred.shape}")
    for name, labels in (("gold", gold), ("pred", pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return gold, pred


def confusion_matrix(gold: np.ndarray, pred: np.ndarray, num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """int64 [C, C]: row = true class, column = predicted class."""
    gold, pred = _check_labels(gold, pred, num_classes)
    return sk.confusion_matrix(gold, pred, labels=np.arange(num_classes)).astype(np.int64)


def weighted_f1_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """Weighted F1 of each confusion matrix in `confusions` [..., C, C] (rows true class): shape [...]."""
    confusions = np.asarray(confusions, dtype=np.float64)
    true_positive = np.diagonal(confusions, axis1=-2, axis2=-1)
    support = confusions.sum(axis=-1)
    denominator = support + confusions.sum(axis=-2)
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    total = support.sum(axis=-1)
    return np.divide((f1 * support).sum(axis=-1), total, out=np.zeros_like(total), where=total > 0)


@dataclass(frozen=True, kw_only=True)
class ClassificationMetrics:
    """Scores of one set of predictions; fractions in [0, 1], classes in the order of `labels`."""

    weighted_f1: float
    """Per-class F1 weighted by each class's number of true utterances: the paper's metric."""
    accuracy: float
    """Fraction of utterances predicted correctly."""
    macro_f1: float
    """Unweighted mean F1 over the classes present in the gold or predicted labels."""
    per_class_f1: list[float]
    """F1 of each class, in the order of `labels`."""
    support: list[int]
    """Number of true utterances of each class."""
    confusion: list[list[int]]
    """Confusion matrix, rows true class, columns predicted class."""
    labels: tuple[str, ...] = EMOTIONS
    """The class names in class-index order: the run's label set (MELD's emotions by default)."""

    @property
    def count(self) -> int:
        """Number of utterances scored."""
        return int(sum(self.support))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; per-class F1 and support keyed by label name, in class order."""
        return {
            "weighted_f1": self.weighted_f1,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class_f1": dict(zip(self.labels, self.per_class_f1)),
            "support": dict(zip(self.labels, self.support)),
            "confusion": self.confusion,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], labels: Sequence[str] = EMOTIONS) -> "ClassificationMetrics":
        """Inverse of `to_dict`, for metrics of the label set `labels`."""
        return cls(
            weighted_f1=float(data["weighted_f1"]),
            accuracy=float(data["accuracy"]),
            macro_f1=float(data["macro_f1"]),
            per_class_f1=[float(data["per_class_f1"][name]) for name in labels],
            support=[int(data["support"][name]) for name in labels],
            confusion=[[int(v) for v in row] for row in data["confusion"]],
            labels=tuple(labels),
        )


def classification_metrics(
    gold: np.ndarray, pred: np.ndarray, labels: Sequence[str] = EMOTIONS
) -> ClassificationMetrics:
    """All scores of predictions `pred` against labels `gold` (integer class indices into `labels`)."""
    labels = tuple(labels)
    num_classes = len(labels)
    gold, pred = _check_labels(gold, pred, num_classes)
    confusion = confusion_matrix(gold, pred, num_classes)
    if gold.size == 0:
        return ClassificationMetrics(
            weighted_f1=0.0,
            accuracy=0.0,
            macro_f1=0.0,
            per_class_f1=[0.0] * num_classes,
            support=[0] * num_classes,
            confusion=confusion.tolist(),
            labels=labels,
        )
    every_class = np.arange(num_classes)
    return ClassificationMetrics(
        weighted_f1=float(sk.f1_score(gold, pred, labels=every_class, average="weighted", zero_division=0.0)),
        accuracy=float(sk.accuracy_score(gold, pred)),
        # Without labels=, sklearn averages over the classes in gold or pred: macro F1's convention here.
        macro_f1=float(sk.f1_score(gold, pred, average="macro", zero_division=0.0)),
        per_class_f1=[
            float(v) for v in sk.f1_score(gold, pred, labels=every_class, average=None, zero_division=0.0)
        ],
        support=[int(v) for v in confusion.sum(axis=1)],
        confusion=confusion.tolist(),
        labels=labels,
    )


def constant_prediction_metrics(
    gold: np.ndarray, label: int, labels: Sequence[str] = EMOTIONS
) -> ClassificationMetrics:
    """Scores of always predicting `label`: the floor every report shows (always-neutral on MELD)."""
    gold = np.asarray(gold, dtype=np.int64)
    return classification_metrics(gold, np.full_like(gold, label), labels)
