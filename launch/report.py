"""Paper-style tables from finished run folders: the shapes of the paper's Tables 1 and 2.

Table 1: weighted F1 of the audio, text and bimodal models and the gain bimodal − text, for
CM-RoBERTa with and without the SCA unit, beside the paper's numbers.
Table 2: per-class F1 in the paper's column order and the weighted average, per modality, the
difference bimodal − text, and the always-majority-class floor (always-neutral on MELD).
A third table scores the voice-only utterances when the corpus lists them (the demo corpus's
`ambiguous.json`): there, text alone cannot know the emotion, and the audio must carry it.
The paired-differences table compares, seed by seed, bimodal − text and SCA − no SCA (bimodal −
bimodal without SCA) within each text mode, and end-to-end − frozen where both ran: Student's paired
t-test across seeds and a paired bootstrap over the test dialogues (`launch.statistics`).

Runs that share a variant and text mode (seeds of a sweep) are shown as mean ± sample standard
deviation, with the 95% confidence interval of the mean on the line below; a difference in Tables
1 and 2 is the difference of the means. Numbers are percentages.

Every row that reads text says which text mode produced it: `frozen` (pretrained vectors from
the store), `end_to_end` (the encoder trained with the head) or `finetuned` (vectors of an encoder
fine-tuned on its own first, the paper's recipe). Rows of different modes are never mixed. Audio-only
runs read no text, so the same audio runs serve every mode. The paper's rows are its fine-tuned
RoBERTa-Large (its section 4.1.3).

`report_tables` lists the tables in order; a new table joins there.
"""

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from cluster.durable_files import atomic_write_text
from extract.demo_corpus import read_ambiguous_keys
from extract.labels import EMOTIONS
from extract.manifest import MANIFEST_NAME
from launch.statistics import (
    CONFIDENCE,
    DialogueBootstrap,
    PairedTest,
    Predictions,
    Spread,
    StatisticsError,
    paired_dialogue_bootstrap,
    paired_t_test,
    read_predictions,
    spread,
)
from launch.tables import format_table, p_value_text
from model.evaluate import (
    TEST_METRICS_NAME,
    TEST_PREDICTIONS_NAME,
    MetricsDamagedError,
    confusion_plot_file,
    read_metrics_record,
)
from model.metrics import classification_metrics
from model.train import CURVES_NAME

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
TEXT_MODE_SUFFIXES: dict[str, str] = {"frozen": "", "end_to_end": " (end-to-end)", "finetuned": " (fine-tuned)"}
# Text mode -> its name in the report's "text" column.
TEXT_MODE_NAMES: dict[str, str] = {"frozen": "frozen", "end_to_end": "end-to-end", "finetuned": "fine-tuned"}
# The paper fine-tuned RoBERTa-Large before extracting its vectors (section 4.1.3).
PAPER_TEXT_MODE = "fine-tuned"


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
    predictions: Predictions | None
    """Its test predictions (predictions.jsonl), for the bootstrap over dialogues; None when missing."""
    modality_dropout: float = 0.0
    """Its training's modality dropout; runs trained with it appear only in the robustness table."""


