"""Seed sweeps: planning and run folders, then real sweeps of a tiny training config through Submitit's local
executor and the real SLURM cluster, checked against statistics computed here from the run folders."""

import json
import math
import statistics
from pathlib import Path

import pytest
import tomllib

from cluster.config import ConfigError, write_resolved_config
from launch.executors import load_profile
from launch.sweep import parse_grid, parse_seeds, plan_sweep, run_status, submit_sweep
from launch.sweep_hash import sweep_hash
from tests.learnable_store import write_learnable_store

SEEDS = [0, 1, 2]
SWEEP_WAIT_S = 240
# A run of a few seconds: small model, few epochs, batches of 8 dialogues.
TINY_OVERRIDES = [
    "text_mode=frozen",
    "model.variant=bimodal",
    "model.hidden_size=8",
    "train.batch_dialogues=8",
    "train.learning_rate=0.003",
    "train.max_epochs=3",
    "train.patience=3",
]


def write_tiny_store(folder: Path) -> Path:
    """A small feature store with learnable random features, as the extraction pipeline would write it."""
    return write_learnable_store(folder / "tiny-000000000000")


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    return write_tiny_store(tmp_path_factory.mktemp("features"))


def run_config_class() -> type:
    from model.run_config import RunConfig

    return RunConfig


# --- planning, without training ------------------------------------------------------------------------


def test_seeds_and_grids_parse_as_written():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds("5") == [5]
    with pytest.raises(ConfigError, match="runs backwards"):
        parse_seeds("9-0")
    grid = parse_grid(["model.variant=text,audio", "train.learning_rate=1e-4,3e-4", "data.families=[1, 2],[3]"])
    assert grid == {
        "model.variant": ["text", "audio"],
        "train.learning_rate": [1e-4, 3e-4],
        "data.families": [[1, 2], [3]],
    }
    with pytest.raises(ConfigError, match="lists a value twice"):
        parse_grid(["model.variant=text,text"])


def test_run_folders_are_keyed_by_config_and_seed(tmp_path):
    config_cls = run_config_class()
    store = 'store="/somewhere/tiny"'
    grid = parse_grid(["model.variant=text,bimodal"])
    runs = plan_sweep(config_cls, tmp_path, [0, 1], grid, overrides=[store])
    # The text mode is named even where the grid does not set it (here the default, end_to_end).
    assert [(r.label, r.seed) for r in runs] == [
        ("model.variant=text text_mode=end_to_end", 0),
        ("model.variant=text text_mode=end_to_end", 1),
        ("model.variant=bimodal text_mode=end_to_end", 0),
        ("model.variant=bimodal text_mode=end_to_end", 1),
    ]
    assert len({r.run_dir for r in runs}) == 4
    assert runs[0].sweep_hash == runs[1].sweep_hash != runs[2].sweep_hash
    assert all(r.config.seed == r.seed and r.run_dir.name.endswith(f"-seed{r.seed}") for r in runs)
    # The same sweep planned again, or with a different runs_root (which changes no result), finds the same folders.
    again = plan_sweep(config_cls, tmp_path, [1, 0], grid, overrides=[store, 'runs_root="elsewhere"'])
    assert {r.run_dir for r in again} == {r.run_dir for r in runs}
    # Any other change is another configuration.
    other = plan_sweep(config_cls, tmp_path, [0], grid, overrides=[store, "train.learning_rate=0.5"])
    assert not {r.run_dir for r in other} & {r.run_dir for r in runs}
    # A base override's text mode is in the label; the audio variant records 'frozen', whatever was asked.
    grid = parse_grid(["model.variant=text,audio"])
    frozen = plan_sweep(config_cls, tmp_path, [0], grid, overrides=[store, 'text_mode="frozen"'])
    assert [r.label for r in frozen] == ["model.variant=text text_mode=frozen", "model.variant=audio text_mode=frozen"]


