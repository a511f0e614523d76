"""What every test under tests/ shares: the process-wide settings each test starts from, so no test's outcome
depends on the tests before it; the `slurm_cluster` fixture; and the markers that keep `-m "not integration"` fast.

The folders say what kind of test a file holds: `unit/` (no Ray, no training, no jobs), `integration/` (files
with at least one test that trains, starts Ray, submits jobs or runs a command end to end) and `faults/`
(faults injected at points the test controls). The `integration` marker, not the folder, selects the fast path.

Training and extraction results are compared to 1e-6 across processes (a killed run against an
uninterrupted one, `predict` against a run's own predictions, Ray workers against the driver).
Floating-point sums depend on how many threads split them, and some code paths set the thread
count of the process they run in (`launch.jobs.use_cpus`, the extraction actors), so each test
begins with one intra-op thread and OMP_NUM_THREADS as the session found it, whatever ran before.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.slurm_nodes import START_HINT, USABLE_NODE_STATES

# DeepSpeed compiles its shm_comm op once per environment (about a minute) into TORCH_EXTENSIONS_DIR; the same
# stable folder as .ci/run's lets every run reuse it. Jobs and child processes inherit this process's environment.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cmroberta" / "torch_extensions"))


@pytest.fixture(autouse=True)
def one_thread_and_the_sessions_environment():
    omp = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module, its module-scoped fixtures (stores, engines, sessions) included,
    which the per-test fixture above does not reach: these models are tiny, and two threads on a busy 2-core
    machine spend most of their time waiting for each other (a run takes 3x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skips the test when no SLURM cluster with a usable node answers."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip(f"no SLURM cluster: sbatch/sinfo not found; {START_HINT}")
    try:
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.skip(f"no SLURM cluster: sinfo did not answer within 15 s; {START_HINT}")
    if sinfo.returncode != 0 or not USABLE_NODE_STATES & set(sinfo.stdout.split()):
        pytest.skip(f"no usable SLURM node ({sinfo.stderr.strip() or sinfo.stdout.split()}); {START_HINT}")


def pytest_collection_modifyitems(items):
    """Every SLURM and multi-node test is an integration test too, so `-m "not integration"` leaves only unit tests."""
    for item in items:
        if item.get_closest_marker("slurm") or item.get_closest_marker("multinode"):
            item.add_marker(pytest.mark.integration)
