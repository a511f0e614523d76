"""Jobs through Submitit on the real single-node SLURM cluster (cluster/slurm/start-local-cluster.sh), and on
the local executor where that is the point: requests the cluster refuses, the torch.distributed rendezvous
of a 2-task job with a DeepSpeed step on it, a Ray cluster per job, and preemption with requeue and resume.

SLURM tests skip, saying why, where no cluster answers. Job functions defined here travel by value
(cloudpickle), since a job's Python cannot import this test file.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import submitit

from cluster.config import load_config
from cluster.pause_points import PAUSES_VARIABLE
from cluster.profile import ClusterProfile
from cluster.ray_job_isolation import ray_ports
from cluster.ray_on_slurm import cpus_per_node
from cluster.rendezvous import expand_hostlist, node_address
from launch.cli import main
from launch.executors import SubmissionError, check_request, load_profile, make_executor, submit_jobs
from launch.jobs import TrainingJob
from model.run_folder import RunFolder
from tests.demo_corpora import write_wav_corpus
from tests.pauses import Pauses
from tests.slurm_nodes import usable_nodes

cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_WAIT_S = 120


def slurm_profile(**fields) -> ClusterProfile:
    """The packaged SLURM profile (partition debug), small and short, with `fields` changed."""
    base = load_profile("slurm")
    values = {"name": "test", "kind": "slurm", "partition": base.partition, "time": 5, "mem": 1.0, **fields}
    return ClusterProfile(**values)


def wait_for(jobs: list[submitit.Job], timeout_s: float = JOB_WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    for job in jobs:
        while not job.done():
            if time.monotonic() > deadline:
                for other in jobs:
                    other.cancel(check=False)
                pytest.fail(
                    f"job {job.job_id} not done after {timeout_s} s (state {job.state}); logs {job.paths.folder}"
                )
            time.sleep(0.3)


# --- requests the cluster cannot satisfy --------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.parametrize(
    "fields, message",
    [
        ({"nodes": 9}, r"nodes = 9, but partition 'debug' has [12] node"),
        ({"mem": 100_000.0}, r"mem = 100000.0 GB per node"),
        ({"gpus_per_node": 1}, r"gpus_per_node = 1, but the nodes of partition 'debug' have no GPU"),
        ({"cpus_per_task": 64}, r"64 CPUs per node"),
        ({"partition": "nowhere"}, r"partition 'nowhere' does not exist on this cluster; set `partition`"),
        ({"constraint": "h100"}, r"SLURM rejects the request .*--constraint=h100.*Invalid feature specification"),
    ],
    ids=["nodes", "memory", "gpus", "cpus", "partition", "constraint"],
)
def test_impossible_request_is_refused_at_submission(slurm_cluster, tmp_path, fields, message):
    profile = slurm_profile(**fields)
    executor = make_executor(profile, tmp_path / "logs", job_name="impossible")
    with pytest.raises(SubmissionError, match=message):
        submit_jobs(executor, profile, [os.getpid])
    assert not list((tmp_path / "logs").glob("*.out")), "nothing may have been submitted"


@pytest.mark.slurm
def test_a_request_that_fits_passes_the_check(slurm_cluster):
    check_request(load_profile("slurm"))


def test_profile_with_an_unknown_field_is_a_clear_cli_error(tmp_path, capsys):
    profile = tmp_path / "cluster.toml"
    profile.write_text('name = "x"\nkind = "slurm"\npartiton = "debug"\n')
    code = main(["launch", "train", "--cluster", "slurm", "--profile", str(profile), "store=/nowhere"])
    error = capsys.readouterr().err
    assert code == 2
    assert "unknown config key 'partiton'" in error and "Did you mean 'partition'" in error
    assert "Traceback" not in error


# --- the rendezvous of a 2-task job, and a DeepSpeed step on it -----------------------------------------

LEARNING_RATE = 0.1


def rank_batch(rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Each rank's own 4 samples of a linear regression."""
    rng = np.random.default_rng(100 + rank)
    return rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 1)).astype(np.float32)


def initial_weights() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, 3)).astype(np.float32)


