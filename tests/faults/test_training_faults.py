"""Faults injected into training with the real DeepSpeed engine, each ending in a resumed run equal to an
uninterrupted one or in one clear line: SIGKILL at random steps, damaged checkpoints, pickle payloads,
two trainers on one folder, a diverging loss, an unreadable progress.json.

Every refusal is asserted with its one-line message (exit 2, no traceback).
"""

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import load_config
from launch.cli import main
from model.checkpoint import checkpoint_tag
from model.run_config import RunConfig
from model.run_folder import RunFolder
from model.train import train
from tests.learnable_store import write_learnable_store
from tests.pauses import Pauses, killed_at
from tests.tiny_runs import tiny_bimodal_head

# Module-scoped: the store and the runs its fixtures build train on one thread too.
pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS = 3
# 32 train dialogues in batches of 4: 8 optimizer steps an epoch, 24 in all.
OVERRIDES = tiny_bimodal_head(epochs=EPOCHS, batch_dialogues=4, seed=11, dropout=0.3, input_dropout=0.1)
EVERY_STEP = [*OVERRIDES, "checkpoint.every_steps=1"]
_RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID")


def child_environment() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in _RENDEZVOUS}
    return environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "launch.cli", *args]
    return subprocess.run(command, env=child_environment(), capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command printed: exit 2 and no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
            for line in RunFolder(run_dir).metrics_path.read_text().splitlines()]


def same_result(run_dir: Path, reference_dir: Path) -> None:
    assert history(run_dir) == history(reference_dir)
    ours, theirs = (json.loads((d / "test_metrics.json").read_text()) for d in (run_dir, reference_dir))
    for key in ("weighted_f1", "accuracy", "loss", "confusion", "per_class_f1", "epoch", "checkpoint"):
        assert ours[key] == theirs[key], key


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_learnable_store(tmp_path_factory.mktemp("features") / "faults-000000000000", separation=1.5)


def config(store: Path, overrides: list[str]) -> RunConfig:
    return load_config(RunConfig, None, [*overrides, f"store={json.dumps(str(store))}"])


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> Path:
    """An uninterrupted run, checkpointed at epoch ends only."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(config(store, OVERRIDES), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def interrupted(store, tmp_path_factory) -> Path:
    """A run checkpointed after every step, stopped after epoch 2's fourth step: its checkpoints to damage."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    killed_at_checkpoint([str(store), *EVERY_STEP, "--run-dir", str(run_dir)], "epoch-0002-step-00004",
                         run_dir.parent / "pauses")
    return run_dir


