"""The run folder object and the one definition of the keys that never change a result.

Changing `checkpoint.every_steps` (or the monitor, or `runs_root`) keeps a run's sweep hash, its report group
and its resume; changing a key that changes results changes all three. Real files in a temporary folder, no
training: a run counts as started once its test metrics exist.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import load_config, to_dict, write_resolved_config
from launch.executors import load_profile
from launch.run_groups import group_by_config
from launch.sweep import SWEEP_NAME, parse_grid, plan_sweep, submit_sweep
from launch.sweep_hash import earlier_sweep_hash, sweep_hash
from model.checkpoint import RunFolderError
from model.run_config import RunConfig
from model.run_folder import RESULT_FREE_KEYS, RunFolder, config_differences
from tests.metrics_records import metrics_record

ROOT = Path(__file__).resolve().parents[2]
STORE = 'store="/somewhere/tiny"'
# Each changes only keys in RESULT_FREE_KEYS.
RESULT_FREE_CHANGES = [
    ["checkpoint.every_steps=7"],
    ["monitor.csv=true", 'monitor.job_name="live"'],
    ['runs_root="elsewhere"'],
]
RESULT_CHANGES = [["train.learning_rate=0.5"], ["model.hidden_size=16"], ["train.deterministic=false"]]


def config_with(*overrides: str, seed: int = 0) -> RunConfig:
    return load_config(RunConfig, None, [STORE, "text_mode=frozen", f"seed={seed}", *overrides])


@pytest.mark.parametrize("changes", RESULT_FREE_CHANGES)
def test_a_result_free_change_keeps_the_sweep_hash_the_run_folder_and_the_group(tmp_path, changes):
    grid = parse_grid(["model.variant=text,bimodal"])
    before = plan_sweep(RunConfig, tmp_path, [0, 1], grid, overrides=[STORE])
    after = plan_sweep(RunConfig, tmp_path, [0, 1], grid, overrides=[STORE, *changes])
    assert [(r.sweep_hash, r.run_dir) for r in after] == [(r.sweep_hash, r.run_dir) for r in before]
    runs = [to_dict(config_with()), to_dict(config_with(*changes, seed=1))]
    groups = group_by_config(runs, lambda c: c, lambda c: c["seed"], lambda c: str(c["seed"]))
    assert [group.seeds for group in groups] == [[0, 1]]


@pytest.mark.parametrize("changes", RESULT_CHANGES)
def test_a_result_change_changes_the_sweep_hash_the_run_folder_and_the_group(tmp_path, changes):
    before = plan_sweep(RunConfig, tmp_path, [0], {}, overrides=[STORE])
    after = plan_sweep(RunConfig, tmp_path, [0], {}, overrides=[STORE, *changes])
    assert after[0].sweep_hash != before[0].sweep_hash and after[0].run_dir != before[0].run_dir
    runs = [to_dict(config_with()), to_dict(config_with(*changes, seed=1))]
    groups = group_by_config(runs, lambda c: c, lambda c: c["seed"], lambda c: str(c["seed"]))
    assert [group.seeds for group in groups] == [[0], [1]]


def test_resume_compares_every_key_but_the_result_free_ones():
    saved = to_dict(config_with())
    for changes in RESULT_FREE_CHANGES:
        assert config_differences(saved, to_dict(config_with(*changes))) == []
    assert config_differences(saved, to_dict(config_with("train.learning_rate=0.5"))) == [
        "train.learning_rate: 0.0001 -> 0.5"
    ]
    # The seed is a replicate of a sweep's configuration, but another run to resume.
    assert config_differences(saved, to_dict(config_with(seed=3))) == ["seed: 0 -> 3"]
    assert set(RESULT_FREE_KEYS) == {"runs_root", "checkpoint", "monitor"}


def finished_run(folder: Path, config: RunConfig) -> RunFolder:
    """A run folder as training leaves it, as far as the checks read it: its config and its test metrics."""
    run = RunFolder(folder)
    write_resolved_config(config, run.path)
    run.test_metrics_path.write_text(json.dumps(metrics_record(0.5)))
    return run


def test_a_started_run_resumes_with_a_result_free_change_and_refuses_a_result_change(tmp_path):
    run = finished_run(tmp_path / "run", config_with())
    run.check_new_or_resumable(config_with("checkpoint.every_steps=7", "monitor.csv=true"), resume=True)
    with pytest.raises(RunFolderError, match=r"another config \(train.learning_rate: 0.0001 -> 0.5\)"):
        run.check_new_or_resumable(config_with("train.learning_rate=0.5"), resume=True)
    with pytest.raises(RunFolderError, match="already holds a run; pass --resume"):
        run.check_new_or_resumable(config_with(), resume=False)
    RunFolder(tmp_path / "new").check_new_or_resumable(config_with("train.learning_rate=0.5"), resume=False)


def test_a_resubmitted_earlier_sweep_finds_its_finished_runs_under_the_earlier_hash(tmp_path):
    grid = parse_grid(["model.variant=text,bimodal"])
    planned = plan_sweep(RunConfig, tmp_path, [0, 1], grid, overrides=[STORE])
    # The sweep as a version that hashed `checkpoint` and `monitor` in left it: folders, run.json, sweep.json.
    for run in planned:
        earlier = earlier_sweep_hash(to_dict(run.config))
        assert earlier != run.sweep_hash
        folder = finished_run(run.run_dir.parent / f"{earlier[:12]}-seed{run.seed}", run.config)
        folder.run_record_path.write_text(json.dumps({"label": run.label, "seed": run.seed, "config_hash": earlier}))
    order = list(dict.fromkeys(earlier_sweep_hash(to_dict(run.config)) for run in planned))
    configurations = {digest: {"label": run.label} for digest, run in zip(order, planned[::2])}
    (tmp_path / SWEEP_NAME).write_text(json.dumps({"configurations": configurations, "seeds": [0, 1]}))

    again = plan_sweep(RunConfig, tmp_path, [0, 1], grid, overrides=[STORE])
    assert all(run.run_dir.name.startswith(run.earlier_hash[:12]) for run in again)
    submission = submit_sweep(again, load_profile("local"), tmp_path)
    assert submission.jobs == [] and set(submission.statuses.values()) == {"done"}
    for run in again:
        assert json.loads(RunFolder(run.run_dir).run_record_path.read_text())["config_hash"] == run.sweep_hash
    recorded = json.loads((tmp_path / SWEEP_NAME).read_text())["configurations"]
    assert list(recorded) == [run.sweep_hash for run in again[::2]]
    assert list(recorded) == [sweep_hash(to_dict(run.config)) for run in again[::2]]


def test_the_run_folder_loads_no_trainer():
    probe = "import sys, model.run_folder; print('model.train' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
