"""A run's metrics record (`<split>_metrics.json`, a robustness record): validated when read.

`model.evaluate` writes these records; every reader (`cmroberta verify`, the report, the robustness table)
reads them through `read_metrics_record`, which names the file and the field a damaged one gets wrong.
"""

import json
from pathlib import Path
from typing import Any

from extract.labels import MELD_EMOTIONS, LabelSet, UnknownLabelError


class MetricsDamagedError(Exception):
    """A metrics file that is not what `evaluation_record` writes; the message names the file and the field."""


def _score(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def record_label_set(record: dict[str, Any]) -> LabelSet:
    """The label set a metrics record is scored in: its `label_set`, MELD's for a record written before records
    named theirs. An UnknownLabelError when the recorded one is not a label set."""
    if "label_set" not in record:
        return MELD_EMOTIONS
    return LabelSet.from_json(record["label_set"], where="label_set")


def metrics_record_problem(record: Any, perturbed: bool = False) -> str | None:
    """What in a metrics record is not of the shape `evaluation_record` writes (the first such field), or None.

    A perturbed record (`robustness/<condition>-seed<N>.json`, `model.predict.evaluate_perturbed`)
    must also name its split and its perturbation's kind and condition.
    """
    if not isinstance(record, dict):
        return "it is not a JSON object"
    try:
        labels = record_label_set(record).labels
    except UnknownLabelError:
        return "its label_set is missing or not what this project writes"
    checks = {
        "checkpoint": isinstance(record.get("checkpoint"), str),
        "epoch": _count(record.get("epoch")),
        "weighted_f1": _score(record.get("weighted_f1")),
        "accuracy": _score(record.get("accuracy")),
        "macro_f1": _score(record.get("macro_f1")),
        "per_class_f1": isinstance(record.get("per_class_f1"), dict)
        and all(_score(record["per_class_f1"].get(e)) for e in labels),
        "support": isinstance(record.get("support"), dict) and all(_count(record["support"].get(e)) for e in labels),
        "majority_floor": isinstance(record.get("majority_floor"), dict)
        and isinstance(record["majority_floor"].get("label"), str)
        and _score(record["majority_floor"].get("weighted_f1"))
        and _score(record["majority_floor"].get("accuracy")),
    }
    if perturbed:
        perturbation = record.get("perturbation")
        checks["split"] = isinstance(record.get("split"), str)
        checks["perturbation"] = isinstance(perturbation, dict) and all(
            isinstance(perturbation.get(key), str) for key in ("kind", "condition")
        )
    wrong = [name for name, fine in checks.items() if not fine]
    return f"its {wrong[0]} is missing or not what this project writes" if wrong else None


def read_metrics_record(path: Path, perturbed: bool = False) -> dict[str, Any]:
    """A `<split>_metrics.json` (or, `perturbed`, a robustness record) read and validated.

    A MetricsDamagedError names the file and the field.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetricsDamagedError(f"{path} cannot be read ({type(error).__name__})") from None
    problem = metrics_record_problem(record, perturbed)
    if problem is not None:
        raise MetricsDamagedError(f"{path} is damaged: {problem}")
    return record
