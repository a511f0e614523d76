"""Process-wide settings every test starts from, so no test's outcome depends on the tests before it.

Training and extraction results are compared to 1e-6 across processes (a killed run against an
uninterrupted one, `predict` against a run's own predictions, Ray workers against the driver).
Floating-point sums depend on how many threads split them, and some code paths set the thread
count of the process they run in (`launch.jobs.use_cpus`, the extraction actors), so each test
begins with one intra-op thread and OMP_NUM_THREADS as the session found it, whatever ran before.
"""

import os

import pytest
import torch


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


def pytest_collection_modifyitems(items):
    """Every SLURM and multi-node test is an integration test too, so `-m "not integration"` leaves only unit tests."""
    for item in items:
        if item.get_closest_marker("slurm") or item.get_closest_marker("multinode"):
            item.add_marker(pytest.mark.integration)
