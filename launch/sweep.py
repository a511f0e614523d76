"""Seed sweeps: a grid of configurations, each trained with several seeds, submitted as a job array.

A sweep folder holds
    sweep.json                  the configurations (grid values and config hash) and seeds asked for
    runs/<config hash>-seed<N>/ one run folder per configuration and seed: the run's own files,
                                plus run.json (its place in the sweep) and submission.json (its job)
    logs/                       Submitit's logs and pickles
    report.json, report.md, spread.png   the aggregate report (`launch.aggregate`)

A run's folder is named by a hash of its resolved config (every key except the seed and
`runs_root`, which change nothing in the result) and its seed. Submitting a sweep again
therefore finds the runs it already has: finished runs (their test_metrics.json exists) and
runs whose job is still queued or running are left alone, and only missing or failed runs are
submitted; a failed run resumes from its last checkpoint. On SLURM the runs go out as one job
array with at most `array_parallelism` tasks at once; the local executor has no arrays, so the
runs are dealt into `array_parallelism` queues, one process each.
"""

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import submitit

from cluster.profile import ClusterProfile
from cluster.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    to_dict,
    write_resolved_config,
)
from launch.executors import make_executor, submit_jobs
from launch.jobs import RunQueueJob, TrainingJob
from model.evaluate import TEST_METRICS_NAME

log = logging.getLogger(__name__)

SWEEP_NAME = "sweep.json"
RUN_RECORD_NAME = "run.json"
SUBMISSION_NAME = "submission.json"
RUNS_FOLDER = "runs"
LOGS_FOLDER = "logs"
# Keys that do not change a run's result, left out of its hash.
HASH_IGNORED_KEYS = ("seed", "runs_root")
# SLURM job states in which a job may still produce its run (squeue's long names).
ACTIVE_SLURM_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "COMPLETING",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
    }
)

RunStatus = Literal["done", "active", "failed", "missing"]


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '0,3,5' and '0-4,10' work too. Seeds are distinct and sorted."""
    seeds: set[int] = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if match is None:
            raise ConfigError(f"--seeds {text!r}: {item!r} is not a seed or a range such as 0-9")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ConfigError(f"--seeds {text!r}: the range {item.strip()!r} runs backwards")
        seeds.update(range(low, high + 1))
    return sorted(seeds)


def _split_values(text: str) -> list[str]:
    """Split at commas outside brackets and quotes: 'a,[1, 2],"x,y"' -> ['a', '[1, 2]', '"x,y"']."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`['model.variant=text,audio', 'train.learning_rate=1e-4,3e-4']` -> {key: [values]}, values read as TOML."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} is not of the form key=value1,value2 (e.g. model.variant=text,bimodal)")
        key, values_text = item.split("=", 1)
        key = key.strip()
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice; list all its values in one --grid")
        values = [parse_override(f"{key}={value}")[1] for value in _split_values(values_text)]
        if any(value == "" for value in values):
            raise ConfigError(f"--grid {item!r} has an empty value")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--grid {item!r} lists a value twice")
        grid[key] = values
    return grid


def config_hash(config: Any, ignored: Sequence[str] = HASH_IGNORED_KEYS) -> str:
    """sha256 of the resolved config as canonical JSON, without the top-level keys in `ignored`."""
    data = {key: value for key, value in to_dict(config).items() if key not in ignored}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    """One configuration of the grid with one seed, and where its run lives."""

    label: str
    """The configuration's grid values, 'model.variant=text train.learning_rate=0.0003' ('base' without a grid)."""
    seed: int
    """The run's seed."""
    config: Any
    """The resolved run config, seed included."""
    config_hash: str
    """Hash of the config without the seed: shared by the seeds of one configuration."""
    run_dir: Path
    """The run folder, `runs/<config hash>-seed<seed>`."""


def _label(assignment: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in assignment.items()) or "base"


