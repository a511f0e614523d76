"""End-to-end fine-tuning of a tiny RoBERTa with the fusion head under the real DeepSpeed engine on CPU:
a step trains the encoder, frozen mode keeps it, layer-wise rates survive warmup and accumulation,
a checkpoint resumes identically, and two gloo ranks take the steps one rank takes. Then the same
through `cmroberta train STORE` with no text_mode (end to end is the default, from the store's own
encoder): the training loop, the exported encoder, DeepSpeed's CSV monitor, a killed and resumed run,
reports; and gradient accumulation taking the step one batch takes, end to end and on frozen vectors."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import tomllib
import torch
import torch.multiprocessing
from safetensors.torch import load_file
from tqdm import tqdm

from cluster.config import ConfigError, load_config
from cluster.rendezvous import LOOPBACK, free_port
from extract.feature_store import FeatureStore, FeatureStoreError, build_store_from_arrays
from extract.split_arrays import SplitArrays
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from launch.cli import main
from launch.report import format_report, report_tables
from launch.run_results import read_run_results
from model.batch_samplers import DialogueBatchSampler
from model.deepspeed_config import EngineConfig, build_deepspeed_config, reduction_in_parameter_order
from model.dialogue_data import DialogueDataset, Modalities, load_datasets
from model.end_to_end import EndToEndModel
from model.engine import initialize_engine
from model.evaluate import batch_loss_sum
from model.fusion import FusionConfig, build_fusion_model
from model.lr_schedule import LRScheduleConfig, build_lr_scheduler
from model.param_groups import ParamGroupsConfig, build_optimizer, build_param_groups, encoder_layer_lr
from model.run_config import RunConfig, default_run_dir, resolve_run_config
from model.run_folder import RunFolder
from model.run_inputs import prepare_inputs
from model.text_encoder import TextEncoder, TextEncoderConfig, load_tokenizer
from model.token_cache import TokenSplit, build_token_cache, read_token_split
from model.train import EpochProgress, StepCheckpoints, TrainingState, _train_epoch, seed_everything
from tests.learnable_store import learnable_split
from tests.pauses import killed_at

AUDIO_DIM = 6
BATCH = 4
STEPS = 4
WORDS = "okay so we were on a break you know I can not believe this oh my god what is going on here".split()
GROUPS = ParamGroupsConfig(encoder_lr=1e-3, layer_decay=0.5)
HEAD_LR = 3e-3
WARMUP = 2
# One "epoch" a step here, so the schedule's epochs are steps: 2 of warmup, then linear decay to step 2 x STEPS.
SCHEDULE = LRScheduleConfig(warmup_epochs=WARMUP, decay_epochs=2 * STEPS, decay="linear")


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


def load_data(store: Path, encoder_folder: Path) -> tuple[DialogueDataset, TokenSplit]:
    modalities = Modalities(audio_families=["opensmile"], text_family=None, audio_dim=AUDIO_DIM, text_dim=0)
    dataset = load_datasets(FeatureStore.open(store), modalities, ["train"])[0]["train"]
    config = TextEncoderConfig(model=str(encoder_folder))
    tokens = read_token_split(build_token_cache(FeatureStore.open(store), load_tokenizer(config), config),
                              "train", dataset.keys)
    return dataset, tokens


def make_engine(encoder_folder: Path, *, seed: int = 0, freeze: bool = False, zero_stage: int = 2,
                accumulation: int = 1, world_size: int = 1, gradient_clipping: float = 1.0):
    import deepspeed

    torch.manual_seed(seed)
    encoder = TextEncoder(TextEncoderConfig(model=str(encoder_folder), freeze=freeze))
    head = build_fusion_model(FusionConfig(hidden_size=8, dropout=0.0, input_dropout=0.0), AUDIO_DIM, encoder.dim)
    model = EndToEndModel(encoder, head)
    groups = build_param_groups(encoder.model, encoder.num_layers, head, GROUPS, head_lr=HEAD_LR, head_weight_decay=0)
    optimizer = build_optimizer(groups)
    scheduler = build_lr_scheduler(optimizer, SCHEDULE, steps_per_epoch=1, max_epochs=2 * STEPS)
    config = build_deepspeed_config(
        EngineConfig(zero_stage=zero_stage, gradient_clipping=gradient_clipping),
        micro_batch_dialogues=BATCH // world_size, world_size=world_size, gradient_accumulation_steps=accumulation,
    )
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def run_steps(engine, dataset: DialogueDataset, tokens: TokenSplit, first: int, steps: int, rank: int = 0,
              world_size: int = 1) -> list[float]:
    """Global batches first..first+steps-1 of a fixed order; the mean loss of each, over all ranks.

    As the training loop does: this rank's share of each global batch runs as the engine's accumulation
    steps' micro-batches, each normalised by the whole global batch with DeepSpeed's 1/accumulation off.
    """
    sampler = DialogueBatchSampler(len(dataset), BATCH, rank=rank, world_size=world_size, shuffle=True, seed=7)
    batches = []
    for epoch in range(1, 10):
        sampler.set_epoch(epoch)
        batches.extend(sampler)
    losses = []
    engine.train()
    for rank_batch in batches[first : first + steps]:
        global_weight = dataset.label_weight(rank_batch.global_indices, None)
        total = torch.zeros((), dtype=torch.float64)
        with reduction_in_parameter_order(engine, world_size) as end_micro_batch:
            for micro_batch in rank_batch.micro_batches(engine.gradient_accumulation_steps()):
                batch = dataset.batch(micro_batch.indices, micro_batch.counted)
                logits = engine(batch.audio, tokens.batch(batch.rows), batch.mask)
                loss_sum = batch_loss_sum(logits, batch.labels, None)
                engine.backward(loss_sum * (world_size / global_weight), scale_wrt_gas=False)
                end_micro_batch()
                total += loss_sum.detach().double()
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
    # The pooler stays in the model, untrained, so that the exported encoder is complete; nothing else is still.
    assert unchanged and all(name.startswith("encoder.model.pooler.") for name in unchanged)
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
    assert {group["name"] for group in engine.optimizer.param_groups} == {"head"}


@pytest.mark.integration
def test_layerwise_rates_hold_after_warmup_with_accumulation(single_process, store, encoder_folder):
    dataset, tokens = load_data(store, encoder_folder)
    engine = make_engine(encoder_folder, accumulation=2)
    layers = engine.module.encoder.num_layers

    def configured(name: str, multiplier: float) -> float:
        if name == "head":
            return HEAD_LR  # constant: the head trains as in every text mode
        return multiplier * encoder_layer_lr(int(name.split(".")[1].removeprefix("depth")), layers, GROUPS)

    def rates() -> dict[str, float]:
        return {group["name"]: group["lr"] for group in engine.optimizer.param_groups}

    run_steps(engine, dataset, tokens, 0, 1)
    assert engine.global_steps == 1, "two micro-batches make one optimizer step"
    for name, lr in rates().items():
        assert lr == pytest.approx(configured(name, 1.0)), f"{name} at the end of warmup"
    run_steps(engine, dataset, tokens, 1, 2)
    assert engine.global_steps == 3
    linear = 1 - 1 / (2 * STEPS - WARMUP)
    for name, lr in rates().items():
        assert lr == pytest.approx(configured(name, linear)), name
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


def _rank_worker(rank: int, port: int, store: str, encoder_folder: str, out: str, zero_stage: int = 2,
                 accumulation: int = 1) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR=LOOPBACK,
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dataset, tokens = load_data(Path(store), Path(encoder_folder))
    engine = make_engine(Path(encoder_folder), world_size=2, gradient_clipping=0.0, zero_stage=zero_stage,
                         accumulation=accumulation)
    losses = run_steps(engine, dataset, tokens, 0, STEPS, rank=rank, world_size=2)
    if rank == 0:
        weights = {name: tensor.tolist() for name, tensor in parameters(engine).items()}
        Path(out).write_text(json.dumps({"losses": losses, "weights": weights}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def two_ranks(store: Path, encoder_folder: Path, out: Path, zero_stage: int = 2,
              accumulation: int = 1) -> tuple[list[float], dict[str, torch.Tensor]]:
    """STEPS steps of 2 gloo ranks: rank 0's losses and final weights."""
    torch.multiprocessing.spawn(
        _rank_worker, args=(free_port(), str(store), str(encoder_folder), str(out), zero_stage, accumulation),
        nprocs=2, join=True,
    )
    result = json.loads(out.read_text())
    weights = {name: torch.tensor(values, dtype=torch.float32) for name, values in result["weights"].items()}
    return result["losses"], weights


