"""Cluster profiles: strict TOML loading, validation, and the check of a request against a partition."""

import textwrap
from pathlib import Path

import pytest
import submitit

from cluster.config import ConfigError
from cluster.profile import LOCAL_PROFILE, ClusterProfile
from launch.executors import PROFILES_DIR, PartitionInfo, load_profile, make_executor, request_problems


def write_profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profile.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_packaged_local_profile_is_the_built_in_one():
    assert load_profile("local", PROFILES_DIR / "local.toml") == LOCAL_PROFILE
    assert load_profile("local") == LOCAL_PROFILE


def test_packaged_slurm_profile_loads_as_the_default_for_slurm():
    profile = load_profile("slurm")
    assert profile == load_profile("slurm", PROFILES_DIR / "slurm.toml")
    assert profile.kind == "slurm"
    assert profile.partition == "debug"


def test_unknown_field_is_an_error_naming_it_and_the_likely_fix(tmp_path):
    path = write_profile(
        tmp_path,
        """
        name = "typo"
        kind = "slurm"
        gpus_per_nod = 4
        """,
    )
    with pytest.raises(ConfigError, match=r"unknown config key 'gpus_per_nod'.*Did you mean 'gpus_per_node'"):
        load_profile("slurm", path)


def test_overrides_are_checked_like_the_file(tmp_path):
    assert load_profile("local", None, ["array_parallelism=5"]).array_parallelism == 5
    with pytest.raises(ConfigError, match="array_parallelism must be at least 1"):
        load_profile("local", None, ["array_parallelism=0"])


def test_cluster_and_profile_kind_must_agree():
    with pytest.raises(ConfigError, match="kind = 'slurm' but --cluster local"):
        load_profile("local", PROFILES_DIR / "slurm.toml")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"nodes": 0}, "nodes must be at least 1"),
        ({"mem": 4.0, "mem_per_gpu": 8.0, "gpus_per_node": 1}, "mem .* or mem_per_gpu, not both"),
        ({"mem_per_gpu": 8.0}, "mem_per_gpu needs gpus_per_node > 0"),
        ({"time": 2, "signal_delay_s": 120}, "signal_delay_s=120 must be shorter than the time limit"),
        ({"setup": ["module load cuda", ""]}, r"setup\[1\] must be one non-empty shell line"),
        ({"partition": "gpu; rm -rf /"}, "partition must be a plain SLURM name"),
        ({"exclude": "node 1"}, "exclude must be a SLURM node list"),
        ({"kind": "local", "partition": "debug"}, "partition only mean something to SLURM"),
        ({"kind": "local", "nodes": 2}, "nodes must be 1"),
    ],
)
def test_invalid_profiles_are_refused_with_the_field_named(fields, message):
    with pytest.raises(ValueError, match=message):
        ClusterProfile(name="bad", **fields)


def test_tasks_default_to_one_per_gpu():
    assert ClusterProfile(name="gpu", gpus_per_node=4, nodes=2).world_size == 8
    assert ClusterProfile(name="cpu").tasks == 1
    assert ClusterProfile(name="mixed", gpus_per_node=4, tasks_per_node=1).tasks == 1


def test_sbatch_options_keep_fractional_memory_and_leave_unset_fields_out():
    options = ClusterProfile(name="p", partition="a100", gpus_per_node=2, mem_per_gpu=1.5, time=30).sbatch_options()
    assert options == {
        "nodes": 1,
        "ntasks-per-node": 2,
        "cpus-per-task": 1,
        "time": 30,
        "partition": "a100",
        "gpus-per-node": 2,
        "mem-per-gpu": "1536M",
    }


PARTITION = PartitionInfo(
    name="gpu", available=True, nodes=4, cpus_per_node=32, memory_mb=256_000, gpus_per_node=4, time_limit_min=2880
)


def test_a_request_that_fits_has_no_problems():
    profile = ClusterProfile(name="fits", nodes=4, gpus_per_node=4, cpus_per_task=8, mem_per_gpu=60, time=2880)
    assert request_problems(profile, PARTITION) == []


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"nodes": 5}, "nodes = 5, but partition 'gpu' has 4 node"),
        (
            {"cpus_per_task": 9, "gpus_per_node": 4},
            "4 x 9 = 36 CPUs per node, but the nodes of partition 'gpu' have at most 32",
        ),
        ({"gpus_per_node": 8}, "gpus_per_node = 8, but the nodes of partition 'gpu' have 4 GPU"),
        ({"mem": 300.0}, "mem = 300.0 GB per node, but the nodes of partition 'gpu' have 256000 MB"),
        ({"gpus_per_node": 4, "mem_per_gpu": 80.0}, "mem_per_gpu x gpus_per_node = 327680 MB per node"),
        ({"time": 3000}, "time = 3000 min, but partition 'gpu' allows at most 2880 min"),
    ],
)
def test_a_request_beyond_the_partition_names_the_field(fields, message):
    problems = request_problems(ClusterProfile(name="too-big", **fields), PARTITION)
    assert len(problems) == 1
    assert message in problems[0]


def test_local_profile_makes_a_local_executor_with_its_limits(tmp_path):
    profile = ClusterProfile(name="local", kind="local", time=30, signal_delay_s=20, tasks_per_node=2)
    executor = make_executor(profile, tmp_path / "logs", job_name="test")
    assert isinstance(executor, submitit.LocalExecutor)
    assert executor.parameters["timeout_min"] == 30
    assert executor.parameters["tasks_per_node"] == 2
    assert executor.parameters["signal_delay_s"] == 20
