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
import re
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
from test_launch_slurm import completed_epochs, release_requeued_slurm_job, wait_for

from cluster.config import load_config
from cluster.pause_points import PAUSES_VARIABLE
from launch.cli import main
from launch.executors import load_profile, make_executor, submit_jobs
from tests.pauses import Pauses
from tests.rank_equivalence import assert_ranks_match_one_process
from tests.slurm_nodes import usable_nodes

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.integration]

START_HINT = "start one with `sudo bash cluster/slurm/start-local-cluster.sh --nodes 2`"
TWO_NODE_PROFILE = Path(__file__).parents[2] / "launch" / "profiles" / "slurm-two-nodes.toml"
JOB_WAIT_S = 240


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


# How long a job's Ray cluster waits for the other job's to come up; a job that never comes up fails the test.
RAY_BARRIER_S = 300


def ray_cluster_probe(log_dir: str) -> dict:
    """Run in a two-node job's batch script: bring Ray up, run a task on each node, try to get in without the token."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from cluster.ray_job_isolation import ray_temp_dirs
    from cluster.ray_on_slurm import _processes_of, ray_cluster_on_slurm

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
        # Stay up until the other job's cluster is up too: a barrier of one file per job in the shared log folder.
        (Path(log_dir) / f"ray-up-{job_id}").touch()
        deadline = time.monotonic() + RAY_BARRIER_S
        while len(list(Path(log_dir).glob("ray-up-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        down_at = time.time()
    return {
        "address": address,
        "hosts": hosts,
        "node_addresses": sorted(node["NodeManagerAddress"] for node in nodes),
        "token_modes": token_modes,
        "token_left": token.exists(),
        "temp_dirs": [str(folder) for folder in temp_dirs],
        "temp_dir_modes": temp_dir_modes,
        "temp_dirs_left": sorted({str(f) for f in [*temp_dirs, *ray_temp_dirs(job_id)] if f.exists()}),
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


# --- extraction across the allocation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory) -> Path:
    from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus

    return write_demo_corpus(
        tmp_path_factory.mktemp("corpus"),
        DemoCorpusConfig(
            train_dialogues=5, dev_dialogues=1, test_dialogues=1, min_utterances=2, max_utterances=3,
            clip_format="wav", workers=2,
        ),
    )


def feature_checksums(store_dir: Path) -> dict[str, tuple[list[str], str]]:
    """Per split: the row keys and the sha256 of its opensmile feature array."""
    from extract.feature_store import FeatureStore

    store = FeatureStore.open(store_dir)
    checksums = {}
    for split in store.splits:
        rows = store.read_split(split, families=["opensmile"])
        features = np.ascontiguousarray(rows.features["opensmile"])
        checksums[split] = (list(rows.keys), hashlib.sha256(features.tobytes()).hexdigest())
    return checksums


def test_extraction_across_two_nodes_records_both_hosts_and_equals_a_one_node_store(two_nodes, demo_corpus, tmp_path):
    from cluster.ray_job_isolation import ray_temp_dirs
    from extract.extract_config import ExtractConfig
    from extract.manifest import read_manifest
    from extract.pipeline import run_extraction

    overrides = ['families=["opensmile"]', "shard_dialogues=1"]
    one_node = run_extraction(load_config(ExtractConfig, None, [
        *overrides, f"corpus={json.dumps(str(demo_corpus))}", f"store_root={json.dumps(str(tmp_path / 'one'))}",
        "ray.num_workers=2",
    ]))
    code = main([
        "launch", "extract", str(demo_corpus), "--cluster", "slurm", "--profile", str(TWO_NODE_PROFILE),
        "--profile-set", "time=10", "--wait", *overrides, f"store_root={json.dumps(str(tmp_path / 'two'))}",
    ])
    assert code == 0
    (two_node,) = [folder for folder in (tmp_path / "two").iterdir() if folder.name != "logs"]
    assert two_node.name == one_node.name, "the same config names the same store"

    shards = read_manifest(two_node)["shards"]
    assert all(entry["hosts"] and set(entry["hosts"]) <= set(two_nodes) for entry in shards), shards
    assert {host for entry in shards for host in entry["hosts"]} == set(two_nodes[:2]), "both nodes computed shards"
    assert feature_checksums(two_node) == feature_checksums(one_node)
    log = "".join(path.read_text() for path in (tmp_path / "two" / "logs").glob("*_log.err"))
    assert "2 node(s)" in log, "the pipeline ran on the job's two-node Ray cluster"
    job_ids = {path.name.split("_")[0] for path in (tmp_path / "two" / "logs").glob("*_log.err")}
    assert all(ray_temp_dirs(int(job_id)) == [] for job_id in job_ids), "no temp folder left on any node"


# --- training with one rank per node ----------------------------------------------------------------------

TRAIN_EPOCHS = 4


def one_process_environment() -> dict[str, str]:
    """This process's environment without SLURM's or torch.distributed's variables, one torch thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in (
        "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def one_process_run(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    """The reference: the same run as one process on this machine accumulating the 2 ranks' shares, started now,
    awaited by the caller.

    The runs here do not accumulate, so the one process cuts each global batch into 2 micro-batches: the
    first holds rank 0's dialogues and the second rank 1's (`RankBatch.micro_batches`), the same forward and
    backward passes the ranks run (`tests.rank_equivalence`).
    """
    assert not any(o.startswith("train.gradient_accumulation_steps=") for o in overrides), "the ranks accumulate"
    rest = [o for o in overrides if not o.startswith("store=")] + ["train.gradient_accumulation_steps=2"]
    command = [sys.executable, "-m", "launch.cli", "train", str(store_of(overrides)), *rest, "--run-dir", str(run_dir)]
    return subprocess.Popen(
        command, env=one_process_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def task_hosts(log_folder: Path) -> set[str]:
    """The hosts Submitit's tasks started on, from each task's log ('Starting with JobEnvironment(... hostname=X')."""
    hosts = set()
    for path in log_folder.glob("*_log.*"):
        hosts.update(re.findall(r"JobEnvironment\(.*?hostname=([^,]+),", path.read_text()))
    return hosts


def store_of(overrides: list[str]) -> Path:
    (store,) = [json.loads(o.partition("=")[2]) for o in overrides if o.startswith("store=")]
    return Path(store)


@pytest.fixture(scope="module")
def frozen_overrides(tmp_path_factory) -> list[str]:
    from test_sweep import write_tiny_store
    from test_train import OVERRIDES

    store = write_tiny_store(tmp_path_factory.mktemp("features"))
    return [*OVERRIDES, "text_mode=frozen", f"train.max_epochs={TRAIN_EPOCHS}", f"train.patience={TRAIN_EPOCHS}",
            f"store={json.dumps(str(store))}"]


@pytest.fixture(scope="module")
def end_to_end_overrides(tmp_path_factory) -> list[str]:
    from test_end_to_end import CLASS_WORDS, WORDS, e2e_overrides

    from extract.feature_store import FeatureStore, build_store_from_arrays
    from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
    from model.text_encoder import TextEncoderConfig, load_tokenizer
    from model.token_cache import build_token_cache
    from tests.learnable_store import learnable_split

    encoder = build_tiny_text_encoder(tmp_path_factory.mktemp("tiny"), WORDS * 2, TinyEncoderConfig(hidden_size=32))
    config = json.loads((encoder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (encoder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(5)
    arrays = {split: learnable_split(split, dialogues, seed) for split, dialogues, seed in
              (("train", 16, 0), ("dev", 4, 1), ("test", 4, 2))}
    for rows in arrays.values():
        rows.transcripts = [" ".join([CLASS_WORDS[label], *rng.choice(WORDS, int(rng.integers(0, 6)))])
                            for label in rows.emotion]
    store = build_store_from_arrays(tmp_path_factory.mktemp("e2e") / "words-000000000000", arrays, {"corpus": "x"})
    # Built here, once: the ranks of the job then read it, rather than each tokenizing the store.
    encoder_config = TextEncoderConfig(model=str(encoder))
    build_token_cache(FeatureStore.open(store), load_tokenizer(encoder_config), encoder_config)
    encoder_override = f"end_to_end.encoder.model={json.dumps(str(encoder))}"
    # Without accumulation, whose reference would add the 4 micro-batches in another grouping than the ranks
    # (test_end_to_end ties ZeRO-2's accumulation on 2 ranks to plain data parallel bitwise), and without
    # clipping: ZeRO sums the squared norm per rank's partition, then across ranks, so the clip factor's last
    # bits differ from one process's.
    ranks_own = [o for o in e2e_overrides(store) if not o.startswith("train.gradient_accumulation_steps=")]
    return [*ranks_own, encoder_override, "train.max_epochs=2", "train.patience=2",
            "end_to_end.engine.gradient_clipping=0.0"]


@pytest.mark.parametrize("mode", ["frozen", "end_to_end"])
def test_training_with_one_rank_on_each_node_matches_one_process(two_nodes, mode, request, tmp_path):
    overrides = request.getfixturevalue(f"{mode}_overrides")
    reference = one_process_run(tmp_path / "one", overrides)
    run_dir = tmp_path / "two"
    code = main([
        "launch", "train", "--cluster", "slurm", "--profile", str(TWO_NODE_PROFILE), "--profile-set",
        "cpus_per_task=1", "--profile-set", "time=10", "--run-dir", str(run_dir), "--wait", *overrides,
    ])
    assert code == 0
    assert task_hosts(run_dir / "logs") == set(two_nodes[:2]), "rank 0 and rank 1 ran on different nodes"
    _, errors = reference.communicate(timeout=JOB_WAIT_S)
    assert reference.returncode == 0, errors[-3000:]
    assert_ranks_match_one_process(run_dir, tmp_path / "one", store_of(overrides))


# --- preemption of a two-node job, and a sweep over both nodes --------------------------------------------

PREEMPTED_EPOCHS = 8


def test_a_preempted_two_node_run_is_requeued_and_ends_as_the_uninterrupted_one(
    two_nodes, frozen_overrides, tmp_path, monkeypatch
):
    from launch.jobs import TrainingJob
    from model.run_config import RunConfig
    from model.run_folder import RunFolder

    overrides = [*frozen_overrides, f"train.max_epochs={PREEMPTED_EPOCHS}", f"train.patience={PREEMPTED_EPOCHS}"]
    reference = one_process_run(tmp_path / "uninterrupted", overrides)
    profile = two_node_profile("cpus_per_task=1", "time=10")
    run_dir = tmp_path / "run"
    # The job's ranks inherit this environment (sbatch exports it); the folder is on the filesystem both nodes share.
    pauses = Pauses(tmp_path / "pauses", "checkpoint-saved-epoch-0002")
    monkeypatch.setenv(PAUSES_VARIABLE, str(pauses.folder))
    (job,) = submit_jobs(
        make_executor(profile, tmp_path / "logs", job_name="preempted"),
        profile,
        [TrainingJob(load_config(RunConfig, None, overrides), run_dir)],
    )
    monkeypatch.delenv(PAUSES_VARIABLE)
    # Preempted while rank 0 is held just after epoch 2's checkpoint: inside the training loop, six epochs to go.
    with pauses.held("checkpoint-saved-epoch-0002", lambda: not job.done()):
        job._interrupt()
    release_requeued_slurm_job(job)
    wait_for([job], timeout_s=JOB_WAIT_S)
    assert job.results()[0]["weighted_f1"] >= 0

    attempts = [json.loads(line) for line in RunFolder(run_dir).attempts_path.read_text().splitlines()]
    assert [a["resume"] for a in attempts] == [False, True], "one start, then one requeued start that resumes"
    assert 2 <= completed_epochs(run_dir) == PREEMPTED_EPOCHS
    assert task_hosts(tmp_path / "logs") == set(two_nodes[:2])
    _, errors = reference.communicate(timeout=JOB_WAIT_S)
    assert reference.returncode == 0, errors[-3000:]
    assert_ranks_match_one_process(run_dir, tmp_path / "uninterrupted", store_of(overrides))


def test_a_sweep_of_two_parallel_runs_lands_on_both_nodes(two_nodes, frozen_overrides, tmp_path):
    from model.run_folder import RunFolder

    sweep_dir = tmp_path / "sweep"
    # Each run asks for more than half a node's memory, so the two runs of the array cannot share a node.
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%m"], capture_output=True, text=True, timeout=15)
    node_memory_gb = int(sinfo.stdout.split()[0]) / 1024
    code = main([
        "sweep", "--seeds", "0,1", "--cluster", "slurm", "--profile", str(TWO_NODE_PROFILE),
        "--profile-set", "nodes=1", "--profile-set", "cpus_per_task=1", "--profile-set", "array_parallelism=2",
        "--profile-set", f"mem={0.6 * node_memory_gb:.1f}", "--profile-set", "time=10", "--out", str(sweep_dir),
        "--wait", *[o for o in frozen_overrides if not o.startswith("seed=")], "train.max_epochs=2", "train.patience=2",
    ])
    assert code == 0
    attempts = sorted(sweep_dir.rglob(RunFolder(sweep_dir).attempts_path.name))
    hosts = [json.loads(path.read_text().splitlines()[0])["host"] for path in attempts]
    assert len(hosts) == 2 and set(hosts) == set(two_nodes[:2]), hosts