@pytest.fixture(scope="module")
def two_ranks_and_their_accumulation(single_process, store, encoder_folder, tmp_path_factory):
    """STEPS steps of 2 gloo ranks (rank 0's losses and weights), and of one process accumulating their shares."""
    dataset, tokens = load_data(store, encoder_folder)
    engine = make_engine(encoder_folder, accumulation=2, gradient_clipping=0.0)
    losses = run_steps(engine, dataset, tokens, 0, STEPS)
    ranks = two_ranks(store, encoder_folder, tmp_path_factory.mktemp("ranks") / "rank0.json")
    return ranks, (losses, parameters(engine))


@pytest.mark.integration
def test_two_gloo_ranks_take_the_steps_of_one_process_accumulating_their_shares(two_ranks_and_their_accumulation):
    # Bitwise, because both sides add the same terms in the same grouping. Rank r's share of a global batch is
    # dialogues r, r + 2, ... (DialogueBatchSampler), and one process accumulating 2 micro-batches runs exactly
    # those shares in rank order (RankBatch.micro_batches), so every forward and backward pass is the same
    # computation on one thread. The ranks scale their loss by 2 / W and DeepSpeed averages their gradients
    # (a halving); the one process scales by 1 / W: powers of two, exact through a backward pass that is linear
    # in its upstream gradient. What remains is one float32 sum of two gradients, g0 + g1, which is
    # commutative, so gloo's allreduce and the one process's accumulation agree to the bit, and so do Adam's
    # elementwise steps on them; the head's near-zero gradients, which Adam turns into steps of +-lr whose sign
    # follows their rounding, are the same numbers here too.
    #
    # The head's 40 LSTM tensors need ZeRO-2's reduction in parameter order (`reduction_in_parameter_order`).
    # Without it, at the 4th step the two ranks' autograd hooks fired one LSTM's weight_ih and bias_hh in
    # swapped order (the packed LSTMs' graph follows the dialogue lengths), ZeRO-2 summed their buckets
    # position by position, and all 40 LSTM gradients of that step were wrong (measured: off by more than
    # their own size) while the other 223 tensors stayed bitwise.
    #
    # Clipping is off on both sides: ZeRO sums the squared norm per rank's partition and then across ranks,
    # one process over its whole buffer, so the clip factor differs in its last bits (measured: 253 of 263
    # tensors off by up to an ulp). The accumulation test checks the clipped norm.
    (rank_losses, rank_weights), (losses, weights) = two_ranks_and_their_accumulation
    assert rank_losses == losses
    assert sum(".lstm." in name for name in weights) == 40
    assert rank_weights.keys() == weights.keys()
    for name in weights:
        assert torch.equal(rank_weights[name], weights[name]), name


