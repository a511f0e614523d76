"""Paper-style tables from finished run folders: the shapes of the paper's Tables 1 and 2.

Table 1: weighted F1 of the audio, text and bimodal models and the gain bimodal − text, for
CM-RoBERTa with and without the SCA unit, beside the paper's numbers.
Table 2: per-class F1 in the paper's column order and the weighted average, per modality, the
difference bimodal − text, and the always-majority-class floor (always-neutral on MELD).
A third table scores the voice-only utterances when the corpus lists them (the demo corpus's
`ambiguous.json`): there, text alone cannot know the emotion, and the audio must carry it.

Runs that share a variant (seeds of a sweep) are shown as mean ± sample standard deviation;
a difference is the difference of the means. Numbers are percentages.

Runs whose text encoder was fine-tuned with the head (`text_mode = "end_to_end"`) are reported
apart from runs on frozen text features: their rows carry the suffix " (end-to-end)". Audio-only
runs read no text, so the same audio runs serve both.
"""

import csv
import json
import logging
import statistics
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extract.demo_corpus import read_ambiguous_keys
from extract.feature_store import MANIFEST_NAME
from extract.labels import EMOTION_INDEX, EMOTIONS
from launch.tables import format_table
from model.evaluate import TEST_METRICS_NAME, TEST_PREDICTIONS_NAME
from model.metrics import classification_metrics

log = logging.getLogger(__name__)

# Variant -> row name, in the paper's row order.
VARIANT_NAMES: dict[str, str] = {
    "audio": "audio",
    "text": "text",
    "bimodal_no_sca": "bimodal w/o SCA",
    "bimodal": "bimodal",
}

# The paper's Table 1 (weighted F1 on MELD's test split): audio, text, bimodal, bimodal − text.
PAPER_TABLE1: dict[str, tuple[float, float, float, float]] = {
    "without SCA unit": (43.10, 63.83, 65.66, 1.83),
    "CM-RoBERTa": (43.10, 63.83, 66.28, 2.45),
}

# The paper's Table 2: per-class F1 in EMOTIONS order, then the weighted average.
PAPER_TABLE2: dict[str, tuple[float, ...]] = {
    "audio": (62.9, 20.12, 0.0, 6.7, 22.65, 0.0, 53.21, 43.10),
    "text": (76.39, 60.47, 30.5, 42.21, 63.21, 31.74, 45.82, 63.83),
    "bimodal": (78.67, 63.42, 28.7, 42.19, 63.65, 30.91, 53.56, 66.28),
}

VOICE_ONLY = "voice-only utterances"

# Text mode -> row-name suffix, in report order.
TEXT_MODE_SUFFIXES: dict[str, str] = {"frozen": "", "end_to_end": " (end-to-end)"}


class ReportError(Exception):
    """Run folders that cannot be reported together; the message names the folder and the fix."""


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
    """Where its text vectors came from: 'frozen' (the store's) or 'end_to_end' (a fine-tuned encoder)."""
    test: dict[str, Any]
    """Its test_metrics.json."""
    voice_only: dict[str, float | int] | None
    """Accuracy, weighted F1 and count on the corpus's voice-only test utterances; None if the corpus lists none."""


