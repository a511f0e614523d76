"""The one reader of finished run folders for the reports: a run's config, its test scores and its predictions.

The paper-style report (`launch.report`), the robustness table (`launch.robustness_report`) and a sweep's
aggregate (`launch.aggregate`) all read a run folder through here. `read_run_result` reads everything the
report needs into a `RunResult`; `read_run_results` finds the finished runs under the folders given and
refuses runs tested on different test splits.
"""

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from extract.demo_corpus import read_ambiguous_keys
from extract.manifest import MANIFEST_NAME
from launch.run_groups import ReportError
from launch.statistics import Predictions, StatisticsError, read_predictions
from model.metrics import classification_metrics
from model.metrics_record import MetricsDamagedError, read_metrics_record, record_label_set
from model.run_folder import RunFolder

log = logging.getLogger(__name__)

# Model variant -> row name, in the paper's row order.
VARIANT_NAMES: dict[str, str] = {
    "audio": "audio",
    "text": "text",
    "bimodal_no_sca": "bimodal w/o SCA",
    "bimodal": "bimodal",
}
# Text mode -> row-name suffix, in report order.
TEXT_MODE_SUFFIXES: dict[str, str] = {"frozen": "", "end_to_end": " (end-to-end)", "finetuned": " (fine-tuned)"}


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a report reads from one finished run folder."""

    run_dir: Path
    """The run folder."""
    variant: str
    """Model variant: audio, text, bimodal_no_sca or bimodal."""
    seed: int
    """The run's seed."""
    text_mode: str
    """Where its text vectors came from: 'frozen', 'end_to_end' or 'finetuned'."""
    config: dict[str, Any]
    """Its resolved config (config.toml as read)."""
    test: dict[str, Any]
    """Its test_metrics.json."""
    voice_only: dict[str, float | int] | None
    """Accuracy, weighted F1 and count on the corpus's voice-only test utterances; None if the corpus lists none."""
    predictions: Predictions | None
    """Its test predictions (predictions.jsonl), for the bootstraps over dialogues; None when missing."""
    modality_dropout: float = 0.0
    """Its training's modality dropout; runs trained with it appear only in the robustness table."""


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's resolved config (config.toml) as read; a ReportError naming the folder when it cannot be."""
    try:
        return tomllib.loads(RunFolder(run_dir).config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ReportError(f"run folder {run_dir} cannot be read ({error}); is it a finished run?") from None


def read_test_predictions(run_dir: Path, test: dict[str, Any]) -> Predictions | None:
    """A finished run's test predictions in the label set of its test metrics record `test`; None when
    predictions.jsonl is missing. A StatisticsError names a damaged file."""
    predictions_path = RunFolder(run_dir).predictions_path("test")
    labels = record_label_set(test).labels
    return read_predictions(predictions_path, labels) if predictions_path.is_file() else None


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Run folders among `paths`: each path is a run folder, or a folder (a sweep) searched for them."""
    found: list[Path] = []
    for path in paths:
        run = RunFolder(path)
        path = run.path
        if run.finished:
            found.append(path)
        elif path.is_dir():
            below = [folder.path for folder in RunFolder.finished_below(path)]
            if not below:
                raise ReportError(
                    f"{path} holds no finished run (no {run.test_metrics_path.name} in it or below); "
                    "finish the run with `cmroberta train --resume` first"
                )
            found.extend(below)
        else:
            raise ReportError(f"run folder {path} does not exist")
    # A folder reached twice (a symlink, a run also named inside its sweep) is one run, not two seeds.
    return list({path.resolve(): path for path in found}.values())


def _voice_only_scores(
    run_dir: Path, config: dict[str, Any], predictions: Predictions | None
) -> dict[str, float] | None:
    """Scores on the corpus's voice-only test utterances, from the run's predictions; None where there are none."""
    manifest_path = Path(config.get("store", "")) / MANIFEST_NAME
    if not manifest_path.is_file():
        log.info("%s: store %s is not here; no voice-only scores", run_dir, config.get("store"))
        return None
    corpus = json.loads(manifest_path.read_text(encoding="utf-8")).get("config", {}).get("corpus")
    keys = read_ambiguous_keys(corpus) if corpus else set()
    if not keys or predictions is None:
        return None
    chosen = np.array([key in keys for key in predictions.keys], dtype=bool)
    if not chosen.any():
        return None
    metrics = classification_metrics(predictions.gold[chosen], predictions.pred[chosen], predictions.labels)
    return {"accuracy": metrics.accuracy, "weighted_f1": metrics.weighted_f1, "count": int(chosen.sum())}


def read_run_result(run_dir: Path) -> RunResult:
    """Read a finished run folder: its config and test metrics (and voice-only scores where the corpus has them)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    try:
        test = read_metrics_record(RunFolder(run_dir).test_metrics_path)
    except (OSError, UnicodeDecodeError, MetricsDamagedError) as error:
        raise ReportError(f"run folder {run_dir} cannot be read ({error}); is it a finished run?") from None
    variant = config.get("model", {}).get("variant")
    config.setdefault("text_mode", "frozen")
    if variant not in VARIANT_NAMES:
        raise ReportError(
            f"run folder {run_dir} has model variant {variant!r}; expected one of {', '.join(VARIANT_NAMES)}"
        )
    text_mode = config["text_mode"]
    if text_mode not in TEXT_MODE_SUFFIXES:
        raise ReportError(
            f"run folder {run_dir} has text_mode {text_mode!r}; expected one of {', '.join(TEXT_MODE_SUFFIXES)}"
        )
    try:
        predictions = read_test_predictions(run_dir, test)
    except StatisticsError as error:
        raise ReportError(str(error)) from None
    return RunResult(
        run_dir=run_dir,
        variant=variant,
        seed=int(config.get("seed", 0)),
        text_mode=text_mode,
        config=config,
        test=test,
        voice_only=_voice_only_scores(run_dir, config, predictions),
        predictions=predictions,
        modality_dropout=float(config.get("model", {}).get("modality_dropout", 0.0)),
    )


def read_run_results(paths: Sequence[Path]) -> list[RunResult]:
    """Every finished run under `paths`; they must have been tested on the same test split."""
    runs = [read_run_result(run_dir) for run_dir in find_run_dirs(paths)]
    if not runs:
        raise ReportError("no run folders given")
    reference = runs[0]
    for run in runs[1:]:
        if run.test["support"] != reference.test["support"]:
            raise ReportError(
                f"runs {reference.run_dir} and {run.run_dir} were tested on different test splits "
                f"(class counts {reference.test['support']} and {run.test['support']}); report them separately"
            )
    return runs
