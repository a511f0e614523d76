"""Paper-style tables from finished run folders: the shapes of the paper's Tables 1, 2 and 3.

Table 1: weighted F1 of the audio, text and bimodal models and the gain bimodal − text, for
CM-RoBERTa with and without the SCA unit, beside the paper's numbers.
Table 2: per-class F1 in the runs' label set's order (the paper's column order on MELD) and the
weighted average, per modality, the difference bimodal − text, and the always-majority-class floor
(always-neutral on MELD).
Table 3 (`launch.audio_ablation`): the audio model with OpenL3 only, openSMILE only and both, beside
the paper's figures, whenever a store holds both families and audio-only runs trained on them.
A voice-only table scores the utterances the corpus lists as carried by the voice alone (the demo
corpus's `ambiguous.json`). The paired differences (`launch.paired_report`) close the paper's part.

Runs are grouped by their config without the seed (`launch.run_groups`): the seeds of one group are
shown as mean ± sample standard deviation, with the 95% confidence interval of the mean on the line
below, clipped to [0, 100] and marked where the t interval reached past it. Groups that differ only in
their variant make one block of rows, named by its text mode and by every key that sets it apart from
the other blocks; an audio-only group stands in a block whose other keys it shares. A difference in
Tables 1 and 2 is the difference of the means. Numbers are percentages.

Every row that reads text says which text mode produced it: `frozen` (pretrained vectors from the
store), `end_to_end` (the encoder trained with the head) or `finetuned` (vectors of an encoder
fine-tuned on its own first, the paper's recipe). The paper's rows are its fine-tuned RoBERTa-Large
(its section 4.1.3).

The paper's rows (Tables 1-3) stand only beside runs in MELD's label set. One report holds runs of
one label set (`runs_label_set`): scores in different label sets are never pooled. Runs in IEMOCAP's
`ser4` set also get the speech-emotion benchmark's unweighted and weighted accuracy (`launch.ser_table`).

`report_tables` lists the tables in order; a new table joins there.
"""

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from cluster.durable_files import atomic_write_text
from extract.demo_corpus import read_ambiguous_keys
from extract.labels import MELD_EMOTIONS, LabelSet
from extract.manifest import MANIFEST_NAME
from launch.report_table import Cell, Table
from launch.run_groups import (
    ConfigGroup,
    ReportError,
    group_by_config,
    keys_apart,
    mode_setting,
    named,
)
from launch.statistics import CONFIDENCE, Predictions, StatisticsError, read_predictions
from launch.tables import format_table
from model.evaluate import (
    TEST_METRICS_NAME,
    TEST_PREDICTIONS_NAME,
    MetricsDamagedError,
    confusion_plot_file,
    read_metrics_record,
    record_label_set,
)
from model.metrics import classification_metrics
from model.train import CURVES_NAME

log = logging.getLogger(__name__)

__all__ = ["ReportError"]

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
# What `cmroberta reproduce` writes into its sweep folder: the preset its runs trained with.
PRESET_NAME = "preset.json"

# Text mode -> row-name suffix, in report order.
TEXT_MODE_SUFFIXES: dict[str, str] = {"frozen": "", "end_to_end": " (end-to-end)", "finetuned": " (fine-tuned)"}
# Text mode -> its name in the report's "text" column.
TEXT_MODE_NAMES: dict[str, str] = {"frozen": "frozen", "end_to_end": "end-to-end", "finetuned": "fine-tuned"}
# The paper fine-tuned RoBERTa-Large before extracting its vectors (section 4.1.3).
PAPER_TEXT_MODE = "fine-tuned"


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


RunGroup = ConfigGroup[RunResult]


def group_runs(runs: Sequence[RunResult]) -> list[RunGroup]:
    """The runs grouped by their config without the seed, in the order given."""
    return group_by_config(runs, lambda run: run.config, lambda run: run.seed, lambda run: str(run.run_dir))


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
    metrics = classification_metrics(predictions.gold[chosen], predictions.pred[chosen], predictions.labels)
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
    predictions_path = run_dir / TEST_PREDICTIONS_NAME
    try:
        labels = record_label_set(test).labels
        predictions = read_predictions(predictions_path, labels) if predictions_path.is_file() else None
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


@dataclass(frozen=True, kw_only=True)
class Block:
    """Groups that differ only in their variant (the audio-only group: in the keys every text mode reads)."""

    text_mode: str
    """The text mode of its text-reading groups."""
    groups: dict[str, RunGroup]
    """Variant -> its group."""
    settings: dict[str, Any]
    """The groups' config as dotted keys, variant aside."""
    keys: tuple[str, ...] = ()
    """The keys that set it apart from the report's other blocks, besides the text mode."""

    @property
    def name(self) -> str:
        """The text mode's row-name suffix, then ' [key=value, ...]' of `keys`."""
        return named(TEXT_MODE_SUFFIXES[self.text_mode], self.settings, self.keys)

    @property
    def where(self) -> str:
        """The text mode's name, then ' [key=value, ...]' of `keys`: the block in a comparison's row."""
        return named(TEXT_MODE_NAMES[self.text_mode], self.settings, self.keys)