@pytest.mark.integration
def test_zero2_on_two_ranks_with_accumulation_takes_the_steps_of_plain_data_parallel(store, encoder_folder, tmp_path):
    # Each rank cuts its share into 2 micro-batches of one dialogue: rank r's gradient is g_r + g_(r+2), summed
    # by torch on the parameters, and the step's is their sum over the 2 ranks, halved. ZeRO stage 0 (plain data
    # parallel) accumulates locally and all-reduces each parameter at the boundary, so it adds the same terms in
    # the same grouping, and a sum of two floats is commutative: bitwise, step after step, Adam's elementwise
    # step included. One process accumulating the 4 dialogues would add ((g0 + g1) + g2) + g3, another grouping,
    # whose last-bit differences Adam turns into steps of +-lr on near-zero gradients (see the test above), so
    # plain data parallel is the reference that can be exact; the test above ties ZeRO-2's reduction to one
    # process without accumulation. Both sides hold the 4 dialogues' LSTM graphs whose hooks fire in different
    # orders on the 2 ranks (the fault `reduction_in_parameter_order` fixes); reduced as they fire, or one
    # coalesced reduction per micro-batch (which kept only the last micro-batch's gradients), this fails.
    zero2 = two_ranks(store, encoder_folder, tmp_path / "zero2.json", zero_stage=2, accumulation=2)
    plain = two_ranks(store, encoder_folder, tmp_path / "zero0.json", zero_stage=0, accumulation=2)
    (zero2_losses, zero2_weights), (plain_losses, plain_weights) = zero2, plain
    assert zero2_losses == plain_losses and len(set(plain_losses)) == STEPS
    assert zero2_weights.keys() == plain_weights.keys()
    for name in plain_weights:
        assert torch.equal(zero2_weights[name], plain_weights[name]), name