@dataclass(frozen=True)
class Cell:
    """One table cell over seeds: the values, shown as mean ± std."""

    values: tuple[float, ...]
    """Per-run values, in percent."""

    @property
    def mean(self) -> float:
        """Mean over runs."""
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation, None for a single run."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def __str__(self) -> str:
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass(frozen=True, kw_only=True)
class Table:
    """A report table: a title, column names, and rows of (row name, cells)."""

    title: str
    """Heading above the table."""
    name: str
    """File stem of its CSV."""
    columns: list[str]
    """Column names, the row-name column first."""
    rows: list[tuple[str, list[Cell | float | int | None]]]
    """Row name and one cell per column after the first; None is an empty cell."""

    def text_rows(self) -> list[list[object]]:
        """Rows for `format_table`: cells as strings, empty cells as '–'."""
        return [
            [name, *("–" if cell is None else str(cell) if isinstance(cell, Cell) else cell for cell in cells)]
            for name, cells in self.rows
        ]

    def render(self, markdown: bool = False) -> str:
        """The table as aligned text, or as Markdown."""
        return format_table(self.columns, self.text_rows(), markdown=markdown)

    def write_csv(self, path: Path) -> Path:
        """CSV of the same shape: a mean column per column, and a `<column> std` column when any run has seeds."""
        has_std = any(isinstance(cell, Cell) and cell.std is not None for _, cells in self.rows for cell in cells)
        header = [self.columns[0]]
        for column in self.columns[1:]:
            header.extend([column, f"{column} std"] if has_std else [column])
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            for name, cells in self.rows:
                row: list[object] = [name]
                for cell in cells:
                    mean = cell.mean if isinstance(cell, Cell) else cell
                    row.append("" if mean is None else mean if isinstance(mean, int) else f"{mean:.4f}")
                    if has_std:
                        std = cell.std if isinstance(cell, Cell) else None
                        row.append("" if std is None else f"{std:.4f}")
                writer.writerow(row)
        return path


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Run folders among `paths`: each path is a run folder, or a folder (a sweep) searched for them."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if (path / TEST_METRICS_NAME).is_file():
            found.append(path)
        elif path.is_dir():
            below = sorted(metrics.parent for metrics in path.rglob(TEST_METRICS_NAME))
            if not below:
                raise ReportError(
                    f"{path} holds no finished run (no {TEST_METRICS_NAME} in it or below); "
                    "finish the run with `cmroberta train --resume` first"
                )
            found.extend(below)
        else:
            raise ReportError(f"run folder {path} does not exist")
    # A folder reached twice (a symlink, a run also named inside its sweep) is one run, not two seeds.
    return list({path.resolve(): path for path in found}.values())


def _voice_only_scores(run_dir: Path, config: dict[str, Any]) -> dict[str, float] | None:
    """Scores on the corpus's voice-only test utterances, from predictions.jsonl; None where there are none."""
    manifest_path = Path(config.get("store", "")) / MANIFEST_NAME
    if not manifest_path.is_file():
        log.info("%s: store %s is not here; no voice-only scores", run_dir, config.get("store"))
        return None
    corpus = json.loads(manifest_path.read_text(encoding="utf-8")).get("config", {}).get("corpus")
    keys = read_ambiguous_keys(corpus) if corpus else set()
    predictions_path = run_dir / TEST_PREDICTIONS_NAME
    if not keys or not predictions_path.is_file():
        return None
    gold, pred = [], []
    for line in predictions_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["key"] in keys:
            gold.append(EMOTION_INDEX[record["gold"]])
            pred.append(EMOTION_INDEX[record["pred"]])
    if not gold:
        return None
    metrics = classification_metrics(np.array(gold), np.array(pred))
    return {"accuracy": metrics.accuracy, "weighted_f1": metrics.weighted_f1, "count": len(gold)}


def load_run(run_dir: Path) -> RunResult:
    """Read a finished run folder: its config and test metrics (and voice-only scores where the corpus has them)."""
    run_dir = Path(run_dir)
    try:
        config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
        test = json.loads((run_dir / TEST_METRICS_NAME).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"run folder {run_dir} cannot be read ({error}); is it a finished run?") from None
    variant = config.get("model", {}).get("variant")
    if variant not in VARIANT_NAMES:
        raise ReportError(
            f"run folder {run_dir} has model variant {variant!r}; expected one of {', '.join(VARIANT_NAMES)}"
        )
    text_mode = config.get("text_mode", "frozen")
    if text_mode not in TEXT_MODE_SUFFIXES:
        raise ReportError(
            f"run folder {run_dir} has text_mode {text_mode!r}; expected one of {', '.join(TEXT_MODE_SUFFIXES)}"
        )
    return RunResult(
        run_dir=run_dir,
        variant=variant,
        seed=int(config.get("seed", 0)),
        text_mode=text_mode,
        test=test,
        voice_only=_voice_only_scores(run_dir, config),
    )