def deepspeed_step_on_job_rendezvous() -> dict:
    """Run in each task: find the rendezvous in the job's environment, then take one DeepSpeed SGD step (gloo)."""
    import deepspeed
    import torch

    from cluster.rendezvous import export_rendezvous, resolve_rendezvous
    from launch.jobs import export_local_task_rendezvous

    export_local_task_rendezvous()
    rendezvous = resolve_rendezvous()
    export_rendezvous(rendezvous)
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(initial_weights()))
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    # DeepSpeed 0.19 clips the gradient norm to 1.0 unless told otherwise; the reference step does not clip.
    config = {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": 0},
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    inputs, targets = (torch.from_numpy(a) for a in rank_batch(rendezvous.rank))
    loss = torch.nn.functional.mse_loss(engine(inputs), targets)
    engine.backward(loss)
    engine.step()
    return {
        "rank": rendezvous.rank,
        "local_rank": rendezvous.local_rank,
        "world_size": rendezvous.world_size,
        "master_addr": rendezvous.master_addr,
        "master_port": rendezvous.master_port,
        "backend": torch.distributed.get_backend(),
        "nodelist": os.environ.get("SLURM_JOB_NODELIST"),
        "weights": model.weight.detach().numpy().tolist(),
    }


@pytest.mark.integration
@pytest.mark.parametrize("cluster", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_two_task_job_finds_its_rendezvous_and_takes_a_deepspeed_step(request, monkeypatch, cluster, tmp_path):
    if cluster == "slurm":
        request.getfixturevalue("slurm_cluster")
        profile = slurm_profile(tasks_per_node=2, cpus_per_task=1, mem=2.0)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        profile = load_profile("local", None, ["tasks_per_node=2"])
    executor = make_executor(profile, tmp_path / "logs", job_name="rendezvous")
    (job,) = submit_jobs(executor, profile, [deepspeed_step_on_job_rendezvous])
    wait_for([job], timeout_s=180)
    results = sorted(job.results(), key=lambda r: r["rank"])

    assert [r["rank"] for r in results] == [0, 1]
    assert [r["local_rank"] for r in results] == [0, 1]
    assert {r["world_size"] for r in results} == {2}
    assert {r["backend"] for r in results} == {"gloo"}
    (address,) = {r["master_addr"] for r in results}
    if cluster == "slurm":
        first = expand_hostlist(results[0]["nodelist"])[0]
        assert address == (node_address(first) or first), "rank 0 listens on the job's first node, at its NodeAddr"
    else:
        assert address == "127.0.0.1"
    (port,) = {r["master_port"] for r in results}
    assert 1024 < port < 32768, "the port is derived from the job id, below Linux's ephemeral range"
    # Both ranks hold the weights of one SGD step on the mean gradient of both ranks' batches.
    weights = initial_weights().astype(np.float64)
    gradients = []
    for rank in (0, 1):
        x, y = (a.astype(np.float64) for a in rank_batch(rank))
        gradients.append(2 * ((x @ weights.T - y).T @ x) / len(x))
    expected = weights - LEARNING_RATE * np.mean(gradients, axis=0)
    for result in results:
        np.testing.assert_allclose(result["weights"], expected, rtol=1e-5)


# --- a Ray cluster per job -------------------------------------------------------------------------------


def test_ray_ports_and_cpus_per_node_are_read_from_the_job():
    blocks = [ray_ports(job_id) for job_id in range(1000, 1010)]
    ports = [port for block in blocks for port in vars(block).values()]
    assert len(set(ports)) == len(ports), "neighbouring jobs share no port"
    assert all(1024 < port < 10002 for port in ports), "below Ray's worker ports and torch.distributed's (12000+)"
    assert cpus_per_node({"SLURM_JOB_CPUS_PER_NODE": "4(x2),2"}) == [4, 4, 2]

def test_a_taken_port_moves_the_job_to_the_next_free_block():
    import socket

    from cluster.ray_job_isolation import free_ray_ports

    own = ray_ports(4242)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("", own.node_manager))
        holder.listen()
        ports = free_ray_ports(4242)
    assert own.node_manager not in vars(ports).values()
    assert "--min-worker-port=0" in ports.flags(head=False), "Ray's worker processes take ports the OS picks"


def test_job_token_and_temp_folders_are_private(tmp_path):
    from cluster.ray_job_isolation import (
        RaySlurmError,
        check_token_file,
        make_ray_temp_dir,
        ray_environment,
        ray_temp_dirs,
        write_job_token,
    )

    token = write_job_token(tmp_path)
    assert (token.stat().st_mode & 0o777, token.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert len(token.read_text()) == 64 and token.read_text() != write_job_token(tmp_path).read_text()
    check_token_file(token)
    token.chmod(0o644)
    with pytest.raises(RaySlurmError, match="mode 0600"):
        check_token_file(token)
    with pytest.raises(RaySlurmError, match="cannot read"):
        check_token_file(tmp_path / "missing")
    temp = make_ray_temp_dir(987654)
    try:
        assert temp.stat().st_mode & 0o777 == 0o700
        assert ray_temp_dirs(987654) == [temp]
        env = ray_environment(temp, token)
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token)
        assert env["RAY_TMPDIR"].startswith(f"{temp}/"), "Ray works inside the private folder"
    finally:
        temp.rmdir()


def test_gloo_is_bound_to_the_interface_that_reaches_rank_0():
    from cluster.rendezvous import Rendezvous, export_rendezvous, interface_towards, node_address

    assert interface_towards("127.0.0.1") == "lo"
    assert node_address("no-such-node-anywhere") is None
    two = Rendezvous(rank=1, local_rank=0, world_size=2, master_addr="127.0.0.1", master_port=23456)
    environ: dict[str, str] = {}
    export_rendezvous(two, environ)
    assert environ["GLOO_SOCKET_IFNAME"] == "lo"
    environ = {"GLOO_SOCKET_IFNAME": "ib0"}
    export_rendezvous(two, environ)
    assert environ["GLOO_SOCKET_IFNAME"] == "ib0", "the user's choice wins"
    environ = {}
    export_rendezvous(Rendezvous(rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=1), environ)
    assert "GLOO_SOCKET_IFNAME" not in environ


def ray_cluster_probe(log_dir: str) -> dict:
    """Run in the batch script: bring Ray up, run tasks, tear everything down."""
    import ray

    from cluster.ray_job_isolation import ray_temp_dirs
    from cluster.ray_on_slurm import _processes_of, ray_cluster_on_slurm

    job_id = int(os.environ["SLURM_JOB_ID"])
    with ray_cluster_on_slurm(Path(log_dir)) as address:
        squares = ray.get([ray.remote(lambda x: x * x).remote(i) for i in range(4)])
        nodes = sum(1 for node in ray.nodes() if node["Alive"])
        (temp_dir,) = ray_temp_dirs(job_id)
        processes_while_up = len(_processes_of(temp_dir))
    return {
        "address": address,
        "squares": squares,
        "nodes": nodes,
        "processes_while_up": processes_while_up,
        "processes_after": len(_processes_of(temp_dir)),
        "temp_dir_left": bool(ray_temp_dirs(job_id)),
    }


@pytest.mark.slurm
@pytest.mark.integration
def test_two_jobs_on_one_node_each_get_their_own_ray_cluster_and_leave_nothing_behind(slurm_cluster, tmp_path):
    # On a cluster of several nodes, both jobs go to the first (the two-node case is in test_multinode.py).
    others = usable_nodes()[1:]
    profile = slurm_profile(mem=2.0, exclude=",".join(others) if others else None)
    executor = make_executor(profile, tmp_path / "logs", job_name="ray", in_batch_script=True)
    log_dir = str(tmp_path / "logs")
    jobs = submit_jobs(executor, profile, [lambda: ray_cluster_probe(log_dir), lambda: ray_cluster_probe(log_dir)])
    wait_for(jobs)
    first, second = (job.result() for job in jobs)
    assert first["address"] != second["address"], "two jobs on one node need their own ports"
    for result in (first, second):
        assert result["nodes"] == 1
        assert result["squares"] == [0, 1, 4, 9]
        assert result["processes_while_up"] >= 2, "gcs_server and raylet at least"
        assert result["processes_after"] == 0, "raylet and gcs_server ignore SIGTERM; teardown must kill them"
        assert not result["temp_dir_left"]


@pytest.mark.slurm
@pytest.mark.integration
def test_extraction_job_runs_the_pipeline_on_the_jobs_ray_cluster(slurm_cluster, tmp_path):
    from cluster.ray_job_isolation import ray_temp_dirs
    from extract.extract_config import ExtractConfig
    from extract.feature_store import FeatureStore
    from extract.meld import read_meld
    from launch.jobs import ExtractionJob

    corpus = write_wav_corpus(tmp_path / "corpus", train=2, dev=1, test=1, max_utterances=3)
    config = load_config(
        ExtractConfig,
        None,
        [
            f"corpus={json.dumps(str(corpus))}",
            f"store_root={json.dumps(str(tmp_path / 'stores'))}",
            'families=["opensmile"]',
            "shard_dialogues=1",
        ],
    )
    profile = slurm_profile(cpus_per_task=2, mem=2.0)
    executor = make_executor(profile, tmp_path / "logs", job_name="extract", in_batch_script=True)
    (job,) = submit_jobs(executor, profile, [ExtractionJob(config)])
    wait_for([job], timeout_s=180)
    store = FeatureStore.open(job.result())

    assert store.verify() == []
    utterances = read_meld(corpus, check_clips=False).utterances
    assert sum(len(store.read_split(split, families=[])) for split in store.splits) == len(utterances)
    assert "Ray cluster of job" in job.stderr(), "the pipeline ran on the Ray cluster the job brought up"
    assert ray_temp_dirs(int(job.job_id)) == []


# --- preemption: signalled, requeued, resumed ------------------------------------------------------------

PREEMPTED_EPOCHS = 8


@pytest.fixture(scope="module")
def preemption_config(tmp_path_factory):
    from test_sweep import TINY_OVERRIDES, write_tiny_store

    from model.run_config import RunConfig

    store = write_tiny_store(tmp_path_factory.mktemp("features"))
    epochs = [f"train.max_epochs={PREEMPTED_EPOCHS}", f"train.patience={PREEMPTED_EPOCHS}"]
    return load_config(
        RunConfig, None, [*TINY_OVERRIDES, "text_mode=frozen", *epochs, f"store={json.dumps(str(store))}"]
    )


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, preemption_config) -> Path:
    """The same run, never interrupted, on the local executor: started once, awaited by each test."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    profile = load_profile("local")
    with pytest.MonkeyPatch.context() as environment:
        # The job inherits this: one thread, so that concurrent jobs do not oversubscribe the cores.
        environment.setenv("OMP_NUM_THREADS", "1")
        (job,) = submit_jobs(
            make_executor(profile, folder / "logs", job_name="reference"),
            profile,
            [TrainingJob(preemption_config, folder / "run")],
        )
    yield folder / "run", job
    job.cancel(check=False)


def completed_epochs(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def signal_local_task(job: submitit.Job) -> None:
    """Send the preemption signal to the task, as the local executor's controller does before its time limit.

    (Submitit's LocalJob._interrupt signals the controller, which does not handle it and dies.)
    """
    controller = int(job.job_id)
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert len(children) == 1, f"expected one task under the controller, found {children}"
    os.kill(int(children[0]), signal.SIGUSR2)


def release_requeued_slurm_job(job: submitit.Job, timeout_s: float = 60) -> None:
    """Start the requeued job now: SLURM holds a requeued batch job for about two minutes (BeginTime)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = subprocess.run(["scontrol", "show", "job", job.job_id], capture_output=True, text=True).stdout
        if "JobState=PENDING" in shown and "Reason=BeginTime" in shown:
            subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], check=True)
            return
        time.sleep(0.2)
    pytest.fail(f"job {job.job_id} was not requeued within {timeout_s} s")


