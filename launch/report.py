"""Paper-style tables from finished run folders: the shapes of the paper's Tables 1, 2 and 3, and the report's rest.

The tables, in `report_tables`' order (a new table joins there):
Table 1: weighted F1 of the audio, text and bimodal models and the gain bimodal − text, for
CM-RoBERTa with and without the SCA unit, beside the paper's numbers.
Table 2: per-class F1 in the runs' label set's order (the paper's column order on MELD) and the
weighted average, per modality, the difference bimodal − text, and the always-majority-class floor
(always-neutral on MELD).
Table 3 (`launch.audio_ablation`): the audio model with OpenL3 only, openSMILE only and both, beside
the paper's figures, whenever a store holds both families and audio-only runs trained on them.
The ser4 table (`launch.ser_table`): runs in IEMOCAP's `ser4` label set also get the speech-emotion
benchmark's unweighted and weighted accuracy.
A voice-only table scores the utterances the corpus lists as carried by the voice alone (the demo
corpus's `ambiguous.json`). The paired differences (`launch.paired_report`) close the paper's part.
The robustness table (`launch.robustness_report`), last, holds every run scored under perturbations.

Run folders are read by `launch.run_results`. Runs are grouped by their config without the seed
(`launch.run_groups`): the seeds of one group are shown as mean ± sample standard deviation, with the
95% confidence interval of the mean on the line below, clipped to [0, 100] and marked where the t
interval reached past it. Groups that differ only in their variant make one block of rows
(`launch.report_groups`), named by its text mode and by every key that sets it apart from the other
blocks; an audio-only group stands in a block whose other keys it shares. A difference in Tables 1
and 2 is the difference of the means. Numbers are percentages.

Every row that reads text names the text mode that produced it in its `text mode` column: `frozen`
(pretrained vectors from the store, `text_mode=frozen`), `end-to-end` (the encoder trained with the
head, `end_to_end`) or `fine-tuned` (vectors of an encoder fine-tuned on its own first, the paper's
recipe, `finetuned`); its row name carries ' (end-to-end)' or ' (fine-tuned)', nothing for frozen.
Audio-only rows read no text and name no text mode. The paper's rows are its fine-tuned RoBERTa-Large
(its section 4.1.3), marked `fine-tuned`.

The paper's rows (Tables 1-3) stand only beside runs in MELD's label set. One report holds runs of
one label set (`runs_label_set`): scores in different label sets are never pooled.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cluster.durable_files import atomic_write_text
from extract.labels import MELD_EMOTIONS
from launch.audio_ablation import table3
from launch.paired_report import paired_differences_table
from launch.report_groups import (
    TEXT_MODE_NAMES,
    Block,
    blocks,
    group_cell,
    group_names,
    runs_label_set,
)
from launch.report_table import Cell, Table
from launch.robustness_report import read_run_robustness, table_from_runs
from launch.run_groups import mode_setting, named
from launch.run_results import VARIANT_NAMES, RunResult
from launch.ser_table import ser_table
from launch.statistics import CONFIDENCE
from launch.tables import format_table
from model.metrics_record import record_label_set
from model.run_folder import RunFolder

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

# What `cmroberta reproduce` writes into its sweep folder: the preset its runs trained with.
PRESET_NAME = "preset.json"

# The paper fine-tuned RoBERTa-Large before extracting its vectors (section 4.1.3).
PAPER_TEXT_MODE = "fine-tuned"


def _row_name(variant: str, block: Block) -> str:
    """A variant's row name, marked with its block's name (its text mode never for audio, which reads no text)."""
    if variant != "audio":
        return VARIANT_NAMES[variant] + block.name
    return named("audio", block.settings, [key for key in block.keys if key in mode_setting(block.settings)])


def _mode_name(variant: str, block: Block) -> str | None:
    return None if variant == "audio" else TEXT_MODE_NAMES[block.text_mode]


def _difference(a: Cell | None, b: Cell | None) -> float | None:
    return None if a is None or b is None else a.mean - b.mean


def paper_rows_apply(runs: Sequence[RunResult]) -> bool:
    """Whether the paper's reference rows belong beside these runs: only when they are in MELD's label set."""
    return runs_label_set(runs).same_labels(MELD_EMOTIONS)


def table1(runs: Sequence[RunResult]) -> Table:
    """Weighted F1 of audio, text and bimodal models, and bimodal − text: the paper's Table 1 shape."""
    rows: list[tuple[str, list[Cell | float | int | str | None]]] = []
    for index, block in enumerate(blocks(runs)):
        weighted = {
            variant: group_cell(block.groups.get(variant), lambda run: run.test["weighted_f1"])
            for variant in VARIANT_NAMES
        }
        for name, bimodal in (("CM-RoBERTa without SCA unit", "bimodal_no_sca"), ("CM-RoBERTa", "bimodal")):
            if index > 0 and weighted[bimodal] is None:
                continue  # a further block's row without its bimodal model would only repeat audio and text
            cells = [weighted["audio"], weighted["text"], weighted[bimodal]]
            difference = _difference(weighted[bimodal], weighted["text"])
            rows.append((name + block.name, [TEXT_MODE_NAMES[block.text_mode], *cells, difference]))
    floor = runs[0].test["majority_floor"]
    floor_value = 100 * floor["weighted_f1"]
    rows.append((f"always {floor['label']}", [None, floor_value, floor_value, floor_value, None]))
    for name, values in PAPER_TABLE1.items() if paper_rows_apply(runs) else ():
        rows.append((f"paper: {name}", [PAPER_TEXT_MODE, *values]))
    return Table(
        title="Table 1: weighted F1 (%) on test",
        name="table1",
        columns=["model", "text mode", "audio", "text", "bimodal", "bimodal - text"],
        rows=rows,
    )


