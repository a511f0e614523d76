"""Seed sweeps: a grid of configurations, each trained with several seeds, submitted as a job array.

A sweep folder holds
    sweep.json                  the configurations (grid values and sweep hash) and seeds asked for
    runs/<sweep hash>-seed<N>/  one run folder per configuration and seed: the run's own files,
                                plus run.json (its place in the sweep) and submission.json (its job)
    logs/                       Submitit's logs and pickles
    report.json, report.md, spread.png   the aggregate report (`launch.aggregate`)

A run's folder is named by a hash of its resolved config (`launch.sweep_hash`: every key except the
seed and the keys that never change a result, `model.run_folder.RESULT_FREE_KEYS`: `runs_root`,
`checkpoint`, `monitor`) and its seed. A sweep folder made before `checkpoint` and `monitor` were left out
of the hash named its run folders by the earlier hash (`earlier_sweep_hash`): submitting it again finds
those folders, keeps every run where it is, and records the current hash in their run.json and in sweep.json,
so its finished runs are not trained again. Submitting a sweep again
therefore finds the runs it already has: finished runs (their test_metrics.json exists) and
runs whose job is still queued or running are left alone, and only missing or failed runs are
submitted; a failed run resumes from its last checkpoint. On SLURM the runs go out as one job
array with at most `array_parallelism` tasks at once; the local executor has no arrays, so the
runs are dealt into `array_parallelism` queues, one process each, and a queue that has trained its
own runs takes over those another has not reached (`launch.jobs.RunQueueJob`).

A sweep never submits a run twice. When SLURM cannot be asked (squeue fails or times out), a
run with a job is `unknown`, and unknown runs are left alone. submission.json is written in two
steps: first the intent (a job name unique to this submission, and the run's place in the
array), then, once SLURM has answered, the job id. A crash between the two leaves the intent;
the next submission asks SLURM for jobs of that name and records the job it finds, or submits
the run again only when SLURM answers that no such job exists.
"""

import dataclasses
import itertools
import json
import logging
import math
import os
import re
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import submitit

from cluster.config import (
    ConfigError,
    apply_overrides,
    control_characters,
    from_dict,
    load_config,
    override,
    parse_override,
    to_dict,
    write_resolved_config,
)
from cluster.durable_files import atomic_write_json
from cluster.profile import ClusterProfile
from cluster.top_level_commas import split_top_level_commas
from launch.executors import make_executor, submit_jobs
from launch.jobs import RunQueueJob, TrainingJob
from launch.sweep_hash import earlier_sweep_hash, sweep_hash
from launch.sweep_records import SubmissionRecord, read_submission
from model.run_folder import RunFolder

log = logging.getLogger(__name__)

SWEEP_NAME = "sweep.json"
RUNS_FOLDER = "runs"
LOGS_FOLDER = "logs"
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

RunStatus = Literal["done", "active", "failed", "missing", "unknown"]
RUN_STATUSES: tuple[str, ...] = ("done", "active", "failed", "missing", "unknown")
SCHEDULER_TIMEOUT_S = 30


# Bounds checked before anything is allocated: a sweep is a job array, and more runs than these is a typo
# (`--seeds 0-99999999` once hung for minutes and took 8.6 GB before it was killed).
MAX_SEEDS = 1000
MAX_SWEEP_RUNS = 10000


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '0,3,5' and '0-4,10' work too. Seeds are distinct and sorted; at most MAX_SEEDS of them."""
    ranges = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if match is None:
            raise ConfigError(f"--seeds {text!r}: {item!r} is not a seed or a range such as 0-9")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ConfigError(f"--seeds {text!r}: the range {item.strip()!r} runs backwards")
        ranges.append((low, high))
    asked = sum(high - low + 1 for low, high in ranges)
    if asked > MAX_SEEDS:
        raise ConfigError(f"--seeds {text!r} asks for {asked} seeds; a sweep takes at most {MAX_SEEDS}")
    return sorted({seed for low, high in ranges for seed in range(low, high + 1)})


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
        values = [parse_override(f"{key}={value}")[1] for value in split_top_level_commas(values_text)]
        if any(value == "" for value in values):
            raise ConfigError(f"--grid {item!r} has an empty value")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--grid {item!r} lists a value twice")
        grid[key] = values
    return grid


@dataclass(frozen=True, kw_only=True)
class PlannedRun:
    """One configuration of the grid with one seed, and where its run lives."""

    label: str
    """The configuration's grid values and its text mode, 'model.variant=text train.learning_rate=0.0003
    text_mode=frozen' (the text mode alone without a grid)."""
    seed: int
    """The run's seed."""
    config: Any
    """The resolved run config, seed included."""
    sweep_hash: str
    """`launch.sweep_hash.sweep_hash` of the config: shared by the seeds of one configuration."""
    earlier_hash: str
    """`launch.sweep_hash.earlier_sweep_hash` of the config: the key sweeps made before the current hash used."""
    run_dir: Path
    """The run folder, `runs/<sweep hash>-seed<seed>`, or the folder a sweep made earlier named by `earlier_hash`."""