@pytest.mark.integration
@pytest.mark.parametrize("cluster", ["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def test_preempted_run_is_requeued_and_ends_as_the_uninterrupted_one(
    request, monkeypatch, cluster, tmp_path, preemption_config, uninterrupted_run
):
    if cluster == "slurm":
        request.getfixturevalue("slurm_cluster")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    profile = load_profile("local") if cluster == "local" else slurm_profile(time=10, mem=1.5)
    run_dir = tmp_path / "run"
    # Only this job sees the pause folder (the uninterrupted one was submitted before): local jobs inherit this
    # environment, and sbatch exports it.
    pauses = Pauses(tmp_path / "pauses", "checkpoint-saved-epoch-0002")
    monkeypatch.setenv(PAUSES_VARIABLE, str(pauses.folder))
    (job,) = submit_jobs(
        make_executor(profile, tmp_path / "logs", job_name="preempted"),
        profile,
        [TrainingJob(preemption_config, run_dir)],
    )
    monkeypatch.delenv(PAUSES_VARIABLE)
    # Preempted while held just after epoch 2's checkpoint, inside the training loop with epochs still to run.
    with pauses.held("checkpoint-saved-epoch-0002", lambda: not job.done()):
        if cluster == "local":
            signal_local_task(job)
        else:
            job._interrupt()
    if cluster == "slurm":
        release_requeued_slurm_job(job)
    wait_for([job], timeout_s=180)
    job.result()

    attempts = [json.loads(line) for line in RunFolder(run_dir).attempts_path.read_text().splitlines()]
    assert [a["resume"] for a in attempts] == [False, True], "one start, then one requeued start that resumes"
    assert completed_epochs(run_dir) == PREEMPTED_EPOCHS

    reference_dir, reference_job = uninterrupted_run
    wait_for([reference_job], timeout_s=180)
    reference = json.loads((reference_dir / "test_metrics.json").read_text())
    resumed = json.loads((run_dir / "test_metrics.json").read_text())
    assert resumed["epoch"] == reference["epoch"]
    assert resumed["confusion"] == reference["confusion"]
    assert resumed["weighted_f1"] == pytest.approx(reference["weighted_f1"], abs=1e-12)
    assert resumed["per_class_f1"] == pytest.approx(reference["per_class_f1"], abs=1e-12)
    reference_history = [json.loads(line) for line in (reference_dir / "metrics.jsonl").read_text().splitlines()]
    resumed_history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for ours, theirs in zip(resumed_history, reference_history, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-9)
        assert ours["dev_loss"] == pytest.approx(theirs["dev_loss"], rel=1e-9)
