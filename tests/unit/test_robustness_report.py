"""The robustness table from run folders: configurations over seeds, each condition against clean."""

import json

import pytest

from launch.robustness_report import read_run_robustness, table_from_runs
from launch.run_groups import ReportError
from tests.metrics_records import metrics_record


def write_run(folder, seed, dropout, clean, scores):
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(
        f'store = "x"\nseed = {seed}\ntext_mode = "frozen"\n'
        f'[model]\nvariant = "bimodal"\nmodality_dropout = {dropout}\n'
    )
    (folder / "test_metrics.json").write_text(json.dumps(metrics_record(clean)))
    (folder / "robustness").mkdir()
    for condition, (kind, value) in scores.items():
        record = {**metrics_record(value), "perturbation": {"kind": kind, "wer": 0.3, "condition": condition}}
        (folder / "robustness" / f"{condition}-seed0.json").write_text(json.dumps(record))


def test_the_table_pairs_each_seed_with_its_own_clean_score(tmp_path):
    write_run(tmp_path / "a0", 0, 0.0, 0.80, {"audio_missing": ("audio_missing", 0.50)})
    write_run(tmp_path / "a1", 1, 0.0, 0.70, {"audio_missing": ("audio_missing", 0.50)})
    write_run(tmp_path / "b0", 0, 0.3, 0.78, {"audio_missing": ("audio_missing", 0.70),
                                              "text_asr-wer0.3": ("text_asr", 0.60)})
    table = table_from_runs([read_run_robustness(tmp_path / name) for name in ("a0", "a1", "b0")])
    rows = dict(table.rows)
    assert table.columns[:5] == ["configuration", "seeds", "clean", "audio missing", "audio missing - clean"]
    # The two configurations differ in their modality dropout alone, and each row says so.
    plain = rows["bimodal [modality dropout 0]"]
    assert plain[0] == 2 and plain[1].mean == pytest.approx(75.0)
    assert plain[3].values == pytest.approx((-30.0, -20.0)) and plain[3].std == pytest.approx(7.0711, abs=1e-3)
    robust = rows["bimodal [modality dropout 0.3]"]
    assert robust[3].mean == pytest.approx(-8.0) and robust[5].mean == pytest.approx(-18.0)
    assert plain[4] is None and plain[5] is None  # the plain runs were not scored at 30% WER

    assert "text at 30% WER - clean" in table.render()
    assert table.write_csv(tmp_path / "robustness.csv").read_text().startswith("configuration,seeds,")


def test_runs_without_perturbed_scores_add_no_table_and_a_broken_run_is_named(tmp_path):
    write_run(tmp_path / "a0", 0, 0.0, 0.8, {})
    assert table_from_runs([read_run_robustness(tmp_path / "a0")]) is None
    (tmp_path / "a0" / "config.toml").write_text("not = [toml")
    with pytest.raises(ReportError, match="a0"):
        read_run_robustness(tmp_path / "a0")
