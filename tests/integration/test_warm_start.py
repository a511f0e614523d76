"""The head's warm start (LP-FT): its first phase trains the head exactly as a run whose encoder is frozen,
then the encoder trains too; selection on dev covers both phases, and the run says which it chose."""

import json
from pathlib import Path

import pytest
import tomllib
import torch
from safetensors.torch import load_file
from test_end_to_end import e2e_overrides, history, words_store

from cluster.config import ConfigError, load_config
from cluster.distributed_session import distributed_session
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from launch.cli import main
from model.end_to_end import training_phase
from model.run_config import RunConfig, TrainConfig
from model.train import TrainingState

WORDS = "okay so we were on a break you know I can not believe this oh my god what is going on here".split()
WARM = 2


@pytest.fixture(scope="module")
def run_store(tmp_path_factory) -> Path:
    folder = build_tiny_text_encoder(tmp_path_factory.mktemp("tiny"), WORDS * 2, TinyEncoderConfig(hidden_size=32))
    return words_store(tmp_path_factory.mktemp("store"), folder)


def train_run(store: Path, run_dir: Path, *extra: str) -> dict:
    overrides = [o for o in e2e_overrides(store)[1:] if not o.startswith("monitor.")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with distributed_session():
            assert main(["train", str(store), *overrides, *extra, "--run-dir", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((run_dir / "test_metrics.json").read_text())


@pytest.mark.integration
def test_the_warm_start_trains_the_head_as_a_frozen_encoder_run_then_fine_tunes(run_store, tmp_path):
    warm = train_run(run_store, tmp_path / "warm", f"end_to_end.warm_start_epochs={WARM}")
    frozen = train_run(run_store, tmp_path / "frozen", "end_to_end.encoder.freeze=true", f"train.max_epochs={WARM}")
    records, frozen_records = history(tmp_path / "warm"), history(tmp_path / "frozen")
    assert [r["phase"] for r in records] == ["warm_start"] * WARM + ["fine_tune"] * (len(records) - WARM)
    assert len(records) > WARM
    for mine, theirs in zip(records[:WARM], frozen_records):
        # The same head, seed, batches and rate, and an encoder that evaluates without gradients: the same steps.
        assert {k: v for k, v in mine.items() if k != "phase"} == {k: v for k, v in theirs.items() if k != "phase"}
    best = min(records, key=lambda r: r["dev_loss"])
    assert warm["selected_epoch"] == warm["epoch"] == best["epoch"]
    assert warm["selected_phase"] == best["phase"]
    assert frozen["selected_phase"] == "single"
    saved = tomllib.loads((tmp_path / "warm" / "config.toml").read_text())
    assert saved["end_to_end"]["warm_start_epochs"] == WARM, "the run's config records its warm start"
    if warm["selected_phase"] == "fine_tune":
        states = load_file(tmp_path / "warm" / "checkpoints" / warm["checkpoint"] / "model.safetensors")
        exported = load_file(tmp_path / "warm" / "encoder" / "model.safetensors")
        name = "encoder.layer.0.attention.self.query.weight"
        assert torch.equal(states[f"encoder.model.{name}"], exported[name])


def test_selection_spans_both_phases_and_patience_waits_for_the_encoder():
    train = TrainConfig(max_epochs=10, patience=2)
    state = TrainingState()
    # The head alone improves, then stalls for longer than the patience: the warm start still runs to its end.
    for epoch, dev_loss in enumerate([1.0, 0.8, 0.9, 0.95], start=1):
        state.record({"epoch": epoch, "dev_loss": dev_loss})
        if epoch == 4:
            state.start_fine_tuning()
        assert not state.finished(train, warm_start_epochs=4), epoch
    # Fine-tuning never beats the warm start's best dev loss: the run ends after the patience and keeps epoch 2.
    for epoch, dev_loss in [(5, 0.85), (6, 0.82)]:
        state.record({"epoch": epoch, "dev_loss": dev_loss})
    assert state.finished(train, warm_start_epochs=4)
    assert state.best_epoch == 2 and training_phase(4, state.best_epoch) == "warm_start"
    assert training_phase(4, 5) == "fine_tune" and training_phase(0, 5) == "single"


def test_a_warm_start_needs_epochs_after_it_and_an_encoder_that_trains():
    base = ["store=/stores/s", "train.max_epochs=5"]
    with pytest.raises(ConfigError, match="warm_start_epochs"):
        load_config(RunConfig, None, [*base, "end_to_end.warm_start_epochs=5"])
    with pytest.raises(ConfigError, match="encoder.freeze"):
        load_config(RunConfig, None, [*base, "end_to_end.warm_start_epochs=2", "end_to_end.encoder.freeze=true"])
    with pytest.raises(ConfigError, match="warm_start_epochs"):
        load_config(RunConfig, None, [*base, "end_to_end.warm_start_epochs=-1"])
