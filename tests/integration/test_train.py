"""Training with the real DeepSpeed engine on a small learnable store: learning, resume after a kill,
two gloo ranks against one, re-evaluation; and the rendezvous that places a process in a job."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.config import load_config
from cluster.pause_points import PAUSES_VARIABLE
from cluster.rendezvous import (
    LOOPBACK,
    Rendezvous,
    RendezvousError,
    expand_hostlist,
    export_rendezvous,
    free_port,
    resolve_rendezvous,
    slurm_port,
)
from extract.labels import EMOTION_INDEX
from launch.cli import main
from model.engine import deepspeed_config
from model.metrics import classification_metrics
from model.run_config import RunConfig, TrainConfig
from model.run_folder import RunFolder
from model.run_inputs import class_weight_vector
from model.train import train
from tests.learnable_store import write_learnable_store
from tests.pauses import Pauses, killed_at
from tests.rank_equivalence import assert_ranks_match_one_process, history
from tests.tiny_runs import tiny_bimodal_head

# Module-scoped: the store and the runs its fixtures build train on one thread too.
pytestmark = pytest.mark.usefixtures("one_thread")
MAX_EPOCHS = 8
# One config for every run here, as `key=value` overrides, so the CLI and in-process runs share it. Without
# dropout, so that one rank and two ranks (each with its own dropout stream) take the same steps.
OVERRIDES = tiny_bimodal_head(epochs=MAX_EPOCHS, batch_dialogues=8, seed=5, dropout=0.0, input_dropout=0.0)
# The resume test trains with dropout, whose masks must also come out the same after a restart.
DROPOUT_OVERRIDES = [*OVERRIDES, "model.dropout=0.3", "model.input_dropout=0.1"]
_DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID")


def clean_environment() -> dict[str, str]:
    """This process's environment without any rendezvous, for a child that must find its own.

    The child gets this process's torch thread count: float sums split over another number of
    threads round differently, and the resume test compares runs bit for bit.
    """
    environ = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_VARIABLES}
    return environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}


def without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if "seconds" not in k} for record in records]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("features") / "learnable-000000000000"
    return write_learnable_store(path, test_dialogues=10, separation=1.5, offset=2.0)


def uninterrupted_run(store: Path, folder: Path, overrides: list[str]) -> tuple[Path, dict]:
    config = load_config(RunConfig, None, [*overrides, f"store={json.dumps(str(store))}"])
    return folder, train(config, folder)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, store) -> tuple[Path, dict]:
    """One uninterrupted single-process run: the baseline the other runs are compared with."""
    return uninterrupted_run(store, tmp_path_factory.mktemp("runs") / "reference", OVERRIDES)


@pytest.mark.integration
def test_training_lowers_the_loss_and_fills_the_run_folder(reference_run, store):
    run_dir, test = reference_run
    records = history(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, MAX_EPOCHS + 1))
    assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"]
    best = min(records, key=lambda r: r["dev_loss"])
    assert test["epoch"] == best["epoch"], "the test split is scored with the lowest-dev-loss epoch"
    for name in ("config.toml", "feature_statistics.npz", "learning_curves.png", "confusion_test.png"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()) == [test["checkpoint"]]
    # test_metrics.json agrees with the per-utterance predictions it came from.
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == test["count"] == sum(test["support"].values())
    recomputed = classification_metrics(
        np.array([EMOTION_INDEX[p["gold"]] for p in predictions]),
        np.array([EMOTION_INDEX[p["pred"]] for p in predictions]),
    )
    assert recomputed.weighted_f1 == pytest.approx(test["weighted_f1"])
    assert test["weighted_f1"] > test["majority_floor"]["weighted_f1"] + 0.1


@pytest.mark.integration
def test_resume_after_a_kill_ends_where_an_uninterrupted_run_ends(store, tmp_path, capsys):
    reference_dir, reference_test = uninterrupted_run(store, tmp_path / "uninterrupted", DROPOUT_OVERRIDES)
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "launch.cli", "train", str(store), *DROPOUT_OVERRIDES, "--run-dir", str(run_dir)]
    # Killed while held just after epoch 3's checkpoint, before that epoch's metrics line is written.
    killed_at("checkpoint-saved-epoch-0003", command, clean_environment(), tmp_path / "pauses")
    assert not (run_dir / "test_metrics.json").exists()
    assert len(history(run_dir)) == 2

    assert main(["train", str(store), *DROPOUT_OVERRIDES, "--run-dir", str(run_dir), "--resume"]) == 0
    resumed = json.loads((run_dir / "test_metrics.json").read_text())
    for key in ("weighted_f1", "accuracy", "macro_f1", "loss", "confusion", "per_class_f1", "epoch"):
        assert resumed[key] == reference_test[key], key
    assert without_times(history(run_dir)) == without_times(history(reference_dir))
    assert "selected epoch" in capsys.readouterr().out


@pytest.mark.integration
def test_two_gloo_ranks_train_as_one_process_accumulating_their_shares(store, tmp_path):
    # Why bitwise, and the evaluation losses' bound: tests.rank_equivalence.
    accumulated_dir, accumulated_test = uninterrupted_run(
        store, tmp_path / "accumulated", [*OVERRIDES, "train.gradient_accumulation_steps=2"]
    )
    run_dir = tmp_path / "two-ranks"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "launch.cli",
        "train",
        str(store),
        *OVERRIDES,
        "--run-dir",
        str(run_dir),
    ]
    result = subprocess.run(command, env=clean_environment(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_ranks_match_one_process(run_dir, accumulated_dir, store)


@pytest.mark.integration
def test_evaluate_rescores_the_selected_checkpoint(reference_run, capsys):
    run_dir, test = reference_run
    assert main(["evaluate", str(run_dir), "--split", "dev"]) == 0
    dev = json.loads((run_dir / "dev_metrics.json").read_text())
    selected = history(run_dir)[test["epoch"] - 1]
    assert dev["loss"] == pytest.approx(selected["dev_loss"], rel=1e-6)
    assert dev["weighted_f1"] == pytest.approx(selected["dev_weighted_f1"])
    assert (run_dir / "dev_predictions.jsonl").is_file()
    assert "dev" in capsys.readouterr().out


@pytest.mark.integration
def test_a_finished_run_is_not_overwritten(reference_run, store, capsys):
    run_dir, _ = reference_run
    assert main(["train", str(store), *OVERRIDES, "--run-dir", str(run_dir)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", str(store), *OVERRIDES, "seed=6", "--run-dir", str(run_dir), "--resume"]) == 2
    assert "seed: 5 -> 6" in capsys.readouterr().err
    changed = ["train.learning_rate=0.5"]
    assert main(["train", str(store), *OVERRIDES, *changed, "--run-dir", str(run_dir), "--resume"]) == 2
    assert "train.learning_rate: 0.003 -> 0.5" in capsys.readouterr().err
    # Keys that never change a result (`model.run_folder.RESULT_FREE_KEYS`) may change on resume.
    free = ["checkpoint.every_steps=2", "monitor.job_name=\"live\"", "runs_root=\"elsewhere\""]
    assert main(["train", str(store), *OVERRIDES, *free, "--run-dir", str(run_dir), "--resume"]) == 0


def test_user_errors_name_the_fix(tmp_path, capsys):
    assert main(["train", str(tmp_path / "no-store"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "train.learning_rat=1"]) == 2
    assert "Did you mean 'train.learning_rate'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_deepspeed_config_and_class_weights():
    run = RunConfig(
        store="/s", text_mode="frozen", train=TrainConfig(batch_dialogues=32, zero_stage=2, precision="bf16")
    )
    config = deepspeed_config(run, world_size=3)
    assert config["train_batch_size"] == 33 and config["train_micro_batch_size_per_gpu"] == 11
    assert config["zero_optimization"]["stage"] == 2 and config["bf16"]["enabled"]
    labels = np.array([0, 0, 0, 1, 2, 2])
    weights = class_weight_vector(labels, "balanced")
    # Balanced: every present class carries the same total weight; absent classes none.
    assert weights[0] * 3 == pytest.approx(weights[1] * 1) == pytest.approx(weights[2] * 2)
    assert weights[3:].tolist() == [0.0] * 4
    assert class_weight_vector(labels, "none") is None
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)


def test_rendezvous_from_torchrun_variables():
    environ = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "gpu01", "MASTER_PORT": "29400"}
    assert resolve_rendezvous(environ) == Rendezvous(
        rank=3, local_rank=1, world_size=4, master_addr="gpu01", master_port=29400
    )
    with pytest.raises(RendezvousError, match="MASTER_ADDR"):
        resolve_rendezvous({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1234"})
    with pytest.raises(RendezvousError, match="RANK"):
        resolve_rendezvous({"RANK": "two", "WORLD_SIZE": "2"})


def test_rendezvous_from_an_srun_step():
    environ = {
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "6",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "4711",
        "SLURM_JOB_NODELIST": "gpu[07-09,12],login1",
    }
    rendezvous = resolve_rendezvous(environ)
    assert (rendezvous.rank, rendezvous.local_rank, rendezvous.world_size) == (5, 1, 6)
    assert rendezvous.master_addr == "gpu07"
    assert rendezvous.master_port == slurm_port(4711) != slurm_port(4712)
    assert resolve_rendezvous(environ | {"MASTER_PORT": "23456"}).master_port == 23456


def test_a_batch_script_without_srun_is_one_process():
    # sbatch --ntasks=4 sets SLURM_PROCID=0 and SLURM_NTASKS=4 in the batch script itself, where one process runs.
    rendezvous = resolve_rendezvous({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "9"})
    assert (rendezvous.rank, rendezvous.world_size, rendezvous.master_addr) == (0, 1, LOOPBACK)


def test_single_process_default_and_export():
    rendezvous = resolve_rendezvous({})
    assert (rendezvous.rank, rendezvous.local_rank, rendezvous.world_size) == (0, 0, 1)
    environ: dict[str, str] = {}
    export_rendezvous(rendezvous, environ)
    assert resolve_rendezvous(environ) == rendezvous


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
        ("gpu[9-11],cpu[1,4]", ["gpu9", "gpu10", "gpu11", "cpu1", "cpu4"]),
        ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ],
)
def test_hostlist_expansion(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


# --- checkpoints inside an epoch: a requeue signal on two ranks, a kill on two ranks ------------------------

TWO_RANK_EPOCHS = 4
# Dropout on: each rank's RNG must come back as it was at the step a checkpoint was taken.
TWO_RANK_OVERRIDES = [
    *DROPOUT_OVERRIDES,
    "text_mode=frozen",
    "train.batch_dialogues=4",
    f"train.max_epochs={TWO_RANK_EPOCHS}",
    f"train.patience={TWO_RANK_EPOCHS}",
]


def local_two_task_job(config, folder: Path, name: str):
    import dataclasses

    from launch.executors import load_profile, make_executor, submit_jobs
    from launch.jobs import TrainingJob

    profile = dataclasses.replace(load_profile("local"), tasks_per_node=2)
    (job,) = submit_jobs(make_executor(profile, folder / "logs", job_name=name), profile,
                         [TrainingJob(config, folder / "run")])
    return job


@pytest.mark.integration
def test_a_requeue_signal_on_two_ranks_checkpoints_mid_epoch_and_resumes_to_the_same_result(
    store, tmp_path, monkeypatch
):

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = load_config(RunConfig, None, [*TWO_RANK_OVERRIDES, f"store={json.dumps(str(store))}"])
    reference = local_two_task_job(config, tmp_path / "reference", "reference")
    # Only the preempted job's ranks see the pause folder: Submitit's local jobs inherit this environment.
    pauses = Pauses(tmp_path / "pauses", "checkpoint-saved-epoch-0001")
    monkeypatch.setenv(PAUSES_VARIABLE, str(pauses.folder))
    preempted = local_two_task_job(config, tmp_path / "preempted", "preempted")
    monkeypatch.delenv(PAUSES_VARIABLE)
    run_dir = tmp_path / "preempted" / "run"
    # The signal reaches both ranks while rank 0 is held just after epoch 1's checkpoint: inside the training loop,
    # with epoch 2 still to run.
    with pauses.held("checkpoint-saved-epoch-0001", lambda: not preempted.done()):
        controller = int(preempted.job_id)
        tasks = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
        assert len(tasks) == 2, tasks
        for task in tasks:
            os.kill(int(task), signal.SIGUSR2)
    preempted.results()
    reference.results()

    attempts = [json.loads(line) for line in RunFolder(run_dir).attempts_path.read_text().splitlines()]
    assert [a["resume"] for a in attempts] == [False, True]
    resumed_from = [
        line for line in preempted.stderr().splitlines() if "resuming" in line and "from checkpoint" in line
    ]
    assert resumed_from and "-step-" in resumed_from[-1], "the requeued job resumed from a checkpoint inside an epoch"
    reference_dir = tmp_path / "reference" / "run"
    assert without_times(history(run_dir)) == without_times(history(reference_dir))
    ours, theirs = (json.loads((d / "test_metrics.json").read_text()) for d in (run_dir, reference_dir))
    for key in ("weighted_f1", "loss", "confusion", "per_class_f1", "epoch"):
        assert ours[key] == theirs[key], key


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (torchrun starts its workers in sessions of their own)."""
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [grandchild for child in children for grandchild in [child, *descendants(child)]]


