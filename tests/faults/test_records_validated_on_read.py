"""Every metrics record a report reads goes through the one validator, `model.evaluate.read_metrics_record`.

A sweep's aggregate read `test_metrics.json`, and the robustness table read the records under
`robustness/`, with bare `json.loads`: a score written as a percentage instead of a fraction came out
a hundred times too large without a word. Each case now ends in one "damaged" line and exit 2.
"""

import json

import pytest

from launch.cli import main
from launch.sweep import RUN_RECORD_NAME, plan_sweep
from model.evaluate import TEST_METRICS_NAME
from model.perturb import ROBUSTNESS_FOLDER
from model.train import RunConfig
from tests.faults.fault_summary import record_case
from tests.faults.tiny_run import TINY_HEAD
from tests.learnable_store import write_learnable_store

DAMAGED = "its weighted_f1 is missing or not what this project writes"


def command(argv, capsys) -> tuple[int, list[str], str]:
    """Run `cmroberta ARGV`: its status, the lines it printed as `cmroberta ...`, and all it printed."""
    status = main([str(word) for word in argv])
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    return status, [line for line in captured.err.splitlines() if line.startswith("cmroberta ")], printed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store, run): a real run (frozen features, a tiny head), scored on test with the text missing."""
    store = write_learnable_store(tmp_path_factory.mktemp("features") / "records-000000000000")
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(store), *TINY_HEAD, "--run-dir", str(run_dir)]) == 0
    assert main(["evaluate", str(run_dir), "--perturb", "text_missing"]) == 0
    return store, run_dir


@pytest.mark.integration
def test_a_sweep_run_scored_as_a_percentage_is_damaged_not_reported(trained, tmp_path, capsys):
    """Before: the aggregate reported the run's 64.0 as weighted F1 6400.00, exit 0."""
    store, trained_run = trained
    sweep = tmp_path / "sweep"
    overrides = [f"store={json.dumps(str(store))}", *TINY_HEAD]
    (run,) = plan_sweep(RunConfig, sweep, [0], {}, overrides=overrides)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / RUN_RECORD_NAME).write_text(
        json.dumps({"label": run.label, "seed": run.seed, "config_hash": run.config_hash})
    )
    metrics = json.loads((trained_run / TEST_METRICS_NAME).read_text())
    metrics["weighted_f1"] = 64.0
    (run.run_dir / TEST_METRICS_NAME).write_text(json.dumps(metrics))
    status, lines, printed = command(["sweep", "--seeds", "0", "--out", sweep, *overrides], capsys)
    record_case("sweep aggregate of a test_metrics.json in percent", traceback="Traceback" in printed,
                silent=status == 0)
    assert status == 2
    assert lines == [f"cmroberta sweep: error: {run.run_dir / TEST_METRICS_NAME} is damaged: {DAMAGED}"]
    assert not (sweep / "report.md").exists()


@pytest.mark.integration
def test_a_robustness_record_of_the_wrong_shape_is_damaged_not_a_column(trained, tmp_path, capsys):
    """Before: the report's robustness table showed the record's 50.0 as 5000.00%, exit 0."""
    _, run_dir = trained
    (record_path,) = sorted((run_dir / ROBUSTNESS_FOLDER).glob("*.json"))
    status, _, printed = command(["report", run_dir, "--out", tmp_path / "whole"], capsys)
    assert status == 0 and "text missing" in printed
    good = record_path.read_text()
    try:
        record = json.loads(good)
        record["weighted_f1"] = 50.0
        record_path.write_text(json.dumps(record))
        status, lines, printed = command(["report", run_dir, "--out", tmp_path / "damaged"], capsys)
    finally:
        record_path.write_text(good)
    record_case("report of a robustness record in percent", traceback="Traceback" in printed, silent=status == 0)
    assert status == 2
    assert lines == [f"cmroberta report: error: {record_path} is damaged: {DAMAGED}"]


@pytest.mark.integration
def test_a_robustness_record_without_its_perturbation_is_damaged(trained, tmp_path, capsys):
    """Before: skipped with a warning only, and the report exited 0 with the condition's column gone."""
    _, run_dir = trained
    (record_path,) = sorted((run_dir / ROBUSTNESS_FOLDER).glob("*.json"))
    good = record_path.read_text()
    try:
        record = json.loads(good)
        record["perturbation"] = "text_missing"
        record_path.write_text(json.dumps(record))
        status, lines, printed = command(["report", run_dir, "--out", tmp_path / "damaged"], capsys)
    finally:
        record_path.write_text(good)
    record_case("report of a robustness record without its perturbation", traceback="Traceback" in printed,
                silent=status == 0)
    assert status == 2
    assert lines == [
        f"cmroberta report: error: {record_path} is damaged: its perturbation is missing or not what this project "
        "writes"
    ]
