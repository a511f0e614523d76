"""The functions Submitit runs: feature extraction, one training run, and a queue of training runs.

Each is a small picklable object holding its config, so the job carries everything it needs
and its log folder shows what it was asked to do.

- `ExtractionJob` runs the extraction pipeline. Inside a SLURM job it first brings up a Ray
  cluster across the allocation (`cluster.ray_on_slurm`) and points the pipeline at it; on a
  laptop the pipeline starts its own local Ray. Submit it with `in_batch_script=True`: it
  starts its own processes on the other nodes.
- `TrainingJob` trains one run. It is `Checkpointable`: when SLURM (or the local executor)
  signals that the job is preempted or about to time out, training checkpoints the step in
  progress on every rank (the signal only sets a flag, which the loop reads after each optimizer
  step), stops, and hands over to Submitit's handler, which calls `checkpoint()` and requeues the
  same run with `resume=True`. The requeued job continues from that step and ends exactly as an
  uninterrupted run would. With several tasks (one per GPU, across nodes) every task runs it,
  each finds its rank and rank 0's address in SLURM's environment (`cluster.rendezvous`), and
  each writes its part of a checkpoint into the shared run folder.
- `PredictionJob` runs `cmroberta predict` on a large input, on the job's GPU when it has one.
- `RunQueueJob` trains several runs one after another, for the local executor, which has no
  job arrays to bound how many runs of a sweep run at once.
- `RobustnessJob` scores finished runs under perturbations, for `cmroberta reproduce`.
"""

import json
import logging
import os
import socket
import sys
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit

from cluster.durable_files import atomic_write_json
from cluster.rendezvous import LOOPBACK, slurm_port
from launch.sweep_records import SweepRecordError, read_submission

log = logging.getLogger(__name__)

# Submitit's local executor numbers a job's tasks in these variables instead of SLURM's.
_LOCAL_TASK_VARIABLES = (
    "SUBMITIT_LOCAL_GLOBALID",
    "SUBMITIT_LOCAL_LOCALID",
    "SUBMITIT_LOCAL_NTASKS",
    "SUBMITIT_LOCAL_JOB_ID",
)


def _log_to_job_log() -> None:
    """A job is a fresh process: send INFO messages to its Submitit log (stderr), as the CLI does to the terminal."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def use_cpus(threads: int | None = None) -> None:
    """Run torch on the CPUs this task was given, not on every core of the machine.

    Under SLURM that is the task's allocation (SLURM_CPUS_PER_TASK); elsewhere `threads`, when
    given. Without this, each task starts as many threads as the node has cores; several tasks
    on one node then oversubscribe it, and spinning OpenMP threads slow training tenfold.
    """
    if "SLURM_CPUS_PER_TASK" in os.environ:
        threads = int(os.environ["SLURM_CPUS_PER_TASK"])
    if threads is None:
        return
    # deferred: imports torch; a job loads only its own stage, and `cmroberta --help` imports this module
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def _job_id() -> str:
    """Submitit's id of the running job ('1234', '1234_5' for an array task, a pid on the local executor)."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:
        return "none"


def _job_folder() -> Path:
    """The job's Submitit log folder, or the working folder when not run by Submitit."""
    return Path(os.environ.get("SUBMITIT_FOLDER", "."))


class ExtractionJob:
    """Extract a corpus's features into a feature store; returns the store folder."""

    def __init__(self, config: Any):
        self.config = config
        """The pipeline's ExtractConfig."""

    def __call__(self) -> Path:
        # deferred: imports torch and Ray; a job loads only its own stage, and `cmroberta --help` imports this module
        from extract.pipeline import run_extraction

        _log_to_job_log()
        if not _in_slurm_job() or self.config.ray.address is not None:
            return run_extraction(self.config)
        # deferred: imports torch and Ray; a job loads only its own stage, and `cmroberta --help` imports this module
        from cluster.ray_on_slurm import ray_cluster_on_slurm

        with ray_cluster_on_slurm(_job_folder()) as address:
            return run_extraction(replace(self.config, ray=replace(self.config.ray, address=address)))

    def __repr__(self) -> str:
        return f"ExtractionJob(corpus={self.config.corpus!r})"