@pytest.mark.integration
def test_two_zero2_ranks_killed_mid_epoch_resume_to_the_uninterrupted_result(store, tmp_path):
    """ZeRO stage 2: each rank's checkpoint file holds its own partition of the optimizer state."""

    def torchrun(run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(free_port()), "-m", "launch.cli", "train", str(store), *TWO_RANK_OVERRIDES, "train.zero_stage=2",
                *extra, "--run-dir", str(run_dir)]

    reference_dir = tmp_path / "reference"
    reference = subprocess.run(torchrun(reference_dir), env=clean_environment(), capture_output=True, text=True,
                               timeout=300, check=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run_dir = tmp_path / "killed"
    # Killed while rank 0 is held just after step 3 of epoch 2's checkpoint (8 steps an epoch).
    def kill_every_rank(child: subprocess.Popen) -> None:
        for pid in [*descendants(child.pid), child.pid]:
            os.kill(pid, signal.SIGKILL)

    killed_at("checkpoint-saved-epoch-0002-step-00003", torchrun(run_dir, "checkpoint.every_steps=1"),
              clean_environment(), tmp_path / "pauses", kill_every_rank)
    assert not (run_dir / "test_metrics.json").exists()
    resumed = subprocess.run(torchrun(run_dir, "--resume"), env=clean_environment(), capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "from checkpoint epoch-0002-step-" in resumed.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*/rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    assert without_times(history(run_dir)) == without_times(history(reference_dir))
    ours, theirs = (json.loads((d / "test_metrics.json").read_text()) for d in (run_dir, reference_dir))
    for key in ("weighted_f1", "loss", "confusion", "per_class_f1", "epoch"):
        assert ours[key] == theirs[key], key
