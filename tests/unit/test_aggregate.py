"""The sweep report's statistics against independent computations, on run folders written here."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from extract.labels import EMOTIONS
from launch.aggregate import aggregate, write_report
from launch.sweep import RUNS_FOLDER, SWEEP_NAME
from model.run_folder import RunFolder
from tests.metrics_records import metrics_record

# Two-sided 95% critical values of Student's t, from printed tables (e.g. NIST/SEMATECH
# e-Handbook, table 1.3.6.7.2), to three decimals.
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042, 100: 1.984}


def write_sweep(sweep_dir: Path, scores: dict[str, dict[int, np.ndarray]], unfinished: list[tuple[str, int]]) -> None:
    """A sweep folder as launch.sweep writes it: sweep.json, run.json and test_metrics.json per finished run."""
    configurations = {f"hash-{label}": {"label": label} for label in scores}
    (sweep_dir / RUNS_FOLDER).mkdir(parents=True)
    (sweep_dir / SWEEP_NAME).write_text(json.dumps({"configurations": configurations, "seeds": []}))
    for label, seeds in scores.items():
        for seed, values in seeds.items():
            run_dir = sweep_dir / RUNS_FOLDER / f"hash-{label}-seed{seed}"
            run_dir.mkdir()
            RunFolder(run_dir).run_record_path.write_text(
                json.dumps({"label": label, "seed": seed, "config_hash": f"hash-{label}"})
            )
            metrics = metrics_record(float(values[0]), dict(zip(EMOTIONS, map(float, values[1:]))))
            RunFolder(run_dir).test_metrics_path.write_text(json.dumps(metrics))
    for label, seed in unfinished:
        run_dir = sweep_dir / RUNS_FOLDER / f"hash-{label}-seed{seed}"
        run_dir.mkdir()
        RunFolder(run_dir).run_record_path.write_text(
            json.dumps({"label": label, "seed": seed, "config_hash": f"hash-{label}"})
        )


def independent_interval(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample sd and 95% CI, written out from the textbook formula with the printed t value."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_TABLE_975[n - 1] * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def test_report_matches_an_independent_computation(tmp_path):
    rng = np.random.default_rng(7)
    scores = {
        "model.variant=text": {seed: rng.uniform(0.4, 0.7, 8) for seed in range(5)},
        "model.variant=bimodal": {seed: rng.uniform(0.4, 0.7, 8) for seed in range(4)},
    }
    write_sweep(tmp_path, scores, unfinished=[("model.variant=bimodal", 4)])
    report = aggregate(tmp_path)

    assert [c.label for c in report.configurations] == ["model.variant=text", "model.variant=bimodal"]
    assert report.unfinished == [str(tmp_path / RUNS_FOLDER / "hash-model.variant=bimodal-seed4")]
    for summary in report.configurations:
        seeds = scores[summary.label]
        assert summary.seeds == sorted(seeds)
        expected = independent_interval([seeds[s][0] for s in sorted(seeds)])
        got = summary.weighted_f1
        assert (got.mean, got.std, got.ci_low, got.ci_high) == pytest.approx(expected, abs=1e-4)
        for i, emotion in enumerate(EMOTIONS, start=1):
            expected = independent_interval([seeds[s][i] for s in sorted(seeds)])
            got = summary.per_class_f1[emotion]
            assert (got.mean, got.std, got.ci_low, got.ci_high) == pytest.approx(expected, abs=1e-4)

    (comparison,) = report.comparisons
    assert (comparison.label, comparison.baseline) == ("model.variant=bimodal", "model.variant=text")
    assert comparison.tests.seeds == [0, 1, 2, 3]
    differences = [scores["model.variant=bimodal"][s][0] - scores["model.variant=text"][s][0] for s in range(4)]
    got = comparison.tests.difference
    assert (got.mean, got.std, got.ci_low, got.ci_high) == pytest.approx(independent_interval(differences), abs=1e-4)
    mean, sd = np.mean(differences), np.std(differences, ddof=1)
    assert comparison.tests.t_test.t == pytest.approx(mean / (sd / 2))
    assert comparison.tests.bootstrap is None, "these runs wrote no predictions"
    assert comparison.tests.hierarchical is None


def test_comparisons_bootstrap_the_runs_predictions(tmp_path):
    rng = np.random.default_rng(5)
    keys = [f"test/dia{d}_utt{u}" for d in range(20) for u in range(4)]
    gold = rng.integers(0, 7, len(keys))
    scores = {label: {0: np.zeros(8), 1: np.zeros(8)} for label in ("model.variant=text", "model.variant=bimodal")}
    write_sweep(tmp_path, scores, unfinished=[])
    accuracy = {"model.variant=text": 0.4, "model.variant=bimodal": 0.8}
    f1 = {}
    for label, seeds in scores.items():
        for seed in seeds:
            pred = np.where(rng.random(len(keys)) < accuracy[label], gold, rng.integers(0, 7, len(keys)))
            lines = [
                json.dumps({"key": k, "gold": EMOTIONS[g], "pred": EMOTIONS[p]}) for k, g, p in zip(keys, gold, pred)
            ]
            run = RunFolder(tmp_path / RUNS_FOLDER / f"hash-{label}-seed{seed}")
            run.predictions_path("test").write_text("\n".join(lines))
            f1[label, seed] = weighted_f1_by_counting(gold, pred)
    (comparison,) = aggregate(tmp_path).comparisons
    expected = np.mean([f1["model.variant=bimodal", s] - f1["model.variant=text", s] for s in (0, 1)])
    for bootstrap in (comparison.tests.bootstrap, comparison.tests.hierarchical):
        assert bootstrap.difference == pytest.approx(expected, abs=1e-12)
        assert bootstrap.dialogues == 20
        assert bootstrap.ci_low < expected < bootstrap.ci_high


def weighted_f1_by_counting(gold: np.ndarray, pred: np.ndarray) -> float:
    total = 0.0
    for c in range(7):
        tp, support, predicted = np.sum((gold == c) & (pred == c)), np.sum(gold == c), np.sum(pred == c)
        total += support * (2 * tp / (support + predicted)) if support else 0.0
    return total / len(gold)


def test_written_report_holds_the_numbers_the_tables_and_the_plot(tmp_path):
    rng = np.random.default_rng(3)
    scores = {"base": {seed: rng.uniform(0.4, 0.7, 8) for seed in range(3)}}
    write_sweep(tmp_path, scores, unfinished=[])
    write_report(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    (configuration,) = saved["configurations"]
    assert configuration["weighted_f1"]["mean"] == pytest.approx(np.mean([v[0] for v in scores["base"].values()]))
    markdown = (tmp_path / "report.md").read_text()
    mean, sd, low, high = independent_interval([v[0] for v in scores["base"].values()])
    assert f"{100 * mean:.2f} ± {100 * sd:.2f}" in markdown
    printed = re.search(r"\[(\d+\.\d\d), (\d+\.\d\d)\]", markdown)
    assert printed is not None, markdown
    # The printed t (4.303) is rounded, so the ends agree to the table's precision.
    assert (float(printed.group(1)), float(printed.group(2))) == pytest.approx((100 * low, 100 * high), abs=0.02)
    assert (tmp_path / "spread.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_configurations_sharing_a_label_are_named_by_the_keys_that_set_them_apart(tmp_path):
    # Two sweeps into one folder with the same grid and another base learning rate: same labels, other configs.
    scores = {"model.variant=text": {0: np.full(8, 0.5)}, "model.variant=bimodal": {0: np.full(8, 0.6)}}
    write_sweep(tmp_path, scores, unfinished=[])
    for label in scores:
        config = f'store = "s"\nmodel.variant = "{label.split("=")[1]}"\n'
        first = tmp_path / RUNS_FOLDER / f"hash-{label}-seed0"
        (first / "config.toml").write_text(f"{config}train.learning_rate = 0.001")
        other = tmp_path / RUNS_FOLDER / f"other-{label}-seed0"
        other.mkdir()
        record = {"label": label, "seed": 0, "config_hash": f"other-{label}"}
        RunFolder(other).run_record_path.write_text(json.dumps(record))
        RunFolder(other).test_metrics_path.write_text(json.dumps(metrics_record(0.4)))
        (other / "config.toml").write_text(f"{config}train.learning_rate = 0.01")
    labels = [c.label for c in aggregate(tmp_path).configurations]
    assert labels == [
        "model.variant=text [train.learning_rate=0.001]",
        "model.variant=bimodal [train.learning_rate=0.001]",
        "model.variant=bimodal [train.learning_rate=0.01]",
        "model.variant=text [train.learning_rate=0.01]",
    ]