# The same runs through `cmroberta train STORE`: no text_mode and no encoder named, so the run trains end to
# end from the encoder the store's manifest records, in the feature-mode loop, into a run folder and a report.

CLASS_WORDS = ["okay", "what", "god", "break", "believe", "oh", "not"]
E2E_EPOCHS = 4


def words_store(folder: Path, encoder_folder: Path) -> Path:
    """A store whose transcripts name their emotion (plus filler words), recording `encoder_folder` as its encoder."""
    rng = np.random.default_rng(5)
    arrays = {split: learnable_split(split, dialogues, seed) for split, dialogues, seed in
              (("train", 32, 0), ("dev", 8, 1), ("test", 8, 2))}
    for rows in arrays.values():
        rows.transcripts = [
            " ".join([CLASS_WORDS[label], *rng.choice(WORDS, int(rng.integers(0, 6)))]) for label in rows.emotion
        ]
    config = {"corpus": "x", "text": {"model": str(encoder_folder)}}
    return build_store_from_arrays(folder / "words-000000000000", arrays, config)


@pytest.fixture(scope="module")
def run_store(tmp_path_factory, encoder_folder) -> Path:
    return words_store(tmp_path_factory.mktemp("runs"), encoder_folder)


def e2e_overrides(store: Path) -> list[str]:
    return [
        f"store={json.dumps(str(store))}",
        "end_to_end.param_groups.encoder_lr=0.001",
        "end_to_end.schedule.warmup_epochs=0.5",
        "end_to_end.bucket_by_length=true",
        "train.gradient_accumulation_steps=2",
        "model.hidden_size=8",
        "model.dropout=0.0",
        "model.input_dropout=0.0",
        "train.batch_dialogues=8",
        "train.learning_rate=0.003",
        f"train.max_epochs={E2E_EPOCHS}",
        f"train.patience={E2E_EPOCHS}",
        "monitor.csv=true",
        "seed=3",
    ]


def history(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
            for line in RunFolder(run_dir).metrics_path.read_text().splitlines()]


