"""Classification metrics for emotion recognition: weighted F1 (the paper's metric), accuracy,
macro F1, per-class F1 and the confusion matrix, computed with numpy from integer labels.

Conventions, the same as scikit-learn's so numbers compare with published code:
- a class's F1 is 2·TP / (2·TP + FP + FN), and 0 when that is 0/0 (never predicted, never true);
- weighted F1 weights each class's F1 by its number of true utterances (support);
- macro F1 is the plain mean over the classes that occur in the gold or the predicted labels.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from extract.labels import EMOTIONS


def confusion_matrix(gold: np.ndarray, pred: np.ndarray, num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """int64 [C, C]: row = true class, column = predicted class."""
    gold = np.asarray(gold, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if gold.shape != pred.shape or gold.ndim != 1:
        raise ValueError(f"gold and pred must be 1-d arrays of the same length, not {gold.shape} and {pred.shape}")
    for name, labels in (("gold", gold), ("pred", pred)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    flat = np.bincount(gold * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_f1(confusion: np.ndarray) -> np.ndarray:
    """float64 [C]: each class's F1 from a confusion matrix (0 where a class is neither true nor predicted)."""
    true_positive = np.diag(confusion).astype(np.float64)
    false_positive = confusion.sum(axis=0) - true_positive
    false_negative = confusion.sum(axis=1) - true_positive
    denominator = 2 * true_positive + false_positive + false_negative
    return np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)


@dataclass(frozen=True, kw_only=True)
class ClassificationMetrics:
    """Scores of one set of predictions; fractions in [0, 1], classes in `EMOTIONS` order."""

    weighted_f1: float
    """Per-class F1 weighted by each class's number of true utterances: the paper's metric."""
    accuracy: float
    """Fraction of utterances predicted correctly."""
    macro_f1: float
    """Unweighted mean F1 over the classes present in the gold or predicted labels."""
    per_class_f1: list[float]
    """F1 of each class, in `EMOTIONS` order."""
    support: list[int]
    """Number of true utterances of each class."""
    confusion: list[list[int]]
    """Confusion matrix, rows true class, columns predicted class."""

    @property
    def count(self) -> int:
        """Number of utterances scored."""
        return int(sum(self.support))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; per-class F1 keyed by emotion name as well as listed in order."""
        return {
            "weighted_f1": self.weighted_f1,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class_f1": dict(zip(EMOTIONS, self.per_class_f1)),
            "support": dict(zip(EMOTIONS, self.support)),
            "confusion": self.confusion,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassificationMetrics":
        """Inverse of `to_dict`."""
        return cls(
            weighted_f1=float(data["weighted_f1"]),
            accuracy=float(data["accuracy"]),
            macro_f1=float(data["macro_f1"]),
            per_class_f1=[float(data["per_class_f1"][name]) for name in EMOTIONS],
            support=[int(data["support"][name]) for name in EMOTIONS],
            confusion=[[int(v) for v in row] for row in data["confusion"]],
        )


def classification_metrics(
    gold: np.ndarray, pred: np.ndarray, num_classes: int = len(EMOTIONS)
) -> ClassificationMetrics:
    """All scores of predictions `pred` against labels `gold` (integer class indices)."""
    confusion = confusion_matrix(gold, pred, num_classes)
    f1 = per_class_f1(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    total = int(support.sum())
    present = (support + predicted) > 0
    return ClassificationMetrics(
        weighted_f1=float((f1 * support).sum() / total) if total else 0.0,
        accuracy=float(np.trace(confusion) / total) if total else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class_f1=[float(v) for v in f1],
        support=[int(v) for v in support],
        confusion=confusion.tolist(),
    )


def constant_prediction_metrics(
    gold: np.ndarray, label: int, num_classes: int = len(EMOTIONS)
) -> ClassificationMetrics:
    """Scores of always predicting `label`: the floor every report shows (always-neutral on MELD)."""
    gold = np.asarray(gold, dtype=np.int64)
    return classification_metrics(gold, np.full_like(gold, label), num_classes)
