"""A manifest is read into typed records and every shard array is checked against it before use.

Each case damages a real store the way a hostile or careless edit would: a shard entry naming a file
outside the store, valid JSON of the wrong shape, an array of the wrong shape with its sha256 updated
so that only the shape check can notice. `verify` must call the store damaged in one line, opening it
(as `train`, `evaluate` and `sweep` do) must refuse it in one line, and `extract` must never touch a
file outside the store.
"""

import json

import h5py
import numpy as np
import pytest

from cluster.durable_files import file_sha256
from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from extract.extract_config import ExtractConfig, feature_settings, store_path
from extract.feature_store import FeatureStore, build_store_from_arrays
from extract.manifest import MANIFEST_NAME, FeatureStoreError, new_manifest
from launch.cli import main
from tests.faults.fault_summary import record_case
from tests.faults.test_damaged_store import refusal as open_refusal
from tests.tiny_runs import tiny_split

# The width of tiny_split's text family.
WIDTH = 3


@pytest.fixture
def store_dir(tmp_path):
    arrays = {"train": tiny_split("train"), "dev": tiny_split("dev")}
    return build_store_from_arrays(tmp_path / "s-000000000000", arrays, {"corpus": "/data/MELD.Raw"}, shard_dialogues=1)


def edit_manifest(store_dir, change) -> None:
    path = store_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def verify_line(store_dir, capsys) -> tuple[int, str]:
    """`cmroberta verify STORE`: its status and everything it printed, which must be one problem line."""
    status = main(["verify", str(store_dir)])
    captured = capsys.readouterr()
    printed = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert "Traceback" not in captured.err
    return status, "\n".join(printed)


WRONG_SHAPES = {
    "families_as_a_list": (lambda m: m.update(families=["text"]), "families is list, not an object"),
    "dim_as_a_string": (lambda m: m["families"]["text"].update(dim="3"), "families.text.dim is str"),
    "shards_of_integers": (lambda m: m.update(shards=[1, 2]), "shards[0] is not a JSON object"),
    "shard_without_bytes": (lambda m: m["shards"][0].pop("bytes"), "shards[0] has no 'bytes'"),
    "rows_as_true": (lambda m: m["shards"][0].update(rows=True), "shards[0].rows is bool"),
    "plan_as_a_list": (lambda m: m.update(plan=[]), "plan is list"),
    "failed_record_without_reason": (
        lambda m: m.update(failed=[{"key": "train/dia0_utt0", "family": "text"}]),
        "failed[0] has no 'reason'",
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_SHAPES))
def test_valid_json_of_the_wrong_shape_is_damaged_in_one_line(store_dir, capsys, case):
    change, expected = WRONG_SHAPES[case]
    edit_manifest(store_dir, change)
    status, printed = verify_line(store_dir, capsys)
    record_case(f"manifest {case}", traceback="Traceback" in printed, silent=status == 0)
    assert status == 1
    assert "is damaged" in printed and expected in printed
    message = open_refusal(store_dir)
    assert expected in message


@pytest.mark.parametrize("file", ["/etc/hostname", "../outside.h5", "shards/../../outside.h5", "config.toml"])
def test_a_shard_entry_outside_shards_is_refused_by_name(store_dir, capsys, file):
    edit_manifest(store_dir, lambda m: m["shards"][0].update(file=file))
    status, printed = verify_line(store_dir, capsys)
    record_case(f"manifest shard file {file}", traceback="Traceback" in printed, silent=status == 0)
    assert status == 1
    assert f"shards[0].file {file!r} is not a file inside the store's shards/ folder" in printed
    assert f"{file!r} is not a file inside" in open_refusal(store_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_demo_corpus(
        tmp_path_factory.mktemp("corpus"),
        DemoCorpusConfig(train_dialogues=1, dev_dialogues=1, test_dialogues=1, clip_format="wav", workers=1),
    )


@pytest.mark.parametrize("escape", ["absolute", "dotdot"])
def test_extract_never_deletes_a_file_a_manifest_names_outside_the_store(corpus, tmp_path, capsys, escape):
    """Before: `_drop_unplanned` unlinked whatever `file` an unplanned entry named, and extract exited 0."""
    victim = tmp_path / "precious.txt"
    victim.write_text("a user's file\n")
    config = ExtractConfig(corpus=str(corpus), store_root=str(tmp_path / "features"), families=["opensmile"])
    store = store_path(config)
    store.mkdir(parents=True)
    manifest = new_manifest(store.name.rsplit("-", 1)[0], feature_settings(config))
    file = str(victim) if escape == "absolute" else "shards/../../../precious.txt"
    manifest["shards"] = [
        {"file": file, "split": "train", "rows": 1, "dialogues": [0], "inputs": "", "sha256": "0", "bytes": 14}
    ]
    (store / MANIFEST_NAME).write_text(json.dumps(manifest))

    status = main(["extract", str(corpus), f"store_root={json.dumps(str(tmp_path / 'features'))}",
                   'families=["opensmile"]'])
    err = capsys.readouterr().err.strip()
    record_case(f"extract with a manifest entry {escape}", traceback="Traceback" in err,
                silent=not victim.exists() or status == 0)
    assert victim.read_text() == "a user's file\n"
    assert status == 2
    assert len(err.splitlines()) == 1
    assert f"shards[0].file {file!r} is not a file inside the store's shards/ folder" in err
    assert "nothing it names was touched" in err


def rewrite_array(store_dir, family: str, array: np.ndarray) -> None:
    """Replace one shard's family array and record the new size and sha256, as a careful forger would."""
    path = store_dir / "shards/train-00000.h5"
    with h5py.File(path, "a") as shard:
        del shard[family]
        shard.create_dataset(family, data=array)
    edit_manifest(
        store_dir,
        lambda m: m["shards"][[s["file"] for s in m["shards"]].index("shards/train-00000.h5")].update(
            sha256=file_sha256(path), bytes=path.stat().st_size
        ),
    )
    (store_dir / "verified.json").unlink(missing_ok=True)


ARRAY_SHAPES = {
    "one_column": ((2, 1), "its text has shape (2, 1), the manifest records (2, 3)"),
    "one_row": ((1, WIDTH), "its text has shape (1, 3), the manifest records (2, 3)"),
    "ten_columns_too_wide": ((2, WIDTH + 10), "its text has shape (2, 13), the manifest records (2, 3)"),
}


@pytest.mark.parametrize("case", sorted(ARRAY_SHAPES))
def test_an_array_of_the_wrong_shape_is_damage_not_broadcast(store_dir, capsys, case):
    """Before: numpy broadcast (2, 1) and (1, 3) over (2, 3); verify said all was well and train ran on it."""
    shape, expected = ARRAY_SHAPES[case]
    rewrite_array(store_dir, "text", np.ones(shape, dtype=np.float32))
    status, printed = verify_line(store_dir, capsys)
    record_case(f"shard array {case}", traceback="Traceback" in printed, silent=status == 0)
    assert status == 1
    assert "shards/train-00000.h5 is damaged: " + expected in printed
    assert expected in open_refusal(store_dir)
    # A reader handed the manifest without an open (as `predict` and the token cache are) checks too.
    unopened = FeatureStore(store_dir, json.loads((store_dir / MANIFEST_NAME).read_text()))
    with pytest.raises(FeatureStoreError, match=r"its text has shape"):
        unopened.read_split("train")
