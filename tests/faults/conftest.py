"""Shared by the fault tests: whether the real SLURM cluster answers, and the SLURM profile they submit with."""

import shutil
import subprocess

import pytest

from cluster.profile import ClusterProfile
from launch.executors import load_profile
from tests.faults.fault_summary import CASES, summary_line

START_HINT = "start one with `sudo bash cluster/slurm/start-local-cluster.sh`"


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skips the test when no SLURM cluster with a usable node answers."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip(f"no SLURM cluster: sbatch/sinfo not found; {START_HINT}")
    try:
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.skip(f"no SLURM cluster: sinfo did not answer within 15 s; {START_HINT}")
    if sinfo.returncode != 0 or not {"idle", "mixed", "allocated"} & set(sinfo.stdout.split()):
        pytest.skip(f"no usable SLURM node ({sinfo.stderr.strip() or sinfo.stdout.split()}); {START_HINT}")


def slurm_profile(**fields) -> ClusterProfile:
    """The packaged SLURM profile, small and short, with `fields` changed."""
    base = load_profile("slurm")
    values = {"name": "faults", "kind": "slurm", "partition": base.partition, "time": 5, "mem": 0.5, **fields}
    return ClusterProfile(**values)


def broken_slurm_conf(folder) -> str:
    """A slurm.conf that SLURM's own commands refuse at once: squeue and sacct then fail for real."""
    path = folder / "broken-slurm.conf"
    path.write_text("this is not a slurm configuration\n")
    return str(path)


def pytest_terminal_summary(terminalreporter) -> None:
    """One line after the fault tests: cases tried, and how many ended in a traceback, silent damage or a hang."""
    if CASES:
        terminalreporter.write_line(summary_line())
