"""A sweep submits no run twice: not when SLURM cannot be asked, not after a crash between submitting and recording.

SLURM is made unreachable for real: its own commands are pointed at a slurm.conf they refuse
(`SLURM_CONF`), so squeue and sacct fail as they do when the controller is down. The crash is
left behind as it would be: a submission.json holding only the intent, with a real job of
that name in SLURM's queue (or in its accounting, once ended), or none at all.
"""

import json
import subprocess
import sys
import time

import pytest
from conftest import broken_slurm_conf, slurm_profile

from launch.sweep import plan_sweep, run_status, run_statuses, submit_sweep
from model.run_folder import RunFolder


def planned_runs(sweep_dir, seeds=(0,)):
    from model.run_config import RunConfig

    return plan_sweep(RunConfig, sweep_dir, list(seeds), {}, overrides=['store="/nowhere/store"'])


def record(run_dir, **fields):
    run_dir.mkdir(parents=True, exist_ok=True)
    RunFolder(run_dir).submission_path.write_text(json.dumps(fields))


def intent(run_dir, job_name, array_index=None, cluster="slurm"):
    record(
        run_dir,
        state="submitting",
        cluster=cluster,
        job_name=job_name,
        log_folder=str(run_dir.parent.parent / "logs"),
        intent=time.time(),
        array_index=array_index,
    )


def sbatch(*options: str) -> str:
    command = ["sbatch", "--parsable", "--time=2", "--mem=100M", "--output=/dev/null", *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


@pytest.fixture
def jobs_to_cancel():
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


@pytest.mark.slurm
def test_when_squeue_fails_a_submitted_run_is_unknown_and_not_submitted_again(slurm_cluster, tmp_path, monkeypatch):
    (run,) = planned_runs(tmp_path / "sweep")
    record(run.run_dir, state="submitted", cluster="slurm", job_id="999999", log_folder=str(tmp_path))
    # With SLURM answering, a job it no longer knows has ended: the run failed and would be resubmitted.
    assert run_status(run.run_dir, run_statuses_active()) == "failed"
    monkeypatch.setenv("SLURM_CONF", broken_slurm_conf(tmp_path))
    assert run_statuses([run]) == {run.run_dir: "unknown"}
    submission = submit_sweep([run], slurm_profile(), tmp_path / "sweep")
    assert submission.jobs == [] and submission.submitted == []
    assert json.loads(RunFolder(run.run_dir).submission_path.read_text())["job_id"] == "999999"


def run_statuses_active():
    from launch.sweep import active_slurm_jobs

    active = active_slurm_jobs()
    assert active is not None, "squeue should answer here"
    return active


@pytest.mark.slurm
def test_an_intent_whose_job_is_queued_finds_the_job_by_name(slurm_cluster, tmp_path, jobs_to_cancel):
    (run,) = planned_runs(tmp_path / "sweep")
    name = f"faults-{time.time_ns()}"
    jobs_to_cancel.append(sbatch(f"--job-name={name}", "--wrap", "sleep 60"))
    intent(run.run_dir, name)
    assert run_statuses([run]) == {run.run_dir: "active"}
    assert json.loads(RunFolder(run.run_dir).submission_path.read_text())["job_id"] == jobs_to_cancel[0]
    assert submit_sweep([run], slurm_profile(), tmp_path / "sweep").submitted == []


@pytest.mark.slurm
def test_an_intent_in_an_array_finds_its_own_task(slurm_cluster, tmp_path, jobs_to_cancel):
    first, second = planned_runs(tmp_path / "sweep", seeds=(0, 1))
    name = f"faults-array-{time.time_ns()}"
    base = sbatch(f"--job-name={name}", "--array=0-1", "--wrap", "sleep 60")
    jobs_to_cancel.append(base)
    intent(first.run_dir, name, array_index=0)
    intent(second.run_dir, name, array_index=1)
    assert set(run_statuses([first, second]).values()) == {"active"}
    assert json.loads(RunFolder(second.run_dir).submission_path.read_text())["job_id"] == f"{base}_1"


@pytest.mark.slurm
def test_an_intent_whose_job_ended_finds_the_job_and_counts_as_failed(slurm_cluster, tmp_path):
    (run,) = planned_runs(tmp_path / "sweep")
    name = f"faults-ended-{time.time_ns()}"
    job_id = sbatch(f"--job-name={name}", "--wrap", "true")
    # The state below is read only once accounting has the job as ended.
    deadline = time.monotonic() + 120
    while True:
        accounted = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", job_id, "--format=State"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        if accounted and accounted[0] == "COMPLETED":
            break
        assert time.monotonic() < deadline, f"SLURM's accounting never recorded job {job_id} as completed"
        time.sleep(0.5)
    intent(run.run_dir, name)
    # It ended without test metrics: failed, so resubmitting it is right; and its job is on record.
    assert run_statuses([run]) == {run.run_dir: "failed"}
    assert json.loads(RunFolder(run.run_dir).submission_path.read_text())["job_id"] == job_id


@pytest.mark.slurm
def test_an_intent_slurm_never_saw_is_missing(slurm_cluster, tmp_path):
    (run,) = planned_runs(tmp_path / "sweep")
    intent(run.run_dir, f"faults-never-{time.time_ns()}")
    assert run_statuses([run]) == {run.run_dir: "missing"}


@pytest.mark.slurm
def test_an_intent_while_slurm_cannot_be_asked_is_unknown(slurm_cluster, tmp_path, monkeypatch):
    (run,) = planned_runs(tmp_path / "sweep")
    intent(run.run_dir, "faults-whatever")
    monkeypatch.setenv("SLURM_CONF", broken_slurm_conf(tmp_path))
    assert run_statuses([run]) == {run.run_dir: "unknown"}
    assert "job_id" not in json.loads(RunFolder(run.run_dir).submission_path.read_text())


def test_a_local_intent_with_no_job_process_is_missing(tmp_path):
    (run,) = planned_runs(tmp_path / "sweep")
    intent(run.run_dir, "local-job", cluster="local")
    assert run_statuses([run]) == {run.run_dir: "missing"}


def test_a_local_intent_whose_job_process_runs_is_unknown(tmp_path):
    (run,) = planned_runs(tmp_path / "sweep")
    intent(run.run_dir, "local-job", cluster="local")
    log_folder = json.loads(RunFolder(run.run_dir).submission_path.read_text())["log_folder"]
    # A process whose command line is that of Submitit's local job controller for this log folder. It runs
    # until the test closes its stdin, and says so once it runs, so the state is read while it surely lives.
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('running', flush=True); sys.stdin.read()",
         "submitit.local._local", log_folder],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout.readline() == "running\n"
        assert run_statuses([run]) == {run.run_dir: "unknown"}
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def test_a_torn_submission_record_counts_as_never_submitted(tmp_path):
    (run,) = planned_runs(tmp_path / "sweep")
    run.run_dir.mkdir(parents=True)
    RunFolder(run.run_dir).submission_path.write_text('{"job_id": "12')
    assert run_statuses([run]) == {run.run_dir: "missing"}