def blocks(runs: Sequence[RunResult]) -> list[Block]:
    """The report's blocks, text modes in report order, then in the order first seen.

    Text-reading groups with equal configs (variant aside) make a block; each block takes the audio-only
    group that shares its `mode_setting`. Without text-reading runs, each audio-only group is a block.
    """
    groups = group_runs(runs)
    readers = [group for group in groups if group.variant != "audio"] or groups
    found: dict[str, Block] = {}
    for group in readers:
        settings = {key: value for key, value in group.settings.items() if key != "model.variant"}
        identity = json.dumps(settings, sort_keys=True, default=str)
        block = found.setdefault(identity, Block(text_mode=group.text_mode, groups={}, settings=settings))
        block.groups[group.variant] = group
    for block in found.values():
        audio = [g for g in groups if g.variant == "audio" and mode_setting(g.settings) == mode_setting(block.settings)]
        if audio and "audio" not in block.groups:
            block.groups["audio"] = audio[0]
    ordered = sorted(found.values(), key=lambda block: list(TEXT_MODE_SUFFIXES).index(block.text_mode))
    apart = keys_apart([block.settings for block in ordered])
    return [
        Block(
            text_mode=block.text_mode,
            groups={variant: block.groups[variant] for variant in VARIANT_NAMES if variant in block.groups},
            settings=block.settings,
            keys=tuple(keys),
        )
        for block, keys in zip(ordered, apart)
    ]


def _row_name(variant: str, block: Block) -> str:
    """A variant's row name, marked with its block's name (its text mode never for audio, which reads no text)."""
    if variant != "audio":
        return VARIANT_NAMES[variant] + block.name
    return named("audio", block.settings, [key for key in block.keys if key in mode_setting(block.settings)])


def _mode_name(variant: str, block: Block) -> str | None:
    return None if variant == "audio" else TEXT_MODE_NAMES[block.text_mode]


def group_cell(group: RunGroup | None, read: Callable[[RunResult], float]) -> Cell | None:
    """One cell of a group's runs: `read` of each, in percent; None without a group."""
    if group is None:
        return None
    return Cell(tuple(100 * float(read(run)) for run in group.members))


def _difference(a: Cell | None, b: Cell | None) -> float | None:
    return None if a is None or b is None else a.mean - b.mean


def runs_label_set(runs: Sequence[RunResult]) -> LabelSet:
    """The one label set the runs were scored in; a ReportError naming two runs of different sets."""
    first = record_label_set(runs[0].test)
    for run in runs[1:]:
        other = record_label_set(run.test)
        if not other.same_labels(first):
            raise ReportError(
                f"run {runs[0].run_dir} is scored in label set {first.describe()} but run {run.run_dir} in "
                f"{other.describe()}; runs of different label sets are never pooled, so report each set's runs apart"
            )
    return first


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
            if variant == "audio" and group.config_hash in shown_audio:
                continue  # the same audio runs stand beside several blocks: shown once
            shown_audio.add(group.config_hash)
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
            if not all(run.voice_only for run in group.members) or group.config_hash in shown_audio:
                continue
            if variant == "audio":
                shown_audio.add(group.config_hash)
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
    # Imported here: Table 3, the ser4 table, the paired differences and the robustness table build on this
    # module's runs.
    from launch.audio_ablation import table3
    from launch.paired_report import paired_differences_table
    from launch.robustness_report import read_run_robustness, table_from_runs
    from launch.ser_table import ser_table

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


def group_names(runs: Sequence[RunResult]) -> dict[Path, str]:
    """Each run folder -> its group's name: variant, text mode, and the keys that set the group apart."""
    groups = group_runs(runs)
    names = {}
    for group, keys in zip(groups, keys_apart([group.settings for group in groups])):
        for run in group.members:
            names[run.run_dir] = named(base_name(group), group.settings, keys)
    return names


def base_name(group: ConfigGroup) -> str:
    """A group's name before its distinguishing keys: the variant, and the text mode of one that reads text."""
    variant = VARIANT_NAMES.get(group.variant, group.variant)
    return variant if group.variant == "audio" else variant + TEXT_MODE_SUFFIXES.get(group.text_mode, "")


def _selection(run: RunResult) -> str:
    """Which phase and epoch dev selected, where the run records them (a warm-started run has two phases)."""
    phase, epoch = run.test.get("selected_phase"), run.test.get("selected_epoch")
    parts = [f"phase {phase}"] * (phase is not None) + [f"epoch {epoch}"] * (epoch is not None)
    return f" (selected: {', '.join(parts)})" if parts else ""


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