def _label(assignment: dict[str, Any], config: Any) -> str:
    """The grid values, then the text mode when the grid does not set it (a base override or the default does)."""
    named = {**assignment, **({} if "text_mode" in assignment else {"text_mode": config.text_mode})}
    return " ".join(f"{key}={value}" for key, value in named.items())


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
    planned = math.prod(len(values) for values in grid.values()) * len(seeds)
    if planned > MAX_SWEEP_RUNS:
        raise ConfigError(
            f"the grid and seeds make {planned} runs; a sweep takes at most {MAX_SWEEP_RUNS}: split it into several"
        )
    base = load_config(config_cls, config_file, overrides)
    base_data = to_dict(base)
    runs = []
    for values in itertools.product(*grid.values()):
        assignment = dict(zip(grid, values))
        point_overrides = [override(key, value) for key, value in assignment.items()]
        data = apply_overrides(config_cls, base_data, point_overrides)
        point = from_dict(config_cls, data)
        digest, earlier = sweep_hash(to_dict(point)), earlier_sweep_hash(to_dict(point))
        for seed in seeds:
            config = dataclasses.replace(point, seed=seed)
            runs.append(
                PlannedRun(
                    label=_label(assignment, point),
                    seed=seed,
                    config=config,
                    sweep_hash=digest,
                    earlier_hash=earlier,
                    run_dir=_run_dir(Path(sweep_dir), digest, earlier, seed),
                )
            )
    return runs


def _run_dir(sweep_dir: Path, digest: str, earlier: str, seed: int) -> Path:
    """`runs/<sweep hash>-seed<N>`, unless only a folder named by the earlier hash exists: then that one."""
    current = sweep_dir / RUNS_FOLDER / f"{digest[:12]}-seed{seed}"
    made_earlier = sweep_dir / RUNS_FOLDER / f"{earlier[:12]}-seed{seed}"
    return made_earlier if made_earlier.is_dir() and not current.is_dir() else current


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _ask_slurm(command: list[str]) -> str | None:
    """stdout of a SLURM query, or None (with a warning) when SLURM cannot be asked."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("cannot ask SLURM (`%s`: %s); runs with a job are counted as unknown", " ".join(command[:1]), error)
        return None
    if result.returncode != 0:
        reason = " ".join(result.stderr.split())[:200]
        log.warning("`%s` failed (%s); runs with a job are counted as unknown", command[0], reason)
        return None
    return result.stdout


def active_slurm_jobs() -> set[str] | None:
    """Ids of this user's SLURM jobs that are queued or running (array tasks as '1234_5'); None when squeue fails."""
    output = _ask_slurm(["squeue", "--noheader", "--array", "--user", str(os.getuid()), "--format=%i %T"])
    if output is None:
        return None
    return {
        fields[0]
        for fields in (line.split() for line in output.splitlines())
        if len(fields) == 2 and fields[1] in ACTIVE_SLURM_STATES
    }