def test_the_config_written_to_a_run_folder_hashes_to_its_sweep_key(tmp_path):
    # Reports group run folders by this hash of their config.toml; a sweep names them by the planned config's.
    config_cls = run_config_class()
    grid = parse_grid(["model.variant=text,bimodal", "data.audio_families=[\"opensmile\"],[\"opensmile\", \"openl3\"]"])
    overrides = ['store="/somewhere/tiny"', "train.learning_rate=3e-4"]
    for run in plan_sweep(config_cls, tmp_path, [0, 3], grid, overrides=overrides):
        path = write_resolved_config(run.config, run.run_dir)
        assert sweep_hash(tomllib.loads(path.read_text())) == run.sweep_hash


def test_a_typo_in_the_grid_or_a_seed_override_is_refused_before_anything_runs(tmp_path):
    config_cls = run_config_class()
    with pytest.raises(ConfigError, match="Did you mean 'model.variant'"):
        plan_sweep(config_cls, tmp_path, [0], parse_grid(["model.varient=text"]), overrides=['store="/x"'])
    with pytest.raises(ConfigError, match="set seeds with --seeds"):
        plan_sweep(config_cls, tmp_path, [0], {}, overrides=['store="/x"', "seed=3"])
    assert not (tmp_path / "runs").exists()


# --- real sweeps ---------------------------------------------------------------------------------------


def independent_summary(sweep_dir: Path) -> dict[str, tuple[float, float, float, float]]:
    """Per variant, from the run folders alone: mean, sample sd and 95% CI of test weighted F1, and per-class F1."""
    scores: dict[str, list[float]] = {}
    per_class: dict[str, dict[str, list[float]]] = {}
    for metrics_path in sorted((sweep_dir / "runs").glob("*/test_metrics.json")):
        config = tomllib.loads((metrics_path.parent / "config.toml").read_text())
        metrics = json.loads(metrics_path.read_text())
        variant = config["model"]["variant"]
        scores.setdefault(variant, []).append(metrics["weighted_f1"])
        for emotion, f1 in metrics["per_class_f1"].items():
            per_class.setdefault(variant, {}).setdefault(emotion, []).append(f1)
    summary = {}
    for variant, values in scores.items():
        summary[variant] = _interval(values)
        for emotion, f1s in per_class[variant].items():
            summary[f"{variant}/{emotion}"] = _interval(f1s)
    return summary


def _interval(values: list[float]) -> tuple[float, float, float, float]:
    assert len(values) == 3, "the t quantile below is for 2 degrees of freedom"
    # Student's t with 2 degrees of freedom has a closed-form quantile: (2p - 1) / sqrt(2p(1 - p)).
    t = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = t * sd / math.sqrt(len(values))
    # A score lies in [0, 1]: the report clips its interval there.
    return mean, sd, max(0.0, mean - half), min(1.0, mean + half)


def run_sweep_and_check(sweep_dir: Path, store: Path, cluster: str, profile_overrides: list[str]) -> None:
    from launch.aggregate import write_report
    from launch.executors import follow_jobs

    profile = load_profile(cluster, None, profile_overrides)
    overrides = [*TINY_OVERRIDES, f"store={json.dumps(str(store))}"]
    runs = plan_sweep(run_config_class(), sweep_dir, SEEDS, {}, overrides=overrides)

    first = submit_sweep(runs, profile, sweep_dir)
    assert len(first.submitted) == 3 and first.jobs
    outcomes = follow_jobs(first.jobs, poll_s=0.5, timeout_s=SWEEP_WAIT_S)
    assert [o.error for o in outcomes] == [None] * len(outcomes), [str(o.stderr_path) for o in outcomes]
    assert all(run_status(run.run_dir, set()) == "done" for run in runs)

    report = write_report(sweep_dir)
    (configuration,) = report.configurations
    assert configuration.seeds == SEEDS
    expected = independent_summary(sweep_dir)
    got = configuration.weighted_f1
    assert (got.mean, got.std, got.ci_low, got.ci_high) == pytest.approx(expected["bimodal"], abs=1e-9)
    assert got.std > 0, "three seeds that all score the same would not test the spread"
    for emotion, got in configuration.per_class_f1.items():
        assert (got.mean, got.std, got.ci_low, got.ci_high) == pytest.approx(expected[f"bimodal/{emotion}"], abs=1e-9)

    again = submit_sweep(plan_sweep(run_config_class(), sweep_dir, SEEDS, {}, overrides=overrides), profile, sweep_dir)
    assert again.jobs == [] and again.submitted == []
    assert set(again.statuses.values()) == {"done"}