@dataclass(frozen=True)
class Cell:
    """One table cell over seeds: the values, shown as mean ± sample sd, with the mean's confidence interval."""

    values: tuple[float, ...]
    """Per-run values, in percent."""

    @property
    def summary(self) -> Spread:
        """Mean, sample sd and the 95% t interval of the mean (no sd or interval for one run)."""
        return spread(self.values, CONFIDENCE)

    @property
    def mean(self) -> float:
        """Mean over runs."""
        return self.summary.mean

    @property
    def std(self) -> float | None:
        """Sample standard deviation, None for a single run."""
        return self.summary.std

    def interval(self) -> str | None:
        """'[low, high]', the confidence interval of the mean; None for a single run."""
        s = self.summary
        return None if s.ci_low is None else f"[{s.ci_low:.2f}, {s.ci_high:.2f}]"

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
        """Rows for `format_table`: cells as strings, empty cells as '–'; under a row with seeds, its 95% CIs."""
        lines: list[list[object]] = []
        for name, cells in self.rows:
            shown = ("–" if cell is None else str(cell) if isinstance(cell, Cell) else cell for cell in cells)
            lines.append([name, *shown])
            intervals = [cell.interval() if isinstance(cell, Cell) else None for cell in cells]
            if any(intervals):
                lines.append([f"  {100 * CONFIDENCE:.0f}% CI", *(interval or "" for interval in intervals)])
        return lines

    def render(self, markdown: bool = False) -> str:
        """The table as aligned text, or as Markdown."""
        return format_table(self.columns, self.text_rows(), markdown=markdown)

    def write_csv(self, path: Path) -> Path:
        """CSV of the same shape: a mean column per column, and `<column> std`, `<column> ci_low` and
        `<column> ci_high` columns when any run has seeds."""
        has_std = any(isinstance(cell, Cell) and cell.std is not None for _, cells in self.rows for cell in cells)
        spread_columns = ("std", "ci_low", "ci_high") if has_std else ()
        header = [self.columns[0]]
        for column in self.columns[1:]:
            header.extend([column, *(f"{column} {part}" for part in spread_columns)])
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            for name, cells in self.rows:
                row: list[object] = [name]
                for cell in cells:
                    mean = cell.mean if isinstance(cell, Cell) else cell
                    row.append("" if mean is None else mean if isinstance(mean, (int, str)) else f"{mean:.4f}")
                    summary = cell.summary if isinstance(cell, Cell) else None
                    for part in spread_columns:
                        value = None if summary is None else getattr(summary, part)
                        row.append("" if value is None else f"{value:.4f}")
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
    metrics = classification_metrics(predictions.gold[chosen], predictions.pred[chosen])
    return {"accuracy": metrics.accuracy, "weighted_f1": metrics.weighted_f1, "count": int(chosen.sum())}