def table2(runs: Sequence[RunResult]) -> Table:
    """Per-class F1 in the label set's order and the weighted average, per modality: the paper's Table 2 shape."""
    labels = runs_label_set(runs).labels
    rows: list[tuple[str, list[Cell | float | int | str | None]]] = []
    shown_audio: set[str] = set()
    for block in blocks(runs):
        cells_of: dict[str, list[Cell | None]] = {}
        for variant, group in block.groups.items():
            cells = [group_cell(group, lambda run, e=emotion: run.test["per_class_f1"][e]) for emotion in labels]
            cells.append(group_cell(group, lambda run: run.test["weighted_f1"]))
            cells_of[variant] = cells
            if variant == "audio" and group.sweep_hash in shown_audio:
                continue  # the same audio runs stand beside several blocks: shown once
            shown_audio.add(group.sweep_hash)
            name = _row_name(variant, block)
            shown = f"{name} (n={len(group.members)})" if len(group.members) > 1 else name
            rows.append((shown, [_mode_name(variant, block), *cells]))
        if "bimodal" in cells_of and "text" in cells_of:
            difference = [_difference(a, b) for a, b in zip(cells_of["bimodal"], cells_of["text"])]
            rows.append((f"bimodal - text{block.name}", [TEXT_MODE_NAMES[block.text_mode], *difference]))
    floor = runs[0].test["majority_floor"]
    floor_cells = [100 * floor["per_class_f1"][e] for e in labels] + [100 * floor["weighted_f1"]]
    rows.append((f"always {floor['label']}", [None, *floor_cells]))
    for variant, values in PAPER_TABLE2.items() if paper_rows_apply(runs) else ():
        rows.append((f"paper: {VARIANT_NAMES[variant]}", [None if variant == "audio" else PAPER_TEXT_MODE, *values]))
    return Table(
        title="Table 2: per-class F1 (%) on test",
        name="table2",
        columns=["modality", "text mode", *labels, "w-average F1"],
        rows=rows,
    )


def voice_only_table(runs: Sequence[RunResult]) -> Table | None:
    """Accuracy and weighted F1 on the voice-only test utterances, per modality; None if the corpus lists none."""
    rows: list[tuple[str, list[Cell | float | int | str | None]]] = []
    shown_audio: set[str] = set()
    for block in blocks(runs):
        for variant, group in block.groups.items():
            if not all(run.voice_only for run in group.members) or group.sweep_hash in shown_audio:
                continue
            if variant == "audio":
                shown_audio.add(group.sweep_hash)
            cells = [
                _mode_name(variant, block),
                int(group.members[0].voice_only["count"]),
                group_cell(group, lambda run: run.voice_only["accuracy"]),
                group_cell(group, lambda run: run.voice_only["weighted_f1"]),
            ]
            rows.append((_row_name(variant, block), cells))
    if not rows:
        return None
    return Table(
        title="Voice-only test utterances (%): the transcript does not tell the emotion",
        name="voice_only",
        columns=["modality", "text mode", "utterances", "accuracy", "weighted F1"],
        rows=rows,
    )


