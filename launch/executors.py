"""Submitit executors made from cluster profiles, and a check of each request against the cluster.

`local` profiles get Submitit's `LocalExecutor` (one process per task on this machine);
`slurm` profiles get its `SlurmExecutor`. Before anything is submitted to SLURM,
`check_request` compares the profile with what the partition offers (`sinfo`) and then asks
SLURM itself (`sbatch --test-only`), so a request that can never run (more nodes, CPUs,
memory or GPUs than exist, a partition or feature that does not exist) is a
`SubmissionError` naming the profile field to change, not a job pending forever.

Values reach the generated sbatch script in two ways. Submitit quotes every `#SBATCH` value
and the paths on its command lines with shlex, so spaces, quotes, `;`, `$(...)` and backticks
in a job name or folder arrive as text. A control character cannot be quoted there: a newline
ends the `#SBATCH` line and starts one the shell runs, so `make_executor` refuses any job name
or log folder that holds one. The profile's `setup` lines are shell by design and are checked
the same way (`cluster.profile`).
"""

import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import submitit
from tqdm import tqdm

from cluster.config import ConfigError, apply_overrides, control_characters, from_dict, load_config, to_dict
from cluster.profile import LOCAL_PROFILE, ClusterProfile

log = logging.getLogger(__name__)

PROFILES_DIR = Path(__file__).parent / "profiles"
# The profile `--cluster slurm` uses when no --profile is given: it fits the project's own
# single-node cluster (cluster/slurm/start-local-cluster.sh).
DEFAULT_SLURM_PROFILE = PROFILES_DIR / "slurm.toml"
SLURM_QUERY_TIMEOUT_S = 30
START_CLUSTER_HINT = "start the project's single-node cluster with `sudo bash cluster/slurm/start-local-cluster.sh`"


class SubmissionError(Exception):
    """A job request the cluster cannot run, or a cluster that cannot be reached; the message says what to change."""


def load_profile(
    cluster: Literal["local", "slurm"], path: str | Path | None = None, overrides: Sequence[str] = ()
) -> ClusterProfile:
    """The profile for `--cluster`: the TOML file at `path`, else the built-in one, then `key=value` overrides."""
    if path is None and cluster == "local":
        where = "the built-in local profile"
        profile = from_dict(ClusterProfile, apply_overrides(ClusterProfile, to_dict(LOCAL_PROFILE), overrides))
    else:
        path = DEFAULT_SLURM_PROFILE if path is None else path
        where = f"profile {path}"
        profile = load_config(ClusterProfile, path, overrides)
    if profile.kind != cluster:
        raise ConfigError(
            f"{where} has kind = {profile.kind!r} but --cluster {cluster} was asked for: "
            f"pass --cluster {profile.kind}, or a profile with kind = {cluster!r}"
        )
    return profile


@dataclass(frozen=True, kw_only=True)
class PartitionInfo:
    """What one SLURM partition offers, as `sinfo` reports it."""

    name: str
    """Partition name."""
    available: bool
    """Whether the partition accepts jobs (state 'up')."""
    nodes: int
    """Nodes in the partition."""
    cpus_per_node: int
    """CPUs of its largest node."""
    memory_mb: int
    """Memory of its largest node in MB."""
    gpus_per_node: int
    """GPUs of its best-equipped node (0 when no node has a gpu gres)."""
    time_limit_min: int | None
    """Longest job in minutes; None: no limit."""


def _run_slurm_command(command: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        raise SubmissionError(
            f"no SLURM here: `{command[0]}` is not installed. Use --cluster local, or {START_CLUSTER_HINT}"
        )
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=SLURM_QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SubmissionError(
            f"SLURM did not answer `{' '.join(command)}` within {SLURM_QUERY_TIMEOUT_S} s: is slurmctld running? "
            f"({START_CLUSTER_HINT})"
        ) from None


def _minutes(limit: str) -> int | None:
    """sinfo's time limit ('infinite', '30:00', '2:00:00', '1-12:00:00') in minutes; None for no limit."""
    if limit.lower() in ("infinite", "unlimited"):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def _gpu_count(gres: str) -> int:
    """GPUs in a gres string such as 'gpu:a100:4(S:0-1),shard:8' (0 for '(null)')."""
    counts = [int(match.group(1)) for match in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres)]
    return max(counts, default=0)


