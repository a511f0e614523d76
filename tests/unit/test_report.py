"""Paper-style tables from run folders, checked against each run's own test_metrics.json."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cluster.durable_files import atomic_write_json, atomic_write_json_lines
from extract.labels import EMOTIONS
from extract.manifest import MANIFEST_NAME
from launch.audio_ablation import table3
from launch.cli import main
from launch.paired_report import paired_differences, paired_differences_table
from launch.report import (
    PAPER_TABLE2,
    format_report,
    table1,
    table2,
    voice_only_table,
)
from launch.report_table import Cell, Table
from launch.run_groups import ReportError
from launch.run_results import read_run_results
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
    run_dir: Path,
    variant: str,
    seed: int,
    gold: np.ndarray,
    store: Path,
    text_mode: str = "frozen",
    extra: str = "",
    accuracy: float | None = None,
) -> None:
    """A finished run folder as training writes it, with predictions of a quality that depends on the variant.

    `extra` holds more TOML lines of the config (dotted keys, outside [model]); `accuracy` overrides the variant's.
    """
    rng = np.random.default_rng([VARIANTS.index(variant), seed, len(text_mode), len(extra)])
    if accuracy is None:
        accuracy = {"audio": 0.35, "text": 0.6, "bimodal_no_sca": 0.65, "bimodal": 0.7}[variant]
    pred = np.where(rng.random(len(gold)) < accuracy, gold, rng.integers(0, 7, len(gold)))
    keys = [f"test/dia{i}_utt0" for i in range(len(gold))]
    evaluation = SplitEvaluation(
        split="test", loss=1.0, metrics=classification_metrics(gold, pred), keys=keys, gold=gold, pred=pred
    )
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(
        f'store = "{store}"\nseed = {seed}\ntext_mode = "{text_mode}"\n{extra}\n[model]\nvariant = "{variant}"\n'
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
    table = table2(read_run_results([sweep]))
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
    table = table1(read_run_results([sweep]))
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
    rows = {name: cells[1:] for name, cells in table1(read_run_results([sweep])).rows}
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
    rows = {name: cells[1:] for name, cells in voice_only_table(read_run_results([sweep])).rows}
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
    runs = read_run_results([sweep])
    found, refused = paired_differences(runs)
    assert refused == []
    by_name = {d.name: d for d in found}
    assert set(by_name) == {"bimodal − text", "SCA − no SCA"}
    for name, a, b in (("bimodal − text", "bimodal", "text"), ("SCA − no SCA", "bimodal", "bimodal_no_sca")):
        d = by_name[name]
        a_f1 = [100 * m["weighted_f1"] for m in own_metrics(sweep, a)]
        b_f1 = [100 * m["weighted_f1"] for m in own_metrics(sweep, b)]
        differences = np.subtract(a_f1, b_f1)
        assert d.tests.seeds == list(SEEDS) and d.text_mode == "frozen"
        assert d.tests.difference.mean == pytest.approx(differences.mean())
        assert d.tests.t_test.t == pytest.approx(differences.mean() / (differences.std(ddof=1) / np.sqrt(3)))
        for bootstrap in (d.tests.bootstrap, d.tests.hierarchical):
            assert bootstrap.difference == pytest.approx(differences.mean() / 100, abs=1e-12)
            assert bootstrap.dialogues == N_TEST, "each test utterance here is a dialogue of its own"
            assert bootstrap.ci_low < bootstrap.difference < bootstrap.ci_high
    table = paired_differences_table(runs)
    assert [name for name, _ in table.rows] == ["bimodal − text", "SCA − no SCA"]


def test_a_single_run_shows_no_spread_and_missing_variants_stay_empty(sweep):
    runs = read_run_results([sweep / "text-seed0"])
    rows = {name: cells[1:] for name, cells in table1(runs).rows}
    assert rows["CM-RoBERTa"][0] is None and rows["CM-RoBERTa"][3] is None
    text = json.loads((sweep / "text-seed0" / "test_metrics.json").read_text())
    assert rows["CM-RoBERTa"][1].mean == pytest.approx(100 * text["weighted_f1"])
    assert rows["CM-RoBERTa"][1].std is None and "±" not in str(rows["CM-RoBERTa"][1])


def test_runs_on_different_test_sets_are_refused(sweep, tmp_path, voice_only_keys):
    write_run(tmp_path / "other", "text", 0, np.zeros(10, dtype=int), voice_only_keys[0])
    with pytest.raises(ReportError, match="different test splits"):
        read_run_results([sweep / "text-seed0", tmp_path / "other"])
    with pytest.raises(ReportError, match="does not exist"):
        read_run_results([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="holds no finished run"):
        read_run_results([tmp_path / "empty"])


def test_end_to_end_rows_stand_apart_and_are_compared_with_frozen_ones(tmp_path, test_labels, voice_only_keys):
    for mode in ("frozen", "end_to_end"):
        for variant in ("text", "bimodal"):
            for seed in (0, 1):
                run_dir = tmp_path / f"{variant}-{mode}-seed{seed}"
                write_run(run_dir, variant, seed, test_labels, voice_only_keys[0], mode)
    runs = read_run_results([tmp_path])
    rows = {name: cells for name, cells in table1(runs).rows}
    assert rows["CM-RoBERTa (end-to-end)"][0] == "end-to-end" and rows["CM-RoBERTa"][0] == "frozen"
    assert "CM-RoBERTa without SCA unit (end-to-end)" not in rows, "no end-to-end model without SCA ran"
    e2e = [json.loads((tmp_path / f"text-end_to_end-seed{s}" / "test_metrics.json").read_text()) for s in (0, 1)]
    assert rows["CM-RoBERTa (end-to-end)"][2].mean == pytest.approx(100 * np.mean([m["weighted_f1"] for m in e2e]))
    differences = {(d.name, d.text_mode) for d in paired_differences(runs)[0]}
    assert differences == {
        ("bimodal − text", "frozen"),
        ("bimodal − text", "end-to-end"),
        ("text", "end-to-end − frozen"),
        ("bimodal", "end-to-end − frozen"),
    }


def group_f1(folder: Path, names: list[str]) -> list[float]:
    return [100 * json.loads((folder / name / "test_metrics.json").read_text())["weighted_f1"] for name in names]


def test_two_configurations_of_one_variant_and_mode_are_two_rows_paired_within_themselves(
    tmp_path, test_labels, voice_only_keys
):
    # Two sweeps in one folder: same variants and text mode, another learning rate, far apart in quality.
    quality = {"0.001": {"text": 0.6, "bimodal": 0.9}, "0.0001": {"text": 0.5, "bimodal": 0.55}}
    for rate, accuracies in quality.items():
        for variant, accuracy in accuracies.items():
            for seed in SEEDS:
                run_dir = tmp_path / f"lr{rate}-{variant}-seed{seed}"
                extra = f"train.learning_rate = {rate}"
                write_run(run_dir, variant, seed, test_labels, voice_only_keys[0], extra=extra, accuracy=accuracy)
    runs = read_run_results([tmp_path])
    rows = dict(table1(runs).rows)
    for rate in quality:
        name = f"CM-RoBERTa [train.learning_rate={rate}]"
        bimodal = group_f1(tmp_path, [f"lr{rate}-bimodal-seed{seed}" for seed in SEEDS])
        assert rows[name][3].values == pytest.approx(tuple(bimodal)), "each row holds its own configuration's seeds"
    found, refused = paired_differences(runs)
    assert refused == []
    assert sorted(d.text_mode for d in found) == [
        "frozen [train.learning_rate=0.0001]",
        "frozen [train.learning_rate=0.001]",
    ]
    for d in found:
        rate = d.text_mode.split("=")[1].rstrip("]")
        bimodal = group_f1(tmp_path, [f"lr{rate}-bimodal-seed{seed}" for seed in SEEDS])
        text = group_f1(tmp_path, [f"lr{rate}-text-seed{seed}" for seed in SEEDS])
        assert d.name == "bimodal − text" and d.tests.seeds == list(SEEDS)
        assert d.tests.difference.mean == pytest.approx(np.mean(np.subtract(bimodal, text))), "paired within"
    assert "Holm" in paired_differences_table(runs).render()


def test_end_to_end_minus_frozen_needs_the_same_budget_and_says_which_keys_differ(
    tmp_path, test_labels, voice_only_keys
):
    budgets = {"frozen": "train.max_epochs = 15", "end_to_end": "train.max_epochs = 6"}
    for mode, budget in budgets.items():
        for seed in (0, 1):
            write_run(tmp_path / f"text-{mode}-seed{seed}", "text", seed, test_labels, voice_only_keys[0], mode, budget)
    runs = read_run_results([tmp_path])
    found, refused = paired_differences(runs)
    assert found == []
    assert refused == [
        "end-to-end − frozen, text: not printed; besides the text mode the runs differ in train.max_epochs (6 vs 15) "
        "(train both modes with the same head, budget, patience and head schedule)"
    ]
    assert refused[0] in paired_differences_table(runs).render()
    # Rows name the budget that sets them apart.
    assert {name for name, _ in table2(runs).rows} >= {
        "text [train.max_epochs=15] (n=2)",
        "text (end-to-end) [train.max_epochs=6] (n=2)",
    }

    # The same budget, and a key only the end-to-end mode reads: the text mode alone differs, so they are compared.
    same = tmp_path / "same"
    for mode, extra in (("frozen", ""), ("end_to_end", "end_to_end.param_groups.encoder_lr = 2e-5")):
        for seed in (0, 1):
            write_run(same / f"text-{mode}-seed{seed}", "text", seed, test_labels, voice_only_keys[0], mode, extra)
    found, refused = paired_differences(read_run_results([same]))
    assert refused == [] and [(d.name, d.text_mode) for d in found] == [("text", "end-to-end − frozen")]
    e2e, frozen = (group_f1(same, [f"text-{mode}-seed{s}" for s in (0, 1)]) for mode in ("end_to_end", "frozen"))
    assert found[0].tests.difference.mean == pytest.approx(np.mean(np.subtract(e2e, frozen)))


def test_table3_scores_the_audio_model_by_its_families_beside_the_paper(tmp_path, test_labels):
    store = tmp_path / "store"
    store.mkdir()
    families = {"opensmile": {"dim": 6552}, "openl3": {"dim": 6144}, "text": {"dim": 4096}}
    (store / MANIFEST_NAME).write_text(json.dumps({"config": {}, "families": families}))
    sets = {"openl3": '["openl3"]', "opensmile": '["opensmile"]', "both": '["opensmile", "openl3"]'}
    for name, value in sets.items():
        for seed in (0, 1):
            write_run(tmp_path / f"audio-{name}-seed{seed}", "audio", seed, test_labels, store,
                      extra=f"data.audio_families = {value}")
    write_run(tmp_path / "text-seed0", "text", 0, test_labels, store, extra=f"data.audio_families = {sets['both']}")
    runs = read_run_results([tmp_path])
    table = table3(runs)
    rows = dict(table.rows)
    expected = {
        "OpenL3 only (without the low-level descriptors)": ("openl3", 37.3),
        "openSMILE only (without OpenL3)": ("opensmile", 41.3),
        "openSMILE and OpenL3": ("both", 43.1),
    }
    assert list(rows) == list(expected), "the paper's row order"
    for row, (name, paper) in expected.items():
        seeds, cell, paper_cell = rows[row]
        assert seeds == 2 and paper_cell == paper
        assert cell.values == pytest.approx(tuple(group_f1(tmp_path, [f"audio-{name}-seed{s}" for s in (0, 1)])))
    assert table.notes == []
    # Table 1's audio cell is the audio model on the text row's own audio families.
    assert dict(table1(runs).rows)["CM-RoBERTa without SCA unit"][1] == rows["openSMILE and OpenL3"][1]

    # A store without OpenL3 has no Table 3.
    (store / MANIFEST_NAME).write_text(json.dumps({"config": {}, "families": {"opensmile": {"dim": 6552}}}))
    assert table3(read_run_results([tmp_path])) is None


def test_a_clipped_interval_is_marked_and_the_legend_says_so():
    table = Table(title="t", name="t", columns=["row", "score"], rows=[("near the top", [Cell((99.0, 80.0, 99.5))])])
    rendered = table.render()
    assert "100.00]*" in rendered
    assert rendered.splitlines()[-1].startswith("* the t interval reached past [0, 100]")
    plain = Table(title="t", name="t", columns=["row", "score"], rows=[("middle", [Cell((60.0, 61.0, 62.0))])])
    assert "*" not in plain.render()


def test_the_runs_list_shows_the_selected_phase_and_epoch_where_a_run_records_them(tmp_path, test_labels, sweep):
    run_dir = tmp_path / "warm"
    write_run(run_dir, "text", 0, test_labels, tmp_path)
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    metrics.update(selected_phase="fine-tune", selected_epoch=7)
    (run_dir / "test_metrics.json").write_text(json.dumps(metrics))
    assert f"text, seed 0 (selected: phase fine-tune, epoch 7): {run_dir}" in format_report(read_run_results([run_dir]))
    assert "(selected:" not in format_report(read_run_results([sweep / "text-seed0"]))


def test_one_configuration_with_one_seed_twice_is_refused_naming_both(sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep / "text-seed0", copy)
    with pytest.raises(ReportError, match="one configuration with one seed"):
        table1(read_run_results([sweep / "text-seed0", copy]))