def plan_sweep(
    config_cls: type,
    sweep_dir: Path,
    seeds: Sequence[int],
    grid: dict[str, list[Any]],
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
) -> list[PlannedRun]:
    """Every (configuration, seed) of the sweep, configuration by configuration in the grid's order.

    The base config is `config_file` then `overrides`; each grid point overrides it further, and
    the seed last. Every resulting config is validated here, before anything is submitted.
    """
    if not seeds:
        raise ConfigError("a sweep needs at least one seed (--seeds 0-9)")
    if "seed" in grid or any(text.split("=", 1)[0].strip() == "seed" for text in overrides):
        raise ConfigError("set seeds with --seeds, not as an override or a grid key")
    base = load_config(config_cls, config_file, overrides)
    base_data = to_dict(base)
    runs = []
    for values in itertools.product(*grid.values()):
        assignment = dict(zip(grid, values))
        point_overrides = [f"{key}={json.dumps(value)}" for key, value in assignment.items()]
        data = apply_overrides(config_cls, base_data, point_overrides)
        point = from_dict(config_cls, data)
        digest = config_hash(point)
        for seed in seeds:
            config = dataclasses.replace(point, seed=seed)
            runs.append(
                PlannedRun(
                    label=_label(assignment),
                    seed=seed,
                    config=config,
                    config_hash=digest,
                    run_dir=Path(sweep_dir) / RUNS_FOLDER / f"{digest[:12]}-seed{seed}",
                )
            )
    return runs


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def active_slurm_jobs() -> set[str]:
    """Ids of this user's SLURM jobs that are queued or running (array tasks as '1234_5')."""
    try:
        result = subprocess.run(
            ["squeue", "--noheader", "--array", "--user", str(os.getuid()), "--format=%i %T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("cannot ask squeue which jobs run (%s); runs with a submitted job are treated as failed", error)
        return set()
    return {
        fields[0]
        for fields in (line.split() for line in result.stdout.splitlines())
        if len(fields) == 2 and fields[1] in ACTIVE_SLURM_STATES
    }


def _local_job_alive(job_id: str) -> bool:
    """Whether the local executor's job (its controller's pid) still runs."""
    try:
        return b"submitit" in (Path("/proc") / job_id / "cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def run_status(run_dir: Path, active_slurm: set[str]) -> RunStatus:
    """done: test metrics written; active: its job is queued or running; failed: its job ended without them; missing."""
    if (run_dir / TEST_METRICS_NAME).is_file():
        return "done"
    submission = _read_json(run_dir / SUBMISSION_NAME)
    if submission is None:
        return "missing"
    job_id = str(submission.get("job_id", ""))
    if submission.get("cluster") == "slurm":
        return "active" if job_id in active_slurm else "failed"
    return "active" if _local_job_alive(job_id) else "failed"


@dataclass(kw_only=True)
class SweepSubmission:
    """What one `submit_sweep` did."""

    jobs: list[submitit.Job]
    """Jobs submitted now (empty when nothing was missing or failed)."""
    submitted: list[PlannedRun]
    """Runs those jobs train."""
    statuses: dict[Path, RunStatus]
    """Every run's status before this submission."""
    log_folder: Path
    """Submitit's log folder."""


def write_sweep_record(sweep_dir: Path, runs: Sequence[PlannedRun]) -> Path:
    """sweep.json: the configurations in grid order and the seeds, merged with what earlier submissions asked for."""
    path = Path(sweep_dir) / SWEEP_NAME
    record = _read_json(path) or {"configurations": {}, "seeds": []}
    for run in runs:
        record["configurations"].setdefault(run.config_hash, {"label": run.label})
    record["seeds"] = sorted(set(record["seeds"]) | {run.seed for run in runs})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def submit_sweep(runs: Sequence[PlannedRun], profile: ClusterProfile, sweep_dir: Path) -> SweepSubmission:
    """Submit the runs that are missing or failed; leave finished and active ones alone."""
    sweep_dir = Path(sweep_dir)
    log_folder = sweep_dir / LOGS_FOLDER
    write_sweep_record(sweep_dir, runs)
    # Ask SLURM only when some run went there (perhaps by an earlier submission to another cluster).
    went_to_slurm = any((_read_json(run.run_dir / SUBMISSION_NAME) or {}).get("cluster") == "slurm" for run in runs)
    active = active_slurm_jobs() if went_to_slurm else set()
    statuses = {run.run_dir: run_status(run.run_dir, active) for run in runs}
    pending = [run for run in runs if statuses[run.run_dir] in ("missing", "failed")]
    counts = {
        status: sum(1 for s in statuses.values() if s == status) for status in ("done", "active", "failed", "missing")
    }
    log.info("sweep %s: %s", sweep_dir, ", ".join(f"{n} {status}" for status, n in counts.items()))
    if not pending:
        return SweepSubmission(jobs=[], submitted=[], statuses=statuses, log_folder=log_folder)
    for run in pending:
        write_resolved_config(run.config, run.run_dir)
        record = {"label": run.label, "seed": run.seed, "config_hash": run.config_hash}
        (run.run_dir / RUN_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    # resume=True throughout: a failed run continues from its last checkpoint, a new one starts fresh.
    trainings = [TrainingJob(run.config, run.run_dir, resume=True) for run in pending]
    executor = make_executor(profile, log_folder, job_name=f"sweep-{sweep_dir.name}")
    if profile.kind == "slurm":
        functions: list[Any] = trainings
        runs_of_job = [[run] for run in pending]
    else:
        queues = min(profile.array_parallelism, len(pending))
        threads = max(1, (os.cpu_count() or 1) // queues)
        functions = [RunQueueJob(trainings[i::queues], threads) for i in range(queues)]
        runs_of_job = [pending[i::queues] for i in range(queues)]
    jobs = submit_jobs(executor, profile, functions)
    submitted_at = time.time()
    for job, job_runs in zip(jobs, runs_of_job):
        for run in job_runs:
            record = {
                "job_id": job.job_id,
                "cluster": profile.kind,
                "log_folder": str(log_folder),
                "submitted": submitted_at,
            }
            (run.run_dir / SUBMISSION_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log.info("submitted %d run(s) in %d job(s); logs in %s", len(pending), len(jobs), log_folder)
    return SweepSubmission(jobs=jobs, submitted=pending, statuses=statuses, log_folder=log_folder)
