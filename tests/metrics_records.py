"""A test metrics record of the shape `model.evaluate.evaluation_record` writes, for tests that write run folders.

Reports read every metrics record through `model.metrics_record.read_metrics_record`, which refuses a
record without the fields the project writes; tests that stand a run folder up by hand write this.
"""

from typing import Any

from extract.labels import EMOTIONS


def metrics_record(weighted_f1: float, per_class_f1: dict[str, float] | None = None) -> dict[str, Any]:
    """A whole test record scoring `weighted_f1` (and `per_class_f1`, each emotion `weighted_f1` by default)."""
    return {
        "split": "test",
        "checkpoint": "epoch-0001",
        "epoch": 1,
        "weighted_f1": weighted_f1,
        "accuracy": weighted_f1,
        "macro_f1": weighted_f1,
        "per_class_f1": per_class_f1 if per_class_f1 is not None else dict.fromkeys(EMOTIONS, weighted_f1),
        "support": dict.fromkeys(EMOTIONS, 1),
        "emotions": list(EMOTIONS),
        "majority_floor": {"label": EMOTIONS[0], "weighted_f1": 0.1, "accuracy": 0.2},
    }
