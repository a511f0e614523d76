"""The robustness table: weighted F1 on test under each perturbation, per configuration, against clean.

A run folder holds its clean test score (`test_metrics.json`) and one file per perturbed evaluation
(`robustness/<condition>-seed<N>.json`, written by `cmroberta evaluate RUN --perturb SPEC`). Runs
that differ only in their seed are one configuration (`launch.run_groups`), named by its variant, its
text mode and every key that sets it apart from the table's other configurations. For each
configuration and condition the table shows the weighted F1 as mean ± sample sd over seeds, and the
paired change against clean (each seed's perturbed minus its own clean score), also as mean ± sd.
Numbers are percentages.

`robustness_table(run_dirs, conditions)` first evaluates every run under every condition it has not
been scored under yet, then builds the table (the demo calls it); the report
(`launch.report.report_tables`) only reads what is there.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launch.report_groups import base_name
from launch.report_table import Cell, Table
from launch.run_groups import ReportError, group_by_config, keys_apart, named
from launch.run_results import read_run_config
from model.metrics_record import read_metrics_record
from model.perturb import parse_perturbation
from model.run_folder import RunFolder

ROBUSTNESS_NAME = "robustness"
# Conditions in table order by kind; within a kind, by the file name.
_KIND_ORDER = ("audio_missing", "audio_noise", "text_missing", "text_asr")
DEMO_CONDITIONS: tuple[str, ...] = ("audio_missing", "text_missing", "text_asr:wer=0.3")
"""The demo's robustness table: audio missing, text missing, and text at 30% WER."""


@dataclass(kw_only=True)
class RunRobustness:
    """One run's clean and perturbed weighted F1 on test."""

    run_dir: Path
    """The run folder."""
    config: dict
    """Its resolved config (config.toml as read)."""
    seed: int
    """Its seed."""
    clean: float
    """Clean test weighted F1."""
    perturbed: dict[str, float] = field(default_factory=dict)
    """Condition -> test weighted F1 under it."""
    descriptions: dict[str, str] = field(default_factory=dict)
    """Condition -> the condition in words."""


def _describe(perturbation: dict) -> str:
    kind = perturbation.get("kind", "?")
    if kind == "audio_noise":
        return f"audio, {perturbation.get('noise')} noise {perturbation.get('snr_db')} dB"
    if kind == "text_asr":
        return f"text at {100 * float(perturbation.get('wer', 0)):g}% WER"
    return kind.replace("_", " ")


def read_run_robustness(run_dir: Path) -> RunRobustness:
    """A finished run's clean score and every perturbed score in its robustness folder.

    Every metrics record is read through the one validator (`model.metrics_record.read_metrics_record`):
    a record of the wrong shape is a MetricsDamagedError naming the file, never a traceback later.
    """
    run = RunFolder(run_dir)
    run_dir = run.path
    config = read_run_config(run_dir)
    if not run.finished:
        raise ReportError(f"run folder {run_dir} has no {run.test_metrics_path.name}; is it a finished run?")
    clean = read_metrics_record(run.test_metrics_path)["weighted_f1"]
    result = RunRobustness(
        run_dir=run_dir, config=config, seed=int(config.get("seed", 0)), clean=clean
    )
    for path in sorted(run.robustness_folder.glob("*.json")):
        record = read_metrics_record(path, perturbed=True)
        if record["split"] != "test":
            continue
        condition = record["perturbation"]["condition"]
        result.perturbed[condition] = float(record["weighted_f1"])
        result.descriptions[condition] = _describe(record["perturbation"])
    return result


def _condition_order(condition: str) -> tuple[int, str]:
    kind = next((k for k in _KIND_ORDER if condition.startswith(k)), "")
    return (_KIND_ORDER.index(kind) if kind else len(_KIND_ORDER), condition)


def table_from_runs(runs: Sequence[RunRobustness]) -> Table | None:
    """The robustness table of these runs; None when none was scored under a perturbation."""
    conditions = sorted({c for run in runs for c in run.perturbed}, key=_condition_order)
    if not conditions:
        return None
    descriptions = {c: d for run in runs for c, d in run.descriptions.items()}
    groups = group_by_config(runs, lambda run: run.config, lambda run: run.seed, lambda run: str(run.run_dir))
    rows: list[tuple[str, list[Cell | float | int | str | None]]] = []
    for group, keys in zip(groups, keys_apart([group.settings for group in groups])):
        chosen = group.members
        cells: list[Cell | float | int | str | None] = [len(chosen), Cell(tuple(100 * run.clean for run in chosen))]
        for condition in conditions:
            scored = [run for run in chosen if condition in run.perturbed]
            if not scored:
                cells.extend([None, None])
                continue
            cells.append(Cell(tuple(100 * run.perturbed[condition] for run in scored)))
            # A change of score is bounded by nothing a t interval needs to respect here.
            cells.append(Cell(tuple(100 * (run.perturbed[condition] - run.clean) for run in scored), bounds=None))
        rows.append((named(base_name(group), group.settings, keys), cells))
    columns = ["configuration", "seeds", "clean"]
    for condition in conditions:
        columns.extend([descriptions[condition], f"{descriptions[condition]} - clean"])
    return Table(
        title="Robustness: weighted F1 (%) on test under each condition, and its change against clean",
        name=ROBUSTNESS_NAME,
        columns=columns,
        rows=rows,
    )


def robustness_table(run_dirs: Sequence[Path], conditions: Sequence[str] = DEMO_CONDITIONS) -> Table | None:
    """Score every run under every condition (perturbation specs) not yet scored, then the robustness table."""
    # deferred: scoring loads the inference path (model.predict and its extractors); reading the table needs none
    from model.predict import evaluate_perturbed, restore_run, robustness_path

    perturbations = [parse_perturbation(spec) for spec in conditions]
    for run_dir in run_dirs:
        todo = [p for p in perturbations if not robustness_path(run_dir, p).is_file()]
        if todo:
            run = restore_run(run_dir)
            for perturbation in todo:
                evaluate_perturbed(run, perturbation)
    return table_from_runs([read_run_robustness(run_dir) for run_dir in run_dirs])
