"""Submitit against the real single-node SLURM cluster of cluster/slurm/start-local-cluster.sh.

The jobs run stdlib functions (os.getenv, time.sleep), which unpickle in any Python: a function
defined in this file would need the tests folder on the job's import path.
"""

import os
import time
from pathlib import Path

import pytest
import submitit

pytestmark = pytest.mark.slurm

JOB_WAIT_S = 60


@pytest.fixture
def executor(slurm_cluster: None, tmp_path: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1)
    return executor


def wait_until_done(job: submitit.Job, timeout_s: float = JOB_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"SLURM job {job.job_id} not done after {timeout_s} s (state {job.state})")
        time.sleep(0.5)


def test_job_runs_under_slurm_and_returns_its_result(executor: submitit.AutoExecutor):
    job = executor.submit(os.getenv, "SLURM_JOB_ID")
    wait_until_done(job)
    assert job.result() == job.job_id


def test_array_runs_each_task(executor: submitit.AutoExecutor):
    jobs = executor.map_array(os.getenv, ["SLURM_ARRAY_TASK_ID"] * 3)
    for job in jobs:
        wait_until_done(job)
    assert sorted(job.result() for job in jobs) == ["0", "1", "2"]
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, f"expected one SLURM array, got job ids {[job.job_id for job in jobs]}"


def test_two_tasks_get_their_own_rank(executor: submitit.AutoExecutor):
    executor.update_parameters(tasks_per_node=2)
    job = executor.submit(os.getenv, "SLURM_PROCID")
    wait_until_done(job)
    assert sorted(job.results()) == ["0", "1"]


def test_cancelled_job_is_seen_as_done(executor: submitit.AutoExecutor):
    job = executor.submit(time.sleep, 300)
    job.cancel()
    wait_until_done(job, timeout_s=30)
    # sacct writes "CANCELLED by <uid>"; without accounting the state would stay unknown.
    assert job.state.startswith("CANCELLED"), job.state
    assert not job.paths.result_pickle.exists()


@pytest.mark.parametrize(
    "impossible",
    [{"nodes": 9}, {"mem_gb": 1_000_000}],
    ids=["nine-nodes", "a-terabyte"],
)
def test_impossible_request_is_rejected_at_submission(executor: submitit.AutoExecutor, impossible: dict[str, int]):
    executor.update_parameters(**impossible)
    with pytest.raises(submitit.core.utils.FailedJobError, match="submission failed"):
        executor.submit(os.getenv, "SLURM_JOB_ID")
