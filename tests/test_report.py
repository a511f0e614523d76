"""Paper-style tables from run folders, checked against each run's own test_metrics.json."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cluster.durable_files import atomic_write_json, atomic_write_json_lines
from extract.labels import EMOTIONS
from extract.manifest import MANIFEST_NAME
from launch.cli import main
from launch.report import (
    PAPER_TABLE2,
    ReportError,
    load_runs,
    paired_differences,
    paired_differences_table,
    table1,
    table2,
    voice_only_table,
)
from model.evaluate import SplitEvaluation, evaluation_record
from model.metrics import classification_metrics

VARIANTS = ("audio", "text", "bimodal_no_sca", "bimodal")
SEEDS = (0, 1, 2)
N_TEST = 120


@pytest.fixture(scope="module")
def test_labels() -> np.ndarray:
    return np.random.default_rng(0).choice(7, size=N_TEST, p=[0.45, 0.12, 0.03, 0.08, 0.16, 0.03, 0.13])


@pytest.fixture(scope="module")
def voice_only_keys(tmp_path_factory) -> tuple[Path, list[str]]:
    """A corpus folder listing its voice-only utterances, and a store whose manifest points at it."""
    root = tmp_path_factory.mktemp("demo")
    corpus, store = root / "corpus", root / "store"
    corpus.mkdir()
    store.mkdir()
    keys = [f"test/dia{i}_utt0" for i in range(0, N_TEST, 4)]
    (corpus / "ambiguous.json").write_text(json.dumps(keys))
    (store / MANIFEST_NAME).write_text(json.dumps({"config": {"corpus": str(corpus)}}))
    return store, keys


def write_run(
    run_dir: Path, variant: str, seed: int, gold: np.ndarray, store: Path, text_mode: str = "frozen"
) -> None:
    """A finished run folder as training writes it, with predictions of a quality that depends on the variant."""
    rng = np.random.default_rng([VARIANTS.index(variant), seed, len(text_mode)])
    accuracy = {"audio": 0.35, "text": 0.6, "bimodal_no_sca": 0.65, "bimodal": 0.7}[variant]
    pred = np.where(rng.random(len(gold)) < accuracy, gold, rng.integers(0, 7, len(gold)))
    keys = [f"test/dia{i}_utt0" for i in range(len(gold))]
    evaluation = SplitEvaluation(
        split="test", loss=1.0, metrics=classification_metrics(gold, pred), keys=keys, gold=gold, pred=pred
    )
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(
        f'store = "{store}"\nseed = {seed}\ntext_mode = "{text_mode}"\n[model]\nvariant = "{variant}"\n'
    )
    atomic_write_json(run_dir / "test_metrics.json", evaluation_record(evaluation, 0, "epoch-0003", 3))
    atomic_write_json_lines(
        run_dir / "predictions.jsonl",
        [{"key": k, "gold": EMOTIONS[g], "pred": EMOTIONS[p]} for k, g, p in zip(keys, gold, pred)],
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, test_labels, voice_only_keys) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    for variant in VARIANTS:
        for seed in SEEDS:
            write_run(folder / f"{variant}-seed{seed}", variant, seed, test_labels, voice_only_keys[0])
    return folder


def own_metrics(sweep: Path, variant: str) -> list[dict]:
    return [json.loads((sweep / f"{variant}-seed{seed}" / "test_metrics.json").read_text()) for seed in SEEDS]


def mean_std(values: list[float]) -> tuple[float, float]:
    array = 100 * np.array(values)
    return float(array.mean()), float(array.std(ddof=1))


def test_table2_cells_are_the_runs_per_class_f1_over_seeds(sweep):
    table = table2(load_runs([sweep]))
    assert table.columns == ["modality", "text mode", *EMOTIONS, "w-average F1"]
    rows = {name: cells[1:] for name, cells in table.rows}
    modes = {name: cells[0] for name, cells in table.rows}
    names = {
        "audio": "audio (n=3)",
        "text": "text (n=3)",
        "bimodal_no_sca": "bimodal w/o SCA (n=3)",
        "bimodal": "bimodal (n=3)",
    }
    for variant, name in names.items():
        metrics = own_metrics(sweep, variant)
        for column, emotion in enumerate(EMOTIONS):
            mean, std = mean_std([m["per_class_f1"][emotion] for m in metrics])
            assert rows[name][column].mean == pytest.approx(mean)
            assert rows[name][column].std == pytest.approx(std)
        assert rows[name][-1].mean == pytest.approx(mean_std([m["weighted_f1"] for m in metrics])[0])
    bimodal, text = own_metrics(sweep, "bimodal"), own_metrics(sweep, "text")
    gain = mean_std([m["weighted_f1"] for m in bimodal])[0] - mean_std([m["weighted_f1"] for m in text])[0]
    assert rows["bimodal - text"][-1] == pytest.approx(gain)
    floor = bimodal[0]["majority_floor"]
    assert floor["label"] == "neutral"
    assert rows["always neutral"][-1] == pytest.approx(100 * floor["weighted_f1"])
    assert rows["paper: bimodal"] == list(PAPER_TABLE2["bimodal"])
    assert list(rows)[:4] == list(names.values()), "modality rows in the paper's order"
    assert modes["text (n=3)"] == "frozen" and modes["audio (n=3)"] is None
    assert modes["paper: bimodal"] == "fine-tuned", "the paper fine-tuned RoBERTa-Large (its section 4.1.3)"


def t_interval(values: list[float]) -> tuple[float, float]:
    """The 95% interval of the mean of three values, with the printed t(0.975, 2) = 4.303."""
    array = np.asarray(values)
    half = 4.303 * array.std(ddof=1) / np.sqrt(len(array))
    return array.mean() - half, array.mean() + half


def test_cells_carry_the_seeds_confidence_interval_on_the_line_below(sweep):
    table = table1(load_runs([sweep]))
    text_f1 = [100 * m["weighted_f1"] for m in own_metrics(sweep, "text")]
    cell = dict(table.rows)["CM-RoBERTa"][2]
    assert (cell.summary.ci_low, cell.summary.ci_high) == pytest.approx(t_interval(text_f1), rel=1e-3)
    lines = table.text_rows()
    names = [line[0] for line in lines]
    below = lines[names.index("CM-RoBERTa") + 1]
    assert below[0].strip() == "95% CI"
    low, high = (float(x) for x in below[3].strip("[]").split(", "))
    assert (low, high) == pytest.approx(t_interval(text_f1), abs=0.01)
    assert names[names.index("always neutral") + 1] != "  95% CI", "the floor is one number, it has no interval"


def test_table1_pairs_each_bimodal_variant_with_the_unimodal_runs(sweep):
    rows = {name: cells[1:] for name, cells in table1(load_runs([sweep])).rows}
    weighted = {v: mean_std([m["weighted_f1"] for m in own_metrics(sweep, v)])[0] for v in VARIANTS}
    without_sca, full = rows["CM-RoBERTa without SCA unit"], rows["CM-RoBERTa"]
    assert [c.mean for c in without_sca[:3]] == pytest.approx(
        [weighted["audio"], weighted["text"], weighted["bimodal_no_sca"]]
    )
    assert full[2].mean == pytest.approx(weighted["bimodal"])
    assert full[3] == pytest.approx(weighted["bimodal"] - weighted["text"])
    assert rows["paper: CM-RoBERTa"] == [43.10, 63.83, 66.28, 2.45]


def test_voice_only_table_scores_the_listed_utterances(sweep, voice_only_keys):
    _, keys = voice_only_keys
    rows = {name: cells[1:] for name, cells in voice_only_table(load_runs([sweep])).rows}
    wanted = set(keys)
    for variant, name in (("audio", "audio"), ("bimodal", "bimodal")):
        accuracies = []
        for seed in SEEDS:
            lines = (sweep / f"{variant}-seed{seed}" / "predictions.jsonl").read_text().splitlines()
            chosen = [json.loads(line) for line in lines if json.loads(line)["key"] in wanted]
            accuracies.append(sum(p["gold"] == p["pred"] for p in chosen) / len(chosen))
        assert rows[name][0] == len(keys)
        assert rows[name][1].mean == pytest.approx(100 * np.mean(accuracies))


def test_cli_prints_and_writes_markdown_and_csv(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed and "Voice-only" in printed
    assert "±" in printed
    markdown = (out / "report.md").read_text()
    assert "| modality" in markdown and "bimodal - text" in markdown
    with open(out / "table2.csv", newline="") as stream:
        rows = {row["modality"]: row for row in csv.DictReader(stream)}
    text = own_metrics(sweep, "text")
    mean, std = mean_std([m["per_class_f1"]["joy"] for m in text])
    assert float(rows["text (n=3)"]["joy"]) == pytest.approx(mean, abs=1e-4)
    assert float(rows["text (n=3)"]["joy std"]) == pytest.approx(std, abs=1e-4)
    low, high = t_interval([100 * m["per_class_f1"]["joy"] for m in text])
    assert float(rows["text (n=3)"]["joy ci_low"]) == pytest.approx(low, abs=0.01)
    assert float(rows["text (n=3)"]["joy ci_high"]) == pytest.approx(high, abs=0.01)
    assert (out / "table1.csv").is_file() and (out / "voice_only.csv").is_file()
    assert (out / "paired_differences.csv").is_file()
    assert printed.rstrip().splitlines()[-1].startswith("- confusion matrices on test: confusion_test.png")
    assert "learning_curves.png in each run folder" in printed


def test_paired_differences_test_across_seeds_and_bootstrap_across_dialogues(sweep):
    runs = load_runs([sweep])
    by_name = {d.name: d for d in paired_differences(runs)}
    assert set(by_name) == {"bimodal − text", "SCA − no SCA"}
    for name, a, b in (("bimodal − text", "bimodal", "text"), ("SCA − no SCA", "bimodal", "bimodal_no_sca")):
        d = by_name[name]
        a_f1 = [100 * m["weighted_f1"] for m in own_metrics(sweep, a)]
        b_f1 = [100 * m["weighted_f1"] for m in own_metrics(sweep, b)]
        differences = np.subtract(a_f1, b_f1)
        assert d.seeds == list(SEEDS) and d.text_mode == "frozen"
        assert d.difference.mean == pytest.approx(differences.mean())
        assert d.test.t == pytest.approx(differences.mean() / (differences.std(ddof=1) / np.sqrt(3)))
        assert d.bootstrap.difference == pytest.approx(differences.mean() / 100, abs=1e-12)
        assert d.bootstrap.dialogues == N_TEST, "each test utterance here is a dialogue of its own"
        assert d.bootstrap.ci_low < d.bootstrap.difference < d.bootstrap.ci_high
    table = paired_differences_table(runs)
    assert [name for name, _ in table.rows] == ["bimodal − text", "SCA − no SCA"]


def test_a_single_run_shows_no_spread_and_missing_variants_stay_empty(sweep):
    runs = load_runs([sweep / "text-seed0"])
    rows = {name: cells[1:] for name, cells in table1(runs).rows}
    assert rows["CM-RoBERTa"][0] is None and rows["CM-RoBERTa"][3] is None
    text = json.loads((sweep / "text-seed0" / "test_metrics.json").read_text())
    assert rows["CM-RoBERTa"][1].mean == pytest.approx(100 * text["weighted_f1"])
    assert rows["CM-RoBERTa"][1].std is None and "±" not in str(rows["CM-RoBERTa"][1])


def test_runs_on_different_test_sets_are_refused(sweep, tmp_path, voice_only_keys):
    write_run(tmp_path / "other", "text", 0, np.zeros(10, dtype=int), voice_only_keys[0])
    with pytest.raises(ReportError, match="different test splits"):
        load_runs([sweep / "text-seed0", tmp_path / "other"])
    with pytest.raises(ReportError, match="does not exist"):
        load_runs([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="holds no finished run"):
        load_runs([tmp_path / "empty"])


def test_end_to_end_rows_stand_apart_and_are_compared_with_frozen_ones(tmp_path, test_labels, voice_only_keys):
    for mode in ("frozen", "end_to_end"):
        for variant in ("text", "bimodal"):
            for seed in (0, 1):
                run_dir = tmp_path / f"{variant}-{mode}-seed{seed}"
                write_run(run_dir, variant, seed, test_labels, voice_only_keys[0], mode)
    runs = load_runs([tmp_path])
    rows = {name: cells for name, cells in table1(runs).rows}
    assert rows["CM-RoBERTa (end-to-end)"][0] == "end-to-end" and rows["CM-RoBERTa"][0] == "frozen"
    assert "CM-RoBERTa without SCA unit (end-to-end)" not in rows, "no end-to-end model without SCA ran"
    e2e = [json.loads((tmp_path / f"text-end_to_end-seed{s}" / "test_metrics.json").read_text()) for s in (0, 1)]
    assert rows["CM-RoBERTa (end-to-end)"][2].mean == pytest.approx(100 * np.mean([m["weighted_f1"] for m in e2e]))
    differences = {(d.name, d.text_mode) for d in paired_differences(runs)}
    assert differences == {
        ("bimodal − text", "frozen"),
        ("bimodal − text", "end_to_end"),
        ("text", "end_to_end − frozen"),
        ("bimodal", "end_to_end − frozen"),
    }