def partition_info(partition: str | None) -> PartitionInfo:
    """Ask `sinfo` what `partition` (None: the default one) offers."""
    command = ["sinfo", "--noheader", "--format=%P|%a|%D|%c|%m|%G|%l"]
    result = _run_slurm_command(command)
    if result.returncode != 0:
        raise SubmissionError(f"`sinfo` failed: {result.stderr.strip()}. Is the cluster up? ({START_CLUSTER_HINT})")
    rows: dict[str, list[list[str]]] = {}
    default = None
    for line in result.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 7:
            continue
        name = fields[0]
        if name.endswith("*"):
            name = name[:-1]
            default = name
        rows.setdefault(name, []).append(fields)
    wanted = partition or default
    if wanted is None:
        raise SubmissionError("the cluster has no default partition: set `partition` in the profile")
    if wanted not in rows:
        raise SubmissionError(
            f"partition {wanted!r} does not exist on this cluster; set `partition` in the profile to one of: "
            f"{', '.join(sorted(rows))}"
        )
    groups = rows[wanted]
    return PartitionInfo(
        name=wanted,
        available=any(group[1] == "up" for group in groups),
        nodes=sum(int(group[2]) for group in groups),
        cpus_per_node=max(int(group[3].rstrip("+")) for group in groups),
        memory_mb=max(int(group[4].rstrip("+")) for group in groups),
        gpus_per_node=max(_gpu_count(group[5]) for group in groups),
        time_limit_min=_minutes(groups[0][6]),
    )


def _memory_mb(option: str) -> int:
    return int(option.rstrip("M"))


def request_problems(profile: ClusterProfile, partition: PartitionInfo) -> list[str]:
    """Every way the profile's request exceeds what the partition has, one sentence each naming the field."""
    problems = []
    where = f"partition {partition.name!r}"
    if not partition.available:
        problems.append(f"{where} is not up (sinfo reports it unavailable); choose another `partition`")
    if profile.nodes > partition.nodes:
        problems.append(f"nodes = {profile.nodes}, but {where} has {partition.nodes} node(s)")
    cpus = profile.tasks * profile.cpus_per_task
    if cpus > partition.cpus_per_node:
        problems.append(
            f"tasks_per_node x cpus_per_task = {profile.tasks} x {profile.cpus_per_task} = {cpus} CPUs per node, "
            f"but the nodes of {where} have at most {partition.cpus_per_node}"
        )
    if profile.gpus_per_node > partition.gpus_per_node:
        problems.append(
            f"gpus_per_node = {profile.gpus_per_node}, but the nodes of {where} have "
            f"{partition.gpus_per_node or 'no'} GPU(s) SLURM can hand out (gres)"
        )
    options = profile.sbatch_options()
    if "mem" in options and _memory_mb(options["mem"]) > partition.memory_mb:
        problems.append(f"mem = {profile.mem} GB per node, but the nodes of {where} have {partition.memory_mb} MB")
    if "mem-per-gpu" in options:
        per_node = _memory_mb(options["mem-per-gpu"]) * profile.gpus_per_node
        if per_node > partition.memory_mb:
            problems.append(
                f"mem_per_gpu x gpus_per_node = {per_node} MB per node, but the nodes of {where} have "
                f"{partition.memory_mb} MB"
            )
    if partition.time_limit_min is not None and profile.time > partition.time_limit_min:
        problems.append(f"time = {profile.time} min, but {where} allows at most {partition.time_limit_min} min")
    return problems


def check_request(profile: ClusterProfile) -> None:
    """Raise SubmissionError when SLURM could never run a job with this profile; local profiles always pass.

    First the profile against `sinfo` (clear messages for the common cases), then
    `sbatch --test-only` with the same options, which also judges features, exclusions,
    accounts and QoS the way the scheduler will.
    """
    if profile.kind == "local":
        return
    problems = request_problems(profile, partition_info(profile.partition))
    if problems:
        raise SubmissionError(f"profile {profile.name!r} asks for more than the cluster has: " + "; ".join(problems))
    flags = [f"--{key}={value}" for key, value in profile.sbatch_options().items()]
    result = _run_slurm_command(["sbatch", "--test-only", *flags, "--wrap", "true"])
    if result.returncode != 0:
        reason = " ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
        raise SubmissionError(
            f"SLURM rejects the request of profile {profile.name!r} ({' '.join(flags)}): {reason}. "
            "Change the profile (partition, constraint, exclude, account, qos) to one the cluster can satisfy"
        )


