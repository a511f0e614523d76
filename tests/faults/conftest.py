"""Shared by the fault tests: the SLURM profile they submit with (the `slurm_cluster` fixture that skips where no
cluster answers is tests/conftest.py's), a slurm.conf SLURM refuses, and the closing tally."""


from cluster.profile import ClusterProfile
from launch.executors import load_profile
from tests.faults.fault_summary import CASES, summary_line


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
