"""The aggregate report of a seed sweep: spread over seeds, confidence intervals, paired differences.

Per configuration, over its finished seeds: the mean, the sample standard deviation (n - 1 in
the denominator) and the 95% confidence interval of the mean, mean ± t(0.975, n - 1) · sd / √n clipped to [0, 1],
of the test weighted F1 and of each emotion's F1. Between two configurations, over the seeds
both finished: the same for the per-seed differences, Student's paired t-test across those seeds,
a paired bootstrap over the test dialogues from the runs' predictions, and a bootstrap over seeds
and dialogues, each p-value raw and Holm-corrected across the comparisons (`launch.statistics`
says how each is computed). With fewer than two seeds the spread is unknown and reported as such.
Configurations are the sweep's hashes (`launch.sweep_hash`); two that share a label (two sweeps with other base
settings in one folder) are named by the keys that tell them apart (`labels_apart`).

Outputs in the sweep folder: report.json (every number, fractions in [0, 1]), report.md
(tables in percentage points, as papers print them) and spread.png (every seed's score).
"""

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

from cluster.durable_files import atomic_write_json, atomic_write_text  # noqa: E402
from extract.labels import EMOTIONS  # noqa: E402
from launch.report_table import (  # noqa: E402
    CLIPPED_MARK,
    PAIRED_HOLM,
    PAIRED_READING,
    paired_cells,
    paired_columns,
)
from launch.run_groups import ReportError, keys_apart, named, settings_of  # noqa: E402
from launch.run_results import read_run_config, read_test_predictions  # noqa: E402
from launch.statistics import (  # noqa: E402
    CONFIDENCE,
    PairedTests,
    Predictions,
    Spread,
    paired_over_common_seeds,
    spread,
)
from launch.sweep import RUNS_FOLDER, SWEEP_NAME  # noqa: E402
from launch.sweep_records import read_run_record  # noqa: E402
from launch.tables import format_table  # noqa: E402
from model.metrics_record import read_metrics_record, record_label_set  # noqa: E402
from model.run_folder import RunFolder  # noqa: E402

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
SPREAD_PNG = "spread.png"
# Scores as fractions cannot leave [0, 1]: their intervals are clipped there, and marked (`launch.statistics`).
FRACTION_BOUNDS = (0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class SeedResult:
    """One finished run of a sweep."""

    sweep_hash: str
    """Its configuration (`launch.sweep_hash`)."""
    label: str
    """The configuration's grid values."""
    seed: int
    """Its seed."""
    weighted_f1: float
    """Test weighted F1."""
    per_class_f1: dict[str, float]
    """Test F1 of each emotion."""
    predictions: Predictions | None
    """Its test predictions, for the bootstrap over dialogues; None when predictions.jsonl is missing."""
    config: dict
    """Its resolved config (config.toml as read; empty when the folder has none)."""
    labels: tuple[str, ...] = EMOTIONS
    """The label set it was scored in, in class order (its test metrics' `label_set`)."""


@dataclass(frozen=True, kw_only=True)
class ConfigurationSummary:
    """All seeds of one configuration."""

    label: str
    """Grid values."""
    config_hash: str
    """Its sweep hash (`launch.sweep_hash`), under the key report.json has always had."""
    seeds: list[int]
    """Finished seeds."""
    weighted_f1: Spread
    """Weighted F1 over the seeds."""
    per_class_f1: dict[str, Spread]
    """Each emotion's F1 over the seeds."""
    values: list[float]
    """Weighted F1 of each seed, in `seeds` order."""


@dataclass(frozen=True, kw_only=True)
class PairedComparison:
    """`label` minus `baseline`, seed by seed, over the seeds both finished."""

    label: str
    """The configuration compared."""
    baseline: str
    """The configuration it is compared with."""
    tests: PairedTests
    """The per-seed differences of weighted F1 (fractions) and every paired test of them."""


@dataclass(frozen=True, kw_only=True)
class SweepReport:
    """The whole aggregate."""

    configurations: list[ConfigurationSummary]
    """One per configuration with at least one finished seed, in the grid's order."""
    comparisons: list[PairedComparison]
    """Every later configuration against every earlier one."""
    unfinished: list[str]
    """Run folders without test metrics (still running, failed, or never submitted)."""
    confidence: float
    """Level of the confidence intervals."""
    labels: tuple[str, ...] = EMOTIONS
    """The label set of every run, in class order: the per-class columns (runs of two sets are never pooled)."""


def read_results(sweep_dir: Path) -> tuple[list[SeedResult], list[str]]:
    """The sweep's finished runs, and the folders of its unfinished ones."""
    results, unfinished = [], []
    for run_dir in sorted((Path(sweep_dir) / RUNS_FOLDER).glob("*")):
        run = RunFolder(run_dir)
        record_path, metrics_path = run.run_record_path, run.test_metrics_path
        if not record_path.is_file():
            continue
        if not metrics_path.is_file():
            unfinished.append(str(run_dir))
            continue
        record = read_run_record(record_path)
        metrics = read_metrics_record(metrics_path)
        labels = record_label_set(metrics).labels
        per_class = metrics["per_class_f1"]
        results.append(
            SeedResult(
                sweep_hash=record.sweep_hash,
                label=record.label,
                seed=record.seed,
                weighted_f1=float(metrics["weighted_f1"]),
                per_class_f1={name: float(per_class[name]) for name in labels},
                predictions=read_test_predictions(run_dir, metrics),
                config=_read_config(run_dir),
                labels=labels,
            )
        )
    return results, unfinished


def _read_config(run_dir: Path) -> dict:
    """The run's config.toml as read; empty when it is missing or unreadable (its label then stands alone)."""
    try:
        return read_run_config(run_dir)
    except ReportError:
        return {}


def labels_apart(results: Sequence[SeedResult]) -> dict[str, str]:
    """Sweep hash -> its label; configurations that share a label are named by the keys that tell them apart
    (by their hash where their configs cannot be read)."""
    first = {result.sweep_hash: result for result in reversed(results)}
    by_label: dict[str, list[str]] = {}
    for digest, result in first.items():
        by_label.setdefault(result.label, []).append(digest)
    labels = {}
    for label, digests in by_label.items():
        if len(digests) == 1:
            labels[digests[0]] = label
            continue
        settings = [settings_of(first[digest].config) for digest in digests]
        for digest, one, keys in zip(digests, settings, keys_apart(settings)):
            labels[digest] = named(label, one, keys) if keys else f"{label} [config {digest[:12]}]"
    return labels


def _configuration_order(sweep_dir: Path, results: Sequence[SeedResult]) -> list[str]:
    """Sweep hashes in the order the sweep's grid listed them (sweep.json), then any others."""
    sweep_path = Path(sweep_dir) / SWEEP_NAME
    order = list(json.loads(sweep_path.read_text(encoding="utf-8"))["configurations"]) if sweep_path.is_file() else []
    for result in results:
        if result.sweep_hash not in order:
            order.append(result.sweep_hash)
    return order


def aggregate(sweep_dir: Path, confidence: float = CONFIDENCE) -> SweepReport:
    """Summarise every configuration of the sweep in `sweep_dir` and compare them pairwise."""
    results, unfinished = read_results(sweep_dir)
    label_sets = {result.labels for result in results}
    if len(label_sets) > 1:
        raise ReportError(
            f"sweep {sweep_dir} holds runs scored in different label sets ({'; '.join(map(', '.join, label_sets))}); "
            "runs of different label sets are never pooled, so sweep each set into its own folder"
        )
    labels = label_sets.pop() if label_sets else EMOTIONS
    by_config: dict[str, dict[int, SeedResult]] = {}
    for result in results:
        by_config.setdefault(result.sweep_hash, {})[result.seed] = result
    names = labels_apart(results)
    configurations = []
    for digest in _configuration_order(sweep_dir, results):
        seeds = by_config.get(digest)
        if not seeds:
            continue
        ordered = [seeds[seed] for seed in sorted(seeds)]
        configurations.append(
            ConfigurationSummary(
                label=names[digest],
                config_hash=digest,
                seeds=sorted(seeds),
                weighted_f1=spread([r.weighted_f1 for r in ordered], confidence, FRACTION_BOUNDS),
                per_class_f1={
                    name: spread([r.per_class_f1[name] for r in ordered], confidence, FRACTION_BOUNDS)
                    for name in labels
                },
                values=[r.weighted_f1 for r in ordered],
            )
        )
    comparisons = []
    for i, baseline in enumerate(configurations):
        for other in configurations[i + 1 :]:
            tests = paired_over_common_seeds(
                by_config[other.config_hash],
                by_config[baseline.config_hash],
                lambda result: result.weighted_f1,
                lambda result: result.predictions,
                confidence,
            )
            if tests is None:
                continue
            comparisons.append(PairedComparison(label=other.label, baseline=baseline.label, tests=tests))
    return SweepReport(
        configurations=configurations,
        comparisons=comparisons,
        unfinished=unfinished,
        confidence=confidence,
        labels=labels,
    )


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _interval(s: Spread) -> str:
    return "-" if s.ci_low is None else f"[{_points(s.ci_low)}, {_points(s.ci_high)}]" + CLIPPED_MARK * s.clipped


def _mean_std(s: Spread) -> str:
    return _points(s.mean) if s.std is None else f"{_points(s.mean)} ± {_points(s.std)}"


def format_report(report: SweepReport, markdown: bool = False) -> str:
    """The report as tables: weighted F1 per configuration, per-class F1, paired differences (percentage points)."""
    level = f"{100 * report.confidence:.0f}% CI"
    sections = []
    rows = [
        [c.label, c.weighted_f1.n, _mean_std(c.weighted_f1), _interval(c.weighted_f1), " ".join(map(str, c.seeds))]
        for c in report.configurations
    ]
    clipped = any(c.weighted_f1.clipped for c in report.configurations)
    sections.append(
        "Test weighted F1 over seeds (mean ± sample sd)\n\n"
        + format_table(["configuration", "seeds", "weighted F1", level, "seed list"], rows, markdown)
        + (f"\n\n{CLIPPED_MARK} the t interval reached past [0, 100] and is clipped there" if clipped else "")
    )
    rows = [[c.label, *(_mean_std(c.per_class_f1[name]) for name in report.labels)] for c in report.configurations]
    sections.append(
        "Test F1 per emotion over seeds (mean ± sample sd)\n\n"
        + format_table(["configuration", *report.labels], rows, markdown)
    )
    if report.comparisons:
        cells = paired_cells([p.tests for p in report.comparisons], scale=100)
        rows = [[f"{p.label} − {p.baseline}", *row] for p, row in zip(report.comparisons, cells)]
        sections.append(
            "Paired differences of weighted F1 (percentage points): over common seeds (mean ± sd, t interval, "
            "paired t-test), over test dialogues (paired bootstrap), and over both (seeds × dialogues)\n\n"
            + format_table(["comparison", *paired_columns(report.confidence)], rows, markdown)
            + "\n\n"
            + "\n".join([PAIRED_READING, PAIRED_HOLM])
        )
    if report.unfinished:
        sections.append(
            f"{len(report.unfinished)} run(s) unfinished: " + ", ".join(Path(p).name for p in report.unfinished)
        )
    return "\n\n".join(sections) + "\n"


def plot_seed_spread(report: SweepReport, path: Path) -> Path:
    """Every seed's weighted F1 per configuration, with the mean and its confidence interval; per-class means beside."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.6]})
    jitter = np.random.default_rng(0)
    for x, configuration in enumerate(report.configurations):
        values = 100 * np.asarray(configuration.values)
        left.scatter(x + jitter.uniform(-0.12, 0.12, values.size), values, s=18, alpha=0.7, color="tab:blue")
        s = configuration.weighted_f1
        if s.ci_low is not None:
            left.errorbar(
                x + 0.28,
                100 * s.mean,
                yerr=[[100 * (s.mean - s.ci_low)], [100 * (s.ci_high - s.mean)]],
                fmt="o",
                color="black",
                capsize=4,
            )
        else:
            left.plot(x + 0.28, 100 * s.mean, "o", color="black")
    left.set_xticks(
        range(len(report.configurations)), [c.label for c in report.configurations], rotation=20, ha="right"
    )
    left.set_ylabel("test weighted F1 (%)")
    left.set_title(f"seeds (dots), mean and {100 * report.confidence:.0f}% CI (black)")
    width = 0.8 / max(1, len(report.configurations))
    for i, configuration in enumerate(report.configurations):
        means = [100 * configuration.per_class_f1[name].mean for name in report.labels]
        errors = [
            100 * (configuration.per_class_f1[name].ci_high - configuration.per_class_f1[name].mean)
            if configuration.per_class_f1[name].ci_high is not None
            else 0.0
            for name in report.labels
        ]
        positions = np.arange(len(report.labels)) - 0.4 + width * (i + 0.5)
        right.bar(positions, means, width=width, yerr=errors, capsize=2, label=configuration.label)
    right.set_xticks(range(len(report.labels)), report.labels, rotation=20)
    right.set_ylabel("test F1 (%)")
    right.set_ylim(0, 100)
    right.set_title("per emotion: mean and CI half-width")
    right.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(sweep_dir: Path, confidence: float = CONFIDENCE) -> SweepReport:
    """Aggregate the sweep and write report.json, report.md and spread.png into its folder."""
    sweep_dir = Path(sweep_dir)
    report = aggregate(sweep_dir, confidence)
    atomic_write_json(sweep_dir / REPORT_JSON, asdict(report))
    atomic_write_text(sweep_dir / REPORT_MD, format_report(report, markdown=True))
    if report.configurations:
        plot_seed_spread(report, sweep_dir / SPREAD_PNG)
    log.info("sweep report written to %s", sweep_dir / REPORT_MD)
    return report