def make_executor(
    profile: ClusterProfile, log_folder: str | Path, job_name: str, *, in_batch_script: bool = False
) -> submitit.Executor:
    """A Submitit executor that runs jobs as the profile says, writing logs and pickles under `log_folder`.

    `in_batch_script` runs the job function once, in the SLURM batch script on the first node,
    instead of once per task through srun: for jobs that start their own processes on the
    allocation's nodes, such as a Ray cluster.
    """
    log_folder = Path(log_folder)
    for what, value in (("job name", job_name), ("log folder", str(log_folder.resolve()))):
        found = control_characters(value)
        if found:
            raise SubmissionError(
                f"{what} {value!r} holds control characters ({', '.join(found)}), which would break the job script; "
                "use printable characters only"
            )
    if profile.kind == "local":
        executor: submitit.Executor = submitit.LocalExecutor(folder=log_folder)
        executor.update_parameters(
            timeout_min=profile.time,
            tasks_per_node=1 if in_batch_script else profile.tasks,
            gpus_per_node=profile.gpus_per_node,
            signal_delay_s=profile.signal_delay_s,
            setup=list(profile.setup),
        )
        return executor
    executor = submitit.SlurmExecutor(folder=log_folder)
    parameters: dict[str, Any] = {
        "job_name": job_name,
        "time": profile.time,
        "nodes": profile.nodes,
        "ntasks_per_node": profile.tasks,
        "cpus_per_task": profile.cpus_per_task,
        "signal_delay_s": profile.signal_delay_s,
        "array_parallelism": profile.array_parallelism,
        "setup": list(profile.setup),
        "use_srun": not in_batch_script,
    }
    optional = {
        "partition": profile.partition,
        "account": profile.account,
        "qos": profile.qos,
        "constraint": profile.constraint,
        "exclude": profile.exclude,
        "gpus_per_node": profile.gpus_per_node or None,
    }
    parameters.update({key: value for key, value in optional.items() if value is not None})
    # Memory goes through SLURM's own syntax so fractional GB survive (Submitit would round --mem).
    # --requeue lets `scontrol requeue` and preemption put the job back in the queue on clusters
    # whose JobRequeue default is off.
    sbatch = profile.sbatch_options()
    extra: dict[str, Any] = {key: sbatch[key] for key in ("mem", "mem-per-gpu") if key in sbatch}
    if in_batch_script:
        # The function runs once, in the batch script: Submitit must wait for that one result, not one
        # per node, while sbatch still asks for every node.
        parameters["nodes"] = 1
        extra["nodes"] = profile.nodes
    parameters["additional_parameters"] = {**extra, "requeue": True}
    executor.update_parameters(**parameters)
    return executor


def submit_jobs(
    executor: submitit.Executor, profile: ClusterProfile, functions: Sequence[Callable[[], Any]]
) -> list[submitit.Job]:
    """Check the request, then submit: one job for one function, a job array (on SLURM) for several."""
    check_request(profile)
    try:
        if len(functions) == 1:
            return [executor.submit(functions[0])]
        return executor.submit_array(list(functions))
    except submitit.core.utils.FailedJobError as error:
        raise SubmissionError(f"submission with profile {profile.name!r} failed: {error}") from None


@dataclass(frozen=True, kw_only=True)
class JobOutcome:
    """How one followed job ended."""

    job_id: str
    """Submitit's job id."""
    state: str
    """Final state as the scheduler reports it (FINISHED on the local executor)."""
    error: str | None
    """The job's error (last lines of its traceback), or None when it succeeded."""
    stderr_path: Path
    """Its log of errors, to read when it failed."""


def follow_jobs(jobs: Sequence[submitit.Job], poll_s: float = 2.0, timeout_s: float | None = None) -> list[JobOutcome]:
    """Wait until every job has ended, with a progress bar of jobs done and a count of their states.

    With `timeout_s`, raise TimeoutError (naming the jobs still running) once that much time has passed.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    remaining = list(jobs)
    with tqdm(total=len(jobs), desc="jobs", unit="job") as progress:
        while remaining:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"jobs {' '.join(job.job_id for job in remaining)} still not done after {timeout_s:.0f} s"
                )
            still_running = [job for job in remaining if not job.done()]
            progress.update(len(remaining) - len(still_running))
            remaining = still_running
            if remaining:
                states: dict[str, int] = {}
                for job in remaining:
                    states[job.state] = states.get(job.state, 0) + 1
                summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items()))
                if summary != progress.postfix:
                    progress.set_postfix_str(summary)
                time.sleep(poll_s)
    outcomes = []
    for job in jobs:
        error = job.exception()
        outcomes.append(
            JobOutcome(
                job_id=job.job_id,
                state=job.state,
                error=None if error is None else "\n".join(str(error).strip().splitlines()[-6:]),
                stderr_path=job.paths.stderr,
            )
        )
    return outcomes
