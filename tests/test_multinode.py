"""Multi-node paths on the real two-node SLURM cluster of `cluster/slurm/start-local-cluster.sh --nodes 2`.

Node 1 is this machine, node 2 a network namespace with its own hostname and address; the tests
submit from this machine's shell, as a user on a login node would. Each test skips, saying why,
unless at least two nodes are up. They cover srun over both nodes, a Ray cluster per job across
the allocation (token auth, private temp folders, two jobs at once), extraction whose shards are
computed on both nodes, training with one rank per node against one process, preemption of a
two-node job, and a sweep whose runs land on both nodes.

Job functions defined here travel by value (cloudpickle), since a job's Python cannot import this file.
"""

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from cluster.config import load_config
from launch.cli import main
from launch.executors import load_profile, make_executor, submit_jobs
from test_launch_slurm import release_requeued_slurm_job, usable_nodes, wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.integration]

START_HINT = "start one with `sudo bash cluster/slurm/start-local-cluster.sh --nodes 2`"
TWO_NODE_PROFILE = Path(__file__).parents[1] / "launch" / "profiles" / "slurm-two-nodes.toml"
JOB_WAIT_S = 240
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cmroberta" / "torch_extensions"))


@pytest.fixture(scope="session")
def two_nodes() -> list[str]:
    """The names of the cluster's usable nodes; skips the test unless there are at least two."""
    if shutil.which("sinfo") is None:
        pytest.skip(f"no SLURM cluster: sinfo not found; {START_HINT}")
    try:
        nodes = usable_nodes()
    except subprocess.TimeoutExpired:
        pytest.skip(f"no SLURM cluster: sinfo did not answer within 15 s; {START_HINT}")
    if len(nodes) < 2:
        pytest.skip(f"needs a SLURM cluster of two nodes, but {len(nodes)} node(s) are usable {nodes}; {START_HINT}")
    return nodes


def two_node_profile(*overrides: str):
    return load_profile("slurm", TWO_NODE_PROFILE, overrides)


def test_srun_over_two_nodes_runs_on_two_hosts(two_nodes):
    result = subprocess.run(
        ["srun", "--nodes=2", "--ntasks-per-node=1", "--time=2", "hostname"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    hosts = result.stdout.split()
    assert len(hosts) == 2 and len(set(hosts)) == 2, hosts
    assert set(hosts) <= set(two_nodes)


# --- a Ray cluster per job, across both nodes ------------------------------------------------------------


def ray_cluster_probe(log_dir: str) -> dict:
    """Run in a two-node job's batch script: bring Ray up, run a task on each node, try to get in without the token."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from cluster.ray_on_slurm import _processes_of, ray_cluster_on_slurm, ray_temp_dirs

    job_id = int(os.environ["SLURM_JOB_ID"])
    with ray_cluster_on_slurm(Path(log_dir)) as address:
        up_at = time.time()
        nodes = [node for node in ray.nodes() if node["Alive"]]
        hostname = ray.remote(num_cpus=1)(lambda: socket.gethostname())
        hosts = ray.get([
            hostname.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
            for node in nodes
        ])
        token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
        token_modes = (stat.S_IMODE(token.stat().st_mode), stat.S_IMODE(token.parent.stat().st_mode))
        temp_dirs = ray_temp_dirs(job_id)
        temp_dir_modes = [stat.S_IMODE(folder.stat().st_mode) for folder in temp_dirs]
        intruder_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
        intruder_env.pop("RAY_AUTH_TOKEN_PATH")
        intruder = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address={address!r}); print(ray.cluster_resources())"],
            env=intruder_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        processes_while_up = sum(len(_processes_of(folder)) for folder in temp_dirs)
        # Stay up a while, so that a second job started at the same time is up at the same time.
        time.sleep(3)
        down_at = time.time()
    return {
        "address": address,
        "hosts": hosts,
        "node_addresses": sorted(node["NodeManagerAddress"] for node in nodes),
        "token_modes": token_modes,
        "token_left": token.exists(),
        "temp_dirs": [str(folder) for folder in temp_dirs],
        "temp_dir_modes": temp_dir_modes,
        "temp_dirs_left": [str(folder) for folder in temp_dirs if folder.exists()] + [str(f) for f in ray_temp_dirs(job_id)],
        "intruder_exit": intruder.returncode,
        "intruder_output": (intruder.stdout + intruder.stderr)[-2000:],
        "processes_while_up": processes_while_up,
        "processes_after": sum(len(_processes_of(folder)) for folder in temp_dirs),
        "up": (up_at, down_at),
    }


def test_two_jobs_at_once_each_get_a_private_ray_cluster_across_both_nodes(two_nodes, tmp_path):
    profile = two_node_profile("cpus_per_task=1", "mem=1.5")
    executor = make_executor(profile, tmp_path / "logs", job_name="ray2", in_batch_script=True)
    log_dir = str(tmp_path / "logs")
    jobs = submit_jobs(executor, profile, [lambda: ray_cluster_probe(log_dir), lambda: ray_cluster_probe(log_dir)])
    wait_for(jobs, timeout_s=JOB_WAIT_S)
    first, second = (job.result() for job in jobs)

    assert max(first["up"][0], second["up"][0]) < min(first["up"][1], second["up"][1]), "both clusters were up at once"
    assert first["address"].split(":")[1] != second["address"].split(":")[1], "two jobs on one node share no port"
    for result in (first, second):
        assert sorted(result["hosts"]) == two_nodes[:2], "one task ran on each node's Ray worker"
        assert len(set(result["node_addresses"])) == 2, "each node joined at its own address"
        assert result["token_modes"] == (0o600, 0o700), "the token file is the user's alone, in a private folder"
        assert result["intruder_exit"] != 0, f"a driver without the job's token got in: {result['intruder_output']}"
        assert len(result["temp_dirs"]) == 2, "one temp folder per node"
        assert set(result["temp_dir_modes"]) == {0o700}
        assert result["processes_while_up"] >= 3, "gcs_server on the head and a raylet on each node at least"
        assert result["processes_after"] == 0, "raylet and gcs_server ignore SIGTERM; teardown must kill them"
        assert result["temp_dirs_left"] == [] and not result["token_left"]
    assert not set(first["temp_dirs"]) & set(second["temp_dirs"])