def load_runs(paths: Sequence[Path]) -> list[RunResult]:
    """Every finished run under `paths`; they must have been tested on the same test split."""
    runs = [load_run(run_dir) for run_dir in find_run_dirs(paths)]
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


def _text_modes(runs: Sequence[RunResult]) -> list[str]:
    """Text modes of the runs that read text, in report order; 'frozen' alone when none does."""
    present = {run.text_mode for run in runs if run.variant != "audio"}
    return [mode for mode in TEXT_MODE_SUFFIXES if mode in present] or ["frozen"]


def _by_variant(runs: Sequence[RunResult], text_mode: str = "frozen") -> dict[str, list[RunResult]]:
    """Runs of each variant with `text_mode`; audio-only runs, which read no text, under every mode."""
    grouped: dict[str, list[RunResult]] = {}
    for variant in VARIANT_NAMES:
        chosen = sorted(
            (run for run in runs if run.variant == variant and (variant == "audio" or run.text_mode == text_mode)),
            key=lambda run: run.seed,
        )
        if chosen:
            grouped[variant] = chosen
    return grouped


def _row_name(variant: str, text_mode: str) -> str:
    """A variant's row name, marked with its text mode (never for audio, which reads no text)."""
    return VARIANT_NAMES[variant] + ("" if variant == "audio" else TEXT_MODE_SUFFIXES[text_mode])


def _cell(runs: Sequence[RunResult] | None, read: Any) -> Cell | None:
    if not runs:
        return None
    return Cell(tuple(100 * float(read(run)) for run in runs))


def _difference(a: Cell | None, b: Cell | None) -> float | None:
    return None if a is None or b is None else a.mean - b.mean


def table1(runs: Sequence[RunResult]) -> Table:
    """Weighted F1 of audio, text and bimodal models, and bimodal − text: the paper's Table 1 shape."""
    rows: list[tuple[str, list[Cell | float | int | None]]] = []
    for mode in _text_modes(runs):
        grouped = _by_variant(runs, mode)
        weighted = {
            variant: _cell(grouped.get(variant), lambda run: run.test["weighted_f1"]) for variant in VARIANT_NAMES
        }
        for name, bimodal in (("CM-RoBERTa without SCA unit", "bimodal_no_sca"), ("CM-RoBERTa", "bimodal")):
            cells = [weighted["audio"], weighted["text"], weighted[bimodal]]
            rows.append((name + TEXT_MODE_SUFFIXES[mode], [*cells, _difference(weighted[bimodal], weighted["text"])]))
    floor = runs[0].test["majority_floor"]
    floor_value = 100 * floor["weighted_f1"]
    rows.append((f"always {floor['label']}", [floor_value, floor_value, floor_value, None]))
    for name, values in PAPER_TABLE1.items():
        rows.append((f"paper: {name}", list(values)))
    return Table(
        title="Table 1: weighted F1 (%) on test",
        name="table1",
        columns=["model", "audio", "text", "bimodal", "bimodal - text"],
        rows=rows,
    )