def export_local_task_rendezvous(environ: MutableMapping[str, str] | None = None) -> None:
    """Give a multi-task job of Submitit's local executor the variables torch.distributed reads.

    SLURM tasks need nothing: `cluster.rendezvous` reads SLURM's own variables. The local
    executor only numbers its tasks, so rank, world size and a port (derived from the job id,
    the controller's pid, so that two local jobs never share one) are set here.
    """
    environ = os.environ if environ is None else environ
    if not all(name in environ for name in _LOCAL_TASK_VARIABLES) or int(environ["SUBMITIT_LOCAL_NTASKS"]) < 2:
        return
    environ["RANK"] = environ["SUBMITIT_LOCAL_GLOBALID"]
    environ["LOCAL_RANK"] = environ["SUBMITIT_LOCAL_LOCALID"]
    environ["WORLD_SIZE"] = environ["SUBMITIT_LOCAL_NTASKS"]
    environ["MASTER_ADDR"] = LOOPBACK
    environ["MASTER_PORT"] = str(slurm_port(int(environ["SUBMITIT_LOCAL_JOB_ID"])))


def _record_attempt(run_dir: Path, resume: bool) -> None:
    """Append this start of the run to attempts.jsonl: when a run was preempted and requeued is visible there."""
    # deferred: the run folder loads torch, and `cmroberta --help` imports this module through `launch`'s verbs
    from model.run_folder import RunFolder

    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"job_id": _job_id(), "host": socket.gethostname(), "resume": resume, "started": time.time()}
    with RunFolder(run_dir).attempts_path.open("a", encoding="utf-8") as attempts:
        attempts.write(json.dumps(record) + "\n")


def _is_main_task() -> bool:
    for name in ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"):
        if name in os.environ:
            return os.environ[name] == "0"
    return True