def report_tables(runs: Sequence[RunResult]) -> list[Table]:
    """Every table of the report, in order; a table that does not apply to these runs is left out.

    The paper's tables hold the runs trained as the paper trained (no modality dropout); the
    robustness table, last, holds every run scored under perturbations (`cmroberta evaluate --perturb`).
    """
    paper = [run for run in runs if run.modality_dropout == 0]
    # Table 3 is the paper's audio ablation beside its MELD figures: it has no rows of its own to show elsewhere.
    ablation = table3(paper) if paper_rows_apply(runs) else None
    tables = [
        table1(paper),
        table2(paper),
        ablation,
        ser_table(paper),
        voice_only_table(paper),
        paired_differences_table(paper),
    ]
    robustness = [read_run_robustness(run.run_dir) for run in runs]
    tables.append(table_from_runs([run for run in robustness if run.perturbed]))
    return [table for table in tables if table is not None]


def _selection(run: RunResult) -> str:
    """Which phase and epoch dev selected, where the run records them (a warm-started run has two phases)."""
    phase, epoch = run.test.get("selected_phase"), run.test.get("selected_epoch")
    parts = [f"phase {phase}"] * (phase is not None) + [f"epoch {epoch}"] * (epoch is not None)
    return f" (selected: {', '.join(parts)})" if parts else ""


def figures_section(runs: Sequence[RunResult], spread_plot: Path | None = None) -> str:
    """Where the report's pictures are: the seed-spread plot, and each run's learning curves and confusion matrix."""
    example = RunFolder(runs[0].run_dir)
    lines = []
    if spread_plot is not None:
        what = f"every seed's weighted F1, mean and {100 * CONFIDENCE:.0f}% CI per configuration"
        lines.append(f"- seed spread ({what}): {spread_plot}")
    lines.append(
        f"- learning curves (loss and dev weighted F1 per epoch): {example.curves_path.name} in each run folder, "
        f"e.g. {example.curves_path}"
    )
    confusion = example.confusion_plot_path("test")
    lines.append(f"- confusion matrices on test: {confusion.name} in each run folder, e.g. {confusion}")
    return "\n".join(lines)


def settings_line(preset: str | None) -> str:
    """Which preset trained the runs, as the report's first line."""
    if preset is None:
        return "Settings: no preset recorded (runs trained with their own keys; each run's config.toml has them)"
    return f"Settings: {preset}"


def read_preset(paths: Sequence[Path]) -> str | None:
    """The preset `cmroberta reproduce` recorded in the folders given (preset.json); None when none did."""
    found = set()
    for path in paths:
        try:
            found.add(json.loads((Path(path) / PRESET_NAME).read_text(encoding="utf-8"))["description"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
    return " | ".join(sorted(found)) or None


def _format(
    runs: Sequence[RunResult], tables: Sequence[Table], markdown: bool, spread_plot: Path | None, preset: str | None
) -> str:
    parts = [settings_line(preset)]
    for table in tables:
        heading = f"## {table.title}" if markdown else table.title
        parts.append(f"{heading}\n\n{table.render(markdown=markdown)}")
    names = group_names(runs)
    sources = "\n".join(f"- {names[run.run_dir]}, seed {run.seed}{_selection(run)}: {run.run_dir}" for run in runs)
    parts.append(f"{'## ' if markdown else ''}Runs\n\n{sources}")
    parts.append(f"{'## ' if markdown else ''}Figures\n\n{figures_section(runs, spread_plot)}")
    return "\n\n".join(parts) + "\n"


def format_report(
    runs: Sequence[RunResult], markdown: bool = False, spread_plot: Path | None = None, preset: str | None = None
) -> str:
    """The settings line, all tables as text (or Markdown), the runs they came from, and where the figures are."""
    return _format(runs, report_tables(runs), markdown, spread_plot, preset)


def write_report(
    runs: Sequence[RunResult], out_dir: Path, spread_plot: Path | None = None, preset: str | None = None
) -> list[Path]:
    """`report.md` and one CSV per table in `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "report.md"
    tables = report_tables(runs)
    atomic_write_text(markdown, "# CM-RoBERTa results\n\n" + _format(runs, tables, True, spread_plot, preset))
    return [markdown, *(table.write_csv(out_dir / f"{table.name}.csv") for table in tables)]


def run_table(test: dict[str, Any], split: str = "test") -> str:
    """One run's scores on a split as a small table: per-class F1, weighted F1, accuracy, and the floor."""
    floor = test["majority_floor"]
    labels = record_label_set(test).labels
    header = ["", *labels, "w-average F1", "accuracy", "macro F1"]
    rows = [
        [
            split,
            *(100 * test["per_class_f1"][e] for e in labels),
            100 * test["weighted_f1"],
            100 * test["accuracy"],
            100 * test["macro_f1"],
        ],
        [
            f"always {floor['label']}",
            *(100 * floor["per_class_f1"][e] for e in labels),
            100 * floor["weighted_f1"],
            100 * floor["accuracy"],
            100 * floor["macro_f1"],
        ],
    ]
    return format_table(header, rows)
