"""End-to-end fine-tuning of a tiny RoBERTa with the fusion head under the real DeepSpeed engine on CPU:
a step trains the encoder, frozen mode keeps it, layer-wise rates survive warmup and accumulation,
a checkpoint resumes identically, and two gloo ranks take the steps one rank takes. Then the same
through `cmroberta train text_mode=end_to_end`: the training loop, a killed and resumed run, reports."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing
from safetensors.torch import load_file

from cluster.config import ConfigError, load_config
from cluster.rendezvous import LOOPBACK, free_port
from extract.feature_store import FeatureStore, SplitArrays, build_store_from_arrays
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from launch.cli import main
from launch.report import format_report, load_runs, report_tables
from learnable_store import learnable_split
from model.deepspeed_config import EngineConfig, build_deepspeed_config
from model.dialogue_data import DialogueBatchSampler, DialogueDataset, Modalities, load_datasets
from model.end_to_end import EndToEndModel
from model.evaluate import batch_loss_sum
from model.fusion import FusionConfig, build_fusion_model
from model.lr_schedule import LRScheduleConfig, build_lr_scheduler
from model.param_groups import ParamGroupsConfig, build_param_groups, encoder_layer_lr
from model.text_encoder import TextEncoder, TextEncoderConfig, load_tokenizer
from model.token_cache import TokenSplit, build_token_cache, read_token_split
from model.train import METRICS_NAME, RunConfig, default_run_dir, distributed_session, train

# DeepSpeed compiles its shm_comm op once per environment into TORCH_EXTENSIONS_DIR; reuse .ci/run's folder.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cmroberta" / "torch_extensions"))

AUDIO_DIM = 6
BATCH = 4
STEPS = 4
WORDS = "okay so we were on a break you know I can not believe this oh my god what is going on here".split()
GROUPS = ParamGroupsConfig(encoder_lr=1e-3, layer_decay=0.5)
HEAD_LR = 3e-3
SCHEDULE = LRScheduleConfig(warmup_steps=2, decay="linear")


def train_rows(dialogues: int) -> SplitArrays:
    rng = np.random.default_rng(0)
    rows = [(d, u) for d in range(dialogues) for u in range(int(rng.integers(1, 5)))]
    return SplitArrays(
        keys=[f"train/dia{d}_utt{u}" for d, u in rows],
        dialogue_ids=[d for d, _ in rows],
        utterance_ids=[u for _, u in rows],
        speakers=["Ross"] * len(rows),
        transcripts=[" ".join(rng.choice(WORDS, int(rng.integers(1, 10)))) for _ in rows],
        emotion=rng.integers(0, 7, len(rows)),
        sentiment=np.zeros(len(rows), dtype=int),
        features={"opensmile": rng.normal(size=(len(rows), AUDIO_DIM)).astype(np.float32)},
    )


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> Path:
    """A tiny RoBERTa without dropout, so ranks and resumed runs see the same function."""
    folder = build_tiny_text_encoder(tmp_path_factory.mktemp("tiny"), WORDS * 2, TinyEncoderConfig(hidden_size=32))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory, encoder_folder) -> Path:
    path = build_store_from_arrays(
        tmp_path_factory.mktemp("store") / "e2e-000000000000", {"train": train_rows(16)}, {"corpus": "x"}
    )
    config = TextEncoderConfig(model=str(encoder_folder))
    build_token_cache(FeatureStore.open(path), load_tokenizer(config), config)
    return path


@pytest.fixture(scope="module")
def single_process():
    # One intra-op thread: on a shared 2-core machine, two OpenMP threads that wait for each other at
    # every small op run many times slower as soon as another process takes a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with distributed_session() as rendezvous:
            yield rendezvous
    finally:
        torch.set_num_threads(threads)


def load_data(store: Path, encoder_folder: Path) -> tuple[DialogueDataset, TokenSplit]:
    modalities = Modalities(audio_families=["opensmile"], text_family=None, audio_dim=AUDIO_DIM, text_dim=0)
    dataset = load_datasets(FeatureStore.open(store), modalities, ["train"])[0]["train"]
    config = TextEncoderConfig(model=str(encoder_folder))
    tokens = read_token_split(build_token_cache(FeatureStore.open(store), load_tokenizer(config), config),
                              "train", dataset.keys)
    return dataset, tokens


def make_engine(encoder_folder: Path, *, seed: int = 0, freeze: bool = False, zero_stage: int = 2,
                accumulation: int = 1, world_size: int = 1):
    import deepspeed

    torch.manual_seed(seed)
    encoder = TextEncoder(TextEncoderConfig(model=str(encoder_folder), freeze=freeze))
    head = build_fusion_model(FusionConfig(hidden_size=8, dropout=0.0, input_dropout=0.0), AUDIO_DIM, encoder.dim)
    model = EndToEndModel(encoder, head)
    groups = build_param_groups(encoder.model, encoder.num_layers, head, GROUPS, head_lr=HEAD_LR, head_weight_decay=0)
    optimizer = torch.optim.AdamW(groups)
    scheduler = build_lr_scheduler(optimizer, SCHEDULE, total_steps=2 * STEPS)
    config = build_deepspeed_config(
        EngineConfig(zero_stage=zero_stage, gradient_accumulation_steps=accumulation),
        micro_batch_dialogues=BATCH // world_size, world_size=world_size,
    )
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def run_steps(engine, dataset: DialogueDataset, tokens: TokenSplit, first: int, steps: int, rank: int = 0,
              world_size: int = 1) -> list[float]:
    """Micro-steps first..first+steps-1 of a fixed order; the mean loss of each global batch, over all ranks."""
    sampler = DialogueBatchSampler(len(dataset), BATCH, rank=rank, world_size=world_size, shuffle=True, seed=7)
    batches = []
    for epoch in range(1, 10):
        sampler.set_epoch(epoch)
        batches.extend(sampler)
    losses = []
    engine.train()
    for rank_batch in batches[first : first + steps]:
        batch = dataset.batch(rank_batch.indices, rank_batch.counted)
        token_batch = tokens.batch(batch.rows)
        logits = engine(batch.audio, token_batch, batch.mask)
        loss_sum = batch_loss_sum(logits, batch.labels, None)
        global_weight = dataset.label_weight(rank_batch.global_indices, None)
        engine.backward(loss_sum * (world_size / global_weight))
        engine.step()
        total = loss_sum.detach().double()
        if world_size > 1:
            torch.distributed.all_reduce(total)
        losses.append(float(total) / global_weight)
    return losses


def parameters(engine) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in engine.module.named_parameters()}


@pytest.mark.integration
def test_a_step_updates_every_encoder_tensor_and_the_head(single_process, store, encoder_folder):
    dataset, tokens = load_data(store, encoder_folder)
    engine = make_engine(encoder_folder)
    before = parameters(engine)
    run_steps(engine, dataset, tokens, 0, 1)
    after = parameters(engine)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    assert any(name.startswith("encoder.model.embeddings.") for name in after)
    assert any(name.startswith("head.") for name in after)


@pytest.mark.integration
def test_frozen_mode_trains_the_head_and_leaves_the_encoder(single_process, store, encoder_folder):
    dataset, tokens = load_data(store, encoder_folder)
    engine = make_engine(encoder_folder, freeze=True)
    before = parameters(engine)
    run_steps(engine, dataset, tokens, 0, 2)
    after = parameters(engine)
    encoder_names = [name for name in before if name.startswith("encoder.")]
    head_names = [name for name in before if name.startswith("head.")]
    assert encoder_names and all(torch.equal(before[name], after[name]) for name in encoder_names)
    assert any(not torch.equal(before[name], after[name]) for name in head_names)
    assert not engine.module.encoder.training and engine.module.head.training
    assert {group["name"] for group in engine.optimizer.param_groups} == {"head", "head.no_decay"}


@pytest.mark.integration
def test_layerwise_rates_hold_after_warmup_with_accumulation(single_process, store, encoder_folder):
    dataset, tokens = load_data(store, encoder_folder)
    engine = make_engine(encoder_folder, accumulation=2)
    layers = engine.module.encoder.num_layers

    def configured(name: str) -> float:
        if name.startswith("head"):
            return HEAD_LR
        return encoder_layer_lr(int(name.split(".")[1].removeprefix("depth")), layers, GROUPS)

    def rates() -> dict[str, float]:
        return {group["name"]: group["lr"] for group in engine.optimizer.param_groups}

    run_steps(engine, dataset, tokens, 0, 2)
    assert engine.global_steps == 1, "two micro-batches make one optimizer step"
    for name, lr in rates().items():
        assert lr == pytest.approx(configured(name)), f"{name} at the end of warmup"
    run_steps(engine, dataset, tokens, 2, 4)
    assert engine.global_steps == 3
    linear = 1 - 1 / (2 * STEPS - SCHEDULE.warmup_steps)
    for name, lr in rates().items():
        assert lr == pytest.approx(configured(name) * linear), name
    seen = rates()
    assert seen["encoder.depth00"] < seen["encoder.depth04"] < seen["head"]
    assert seen["encoder.depth00"] / seen["encoder.depth04"] == pytest.approx(GROUPS.layer_decay**layers)


@pytest.fixture(scope="module")
def reference(single_process, store, encoder_folder) -> tuple[list[float], dict[str, torch.Tensor]]:
    """STEPS uninterrupted steps of one process: the losses and the final weights."""
    dataset, tokens = load_data(store, encoder_folder)
    engine = make_engine(encoder_folder)
    return run_steps(engine, dataset, tokens, 0, STEPS), parameters(engine)


@pytest.mark.integration
def test_a_resumed_run_continues_identically(reference, single_process, store, encoder_folder, tmp_path):
    losses, weights = reference
    assert len(set(losses)) == STEPS and np.isfinite(losses).all()
    dataset, tokens = load_data(store, encoder_folder)
    interrupted = make_engine(encoder_folder)
    assert run_steps(interrupted, dataset, tokens, 0, 2) == losses[:2]
    interrupted.save_checkpoint(str(tmp_path), tag="step-2")
    del interrupted
    resumed = make_engine(encoder_folder, seed=123)
    path, _ = resumed.load_checkpoint(str(tmp_path), tag="step-2")
    assert path is not None
    assert resumed.global_steps == 2
    assert run_steps(resumed, dataset, tokens, 2, STEPS - 2) == losses[2:]
    final = parameters(resumed)
    assert all(torch.equal(final[name], weights[name]) for name in weights)


def _rank_worker(rank: int, port: int, store: str, encoder_folder: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR=LOOPBACK,
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dataset, tokens = load_data(Path(store), Path(encoder_folder))
    engine = make_engine(Path(encoder_folder), world_size=2)
    losses = run_steps(engine, dataset, tokens, 0, STEPS, rank=rank, world_size=2)
    if rank == 0:
        weights = {name: tensor.tolist() for name, tensor in parameters(engine).items()}
        Path(out).write_text(json.dumps({"losses": losses, "weights": weights}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.integration
def test_two_gloo_ranks_take_the_steps_of_one(reference, store, encoder_folder, tmp_path):
    losses, weights = reference
    out = tmp_path / "rank0.json"
    torch.multiprocessing.spawn(
        _rank_worker, args=(free_port(), str(store), str(encoder_folder), str(out)), nprocs=2, join=True
    )
    result = json.loads(out.read_text())
    np.testing.assert_allclose(result["losses"], losses, rtol=1e-5)
    # The encoder is compared weight by weight. Head weights are compared through the losses only: some of
    # their gradients are zero up to rounding (an attention key bias cannot change a softmax), and Adam turns
    # such noise into steps of ±lr whose sign depends on the order of the ranks' sums.
    encoder = [name for name in weights if name.startswith("encoder.")]
    assert encoder
    for name in encoder:
        np.testing.assert_allclose(np.array(result["weights"][name]), weights[name].numpy(), atol=1e-6, err_msg=name)


# The same runs through `cmroberta train`: text_mode=end_to_end in the feature-mode loop, run folder and report.

CLASS_WORDS = ["okay", "what", "god", "break", "believe", "oh", "not"]
E2E_EPOCHS = 4


@pytest.fixture(scope="module")
def run_store(tmp_path_factory) -> Path:
    """A store whose transcripts name their emotion (plus filler words), for the encoder to learn from."""
    rng = np.random.default_rng(5)
    arrays = {split: learnable_split(split, dialogues, seed) for split, dialogues, seed in
              (("train", 32, 0), ("dev", 8, 1), ("test", 8, 2))}
    for rows in arrays.values():
        rows.transcripts = [
            " ".join([CLASS_WORDS[label], *rng.choice(WORDS, int(rng.integers(0, 6)))]) for label in rows.emotion
        ]
    return build_store_from_arrays(tmp_path_factory.mktemp("runs") / "words-000000000000", arrays, {"corpus": "x"})


def e2e_overrides(store: Path, encoder_folder: Path) -> list[str]:
    return [
        f"store={json.dumps(str(store))}",
        "text_mode=end_to_end",
        f"end_to_end.encoder.model={json.dumps(str(encoder_folder))}",
        "end_to_end.param_groups.encoder_lr=0.001",
        "end_to_end.schedule.warmup_steps=2",
        "end_to_end.engine.gradient_accumulation_steps=2",
        "end_to_end.bucket_by_length=true",
        "model.hidden_size=8",
        "model.dropout=0.0",
        "model.input_dropout=0.0",
        "train.batch_dialogues=8",
        "train.learning_rate=0.003",
        f"train.max_epochs={E2E_EPOCHS}",
        f"train.patience={E2E_EPOCHS}",
        "seed=3",
    ]


def history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
            for line in (run_dir / METRICS_NAME).read_text().splitlines()]


@pytest.fixture(scope="module")
def e2e_run(single_process, run_store, encoder_folder, tmp_path_factory) -> tuple[Path, dict]:
    config = load_config(RunConfig, None, e2e_overrides(run_store, encoder_folder))
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    return run_dir, train(config, run_dir)


@pytest.mark.integration
def test_an_end_to_end_run_trains_the_encoder_in_the_training_loop(e2e_run, run_store, encoder_folder):
    run_dir, test = e2e_run
    records = history(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, E2E_EPOCHS + 1))
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert tomllib.loads((run_dir / "config.toml").read_text())["text_mode"] == "end_to_end"
    assert list((run_store / "tokens").glob("*.h5")), "the token cache lives with the store"
    states = load_file(run_dir / "checkpoints" / test["checkpoint"] / "model.safetensors")
    pretrained = TextEncoder(TextEncoderConfig(model=str(encoder_folder))).state_dict()
    name = "model.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(states[f"encoder.{name}"], pretrained[name]), "the encoder was fine-tuned"
    assert test["count"] == sum(test["support"].values())


@pytest.mark.integration
def test_an_interrupted_end_to_end_run_resumes_to_the_same_result(e2e_run, run_store, encoder_folder, tmp_path):
    reference_dir, reference_test = e2e_run
    run_dir = tmp_path / "killed"
    overrides = e2e_overrides(run_store, encoder_folder)
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    child = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", str(run_store), *overrides[1:], "--run-dir", str(run_dir)],
        env=environment | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    metrics = run_dir / METRICS_NAME
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert child.poll() is None, "the training process ended before it could be killed"
        assert time.monotonic() < deadline, "the training process never finished an epoch"
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (run_dir / "test_metrics.json").exists(), "the kill must land before the run ends"
    assert 1 <= len(history(run_dir)) < E2E_EPOCHS
    assert main(["train", str(run_store), *overrides[1:], "--run-dir", str(run_dir), "--resume"]) == 0
    assert history(run_dir) == history(reference_dir)
    resumed = json.loads((run_dir / "test_metrics.json").read_text())
    for key in ("weighted_f1", "accuracy", "loss", "confusion", "per_class_f1", "epoch"):
        assert resumed[key] == reference_test[key], key


@pytest.mark.integration
def test_reports_label_end_to_end_runs_apart(e2e_run, tmp_path):
    e2e_dir, _ = e2e_run
    features_dir = tmp_path / "features-run"
    features_dir.mkdir()
    (features_dir / "config.toml").write_text('store = "/nowhere"\nseed = 3\n[model]\nvariant = "bimodal"\n')
    shutil.copy(e2e_dir / "test_metrics.json", features_dir / "test_metrics.json")
    runs = load_runs([features_dir, e2e_dir])
    assert sorted(run.text_mode for run in runs) == ["end_to_end", "frozen"]
    row_names = {table.name: [name for name, _ in table.rows] for table in report_tables(runs)}
    assert {"CM-RoBERTa", "CM-RoBERTa (end-to-end)"} <= set(row_names["table1"])
    assert {"bimodal", "bimodal (end-to-end)"} <= set(row_names["table2"])
    assert "bimodal (end-to-end), seed 3" in format_report(runs)


def test_end_to_end_run_config_is_checked_and_gets_its_own_folder():
    base = ["store=/stores/s", "text_mode=end_to_end"]
    with pytest.raises(ConfigError, match="reads no text"):
        load_config(RunConfig, None, [*base, "model.variant=audio"])
    with pytest.raises(ConfigError, match="end_to_end.engine.zero_stage"):
        load_config(RunConfig, None, [*base, "train.zero_stage=2"])
    end_to_end = load_config(RunConfig, None, base)
    assert end_to_end.end_to_end.engine.zero_stage == 2
    features = load_config(RunConfig, None, ["store=/stores/s"])
    assert default_run_dir(end_to_end) != default_run_dir(features)
    assert default_run_dir(end_to_end).name == "bimodal-end_to_end-seed0"