@pytest.fixture(scope="module")
def e2e_run(single_process, run_store, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    assert main(["train", str(run_store), *e2e_overrides(run_store)[1:], "--run-dir", str(run_dir)]) == 0
    return run_dir, json.loads((run_dir / "test_metrics.json").read_text())


@pytest.mark.integration
def test_an_end_to_end_run_trains_the_encoder_in_the_training_loop(e2e_run, run_store, encoder_folder):
    run_dir, test = e2e_run
    records = history(run_dir)
    assert [r["epoch"] for r in records] == list(range(1, E2E_EPOCHS + 1))
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    assert saved["text_mode"] == "end_to_end", "end to end is the default"
    assert saved["end_to_end"]["encoder"]["model"] == str(encoder_folder), "the store's encoder, by name"
    assert list((run_store / "tokens").glob("*.h5")), "the token cache lives with the store"
    states = load_file(run_dir / "checkpoints" / test["checkpoint"] / "model.safetensors")
    pretrained = TextEncoder(TextEncoderConfig(model=str(encoder_folder))).state_dict()
    name = "model.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(states[f"encoder.{name}"], pretrained[name]), "the encoder was fine-tuned"
    assert test["count"] == sum(test["support"].values())


@pytest.mark.integration
def test_the_trained_encoder_is_exported_in_hugging_face_format(e2e_run, encoder_folder):
    from transformers import AutoModel, AutoTokenizer

    run_dir, test = e2e_run
    folder = run_dir / "encoder"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    exported = AutoModel.from_pretrained(folder, local_files_only=True).state_dict()
    pretrained = AutoModel.from_pretrained(encoder_folder, local_files_only=True).state_dict()
    assert set(exported) == set(pretrained)
    states = load_file(run_dir / "checkpoints" / test["checkpoint"] / "model.safetensors")
    changed = [name for name in exported if not torch.equal(exported[name], pretrained[name])]
    assert "encoder.layer.0.attention.self.query.weight" in changed and "embeddings.word_embeddings.weight" in changed
    for name in changed:
        assert torch.equal(exported[name], states[f"encoder.model.{name}"]), f"{name}: the selected epoch's weights"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert tokenizer("okay what").input_ids == AutoTokenizer.from_pretrained(encoder_folder)("okay what").input_ids


@pytest.mark.integration
def test_deepspeeds_csv_monitor_records_losses_and_rates(e2e_run):
    run_dir, _ = e2e_run
    folder = run_dir / "monitor" / "train"
    names = {path.name for path in folder.glob("*.csv")}
    assert {"Train_Samples_lr.csv", "Train_Samples_train_loss.csv", "Epoch_dev_loss.csv",
            "Train_Samples_lr_head.csv", "Train_Samples_lr_encoder.depth04.csv"} <= names
    steps = (folder / "Train_Samples_train_loss.csv").read_text().splitlines()
    assert steps[0] == "step,train_loss" and len(steps) == 1 + E2E_EPOCHS * 4, "one line per optimizer step"
    dev = [float(line.split(",")[1]) for line in (folder / "Epoch_dev_loss.csv").read_text().splitlines()[1:]]
    assert dev == pytest.approx([record["dev_loss"] for record in history(run_dir)])


@pytest.mark.integration
def test_an_interrupted_end_to_end_run_resumes_to_the_same_result(run_store, tmp_path):
    # Every run here is a fresh process with one thread, so the uninterrupted run and the killed and
    # resumed one differ only by the kill (the test process's own state has no say in the sums).
    overrides = e2e_overrides(run_store)
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    environment |= {"OMP_NUM_THREADS": "1"}

    def command(run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "launch.cli", "train", str(run_store), *overrides[1:], "--run-dir", str(run_dir),
                *extra]

    reference_dir = tmp_path / "uninterrupted"
    subprocess.run(command(reference_dir), env=environment, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    reference_test = json.loads((reference_dir / "test_metrics.json").read_text())
    run_dir = tmp_path / "killed"
    # Killed while held just after epoch 2's checkpoint, before that epoch's metrics line is written.
    killed_at("checkpoint-saved-epoch-0002", command(run_dir), environment, tmp_path / "pauses")
    assert not (run_dir / "test_metrics.json").exists()
    assert len(history(run_dir)) == 1
    subprocess.run(command(run_dir, "--resume"), env=environment, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    assert history(run_dir) == history(reference_dir)
    resumed = json.loads((run_dir / "test_metrics.json").read_text())
    for key in ("weighted_f1", "accuracy", "loss", "confusion", "per_class_f1", "epoch"):
        assert resumed[key] == reference_test[key], key


@pytest.mark.integration
def test_reports_label_end_to_end_runs_apart(e2e_run, tmp_path):
    e2e_dir, _ = e2e_run
    features_dir = tmp_path / "features-run"
    features_dir.mkdir()
    # The same config in frozen mode: the report compares the text modes only of runs that differ in nothing else.
    config = tomllib.loads((e2e_dir / "config.toml").read_text())
    (features_dir / "config.toml").write_text(tomli_w.dumps({**config, "text_mode": "frozen"}))
    shutil.copy(e2e_dir / "test_metrics.json", features_dir / "test_metrics.json")
    runs = read_run_results([features_dir, e2e_dir])
    assert sorted(run.text_mode for run in runs) == ["end_to_end", "frozen"]
    row_names = {table.name: [name for name, _ in table.rows] for table in report_tables(runs)}
    assert {"CM-RoBERTa", "CM-RoBERTa (end-to-end)"} <= set(row_names["table1"])
    assert {"bimodal", "bimodal (end-to-end)"} <= set(row_names["table2"])
    assert "bimodal (end-to-end), seed 3" in format_report(runs)


def test_text_mode_defaults_to_end_to_end_and_each_mode_gets_its_own_folder(tmp_path):
    base = ["store=/stores/s"]
    default = load_config(RunConfig, None, base)
    assert default.text_mode == "end_to_end" and default.end_to_end.engine.zero_stage == 2
    assert default_run_dir(default).name == "bimodal-end_to_end-seed0"
    audio = load_config(RunConfig, None, [*base, "model.variant=audio", "text_mode=end_to_end"])
    assert audio.text_mode == "frozen", "an audio-only run reads no text, whatever the mode asked"
    assert default_run_dir(audio).name == "audio-seed0"
    folders = {default_run_dir(load_config(RunConfig, None, [*base, f"text_mode={mode}"])).name
               for mode in ("end_to_end", "finetuned", "frozen")}
    assert len(folders) == 3
    with pytest.raises(ConfigError, match="end_to_end.engine.zero_stage"):
        load_config(RunConfig, None, [*base, "train.zero_stage=2"])
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(RunConfig, None, [*base, "end_to_end.schedule.warmup_epochs=30"])


def test_a_store_without_a_recorded_encoder_asks_for_one(tmp_path):
    store = build_store_from_arrays(tmp_path / "bare-000000000000", {"train": train_rows(4)}, {"corpus": "x"})
    with pytest.raises(FeatureStoreError, match="end_to_end.encoder.model="):
        resolve_run_config(RunConfig(store=str(store)))
    assert main(["train", str(store), "--run-dir", str(tmp_path / "run")]) == 2


@pytest.mark.integration
def test_in_graph_text_vectors_are_layer_normalised(single_process, run_store, encoder_folder):
    config = resolve_run_config(load_config(RunConfig, None, e2e_overrides(run_store)))
    inputs = prepare_inputs(config, ("train",))
    model, train_set = inputs.model, inputs.datasets["train"]
    rows = torch.arange(train_set.num_utterances).view(-1, 1)
    with torch.no_grad():
        model.eval()
        vectors = model.text_vectors(train_set.tokens.batch(rows)).double()
    # Each utterance's four layer vectors, each centred with unit variance over its own values (LayerNorm's
    # eps of 1e-5 against the tiny encoder's layer variances of about 1 leaves the variance 1 to 1e-4).
    layers = vectors.unflatten(-1, (4, -1))
    np.testing.assert_allclose(layers.mean(-1).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(layers.var(-1, unbiased=False).numpy(), 1.0, atol=1e-4)
    unnormalised = load_config(RunConfig, None, [*e2e_overrides(run_store), "data.standardize=false"])
    assert not prepare_inputs(resolve_run_config(unnormalised), ("train",)).model.normalise


def _one_step(config: RunConfig, accumulation: int, rendezvous) -> tuple[dict[str, torch.Tensor], float]:
    """The parameters after one optimizer step on the first 8 dialogues of the train split, and the norm of the
    gradient it stepped on."""
    train_config = dataclasses.replace(config.train, gradient_accumulation_steps=accumulation)
    config = dataclasses.replace(config, train=train_config)
    config = resolve_run_config(config)
    seed_everything(config.seed)
    inputs = prepare_inputs(config, ("train",))
    train_set = inputs.datasets["train"]
    # In float64 (see the test for why). One rank in fp32 runs without ZeRO, so Adam steps these float64
    # weights themselves.
    inputs.model.double()
    engine = initialize_engine(inputs.model, config, 1, steps_per_epoch=1)
    # Nor does it all-reduce with itself, which DeepSpeed refuses for float64 gradients.
    assert engine.zero_optimization_stage() == 0 and not engine.enable_backward_allreduce
    # Without ZeRO, DeepSpeed keeps no norm of the gradient it clipped by; each parameter's gradient as the
    # last micro-batch left it (the step then zeroes it) is the one the step used.
    stepped_on: dict[str, torch.Tensor] = {}
    for name, parameter in inputs.model.named_parameters():
        if parameter.requires_grad:
            parameter.register_post_accumulate_grad_hook(
                lambda p, name=name: stepped_on.__setitem__(name, p.grad.detach().clone())
            )
    first_batch = next(iter(DialogueBatchSampler(len(train_set), 8)))
    # No step checkpoint is due (every_steps 0, no request), so the checkpoint folder is never written.
    step_checkpoints = StepCheckpoints(
        checkpoints=RunFolder(Path("unused-run")).checkpoints(), state=TrainingState(), every_steps=0, request=None
    )
    loss_sum = torch.zeros((), dtype=torch.float64)
    _train_epoch(engine, train_set, [first_batch], None, rendezvous, torch.float64, tqdm(disable=True),
                 EpochProgress(epoch=1), loss_sum, step_checkpoints)
    assert engine.global_steps == 1
    return parameters(engine), float(torch.linalg.vector_norm(torch.stack([g.norm() for g in stepped_on.values()])))


@pytest.mark.integration
@pytest.mark.parametrize("text_mode", ["end_to_end", "frozen"])
def test_accumulated_micro_batches_take_the_step_of_one_batch(single_process, run_store, text_mode):
    # Clipping far above the norm: DeepSpeed computes the global gradient norm, which Adam's step (invariant to
    # the gradient's scale) cannot show, and never clips.
    #
    # Why float64, and the tolerance. One batch and four micro-batches sum the same per-token gradient terms c_t
    # in different groupings, so g differs by rounding: |dg| <= 2 n u sum|c_t| for n terms at unit roundoff u.
    # Adam's first step is lr g / (|g| + eps), whose slope lr eps / (|g| + eps)^2 peaks at lr / eps = 1e4 where
    # g is near 0, as for a gradient that cancels (a key bias's is zero up to rounding). In float32 (u = 6e-8)
    # a few hundred terms of sum|c_t| ~ 0.1 give |dg| ~ 1e-8..1e-10, and so steps apart by up to 1e-4: no
    # tolerance below the step itself would hold. In float64 (u = 1.1e-16), with n <= 2000 terms (8 dialogues
    # of tokens) and sum|c_t| <= 100 (mean losses of tokens whose activations are layer-normalised), the step
    # differs by at most 1e4 * 2 * 2000 * 1.1e-16 * 100 = 4.4e-7, under the 1e-6 asserted for every tensor (one
    # rank in fp32 runs without ZeRO, so no float32 master copy adds its rounding).
    overrides = [*e2e_overrides(run_store), f"text_mode={text_mode}", "model.variant=bimodal_no_sca",
                 "train.learning_rate=1e-4", "end_to_end.param_groups.encoder_lr=1e-4",
                 "end_to_end.engine.gradient_clipping=1e9"]
    if text_mode == "frozen":
        overrides = [o for o in overrides if not o.startswith("end_to_end.")]
        overrides += ["train.gradient_clipping=1e9"]
    config = load_config(RunConfig, None, overrides)
    whole, whole_norm = _one_step(config, 1, single_process)
    accumulated, accumulated_norm = _one_step(config, 4, single_process)
    assert accumulated_norm == pytest.approx(whole_norm, rel=1e-6) and whole_norm > 0
    before = parameters_of_fresh_model(config)
    moved = [name for name in whole if not torch.equal(whole[name], before[name].double())]
    assert len(moved) > len(whole) // 2, "the step moved the model"
    for name in whole:
        np.testing.assert_allclose(accumulated[name].numpy(), whole[name].numpy(), atol=1e-6, rtol=0, err_msg=name)


def parameters_of_fresh_model(config: RunConfig) -> dict[str, torch.Tensor]:
    config = resolve_run_config(config)
    seed_everything(config.seed)
    return {name: p.detach().clone() for name, p in prepare_inputs(config, ("train",)).model.named_parameters()}