def table2(runs: Sequence[RunResult]) -> Table:
    """Per-class F1 in the paper's order and the weighted average, per modality: the paper's Table 2 shape."""
    rows: list[tuple[str, list[Cell | float | int | None]]] = []
    for index, mode in enumerate(_text_modes(runs)):
        suffix = TEXT_MODE_SUFFIXES[mode]
        cells_of: dict[str, list[Cell | None]] = {}
        for variant, chosen in _by_variant(runs, mode).items():
            cells = [_cell(chosen, lambda run, e=emotion: run.test["per_class_f1"][e]) for emotion in EMOTIONS]
            cells.append(_cell(chosen, lambda run: run.test["weighted_f1"]))
            cells_of[variant] = cells
            if variant == "audio" and index > 0:
                continue  # the audio row is the same runs under every text mode: shown once
            name = _row_name(variant, mode)
            rows.append((f"{name} (n={len(chosen)})" if len(chosen) > 1 else name, list(cells)))
        if "bimodal" in cells_of and "text" in cells_of:
            difference = [_difference(a, b) for a, b in zip(cells_of["bimodal"], cells_of["text"])]
            rows.append((f"bimodal - text{suffix}", difference))
    floor = runs[0].test["majority_floor"]
    rows.append(
        (f"always {floor['label']}", [100 * floor["per_class_f1"][e] for e in EMOTIONS] + [100 * floor["weighted_f1"]])
    )
    for variant, values in PAPER_TABLE2.items():
        rows.append((f"paper: {VARIANT_NAMES[variant]}", list(values)))
    return Table(
        title="Table 2: per-class F1 (%) on test",
        name="table2",
        columns=["modality", *EMOTIONS, "w-average F1"],
        rows=rows,
    )


def voice_only_table(runs: Sequence[RunResult]) -> Table | None:
    """Accuracy and weighted F1 on the voice-only test utterances, per modality; None if the corpus lists none."""
    rows: list[tuple[str, list[Cell | float | int | None]]] = []
    for index, mode in enumerate(_text_modes(runs)):
        for variant, chosen in _by_variant(runs, mode).items():
            chosen = [run for run in chosen if run.voice_only]
            if not chosen or (variant == "audio" and index > 0):
                continue
            cells = [
                int(chosen[0].voice_only["count"]),
                _cell(chosen, lambda run: run.voice_only["accuracy"]),
                _cell(chosen, lambda run: run.voice_only["weighted_f1"]),
            ]
            rows.append((_row_name(variant, mode), cells))
    if not rows:
        return None
    return Table(
        title="Voice-only test utterances (%): the transcript does not tell the emotion",
        name="voice_only",
        columns=["modality", "utterances", "accuracy", "weighted F1"],
        rows=rows,
    )


def report_tables(runs: Sequence[RunResult]) -> list[Table]:
    """Every table of the report, in order."""
    tables = [table1(runs), table2(runs)]
    voice_only = voice_only_table(runs)
    if voice_only is not None:
        tables.append(voice_only)
    return tables


def format_report(runs: Sequence[RunResult], markdown: bool = False) -> str:
    """All tables as text (or Markdown), with the runs they came from."""
    parts = []
    for table in report_tables(runs):
        heading = f"## {table.title}" if markdown else table.title
        parts.append(f"{heading}\n\n{table.render(markdown=markdown)}")
    sources = "\n".join(f"- {_row_name(run.variant, run.text_mode)}, seed {run.seed}: {run.run_dir}" for run in runs)
    parts.append(f"{'## ' if markdown else ''}Runs\n\n{sources}")
    return "\n\n".join(parts) + "\n"


def write_report(runs: Sequence[RunResult], out_dir: Path) -> list[Path]:
    """`report.md` and one CSV per table in `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "report.md"
    markdown.write_text("# CM-RoBERTa results\n\n" + format_report(runs, markdown=True), encoding="utf-8")
    return [markdown, *(table.write_csv(out_dir / f"{table.name}.csv") for table in report_tables(runs))]


def run_table(test: dict[str, Any], split: str = "test") -> str:
    """One run's scores on a split as a small table: per-class F1, weighted F1, accuracy, and the floor."""
    floor = test["majority_floor"]
    header = ["", *EMOTIONS, "w-average F1", "accuracy", "macro F1"]
    rows = [
        [
            split,
            *(100 * test["per_class_f1"][e] for e in EMOTIONS),
            100 * test["weighted_f1"],
            100 * test["accuracy"],
            100 * test["macro_f1"],
        ],
        [
            f"always {floor['label']}",
            *(100 * floor["per_class_f1"][e] for e in EMOTIONS),
            100 * floor["weighted_f1"],
            100 * floor["accuracy"],
            100 * floor["macro_f1"],
        ],
    ]
    return format_table(header, rows)