def slurm_jobs_named(job_name: str, since: float) -> set[str] | None:
    """Base ids of the SLURM jobs called `job_name` (queued, running or ended since `since`); None when SLURM
    cannot say.

    squeue (all states) knows the jobs the controller still holds, ended ones included for a few
    minutes; sacct, the accounting database, those that ended earlier, but it records a job's
    name seconds after the job. Both must answer before "no such job" is believed.
    """
    queued = _ask_slurm(
        ["squeue", "--noheader", "--states=all", "--user", str(os.getuid()), "--name", job_name, "--format=%F"]
    )
    if queued is None:
        return None
    ids = {line.strip() for line in queued.splitlines() if line.strip()}
    if ids:
        return ids
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 24 * 3600))
    ended = _ask_slurm(
        [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--name",
            job_name,
            "--starttime",
            start,
            "--format=JobID",
        ]
    )
    if ended is None:
        return None
    return {line.strip().split("_")[0] for line in ended.splitlines() if line.strip()}


def _local_job_alive(job_id: str) -> bool:
    """Whether the local executor's job (its controller's pid) still runs."""
    try:
        return b"submitit" in (Path("/proc") / job_id / "cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def _local_submission_alive(log_folder: str) -> bool:
    """Whether any of Submitit's local job processes works in `log_folder` (their command lines name it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"submitit" in command and log_folder.encode() in command:
            return True
    return False


def _reconcile(run_dir: Path, submission: SubmissionRecord) -> SubmissionRecord | RunStatus:
    """A submission cut short after its intent: the record with the job SLURM knows by its name, or the run's
    status when there is none: 'missing' (no such job) or 'unknown' (SLURM could not say, or the local job lives)."""
    if submission.cluster != "slurm":
        return "unknown" if _local_submission_alive(submission.log_folder) else "missing"
    since = submission.intent if submission.intent is not None else time.time()
    ids = slurm_jobs_named(submission.job_name or "", float(since))
    if ids is None:
        return "unknown"
    if not ids:
        return "missing"
    if len(ids) > 1:
        log.warning("SLURM has %d jobs named %s; %s counts as unknown", len(ids), submission.job_name, run_dir)
        return "unknown"
    (base,) = ids
    index = submission.array_index
    record = dataclasses.replace(
        submission, state="submitted", job_id=base if index is None else f"{base}_{index}"
    )
    atomic_write_json(RunFolder(run_dir).submission_path, dataclasses.asdict(record))
    log.info("%s: found job %s by its name %s", run_dir, record.job_id, submission.job_name)
    return record


def run_status(run_dir: Path, active_slurm: set[str] | None) -> RunStatus:
    """done: test metrics written; active: its job is queued or running; failed: its job ended without them;
    missing: never submitted; unknown: SLURM could not be asked (`active_slurm` None), so it may still run."""
    run = RunFolder(run_dir)
    if run.finished:
        return "done"
    submission = read_submission(run.submission_path)
    if submission is None:
        return "missing"
    if submission.job_id is None:
        reconciled = _reconcile(run_dir, submission)
        if isinstance(reconciled, str):
            return reconciled
        submission = reconciled
    job_id = str(submission.job_id)
    if submission.cluster == "slurm":
        if active_slurm is None:
            return "unknown"
        return "active" if job_id in active_slurm else "failed"
    return "active" if _local_job_alive(job_id) else "failed"


def run_statuses(runs: Sequence[PlannedRun]) -> dict[Path, RunStatus]:
    """Every run's status, asking SLURM once when some run went there."""
    submissions = [read_submission(RunFolder(run.run_dir).submission_path) for run in runs]
    went_to_slurm = any(submission is not None and submission.cluster == "slurm" for submission in submissions)
    active = active_slurm_jobs() if went_to_slurm else set()
    return {run.run_dir: run_status(run.run_dir, active) for run in runs}


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
    # A configuration recorded under its earlier hash keeps its place in the grid's order under the current one.
    renamed = {run.earlier_hash: run.sweep_hash for run in runs if run.sweep_hash not in record["configurations"]}
    record["configurations"] = {renamed.get(key, key): value for key, value in record["configurations"].items()}
    for run in runs:
        record["configurations"].setdefault(run.sweep_hash, {"label": run.label})
    record["seeds"] = sorted(set(record["seeds"]) | {run.seed for run in runs})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


def _rekey_earlier_runs(runs: Sequence[PlannedRun]) -> None:
    """Record the current sweep hash in the run.json of runs a sweep made earlier, so a report groups them with
    the configuration's other seeds."""
    for run in runs:
        path = RunFolder(run.run_dir).run_record_path
        record = _read_json(path) if path.is_file() else None
        if record is not None and record.get("config_hash") == run.earlier_hash != run.sweep_hash:
            atomic_write_json(path, {**record, "config_hash": run.sweep_hash})


def submit_sweep(runs: Sequence[PlannedRun], profile: ClusterProfile, sweep_dir: Path) -> SweepSubmission:
    """Submit the runs that are missing or failed; leave finished and active ones alone."""
    sweep_dir = Path(sweep_dir)
    found = control_characters(str(sweep_dir.resolve()))
    if found:
        raise ConfigError(
            f"sweep folder {str(sweep_dir)!r} holds control characters ({', '.join(found)}); "
            "choose a folder name of printable characters"
        )
    # Absolute, as Submitit's local job processes name it on their command lines (see _local_submission_alive).
    log_folder = sweep_dir.resolve() / LOGS_FOLDER
    write_sweep_record(sweep_dir, runs)
    _rekey_earlier_runs(runs)
    statuses = run_statuses(runs)
    pending = [run for run in runs if statuses[run.run_dir] in ("missing", "failed")]
    counts = {status: sum(1 for s in statuses.values() if s == status) for status in RUN_STATUSES}
    log.info("sweep %s: %s", sweep_dir, ", ".join(f"{n} {status}" for status, n in counts.items()))
    if counts["unknown"]:
        log.warning(
            "%d run(s) have a job whose state SLURM could not report; they are not submitted again. "
            "Run the sweep again when squeue answers",
            counts["unknown"],
        )
    if not pending:
        return SweepSubmission(jobs=[], submitted=[], statuses=statuses, log_folder=log_folder)
    for run in pending:
        write_resolved_config(run.config, run.run_dir)
        record = {"label": run.label, "seed": run.seed, "config_hash": run.sweep_hash}
        atomic_write_json(RunFolder(run.run_dir).run_record_path, record)
    # resume=True throughout: a failed run continues from its last checkpoint, a new one starts fresh.
    trainings = [TrainingJob(run.config, run.run_dir, resume=True) for run in pending]
    # A name of its own per submission: after a crash, SLURM is asked for jobs by this name.
    job_name = f"sweep-{sweep_dir.name}-{secrets.token_hex(4)}"
    executor = make_executor(profile, log_folder, job_name=job_name)
    if profile.kind == "slurm":
        functions: list[Any] = trainings
        runs_of_job = [[run] for run in pending]
    else:
        queues = min(profile.array_parallelism, len(pending))
        threads = max(1, (os.cpu_count() or 1) // queues)
        dealt = [trainings[i::queues] for i in range(queues)]
        # Each queue then takes over the others' runs from the end of the sweep (RunQueueJob).
        functions = [RunQueueJob(own, threads, [t for t in reversed(trainings) if t not in own]) for own in dealt]
        runs_of_job = [pending[i::queues] for i in range(queues)]
    intent = {"state": "submitting", "cluster": profile.kind, "job_name": job_name, "log_folder": str(log_folder)}
    intent["intent"] = time.time()
    for index, job_runs in enumerate(runs_of_job):
        for run in job_runs:
            # An array's task i runs functions[i]; a single job has no index.
            place = index if len(runs_of_job) > 1 and profile.kind == "slurm" else None
            atomic_write_json(RunFolder(run.run_dir).submission_path, {**intent, "array_index": place})
    jobs = submit_jobs(executor, profile, functions)
    submitted_at = time.time()
    for job, job_runs in zip(jobs, runs_of_job):
        for run in job_runs:
            record = {**intent, "state": "submitted", "job_id": job.job_id, "submitted": submitted_at}
            atomic_write_json(RunFolder(run.run_dir).submission_path, record)
    log.info("submitted %d run(s) in %d job(s); logs in %s", len(pending), len(jobs), log_folder)
    return SweepSubmission(jobs=jobs, submitted=pending, statuses=statuses, log_folder=log_folder)
