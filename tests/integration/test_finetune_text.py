"""text_mode 'finetuned', the paper's recipe as one command on a tiny RoBERTa: the encoder fine-tuned alone on
utterance emotion under DeepSpeed, exported, its vectors extracted into the store as a family that records
its provenance, the head trained on them; and a second invocation that redoes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from test_end_to_end import WORDS, words_store

from cluster.config import ConfigError, load_config
from extract.feature_store import FeatureStore, FeatureStoreError, add_family
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from launch.cli import main
from model.deepspeed_config import EngineConfig
from model.finetune_text import FINISHED_NAME, FinetuneConfig
from model.run_config import RunConfig


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> Path:
    return build_tiny_text_encoder(tmp_path_factory.mktemp("tiny"), WORDS * 2, TinyEncoderConfig(hidden_size=32))


def chain_overrides(root: Path, seed: int) -> list[str]:
    return [
        "text_mode=finetuned",
        f"runs_root={json.dumps(str(root / 'runs'))}",
        "finetune.seed=0",
        "finetune.max_epochs=3",
        "finetune.patience=3",
        "finetune.batch_utterances=16",
        "finetune.classifier_lr=0.003",
        "finetune.param_groups.encoder_lr=0.001",
        "finetune.engine.zero_stage=0",
        "model.hidden_size=8",
        "train.batch_dialogues=8",
        "train.learning_rate=0.003",
        "train.max_epochs=2",
        "train.patience=2",
        f"seed={seed}",
    ]


def snapshot(*folders: Path) -> dict[str, int]:
    """Every file under the folders, with its modification time in nanoseconds."""
    return {str(p): p.stat().st_mtime_ns for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def chain(one_thread, tmp_path_factory, encoder_folder) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("chain")
    store = words_store(root, encoder_folder)
    run_dir = root / "head-seed1"
    assert main(["train", str(store), *chain_overrides(root, 1), "--run-dir", str(run_dir)]) == 0
    return root, store, run_dir


@pytest.mark.integration
def test_the_chain_fine_tunes_exports_extracts_and_trains_the_head(chain, encoder_folder):
    from transformers import AutoModel

    _, store_path, run_dir = chain
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    assert saved["text_mode"] == "finetuned"
    family = saved["data"]["text_family"]
    assert family.startswith("text_ft_")
    assert saved["finetune"]["encoder"]["model"] == str(encoder_folder), "it starts from the store's encoder"
    store = FeatureStore.open(store_path)
    assert store.verify() == [], "every rewritten shard matches the manifest"
    assert store.families[family] == 4 * 32
    provenance = store.manifest["families"][family]["provenance"]
    folder = Path(provenance["run_folder"])
    assert provenance["config_hash"] == family.removeprefix("text_ft_")
    assert folder.name == f"text-finetune-{provenance['config_hash']}"
    assert tomllib.loads((folder / "config.toml").read_text())["seed"] == 0
    finished = json.loads((folder / FINISHED_NAME).read_text())
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert finished["selected_epoch"] == min(epochs, key=lambda e: e["dev_loss"])["epoch"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    exported = AutoModel.from_pretrained(provenance["encoder"], local_files_only=True).state_dict()
    pretrained = AutoModel.from_pretrained(encoder_folder, local_files_only=True).state_dict()
    top = "encoder.layer.3.output.dense.weight"
    assert not torch.equal(exported[top], pretrained[top]), "the exported encoder is the fine-tuned one"
    dev = store.read_split("dev", families=[family, "text"])
    assert dev.features[family].shape == (len(dev), 128) and dev.valid[family].all()
    assert (run_dir / "test_metrics.json").is_file() and not (run_dir / "encoder").exists()


@pytest.mark.integration
def test_a_second_invocation_redoes_nothing(chain):
    root, store, run_dir = chain
    before = snapshot(store, root / "runs")
    results = contents(run_dir)
    assert main(["train", str(store), *chain_overrides(root, 1), "--run-dir", str(run_dir), "--resume"]) == 0
    assert snapshot(store, root / "runs") == before, "no file of the store or the fine-tuning was written again"
    assert contents(run_dir) == results
    # Another seed of the head shares the fine-tuned encoder and its family: only its own run folder is new.
    other = root / "head-seed2"
    assert main(["train", str(store), *chain_overrides(root, 2), "--run-dir", str(other)]) == 0
    assert snapshot(store, root / "runs") == before
    first = tomllib.loads((run_dir / "config.toml").read_text())["data"]["text_family"]
    assert tomllib.loads((other / "config.toml").read_text())["data"]["text_family"] == first


def test_finetune_config_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="zero_stage 3"):
        FinetuneConfig(engine=EngineConfig(zero_stage=3))
    with pytest.raises(ConfigError, match="freeze"):
        load_config(RunConfig, None, ["store=/s", "text_mode=finetuned", "finetune.encoder.freeze=true"])


def test_adding_a_family_twice_is_refused(tmp_path, encoder_folder):
    store = words_store(tmp_path, encoder_folder)
    rows = FeatureStore.open(store).read_split("train", families=[])
    with pytest.raises(FeatureStoreError, match="already has a family 'text'"):
        add_family(store, "text", {"train": (rows.keys, np.zeros((len(rows), 3), np.float32))}, {})
