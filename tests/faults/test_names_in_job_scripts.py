"""Names that hold shell syntax reach the real SLURM as text; names with control characters are refused.

A job name and a log folder with spaces, quotes, `;`, `$(...)` and backticks go through the
real sbatch into a real job, which must run, keep its name as written, and run none of it as
shell. A newline cannot be quoted in an `#SBATCH` line, so every name that can reach a job
script refuses control characters where it is given.
"""

import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from conftest import slurm_profile

from cluster.config import ConfigError, from_dict
from cluster.profile import ClusterProfile
from extract.extract_config import ExtractConfig
from launch.cli import main
from launch.executors import SubmissionError, make_executor, submit_jobs

cloudpickle.register_pickle_by_value(sys.modules[__name__])

HOSTILE = "a b'c\"d;e $(touch {marker}) `touch {marker}` & | > x"


def job_name_seen_by_the_job() -> str:
    import os

    return os.environ["SLURM_JOB_NAME"]


@pytest.mark.slurm
@pytest.mark.integration
def test_a_hostile_job_name_and_log_folder_run_as_text_on_the_real_slurm(slurm_cluster, tmp_path):
    marker = tmp_path / "injected"
    name = HOSTILE.format(marker=marker)
    log_folder = tmp_path / f"logs {name.replace('/', '_')}"
    executor = make_executor(slurm_profile(), log_folder, job_name=name)
    (job,) = submit_jobs(executor, slurm_profile(), [job_name_seen_by_the_job])
    deadline = time.monotonic() + 120
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.done(), f"job {job.job_id} did not end in 120 s"
    assert job.result() == name
    assert not marker.exists(), "part of the name ran as shell"
    script = Path(job.paths.submission_file).read_text()
    assert "touch" in script and "\n" + "touch" not in script


@pytest.mark.slurm
def test_sbatch_accepts_every_hostile_flag_value_as_text(slurm_cluster, tmp_path):
    marker = tmp_path / "injected"
    name = HOSTILE.format(marker=marker)
    result = subprocess.run(
        ["sbatch", "--test-only", f"--job-name={name}", "--wrap", "true"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


CONTROL_NAMES = {
    "newline": "store\ntouch x",
    "carriage return": "store\rtouch",
    "NUL": "store\x00x",
    "escape": "store\x1b[2J",
    "tab": "store\tname",
    "DEL": "store\x7f",
}


@pytest.mark.parametrize("case", sorted(CONTROL_NAMES))
def test_a_job_name_with_a_control_character_is_refused_before_any_script_is_written(tmp_path, case):
    with pytest.raises(SubmissionError, match=r"job name .* holds control characters \(U\+00[0-9A-F]{2}\)"):
        make_executor(slurm_profile(), tmp_path / "logs", job_name=CONTROL_NAMES[case])
    assert not (tmp_path / "logs").exists()


def test_a_log_folder_with_a_newline_is_refused(tmp_path):
    with pytest.raises(SubmissionError, match=r"log folder .* holds control characters \(U\+000A\)"):
        make_executor(slurm_profile(), tmp_path / "logs\n#SBATCH --x", job_name="ok")


@pytest.mark.parametrize("case", sorted(CONTROL_NAMES))
def test_a_store_name_with_a_control_character_is_refused(case):
    with pytest.raises(ConfigError, match=r"name .* holds control characters"):
        from_dict(ExtractConfig, {"corpus": "/c", "name": CONTROL_NAMES[case]})


def test_a_store_root_with_a_newline_is_refused():
    with pytest.raises(ConfigError, match=r"store_root .* holds control characters \(U\+000A\)"):
        from_dict(ExtractConfig, {"corpus": "/c", "store_root": "features\nx"})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("name", "mine\nrm -rf ~", r"name 'mine\\nrm -rf ~' holds control characters \(U\+000A\)"),
        ("setup", ["module load cuda\x00"], r"setup\[0\] .* holds control characters \(U\+0000\)"),
        ("setup", ["source a\rsource b"], r"setup\[0\] .* holds control characters \(U\+000D\)"),
        ("constraint", "a100\n#SBATCH --x", r"constraint .* holds control characters \(U\+000A\)"),
    ],
)
def test_a_profile_value_with_a_control_character_is_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ClusterProfile, {"name": "x", "kind": "slurm", field: value})


def test_a_sweep_folder_with_a_newline_is_one_cli_error(tmp_path, capsys):
    sweep = tmp_path / "sweep\nx"
    status = main(["sweep", "--seeds", "0", "--out", str(sweep), f"store={tmp_path}"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmroberta sweep: error: ") and "holds control characters (U+000A)" in err
    assert "\n" not in err


def test_a_run_folder_with_a_newline_is_one_cli_error(tmp_path, capsys):
    status = main(["train", str(tmp_path), "--run-dir", str(tmp_path / "run\n1")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmroberta train: error: ") and "holds control characters (U+000A)" in err
