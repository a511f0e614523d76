"""The HDF5 feature store: round trip, tmp-then-rename, checksums, and clear errors."""

import json
import os

import h5py
import numpy as np
import pytest

from cluster.durable_files import file_sha256
from extract.feature_store import FeatureStore, build_store_from_arrays
from extract.manifest import FORMAT_VERSION, MANIFEST_NAME, FeatureStoreError, config_hash
from extract.shard_files import shard_problem, write_shard
from extract.split_arrays import SplitArrays

# (dialogue_id, utterance_id) deliberately out of order: the store must sort them.
ROWS = [(4, 1), (4, 0), (1, 0), (1, 1), (1, 2), (7, 0), (2, 0), (2, 1)]
DIMS = {"opensmile": 5, "text": 8}


def make_split(split: str, seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    n = len(ROWS)
    valid_opensmile = np.ones(n, dtype=bool)
    valid_opensmile[2] = False
    features = {family: rng.normal(size=(n, dim)).astype(np.float32) for family, dim in DIMS.items()}
    features["opensmile"][~valid_opensmile] = 0.0
    return SplitArrays(
        keys=[f"{split}/dia{d}_utt{u}" for d, u in ROWS],
        dialogue_ids=np.array([d for d, _ in ROWS]),
        utterance_ids=np.array([u for _, u in ROWS]),
        speakers=[f"speaker {d}-{u}" for d, u in ROWS],
        transcripts=[f"I said {d}.{u}, café!" for d, u in ROWS],
        emotion=rng.integers(0, 7, n),
        sentiment=rng.integers(0, 3, n),
        features=features,
        valid={"opensmile": valid_opensmile},
        feature_names={"opensmile": [f"column_{i}[x]" for i in range(DIMS["opensmile"])]},
    )


@pytest.fixture
def arrays() -> dict[str, SplitArrays]:
    return {"train": make_split("train", 0), "dev": make_split("dev", 1)}


@pytest.fixture
def store(tmp_path, arrays) -> FeatureStore:
    path = build_store_from_arrays(
        tmp_path / "demo-000000000000", arrays, {"text": {"model": "tiny"}}, shard_dialogues=2
    )
    return FeatureStore.open(path)


def test_round_trip_keeps_every_row_sorted_by_dialogue(store, arrays):
    assert store.families == DIMS
    assert store.splits == ["train", "dev"]
    for split, original in arrays.items():
        read = store.read_split(split)
        expected_order = sorted(range(len(ROWS)), key=lambda i: ROWS[i])
        assert read.keys == [original.keys[i] for i in expected_order]
        assert read.dialogue_ids.dtype == np.int32 and read.emotion.dtype == np.int64
        np.testing.assert_array_equal(read.utterance_ids, [ROWS[i][1] for i in expected_order])
        np.testing.assert_array_equal(read.emotion, original.emotion[expected_order])
        np.testing.assert_array_equal(read.sentiment, original.sentiment[expected_order])
        assert read.transcripts == [original.transcripts[i] for i in expected_order]
        assert read.speakers == [original.speakers[i] for i in expected_order]
        for family in DIMS:
            assert read.features[family].dtype == np.float32
            np.testing.assert_array_equal(read.features[family], original.features[family][expected_order])
            np.testing.assert_array_equal(read.valid[family], original.valid[family][expected_order])
        assert read.feature_names["opensmile"] == original.feature_names["opensmile"]
        dialogues = read.dialogues()
        assert [sorted({int(read.dialogue_ids[i]) for i in rows}) for rows in dialogues] == [[1], [2], [4], [7]]
        assert [len(rows) for rows in dialogues] == [3, 2, 2, 1]


def test_manifest_lists_shards_of_whole_dialogues_and_failures(store):
    manifest = json.loads((store.path / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["config_hash"] == config_hash({"text": {"model": "tiny"}})
    train = [shard for shard in manifest["shards"] if shard["split"] == "train"]
    assert [shard["dialogues"] for shard in train] == [[1, 2], [4, 7]]
    assert [shard["rows"] for shard in train] == [5, 3]
    assert [shard["file"] for shard in train] == ["shards/train-00000.h5", "shards/train-00001.h5"]
    for shard in manifest["shards"]:
        path = store.path / shard["file"]
        assert shard["sha256"] == file_sha256(path) and shard["bytes"] == path.stat().st_size
        with h5py.File(path) as h5:
            assert h5.attrs["split"] == shard["split"] and h5.attrs["format_version"] == FORMAT_VERSION
            assert h5["opensmile"].chunks is not None and h5["opensmile"].compression == "gzip"
    # ROWS[2] (dialogue 1, utterance 0) is marked invalid in each split.
    assert sorted(record["key"] for record in manifest["failed"]) == ["dev/dia1_utt0", "train/dia1_utt0"]
    assert store.verify() == []
    assert (store.path / "config.toml").read_text().strip() == '[text]\nmodel = "tiny"'


def test_write_shard_publishes_a_complete_file_and_clears_its_temporary(tmp_path, arrays, monkeypatch):
    rows = arrays["train"].take(arrays["train"].row_order())
    target = tmp_path / "shards" / "train-00000.h5"
    written = write_shard(target, "train", rows)
    assert sorted(p.name for p in target.parent.iterdir()) == ["train-00000.h5"]
    assert written.sha256 == file_sha256(target)

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    other = tmp_path / "shards" / "train-00001.h5"
    with pytest.raises(OSError, match="killed"):
        write_shard(other, "train", rows)
    # A failed write leaves neither the shard nor its temporary file.
    assert sorted(p.name for p in target.parent.iterdir()) == ["train-00000.h5"]


def test_write_shard_rejects_unordered_rows(tmp_path, arrays):
    with pytest.raises(ValueError, match="not ordered"):
        write_shard(tmp_path / "x.h5", "train", arrays["train"])


def test_checksum_mismatch_is_detected(store):
    entry = store.shards("train")[0]
    path = store.path / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert shard_problem(store.path, entry) == f"{entry['file']} does not match its sha256 in the manifest"
    assert store.verify() == [f"{entry['file']} does not match its sha256 in the manifest"]


def test_truncated_shard_is_a_clear_error(store):
    entry = store.shards("dev")[1]
    path = store.path / entry["file"]
    path.write_bytes(path.read_bytes()[: entry["bytes"] // 2])
    assert "bytes" in shard_problem(store.path, entry, check_sha256=False)
    with pytest.raises(FeatureStoreError, match="re-run `cmroberta extract`"):
        store.read_split("dev")
    store.read_split("train")


def test_not_a_store_and_unknown_names_are_clear_errors(tmp_path, store):
    with pytest.raises(FeatureStoreError, match="no manifest.json"):
        FeatureStore.open(tmp_path)
    with pytest.raises(FeatureStoreError, match="does not exist"):
        FeatureStore.open(tmp_path / "missing")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(FeatureStoreError, match="cannot be read"):
        FeatureStore.open(tmp_path)
    with pytest.raises(FeatureStoreError, match="no split 'test'"):
        store.read_split("test")
    with pytest.raises(FeatureStoreError, match="no feature family openl3"):
        store.read_split("train", families=("openl3",))
    only_text = store.read_split("train", families=("text",))
    assert list(only_text.features) == ["text"]


def test_config_hash_follows_content_not_key_order():
    assert config_hash({"a": 1, "b": {"c": [1, 2]}}) == config_hash({"b": {"c": [1, 2]}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 12


def test_split_arrays_reject_mismatched_shapes(arrays):
    good = arrays["train"]
    with pytest.raises(ValueError, match="features\\['text'\\]"):
        SplitArrays(
            keys=good.keys,
            dialogue_ids=good.dialogue_ids,
            utterance_ids=good.utterance_ids,
            speakers=good.speakers,
            transcripts=good.transcripts,
            emotion=good.emotion,
            sentiment=good.sentiment,
            features={"text": np.zeros((3, 4))},
        )
