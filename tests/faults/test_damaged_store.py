"""A feature store that is incomplete, damaged or stale is refused on open with one line naming the fault and the fix.

Each case builds a real store with `build_store_from_arrays` (the pipeline's writer), damages it
the way a crash, a copy or a hostile edit would, and opens it as `train`, `evaluate` and `sweep` do.
"""

import json
import os

import h5py
import numpy as np
import pytest

import extract.shard_files as shard_files
from extract.feature_store import CONFIG_NAME, FeatureStore, build_store_from_arrays
from extract.manifest import MANIFEST_NAME, FeatureStoreError
from extract.shard_files import VERIFIED_NAME
from extract.split_arrays import SplitArrays
from tests.synthetic_splits import split_of_rows

CORPUS = "/data/MELD.Raw"


def split_arrays(split: str, dialogues: int, seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    rows = [(d, u) for d in range(dialogues) for u in range(3)]
    return split_of_rows(
        split,
        rows,
        speaker="Rachel",
        transcript="Hi.",
        emotion=rng.integers(0, 7, len(rows)),
        sentiment=rng.integers(0, 3, len(rows)),
        features={"text": rng.normal(size=(len(rows), 8)).astype(np.float32)},
    )


@pytest.fixture
def store_dir(tmp_path):
    arrays = {"train": split_arrays("train", 4, 0), "test": split_arrays("test", 2, 1)}
    return build_store_from_arrays(tmp_path / "meld-0123456789ab", arrays, {"corpus": CORPUS}, shard_dialogues=2)


def manifest_of(store_dir):
    return json.loads((store_dir / MANIFEST_NAME).read_text())


def rewrite_manifest(store_dir, manifest):
    (store_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def refusal(store_dir) -> str:
    with pytest.raises(FeatureStoreError) as caught:
        FeatureStore.open(store_dir)
    message = str(caught.value)
    assert "\n" not in message
    return message


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_whole_store_opens_and_verifies(store_dir):
    store = FeatureStore.open(store_dir)
    assert store.verify() == []
    plan = store.manifest["plan"]
    assert [shard["file"] for shard in plan["shards"]] == [
        "shards/test-00000.h5",
        "shards/train-00000.h5",
        "shards/train-00001.h5",
    ]
    assert plan["split_rows"] == {"train": 12, "test": 6}


def test_a_store_cut_short_names_the_missing_shards_and_the_command_that_finishes_them(store_dir):
    manifest = manifest_of(store_dir)
    manifest["shards"] = [shard for shard in manifest["shards"] if shard["file"] != "shards/train-00001.h5"]
    rewrite_manifest(store_dir, manifest)
    (store_dir / "shards/train-00001.h5").unlink()
    message = refusal(store_dir)
    assert message.startswith(
        f"feature store {store_dir} is incomplete: shards/train-00001.h5 is planned but not written"
    )
    assert f"Finish or repair it with `cmroberta extract {CORPUS} --config {store_dir / CONFIG_NAME}" in message
    assert f"store_root={store_dir.resolve().parent}" in message


def test_a_store_without_a_plan_is_incomplete(store_dir):
    manifest = manifest_of(store_dir)
    manifest["plan"] = None
    rewrite_manifest(store_dir, manifest)
    assert "is incomplete: the manifest records no plan" in refusal(store_dir)


def test_a_flipped_byte_is_found_on_open(store_dir):
    flip_byte(store_dir / "shards/train-00000.h5")
    message = refusal(store_dir)
    assert "is damaged: shards/train-00000.h5 does not match its sha256 in the manifest" in message


def test_a_flipped_byte_after_a_cached_open_is_still_found(store_dir):
    FeatureStore.open(store_dir)
    assert (store_dir / VERIFIED_NAME).is_file()
    flip_byte(store_dir / "shards/test-00000.h5")
    assert "shards/test-00000.h5 does not match its sha256" in refusal(store_dir)


def test_a_flip_that_restores_the_old_mtime_is_still_found(store_dir):
    FeatureStore.open(store_dir)
    path = store_dir / "shards/train-00001.h5"
    before = path.stat()
    flip_byte(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "shards/train-00001.h5 does not match its sha256" in refusal(store_dir)


def test_a_second_open_reads_no_unchanged_shard(store_dir, monkeypatch):
    hashed = []
    real = shard_files.file_sha256
    monkeypatch.setattr(shard_files, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    FeatureStore.open(store_dir)
    assert sorted(hashed) == ["test-00000.h5", "train-00000.h5", "train-00001.h5"]
    hashed.clear()
    FeatureStore.open(store_dir)
    assert hashed == []


def test_a_truncated_shard_is_named_with_both_sizes(store_dir):
    path = store_dir / "shards/train-00000.h5"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    assert f"shards/train-00000.h5 has {size // 2} bytes, the manifest records {size}" in refusal(store_dir)


def test_a_deleted_shard_is_named(store_dir):
    (store_dir / "shards/test-00000.h5").unlink()
    assert "is damaged: shards/test-00000.h5 is missing" in refusal(store_dir)


def test_a_shard_made_from_other_inputs_is_stale(store_dir):
    manifest = manifest_of(store_dir)
    manifest["shards"][0]["inputs"] = "0" * 64
    rewrite_manifest(store_dir, manifest)
    assert "shards/test-00000.h5 was made from other inputs than planned (the corpus changed)" in refusal(store_dir)


def test_a_shard_with_other_dialogues_than_planned_is_named(store_dir):
    manifest = manifest_of(store_dir)
    manifest["plan"]["shards"][1]["dialogues"] = [0, 1, 2]
    rewrite_manifest(store_dir, manifest)
    assert "shards/train-00000.h5 holds other dialogues than planned" in refusal(store_dir)


def test_a_shard_outside_the_plan_is_named(store_dir):
    manifest = manifest_of(store_dir)
    manifest["plan"]["shards"] = manifest["plan"]["shards"][:2]
    rewrite_manifest(store_dir, manifest)
    assert "shards/train-00001.h5 is recorded but not in the plan" in refusal(store_dir)


def test_an_older_manifest_format_asks_for_a_rebuild(store_dir):
    manifest = manifest_of(store_dir)
    manifest["format_version"] = 1
    rewrite_manifest(store_dir, manifest)
    assert "has format_version 1; this cmroberta reads version 2. Re-run `cmroberta extract`" in refusal(store_dir)


def test_a_manifest_that_is_not_an_object_is_refused(store_dir):
    (store_dir / MANIFEST_NAME).write_text("[1, 2]")
    assert "is not a manifest (not a JSON object)" in refusal(store_dir)


def test_a_truncated_manifest_is_refused(store_dir):
    text = (store_dir / MANIFEST_NAME).read_text()
    (store_dir / MANIFEST_NAME).write_text(text[: len(text) // 2])
    assert "manifest.json cannot be read" in refusal(store_dir)


def test_a_garbage_cache_is_ignored_and_rewritten(store_dir):
    (store_dir / VERIFIED_NAME).write_text("{garbage")
    FeatureStore.open(store_dir)
    assert set(json.loads((store_dir / VERIFIED_NAME).read_text())) == {
        "shards/test-00000.h5",
        "shards/train-00000.h5",
        "shards/train-00001.h5",
    }


def test_a_lying_cache_does_not_pass_a_damaged_shard(store_dir):
    FeatureStore.open(store_dir)
    path = store_dir / "shards/train-00000.h5"
    flip_byte(path)
    cache = json.loads((store_dir / VERIFIED_NAME).read_text())
    status = path.stat()
    cache["shards/train-00000.h5"].update(bytes=status.st_size, mtime_ns=status.st_mtime_ns)
    (store_dir / VERIFIED_NAME).write_text(json.dumps(cache))
    # ctime still differs: the shard is read again and its damage found.
    assert "shards/train-00000.h5 does not match its sha256" in refusal(store_dir)


def test_an_out_of_range_label_names_the_shard_and_row(store_dir):
    path = store_dir / "shards/train-00001.h5"
    with h5py.File(path, "r+") as shard:
        emotion = shard["emotion"][...]
        emotion[2] = 9
        shard["emotion"][...] = emotion
        key = shard["key"].asstr()[2]
    store = FeatureStore.open(store_dir, verify=False)
    with pytest.raises(FeatureStoreError) as caught:
        store.read_split("train")
    assert str(caught.value) == (
        f"store {store_dir}: shard shards/train-00001.h5 row 2 ({key}) has emotion index 9, outside 0..6; "
        "re-run `cmroberta extract` to redo the shard"
    )


def test_a_negative_sentiment_names_the_shard_and_row(store_dir):
    path = store_dir / "shards/test-00000.h5"
    with h5py.File(path, "r+") as shard:
        sentiment = shard["sentiment"][...]
        sentiment[0] = -1
        shard["sentiment"][...] = sentiment
    with pytest.raises(FeatureStoreError, match=r"row 0 \(test/dia0_utt0\) has sentiment index -1, outside 0..2"):
        FeatureStore.open(store_dir, verify=False).read_split("test")


def cut_short(store_dir):
    manifest = manifest_of(store_dir)
    manifest["shards"] = [shard for shard in manifest["shards"] if shard["split"] != "test"]
    rewrite_manifest(store_dir, manifest)


@pytest.mark.parametrize("verb", ["train", "sweep"])
def test_train_and_sweep_refuse_an_incomplete_store_in_one_line(store_dir, tmp_path, capsys, verb):
    from launch.cli import main

    cut_short(store_dir)
    if verb == "train":
        argv = ["train", str(store_dir), "--run-dir", str(tmp_path / "run")]
    else:
        argv = ["sweep", "--seeds", "0", "--out", str(tmp_path / "sweep"), f"store={json.dumps(str(store_dir))}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"cmroberta {verb}: error: feature store {store_dir} is incomplete: "
        "shards/test-00000.h5 is planned but not written"
    )
    assert "Finish or repair it with `cmroberta extract /data/MELD.Raw --config" in err
    assert "\n" not in err
    assert not (tmp_path / "sweep" / "runs").exists()