def fresh_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def latest(run_dir: Path) -> list[str]:
    try:
        return json.loads((run_dir / "checkpoints" / "progress.json").read_text())["latest"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def killed_at_checkpoint(command: list[str], tag: str, pauses_folder: Path) -> None:
    """Run `train` in a process of its own and SIGKILL it while it waits just after checkpoint `tag` is saved."""
    killed_at(f"checkpoint-saved-{tag}", [sys.executable, "-m", "launch.cli", "train", *command],
              child_environment(), pauses_folder)


def step_tag(step: int) -> str:
    """The tag of the checkpoint after global step `step` (1-based) in epochs of 8 steps; an epoch's last step is
    checkpointed as the epoch's end."""
    epoch, within = divmod(step - 1, 8)
    return checkpoint_tag(epoch + 1, None if within == 7 else within + 1)


@pytest.mark.integration
def test_sigkill_at_random_steps_then_resume_ends_as_an_uninterrupted_run(store, reference, tmp_path):
    run_dir = tmp_path / "killed"
    steps = sorted(random.Random(20261201).sample(range(2, 22), 2))
    for attempt, step in enumerate(steps):
        resume = ["--resume"] if attempt else []
        killed_at_checkpoint([str(store), *EVERY_STEP, "--run-dir", str(run_dir), *resume], step_tag(step),
                             tmp_path / f"pauses-{attempt}")
        assert latest(run_dir)[0] == step_tag(step)
        assert not (run_dir / "test_metrics.json").exists()
    assert main(["train", str(store), *EVERY_STEP, "--run-dir", str(run_dir), "--resume"]) == 0
    same_result(run_dir, reference)
    assert RunFolder(run_dir).verify() == []


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing manifest"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(damage, interrupted, store, reference, tmp_path,
                                                                     caplog):
    run_dir = fresh_copy(interrupted, tmp_path)
    newest, previous = latest(run_dir)
    folder = run_dir / "checkpoints" / newest
    if damage == "truncated":
        damaged = folder / "rank-00000.pt"
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    elif damage == "garbage":
        damaged = folder / "model.safetensors"
        damaged.write_bytes(os.urandom(damaged.stat().st_size))
    else:
        damaged = folder / "checkpoint.json"
        damaged.unlink()
    problems = RunFolder(run_dir).verify()
    assert any(newest in problem and "--resume" in problem for problem in problems), problems
    with caplog.at_level("WARNING", logger="model.checkpoint"):
        assert main(["train", str(store), *EVERY_STEP, "--run-dir", str(run_dir), "--resume"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(damaged) in w and newest in w for w in warnings), warnings
    assert any(f"resuming from checkpoint {previous}" in w for w in warnings), warnings
    same_result(run_dir, reference)


@pytest.mark.integration
def test_every_checkpoint_damaged_is_one_clear_refusal(interrupted, store, tmp_path):
    run_dir = fresh_copy(interrupted, tmp_path)
    for path in (run_dir / "checkpoints").glob("*/rank-00000.pt"):
        path.write_bytes(b"\0" * 64)
    line = error_line(cli("train", str(store), *EVERY_STEP, "--run-dir", str(run_dir), "--resume"))
    assert "no checkpoint of run" in line and "can be loaded" in line and "rank-00000.pt" in line


class Payload:
    """Unpickled, it creates the marker file: proof that loading a file ran its code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory) -> Path:
    """A finished run, its checkpoints to plant payloads in."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(config(store, OVERRIDES), run_dir)
    return run_dir


@pytest.mark.integration
def test_a_pickle_payload_in_every_file_is_refused_and_never_runs(finished, interrupted, store, tmp_path):
    marker = tmp_path / "payload-ran"
    for name, source in (("evaluate", finished), ("resume", interrupted)):
        run_dir = fresh_copy(source, tmp_path / name)
        for path in [p for p in run_dir.rglob("*") if p.is_file()]:
            plant(path, marker)
        command = ["evaluate", str(run_dir)] if name == "evaluate" else [
            "train", str(store), *EVERY_STEP, "--run-dir", str(run_dir), "--resume"]
        line = error_line(cli(*command))
        assert str(run_dir) in line, line
        assert not marker.exists(), f"{name} ran the payload"


def forge(run_dir: Path, marker: Path, suffix: str) -> None:
    """Payloads in the checkpoint files named `*suffix`, with manifests whose checksums match them: only the
    loader stands between them and the process."""
    import hashlib

    for folder in (run_dir / "checkpoints").iterdir():
        if not folder.is_dir():
            continue
        manifest_path = folder / "checkpoint.json"
        manifest = json.loads(manifest_path.read_text())
        for name in [n for n in manifest["files"] if n.endswith(suffix)]:
            plant(folder / name, marker)
            data = (folder / name).read_bytes()
            manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest_path.write_text(json.dumps(manifest))


@pytest.mark.integration
def test_a_forged_checkpoint_with_matching_checksums_is_refused_by_the_loader(finished, interrupted, store,
                                                                              tmp_path):
    marker = tmp_path / "payload-ran"
    evaluated = fresh_copy(finished, tmp_path / "evaluate")
    forge(evaluated, marker, ".safetensors")
    line = error_line(cli("evaluate", str(evaluated)))
    assert "model.safetensors is not a safetensors file" in line, line
    resumed = fresh_copy(interrupted, tmp_path / "resume")
    forge(resumed, marker, ".pt")
    line = error_line(cli("train", str(store), *EVERY_STEP, "--run-dir", str(resumed), "--resume"))
    assert "no checkpoint of run" in line and "a weights-only load refuses it (UnpicklingError" in line, line
    assert not marker.exists()
    problems = RunFolder(resumed).verify()
    assert problems and all("damaged" in p or "unfinished" in p for p in problems), problems


@pytest.mark.integration
def test_a_second_trainer_on_the_same_run_folder_is_refused_naming_the_holder(store, tmp_path):
    run_dir = tmp_path / "run"
    # Held just after its first checkpoint, the first trainer holds the folder while the others are refused.
    pauses = Pauses(tmp_path / "pauses", "checkpoint-saved-epoch-0001")
    first = subprocess.Popen([sys.executable, "-m", "launch.cli", "train", str(store), *OVERRIDES,
                              "--run-dir", str(run_dir)], env=child_environment() | pauses.environment(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pauses.held("checkpoint-saved-epoch-0001", lambda: first.poll() is None):
            line = error_line(cli("train", str(store), *OVERRIDES, "--run-dir", str(run_dir), "--resume"))
            assert f"run folder {run_dir} is in use by pid {first.pid} on host" in line, line
            line = error_line(cli("evaluate", str(run_dir)))
            assert f"is in use by pid {first.pid}" in line, line
            assert first.poll() is None, "the refused commands must leave the first trainer running"
    finally:
        first.kill()
        first.wait()


@pytest.mark.integration
def test_a_diverging_loss_stops_naming_epoch_and_step_and_stays_resumable(store, tmp_path):
    run_dir = tmp_path / "diverging"
    overrides = [*EVERY_STEP, "train.learning_rate=1e30"]
    line = error_line(cli("train", str(store), *overrides, "--run-dir", str(run_dir)))
    assert "the train loss is not finite at epoch 1, step" in line, line
    bad_step = int(line.split("step ")[1].split(";")[0])
    last_good = latest(run_dir)[0]
    assert last_good == f"epoch-0001-step-{bad_step - 1:05d}", (line, last_good)
    assert f"resumes from checkpoint {last_good}" in line
    # The folder is whole: its checkpoints load, and nothing but the unfinished run is reported.
    assert RunFolder(run_dir).verify() == [
        f"the run is unfinished (no test_metrics.json); finish it: cmroberta train {store} --run-dir {run_dir} --resume"
    ]


@pytest.mark.integration
@pytest.mark.parametrize("content", [b"\x80\x04garbage", b'{"format": 1, "latest": ["../../etc"], "best": null}'])
def test_an_unreadable_progress_file_is_one_line_naming_it(content, interrupted, store, tmp_path):
    run_dir = fresh_copy(interrupted, tmp_path)
    progress = run_dir / "checkpoints" / "progress.json"
    named = latest(run_dir)
    progress.write_bytes(content)
    line = error_line(cli("train", str(store), *EVERY_STEP, "--run-dir", str(run_dir), "--resume"))
    assert str(progress) in line and "rebuilds it from the checkpoints" in line, line
    # Removing it, as the message says, resumes from the checkpoints' own records.
    progress.unlink()
    assert RunFolder(run_dir).checkpoints().progress().latest == named