class TrainingJob(submitit.helpers.Checkpointable):
    """Train one run into its folder; returns its test metrics. Requeued with resume=True when preempted."""

    def __init__(self, config: Any, run_dir: Path, resume: bool = False):
        self.config = config
        """The run's RunConfig."""
        self.run_dir = Path(run_dir)
        """The run folder."""
        self.resume = resume
        """Continue from the run's last checkpoint (a fresh start when it has none)."""

    def __call__(self) -> dict[str, Any] | None:
        # deferred: imports torch; a job loads only its own stage, and `cmroberta --help` imports this module
        from model.checkpoint_request import CheckpointRequest, TrainingInterrupted, installed
        from model.train import train

        _log_to_job_log()
        use_cpus()
        export_local_task_rendezvous()
        if _is_main_task():
            _record_attempt(self.run_dir, self.resume)
        request = CheckpointRequest()
        signum = submitit.JobEnvironment._usr_sig()
        with installed(request, signum):
            try:
                return train(self.config, self.run_dir, resume=self.resume, request=request)
            except TrainingInterrupted as interrupted:
                log.info("%s; handing over to Submitit to requeue the job", interrupted)
        if request.fallback is None:
            return None
        # On rank 0 Submitit's handler calls checkpoint(), requeues the job and exits. Other ranks have
        # written their part of the checkpoint and end at once, cleanly (an error exit could make srun
        # stop rank 0 before it requeues; going on, in a queue of runs, would start the next one alone).
        request.fallback(request.signal or signum, None)
        sys.exit(0)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Training saved the step in progress before Submitit called this (or, for a signal outside
        # the training loop, its last checkpoint is the latest state): the requeued job resumes it.
        return submitit.helpers.DelayedSubmission(TrainingJob(self.config, self.run_dir, resume=True))

    def __repr__(self) -> str:
        return f"TrainingJob(run_dir={str(self.run_dir)!r}, resume={self.resume})"


class PredictionJob:
    """Label an input with a trained run into a predictions file; returns the metrics where it has gold labels."""

    def __init__(self, run_dir: Path, input_path: Path, out: Path, split: str | None, perturb: str | None):
        self.run_dir = Path(run_dir)
        """The trained run."""
        self.input_path = Path(input_path)
        """The input, in any form `cmroberta predict` reads."""
        self.out = Path(out)
        """The predictions file."""
        self.split = split
        """Of a MELD-layout input, only this split (None: all)."""
        self.perturb = perturb
        """A perturbation spec, or None."""

    def __call__(self) -> dict[str, Any] | None:
        # deferred: imports torch; a job loads only its own stage, and `cmroberta --help` imports this module
        from launch.commands.predict import run_predict

        _log_to_job_log()
        use_cpus()
        return run_predict(self.run_dir, self.input_path, self.out, self.split, self.perturb)

    def __repr__(self) -> str:
        return f"PredictionJob(run_dir={str(self.run_dir)!r}, input={str(self.input_path)!r})"


class RunQueueJob(submitit.helpers.Checkpointable):
    """Train several runs one after another, skipping finished ones; returns their test metrics by run folder.

    The local executor's queues share their work. A queue that has trained its own runs goes on with the
    runs other queues have not reached yet, the last dealt first: runs are dealt before anyone knows how long
    each takes, and without this one queue sat idle while another still had runs waiting (32 s of the demo's
    sweep). A run's claim (`RunFolder.claim`) lets one queue alone train it, and a queue that takes over a
    run records its own job in the run's submission.json, so the sweep sees which job trains it. A run that
    another job has started since the sweep submitted it is left alone, so a run that failed is not tried
    again by a second queue: the next sweep submits it again.
    """

    def __init__(self, runs: list[TrainingJob], threads: int | None = None, shared: Sequence[TrainingJob] = ()):
        self.runs = runs
        """The runs dealt to this queue, in order."""
        self.threads = threads
        """CPU threads for torch: the machine's cores shared among the queues that run at once (None: all)."""
        self.shared = list(shared)
        """Other queues' runs, in the order this queue takes them over once its own are trained."""

    def __call__(self) -> dict[str, dict[str, Any]]:
        # deferred: the run folder loads torch, and `cmroberta --help` imports this module through `launch`'s verbs
        from model.run_folder import RunFolder

        use_cpus(self.threads)
        results, failures = {}, []
        for run in [*self.runs, *self.shared]:
            folder = RunFolder(run.run_dir)
            taken_over = run not in self.runs
            with folder.claim() as claimed:
                # Another queue trains it now, or has tried it since the sweep submitted it.
                started_elsewhere = any(job != _job_id() for job in _attempts_since_submission(folder))
                if not claimed or started_elsewhere or (taken_over and folder.finished):
                    continue
                if taken_over:
                    _record_taken_over(folder.submission_path)
                try:
                    results[str(run.run_dir)] = run()
                except Exception as error:
                    # One failed run must not cost the others in the queue their turn.
                    log.exception("run %s failed", run.run_dir)
                    failures.append(f"{run.run_dir}: {error}")
        if failures:
            tried = len(results) + len(failures)
            raise RuntimeError(f"{len(failures)} of {tried} runs failed: " + "; ".join(failures))
        return results

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Finished runs return their saved metrics at once; the interrupted one resumes.
        def resumed(runs: Sequence[TrainingJob]) -> list[TrainingJob]:
            return [TrainingJob(run.config, run.run_dir, resume=True) for run in runs]

        return submitit.helpers.DelayedSubmission(RunQueueJob(resumed(self.runs), self.threads, resumed(self.shared)))

    def __repr__(self) -> str:
        return f"RunQueueJob({len(self.runs)} runs, {len(self.shared)} shared)"


def _attempts_since_submission(folder: Any) -> list[str]:
    """The job ids of the attempts at `folder`'s run (a RunFolder) started since the sweep last submitted it."""
    try:
        submission = read_submission(folder.submission_path)
        lines = folder.attempts_path.read_text(encoding="utf-8").splitlines()
    except (SweepRecordError, OSError):
        # No record (a queue started by hand), a damaged one (the sweep's status check names it), or no attempt.
        return []
    if submission is None or submission.intent is None:
        return []
    jobs = []
    for line in lines:
        try:
            attempt = json.loads(line)
        except ValueError:
            continue  # the last line of an attempt killed as it was written
        if isinstance(attempt, dict) and isinstance(attempt.get("started"), (int, float)):
            if attempt["started"] >= submission.intent:
                jobs.append(str(attempt.get("job_id")))
    return jobs


def _record_taken_over(submission_path: Path) -> None:
    """Name this job in a run's submission.json: the sweep asks whether the job that trains a run still lives."""
    try:
        record = json.loads(submission_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # The sweep wrote none (a queue started by hand), or a damaged one, which its status check reports.
        return
    atomic_write_json(submission_path, {**record, "job_id": _job_id()})


class RobustnessJob:
    """Score finished runs under perturbations (`cmroberta evaluate RUN --perturb SPEC` for each); returns the
    robustness table as text."""

    def __init__(self, run_dirs: list[Path], conditions: list[str]):
        self.run_dirs = [Path(run_dir) for run_dir in run_dirs]
        """The finished runs."""
        self.conditions = conditions
        """Perturbation specs, e.g. 'audio_missing', 'text_asr:wer=0.3'."""

    def __call__(self) -> str:
        # deferred: imports torch; a job loads only its own stage, and `cmroberta --help` imports this module
        from launch.robustness_report import robustness_table

        _log_to_job_log()
        use_cpus()
        table = robustness_table(self.run_dirs, self.conditions)
        return "" if table is None else table.render()

    def __repr__(self) -> str:
        return f"RobustnessJob({len(self.run_dirs)} runs, {self.conditions})"
