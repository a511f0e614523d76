"""The extraction pipeline on a small demo corpus, with real Ray, openSMILE, OpenL3 and a tiny RoBERTa.

One local Ray with 2 CPUs serves every test of this module; each extraction starts its
own two actors on it, which load their models once and are stopped when it ends.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from cluster.config import load_config
from cluster.ray_config import RayConfig
from cluster.ray_runtime import ray_session
from extract.extract_config import ExtractConfig, store_path
from extract.feature_store import FeatureStore
from extract.manifest import MANIFEST_NAME
from extract.meld import read_meld
from extract.openl3 import OpenL3Config
from extract.pipeline import run_extraction
from extract.shard_plan import plan_shards
from extract.text_features import TextFeatureConfig
from launch.cli import main
from tests.demo_corpora import corpus_text_encoder, write_wav_corpus

pytestmark = pytest.mark.integration

CORRUPT = "train/dia1_utt1"
MISSING = "dev/dia0_utt0"
TEXT_HIDDEN = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = write_wav_corpus(tmp_path_factory.mktemp("corpus"), train=3, dev=1, test=1, max_utterances=4)
    clips = {u.key: Path(u.media_path) for u in read_meld(root, check_clips=False).utterances}
    clips[CORRUPT].write_bytes(b"RIFF\x00\x00\x00\x00this is not a wave file" * 20)
    clips[MISSING].unlink()
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, corpus) -> Path:
    return corpus_text_encoder(corpus, tmp_path_factory.mktemp("tiny"), hidden_size=TEXT_HIDDEN)


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(RayConfig(num_workers=2)) as resources:
        yield resources


@pytest.fixture(scope="module")
def config(corpus, tiny_model, tmp_path_factory) -> ExtractConfig:
    return ExtractConfig(
        corpus=str(corpus),
        store_root=str(tmp_path_factory.mktemp("stores")),
        shard_dialogues=1,
        openl3=OpenL3Config(weights="random", input_repr="mel128", embedding_size=512, hop_seconds=1.0),
        text=TextFeatureConfig(model=str(tiny_model)),
        ray=RayConfig(num_workers=2),
    )


@pytest.fixture(scope="module")
def store(config, local_ray) -> Path:
    return run_extraction(config)


def shard_times(store: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted((store / "shards").glob("*.h5"))}


def test_each_utterance_appears_exactly_once(store, corpus, local_ray):
    assert local_ray.cpus == 2
    expected = sorted(u.key for u in read_meld(corpus, check_clips=False).utterances)
    features = FeatureStore.open(store)
    assert features.families == {"opensmile": 6552, "openl3": 512, "text": 4 * TEXT_HIDDEN}
    assert features.verify() == []
    keys = []
    for split in features.splits:
        arrays = features.read_split(split)
        keys.extend(arrays.keys)
        assert all(key.startswith(f"{split}/") for key in arrays.keys)
        for family, array in arrays.features.items():
            assert np.isfinite(array).all()
            assert np.all(np.abs(array[arrays.valid[family]]).max(axis=1) > 0), family
    assert sorted(keys) == expected
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    assert sum(shard["rows"] for shard in manifest["shards"]) == len(expected)
    assert len(manifest["shards"]) == 5  # one dialogue a shard: 3 train, 1 dev, 1 test
    assert manifest["config"]["corpus"] == str(corpus.resolve())
    # The resolved config written into the store reads back to the same store.
    assert store_path(load_config(ExtractConfig, store / "config.toml")) == store
    assert not list((store / "shards").glob("*.tmp"))


def test_bad_clips_are_failed_and_their_text_is_kept(store):
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    failed = {(record["key"], record["family"]): record["reason"] for record in manifest["failed"]}
    assert set(failed) == {(key, family) for key in (CORRUPT, MISSING) for family in ("opensmile", "openl3")}
    assert failed[(MISSING, "openl3")].startswith("cannot decode audio") and "missing" in failed[(MISSING, "openl3")]
    flagged = {flag["key"]: flag["kind"] for flag in manifest["clip_flags"]}
    assert flagged[CORRUPT] == "corrupt" and flagged[MISSING] == "missing"
    features = FeatureStore.open(store)
    for key in (CORRUPT, MISSING):
        arrays = features.read_split(key.split("/")[0])
        row = arrays.keys.index(key)
        assert arrays.valid["text"][row] and np.abs(arrays.features["text"][row]).max() > 0
        for family in ("opensmile", "openl3"):
            assert not arrays.valid[family][row]
            assert not arrays.features[family][row].any()
        neighbours = [i for i, k in enumerate(arrays.keys) if k != key]
        assert arrays.valid["opensmile"][neighbours].all() and arrays.valid["openl3"][neighbours].all()


def test_second_run_does_no_work(store, config, local_ray):
    before = shard_times(store)
    manifest_before = json.loads((store / MANIFEST_NAME).read_text())
    assert run_extraction(config) == store
    assert shard_times(store) == before
    assert json.loads((store / MANIFEST_NAME).read_text())["shards"] == manifest_before["shards"]


def test_truncated_and_unrecorded_shards_are_redone(store, config, local_ray):
    features = FeatureStore.open(store)
    train_before = features.read_split("train")
    truncated = store / "shards" / "train-00001.h5"
    truncated.write_bytes(truncated.read_bytes()[:2000])
    # A crash between the rename and the manifest update leaves a shard the manifest does not know.
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    manifest["shards"] = [shard for shard in manifest["shards"] if shard["file"] != "shards/test-00000.h5"]
    (store / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = shard_times(store)

    run_extraction(config)

    after = shard_times(store)
    redone = {name for name in before if after[name] != before[name]}
    assert redone == {"train-00001.h5", "test-00000.h5"}
    features = FeatureStore.open(store)
    assert features.verify() == []
    assert len(features.shards("test")) == 1
    train_after = features.read_split("train")
    assert train_after.keys == train_before.keys
    for family in train_before.features:
        np.testing.assert_allclose(train_after.features[family], train_before.features[family], rtol=1e-4, atol=1e-5)


def test_a_different_config_writes_a_different_store(store, config, local_ray):
    text_only = ExtractConfig(
        corpus=config.corpus,
        store_root=config.store_root,
        families=["text"],
        shard_dialogues=2,
        text=TextFeatureConfig(model=config.text.model, context_window=1),
    )
    other = run_extraction(text_only)
    assert other != store and other.parent == store.parent
    assert set(FeatureStore.open(other).families) == {"text"}
    context, plain = FeatureStore.open(other).read_split("train"), FeatureStore.open(store).read_split("train")
    assert context.keys == plain.keys
    assert np.abs(context.features["text"] - plain.features["text"]).max(axis=1).min() > 1e-5
    # Settings that change only speed or placement name the same store.
    faster = ExtractConfig(
        corpus=config.corpus,
        store_root=config.store_root,
        openl3=config.openl3,
        shard_dialogues=7,
        text=TextFeatureConfig(model=config.text.model, batch_size=3),
        ray=RayConfig(num_workers=1),
    )
    assert store_path(faster) == store


def test_shards_hold_whole_dialogues(corpus):
    utterances = read_meld(corpus, check_clips=False).utterances
    plans = plan_shards(utterances, ["train", "dev", "test"], shard_dialogues=2)
    assert [plan.file for plan in plans] == [
        "shards/train-00000.h5",
        "shards/train-00001.h5",
        "shards/dev-00000.h5",
        "shards/test-00000.h5",
    ]
    seen = [(u.split, u.dialogue_id) for plan in plans for u in plan.utterances]
    assert len(seen) == len(utterances)
    owners = {}
    for plan in plans:
        for u in plan.utterances:
            assert owners.setdefault((u.split, u.dialogue_id), plan.file) == plan.file
            assert u.split == plan.split


def test_cli_reports_a_bad_text_model_in_one_line(corpus, tmp_path, capsys):
    code = main(["extract", str(corpus), f"store_root={tmp_path}", 'families=["text"]', f"text.model={tmp_path}/none"])
    assert code == 2
    assert "text model folder" in capsys.readouterr().err