def load_run(run_dir: Path) -> RunResult:
    """Read a finished run folder: its config and test metrics (and voice-only scores where the corpus has them)."""
    run_dir = Path(run_dir)
    try:
        config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
        test = read_metrics_record(run_dir / TEST_METRICS_NAME)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, MetricsDamagedError) as error:
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
    predictions_path = run_dir / TEST_PREDICTIONS_NAME
    try:
        predictions = read_predictions(predictions_path) if predictions_path.is_file() else None
    except StatisticsError as error:
        raise ReportError(str(error)) from None
    return RunResult(
        run_dir=run_dir,
        variant=variant,
        seed=int(config.get("seed", 0)),
        text_mode=text_mode,
        test=test,
        voice_only=_voice_only_scores(run_dir, config, predictions),
        predictions=predictions,
        modality_dropout=float(config.get("model", {}).get("modality_dropout", 0.0)),
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
    for index, mode in enumerate(_text_modes(runs)):
        grouped = _by_variant(runs, mode)
        weighted = {
            variant: _cell(grouped.get(variant), lambda run: run.test["weighted_f1"]) for variant in VARIANT_NAMES
        }
        for name, bimodal in (("CM-RoBERTa without SCA unit", "bimodal_no_sca"), ("CM-RoBERTa", "bimodal")):
            if index > 0 and weighted[bimodal] is None:
                continue  # a further text mode's row without its bimodal model would only repeat audio and text
            cells = [weighted["audio"], weighted["text"], weighted[bimodal]]
            difference = _difference(weighted[bimodal], weighted["text"])
            rows.append((name + TEXT_MODE_SUFFIXES[mode], [TEXT_MODE_NAMES[mode], *cells, difference]))
    floor = runs[0].test["majority_floor"]
    floor_value = 100 * floor["weighted_f1"]
    rows.append((f"always {floor['label']}", [None, floor_value, floor_value, floor_value, None]))
    for name, values in PAPER_TABLE1.items():
        rows.append((f"paper: {name}", [PAPER_TEXT_MODE, *values]))
    return Table(
        title="Table 1: weighted F1 (%) on test",
        name="table1",
        columns=["model", "text mode", "audio", "text", "bimodal", "bimodal - text"],
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
            mode_name = None if variant == "audio" else TEXT_MODE_NAMES[mode]
            rows.append((f"{name} (n={len(chosen)})" if len(chosen) > 1 else name, [mode_name, *cells]))
        if "bimodal" in cells_of and "text" in cells_of:
            difference = [_difference(a, b) for a, b in zip(cells_of["bimodal"], cells_of["text"])]
            rows.append((f"bimodal - text{suffix}", [TEXT_MODE_NAMES[mode], *difference]))
    floor = runs[0].test["majority_floor"]
    floor_cells = [100 * floor["per_class_f1"][e] for e in EMOTIONS] + [100 * floor["weighted_f1"]]
    rows.append((f"always {floor['label']}", [None, *floor_cells]))
    for variant, values in PAPER_TABLE2.items():
        rows.append((f"paper: {VARIANT_NAMES[variant]}", [None if variant == "audio" else PAPER_TEXT_MODE, *values]))
    return Table(
        title="Table 2: per-class F1 (%) on test",
        name="table2",
        columns=["modality", "text mode", *EMOTIONS, "w-average F1"],
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
                None if variant == "audio" else TEXT_MODE_NAMES[mode],
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
        columns=["modality", "text mode", "utterances", "accuracy", "weighted F1"],
        rows=rows,
    )


@dataclass(frozen=True, kw_only=True)
class PairedDifference:
    """One configuration minus another, seed by seed: the paired t-test and the bootstrap over test dialogues."""

    name: str
    """What is compared, 'bimodal − text'."""
    text_mode: str
    """The text mode of both sides, or 'end_to_end − frozen' for a comparison across modes."""
    seeds: list[int]
    """Seeds both sides finished."""
    difference: Spread
    """Per-seed differences of test weighted F1, in percent."""
    test: PairedTest
    """Student's paired t-test over those seeds."""
    bootstrap: DialogueBootstrap | None
    """Paired bootstrap over test dialogues (fractions); None when a run lacks predictions.jsonl."""


def _by_seed(runs: Sequence[RunResult] | None) -> dict[int, RunResult]:
    return {run.seed: run for run in runs or ()}


def _compare(
    name: str, mode: str, a: Sequence[RunResult] | None, b: Sequence[RunResult] | None
) -> PairedDifference | None:
    """`a` minus `b` over the seeds both have; None when they share none."""
    a_seeds, b_seeds = _by_seed(a), _by_seed(b)
    common = sorted(set(a_seeds) & set(b_seeds))
    if not common:
        return None
    a_runs, b_runs = [a_seeds[seed] for seed in common], [b_seeds[seed] for seed in common]
    a_scores = [100 * run.test["weighted_f1"] for run in a_runs]
    b_scores = [100 * run.test["weighted_f1"] for run in b_runs]
    a_predictions, b_predictions = [run.predictions for run in a_runs], [run.predictions for run in b_runs]
    bootstrap = None
    if all(p is not None for p in (*a_predictions, *b_predictions)):
        bootstrap = paired_dialogue_bootstrap(a_predictions, b_predictions, confidence=CONFIDENCE)
    return PairedDifference(
        name=name,
        text_mode=mode,
        seeds=common,
        difference=spread(np.subtract(a_scores, b_scores), CONFIDENCE),
        test=paired_t_test(a_scores, b_scores),
        bootstrap=bootstrap,
    )


def paired_differences(runs: Sequence[RunResult]) -> list[PairedDifference]:
    """bimodal − text and SCA − no SCA in each text mode, then each other mode − frozen per variant."""
    found = []
    modes = _text_modes(runs)
    for mode in modes:
        grouped = _by_variant(runs, mode)
        for name, a, b in (("bimodal − text", "bimodal", "text"), ("SCA − no SCA", "bimodal", "bimodal_no_sca")):
            found.append(_compare(name, mode, grouped.get(a), grouped.get(b)))
    frozen = _by_variant(runs, "frozen")
    for mode in modes:
        if mode == "frozen":
            continue
        grouped = _by_variant(runs, mode)
        for variant in ("text", "bimodal_no_sca", "bimodal"):
            name = VARIANT_NAMES[variant]
            found.append(_compare(name, f"{mode} − frozen", grouped.get(variant), frozen.get(variant)))
    return [difference for difference in found if difference is not None]


def _mode_name(mode: str) -> str:
    return " − ".join(TEXT_MODE_NAMES.get(part, part) for part in mode.split(" − "))


def paired_differences_table(runs: Sequence[RunResult]) -> Table | None:
    """The paired differences as a table (percentage points); None when no two configurations share a seed."""
    level = f"{100 * CONFIDENCE:.0f}% CI"
    rows: list[tuple[str, list[Cell | float | int | str | None]]] = []
    for d in paired_differences(runs):
        s, boot = d.difference, d.bootstrap
        rows.append(
            (
                d.name,
                [
                    _mode_name(d.text_mode),
                    len(d.seeds),
                    f"{s.mean:.2f}" if s.std is None else f"{s.mean:.2f} ± {s.std:.2f}",
                    None if s.ci_low is None else f"[{s.ci_low:.2f}, {s.ci_high:.2f}]",
                    None if d.test.p_value is None else p_value_text(d.test.p_value),
                    None if boot is None else boot.dialogues,
                    None if boot is None else f"[{100 * boot.ci_low:.2f}, {100 * boot.ci_high:.2f}]",
                    None if boot is None else p_value_text(boot.p_value, boot.resamples),
                ],
            )
        )
    if not rows:
        return None
    return Table(
        title=(
            "Paired differences of test weighted F1 (percentage points): across seeds (mean ± sd, t interval, "
            "paired t-test) and across test dialogues (paired bootstrap: interval, p)"
        ),
        name="paired_differences",
        columns=[
            "comparison", "text mode", "seeds", "difference", level, "t-test p", "dialogues", f"bootstrap {level}",
            "bootstrap p",
        ],
        rows=rows,
    )


def report_tables(runs: Sequence[RunResult]) -> list[Table]:
    """Every table of the report, in order; a table that does not apply to these runs is left out.

    The paper's tables hold the runs trained as the paper trained (no modality dropout); the
    robustness table, last, holds every run scored under perturbations (`cmroberta evaluate --perturb`).
    """
    # Imported here: the robustness table builds on this module's Table and Cell.
    from launch.robustness_report import read_run_robustness, table_from_runs

    paper = [run for run in runs if run.modality_dropout == 0]
    tables = [table1(paper), table2(paper), voice_only_table(paper), paired_differences_table(paper)]
    robustness = [read_run_robustness(run.run_dir) for run in runs]
    tables.append(table_from_runs([run for run in robustness if run.perturbed]))
    return [table for table in tables if table is not None]


def figures_section(runs: Sequence[RunResult], spread_plot: Path | None = None) -> str:
    """Where the report's pictures are: the seed-spread plot, and each run's learning curves and confusion matrix."""
    example = runs[0].run_dir
    lines = []
    if spread_plot is not None:
        what = f"every seed's weighted F1, mean and {100 * CONFIDENCE:.0f}% CI per configuration"
        lines.append(f"- seed spread ({what}): {spread_plot}")
    lines.append(
        f"- learning curves (loss and dev weighted F1 per epoch): {CURVES_NAME} in each run folder, "
        f"e.g. {example / CURVES_NAME}"
    )
    confusion = confusion_plot_file("test")
    lines.append(f"- confusion matrices on test: {confusion} in each run folder, e.g. {example / confusion}")
    return "\n".join(lines)


def format_report(runs: Sequence[RunResult], markdown: bool = False, spread_plot: Path | None = None) -> str:
    """All tables as text (or Markdown), the runs they came from, and where the figures are."""
    parts = []
    for table in report_tables(runs):
        heading = f"## {table.title}" if markdown else table.title
        parts.append(f"{heading}\n\n{table.render(markdown=markdown)}")
    sources = "\n".join(f"- {_row_name(run.variant, run.text_mode)}, seed {run.seed}: {run.run_dir}" for run in runs)
    parts.append(f"{'## ' if markdown else ''}Runs\n\n{sources}")
    parts.append(f"{'## ' if markdown else ''}Figures\n\n{figures_section(runs, spread_plot)}")
    return "\n\n".join(parts) + "\n"


def write_report(runs: Sequence[RunResult], out_dir: Path, spread_plot: Path | None = None) -> list[Path]:
    """`report.md` and one CSV per table in `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "report.md"
    text = format_report(runs, markdown=True, spread_plot=spread_plot)
    atomic_write_text(markdown, "# CM-RoBERTa results\n\n" + text)
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
