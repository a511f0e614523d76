"""Every record a report or a sweep reads is validated into a typed record first.

Metrics go through the one validator, `model.metrics_record.read_metrics_record`: a sweep's aggregate read
`test_metrics.json`, and the robustness table the records under `robustness/`, with bare
`json.loads`, so a score written as a percentage instead of a fraction came out a hundred times too
large without a word. A sweep run's `run.json` and `submission.json` go through
`launch.sweep_records`: a wrong shape was a KeyError, or a job id that no queue knows, which made
the run look failed and submitted it again. Each case now ends in one "damaged" line and exit 2.
"""

import json

import pytest

from launch.cli import main
from launch.sweep import plan_sweep
from model.run_config import RunConfig
from model.run_folder import RunFolder
from tests.faults.fault_summary import record_case
from tests.learnable_store import write_learnable_store
from tests.tiny_runs import TINY_HEAD

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


def sweep_of_one_run(store, trained_run, sweep, metrics_change=None):
    """(the sweep command's words, its one run): a sweep folder whose run holds the trained run's test metrics,
    changed by `metrics_change`, or none when it is None."""
    overrides = [f"store={json.dumps(str(store))}", *TINY_HEAD]
    (run,) = plan_sweep(RunConfig, sweep, [0], {}, overrides=overrides)
    run.run_dir.mkdir(parents=True)
    RunFolder(run.run_dir).run_record_path.write_text(
        json.dumps({"label": run.label, "seed": run.seed, "config_hash": run.sweep_hash})
    )
    if metrics_change is not None:
        metrics = json.loads(RunFolder(trained_run).test_metrics_path.read_text())
        RunFolder(run.run_dir).test_metrics_path.write_text(json.dumps({**metrics, **metrics_change}))
    return ["sweep", "--seeds", "0", "--out", sweep, *overrides], run


@pytest.mark.integration
def test_a_sweep_run_scored_as_a_percentage_is_damaged_not_reported(trained, tmp_path, capsys):
    """Before: the aggregate reported the run's 64.0 as weighted F1 6400.00, exit 0."""
    sweep = tmp_path / "sweep"
    argv, run = sweep_of_one_run(*trained, sweep, {"weighted_f1": 64.0})
    status, lines, printed = command(argv, capsys)
    record_case("sweep aggregate of a test_metrics.json in percent", traceback="Traceback" in printed,
                silent=status == 0)
    assert status == 2
    assert lines == [f"cmroberta sweep: error: {RunFolder(run.run_dir).test_metrics_path} is damaged: {DAMAGED}"]
    assert not (sweep / "report.md").exists()


@pytest.mark.integration
def test_a_whole_robustness_record_makes_its_column(trained, tmp_path, capsys):
    _, run_dir = trained
    status, _, printed = command(["report", run_dir, "--out", tmp_path / "whole"], capsys)
    assert status == 0 and "text missing" in printed


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "change", "field"),
    [
        # Before: the report's robustness table showed the record's 50.0 as 5000.00%, exit 0.
        ("report of a robustness record in percent", {"weighted_f1": 50.0}, "weighted_f1"),
        # Before: skipped with a warning only, and the report exited 0 with the condition's column gone.
        ("report of a robustness record without its perturbation", {"perturbation": "text_missing"}, "perturbation"),
    ],
)
def test_a_robustness_record_of_the_wrong_shape_is_damaged_not_a_column(trained, tmp_path, capsys, case, change, field):
    _, run_dir = trained
    (record_path,) = sorted(RunFolder(run_dir).robustness_folder.glob("*.json"))
    good = record_path.read_text()
    try:
        record_path.write_text(json.dumps({**json.loads(good), **change}))
        status, lines, printed = command(["report", run_dir, "--out", tmp_path / "damaged"], capsys)
    finally:
        record_path.write_text(good)
    record_case(case, traceback="Traceback" in printed, silent=status == 0)
    assert status == 2
    assert lines == [
        f"cmroberta report: error: {record_path} is damaged: its {field} is missing or not what this project writes"
    ]


@pytest.mark.integration
def test_a_run_record_without_its_config_hash_is_damaged(trained, tmp_path, capsys):
    """Before: the aggregate raised KeyError: 'config_hash', a traceback."""
    argv, run = sweep_of_one_run(*trained, tmp_path / "sweep", {})
    path = RunFolder(run.run_dir).run_record_path
    path.write_text(json.dumps({"label": run.label, "seed": run.seed}))
    status, lines, printed = command(argv, capsys)
    record_case("sweep with a run.json without its config_hash", traceback="Traceback" in printed,
                silent=status == 0)
    assert status == 2
    assert lines == [
        f"cmroberta sweep: error: {path} is damaged: its config_hash is missing or not what the sweep writes; "
        "delete it and run the `cmroberta sweep` command that made the sweep again"
    ]


@pytest.mark.integration
def test_a_submission_record_with_a_job_id_no_queue_knows_is_damaged_not_submitted_again(trained, tmp_path, capsys):
    """Before: the list job id was read as the text "['12']", which no queue holds, so the run counted as failed
    and was submitted again: a second job for a run whose job may still be running."""
    sweep = tmp_path / "sweep"
    argv, run = sweep_of_one_run(*trained, sweep)
    path = RunFolder(run.run_dir).submission_path
    path.write_text(json.dumps({"state": "submitted", "cluster": "local", "job_id": ["12"],
                                "log_folder": str(sweep / "logs")}))
    before = path.read_text()
    status, lines, printed = command(argv, capsys)
    record_case("sweep with a submission.json whose job_id is a list", traceback="Traceback" in printed,
                silent=status == 0 or path.read_text() != before)
    assert status == 2
    assert lines == [
        f"cmroberta sweep: error: {path} is damaged: its job_id is missing or not what the sweep writes; check "
        "with squeue (or ps, for --cluster local) that no job of the run still runs, then delete it and run the "
        "`cmroberta sweep` command again"
    ]
    assert path.read_text() == before and not (sweep / "logs").exists()