@pytest.mark.integration
def test_sweep_on_the_local_executor(tmp_path, tiny_store):
    run_sweep_and_check(tmp_path / "sweep", tiny_store, "local", ["array_parallelism=2"])


@pytest.mark.slurm
@pytest.mark.integration
def test_sweep_on_slurm_as_a_job_array(slurm_cluster, tmp_path, tiny_store):
    run_sweep_and_check(tmp_path / "sweep", tiny_store, "slurm", ["time=10", "mem=1.5", "array_parallelism=3"])
    submissions = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / "runs").glob("*/submission.json")]
    array_ids = {s["job_id"].split("_")[0] for s in submissions}
    assert len(submissions) == 3 and len(array_ids) == 1, "the seeds go out as one SLURM job array"


@pytest.mark.integration
def test_a_local_queue_takes_over_the_runs_another_has_not_reached(tmp_path, tiny_store):
    import submitit

    from launch.jobs import RunQueueJob, TrainingJob
    from model.run_folder import RunFolder

    overrides = [*TINY_OVERRIDES, f"store={json.dumps(str(tiny_store))}"]
    sweep_dir = tmp_path / "sweep"
    waiting, held, finished, failed = plan_sweep(run_config_class(), sweep_dir, [0, 1, 2, 3], {}, overrides=overrides)
    # Dealt to another queue, whose job the records name. That queue has trained `finished`, tried `failed` (it
    # raised), and now trains `held`; it has not reached `waiting`.
    for run in (waiting, held, finished, failed):
        write_resolved_config(run.config, run.run_dir)
        record = {"state": "submitted", "cluster": "local", "job_name": "sweep-other", "intent": 1.0,
                  "log_folder": str(sweep_dir / "logs"), "array_index": None, "job_id": "1", "submitted": 2.0}
        (run.run_dir / "submission.json").write_text(json.dumps(record))
    TrainingJob(finished.config, finished.run_dir, resume=True)()
    RunFolder(failed.run_dir).attempts_path.write_text(json.dumps({"job_id": "1", "started": 3.0}) + "\n")
    executor = submitit.LocalExecutor(folder=tmp_path / "logs")
    executor.update_parameters(timeout_min=5)
    # A queue whose own runs are all trained, handed the other queue's runs in the order it takes them over.
    shared = [TrainingJob(run.config, run.run_dir, resume=True) for run in (failed, finished, held, waiting)]
    with RunFolder(held.run_dir).claim() as claimed:
        assert claimed
        job = executor.submit(RunQueueJob([], 1, shared))
        results = job.result()
    assert list(results) == [str(waiting.run_dir)]
    assert RunFolder(waiting.run_dir).finished
    # The sweep asks whether the job that trains a run lives: the record now names the one that took it over.
    assert json.loads((waiting.run_dir / "submission.json").read_text())["job_id"] == job.job_id
    assert run_status(waiting.run_dir, set()) == "done"
    # The run another queue holds is left to it, the finished one is not trained again, and the failed one is
    # left for the next sweep to submit, not tried again by a second queue.
    assert not RunFolder(held.run_dir).attempts_path.exists()
    assert json.loads((held.run_dir / "submission.json").read_text())["job_id"] == "1"
    assert len(RunFolder(finished.run_dir).attempts_path.read_text().splitlines()) == 1
    assert len(RunFolder(failed.run_dir).attempts_path.read_text().splitlines()) == 1
    assert not RunFolder(failed.run_dir).finished
