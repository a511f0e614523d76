"""`extract` on corpora other than MELD: an IEMOCAP release under both protocols, and a manifest corpus.

Real Ray (one local session for the module) and real openSMILE, the only family extracted:
what is under test is the corpus plumbing (reader, label indices, the manifest's corpus
record, the store hash), not the extractors.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cluster.config import load_config
from cluster.ray_config import RayConfig
from cluster.ray_runtime import ray_session
from extract.corpus import CorpusError
from extract.corpus_reader import read_corpus
from extract.extract_config import ExtractConfig, feature_settings, store_path
from extract.feature_store import FeatureStore
from extract.iemocap import ERC6_LABELS, IemocapConfig
from extract.labels import MELD_EMOTIONS, NO_LABEL
from extract.manifest import (
    MANIFEST_NAME,
    FeatureStoreError,
    new_manifest,
    read_manifest,
    set_corpus,
    store_label_set,
    write_manifest,
)
from extract.pipeline import run_extraction
from extract.shard_extraction import decode_utterance
from launch.cli import main
from model.checkpoint import RunFolderError
from model.fusion import FusionConfig
from model.run_config import RunConfig
from model.run_inputs import prepare_inputs
from model.run_store import open_run_store
from tests.iemocap_layout import MISSING_WAV, TRUNCATED_WAV, write_iemocap
from tests.manifest_layout import LABELS, write_manifest_corpus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(RayConfig(num_workers=2)) as resources:
        yield resources


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory) -> Path:
    return write_iemocap(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_manifest_corpus(tmp_path_factory.mktemp("mine"))


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    """One store folder for the module, so a test that needs a store another made finds it finished."""
    return tmp_path_factory.mktemp("stores")


def _config(corpus: Path, store_root: Path, overrides: list[str] = ()) -> ExtractConfig:
    return load_config(
        ExtractConfig,
        None,
        [f"corpus={corpus}", f"store_root={store_root}", 'families=["opensmile"]', "shard_dialogues=2",
         "ray.num_workers=2", *overrides],
    )


def _stored_labels(store: FeatureStore) -> dict[str, int]:
    return {
        key: int(label)
        for split in store.splits
        for rows in [store.read_split(split)]
        for key, label in zip(rows.keys, rows.emotion)
    }


@pytest.mark.parametrize(
    "overrides, label_set, width",
    [([], "iemocap-erc6", 6), (["iemocap.protocol=ser4", "iemocap.fold=1"], "iemocap-ser4", 4)],
)
def test_iemocap_extracts_in_its_protocols_label_set(iemocap, store_root, local_ray, overrides, label_set, width):
    config = _config(iemocap, store_root, overrides)
    corpus = read_corpus(iemocap, iemocap=config.iemocap)
    store = FeatureStore.open(run_extraction(config))

    assert store.label_set.name == label_set and len(store.label_set) == width
    record = store.manifest["corpus"]
    assert (record["kind"], record["protocol"]) == ("iemocap", corpus.protocol)
    assert store.manifest["emotions"] == list(corpus.label_set.labels)
    # Every utterance the reader gives is stored with its label's index in the protocol's own order.
    assert _stored_labels(store) == {u.key: corpus.label_set.index(u.label) for u in corpus.utterances}
    assert set(store.read_split("train").sentiment.tolist()) == {NO_LABEL}
    assert feature_settings(config)["iemocap"] == dataclasses.asdict(config.iemocap)
    # The missing and the truncated wav's turns fail with the reader's reasons, reached through the turns' names.
    keys = {turn: key for key, turn in corpus.turn_names.items()}
    assert {(r["key"], r["reason"]) for r in store.failed()} == {
        (keys[MISSING_WAV], f"cannot decode audio from {keys[MISSING_WAV]}: missing: no {MISSING_WAV}.wav; text only"),
        (
            keys[TRUNCATED_WAV],
            f"cannot decode audio from {keys[TRUNCATED_WAV]}: corrupt: {TRUNCATED_WAV}.wav is shorter than its "
            "header says (truncated); text only",
        ),
    }


def test_each_iemocap_protocol_and_fold_is_its_own_store(iemocap, tmp_path):
    stores = {
        store_path(_config(iemocap, tmp_path, overrides))
        for overrides in ([], ["iemocap.protocol=ser4", "iemocap.fold=1"], ["iemocap.protocol=ser4", "iemocap.fold=5"])
    }
    assert len(stores) == 3


def test_manifest_corpus_extracts_with_unscored_context(manifest, tmp_path, local_ray):
    store = FeatureStore.open(run_extraction(_config(manifest, tmp_path)))

    assert store.path.name.startswith("manifest-")
    assert store.label_set.labels == tuple(LABELS["labels"]) and store.label_set.name == LABELS["name"]
    assert store.manifest["corpus"]["kind"] == "manifest"
    labels = _stored_labels(store)
    # train/dia1_utt2 has an empty label: kept in its dialogue, stored as "no label".
    assert labels["train/dia1_utt2"] == NO_LABEL
    assert labels["train/dia1_utt0"] == LABELS["labels"].index("happy")
    assert labels["test/dia4_utt1"] == LABELS["labels"].index("sad")
    assert [record["key"] for record in store.failed()] == ["dev/dia3_utt1"]


def test_a_store_without_a_corpus_record_reads_as_melds_seven_emotions(tmp_path):
    manifest = new_manifest("old", {"corpus": "x"})
    manifest["plan"] = {"shards": [], "split_rows": {}}
    write_manifest(tmp_path, manifest)
    assert "corpus" not in read_manifest(tmp_path)
    assert store_label_set(read_manifest(tmp_path)) is MELD_EMOTIONS


def test_a_damaged_corpus_record_is_refused_in_one_line(tmp_path):
    manifest = new_manifest("mine", {"corpus": "x"})
    manifest["plan"] = {"shards": [], "split_rows": {}}
    set_corpus(manifest, "manifest", "", store_label_set(manifest))
    manifest["corpus"]["label_set"]["labels"] = ["happy", "happy"]
    write_manifest(tmp_path, manifest)
    with pytest.raises(FeatureStoreError) as refused:
        read_manifest(tmp_path)
    assert str(refused.value).startswith(
        f"{tmp_path / MANIFEST_NAME} is damaged: label set meld7 lists happy more than once."
    )


def test_iemocap_keys_on_another_corpus_are_refused(manifest):
    with pytest.raises(CorpusError, match="is not an IEMOCAP release"):
        read_corpus(manifest, iemocap=IemocapConfig(protocol="ser4", fold=2))


def test_a_span_decodes_only_its_part_of_the_file(manifest):
    corpus = read_corpus(manifest)
    spanned = next(u for u in corpus.utterances if u.key == "test/dia4_utt0")
    whole = next(u for u in corpus.utterances if u.key == "train/dia1_utt0")
    assert spanned.media_span == (0.5, 1.5) and whole.media_span is None
    # 1.0 s of the 2.0 s file at 16 kHz is exactly 16,000 samples; the whole 0.5 s file 8,000.
    assert decode_utterance(spanned, 16_000, 30.0, {}).shape == (16_000,)
    assert decode_utterance(whole, 16_000, 30.0, {}).shape == (8_000,)
    np.testing.assert_array_equal(
        decode_utterance(spanned, 16_000, 0.25, {}), decode_utterance(spanned, 16_000, 30.0, {})[:4_000]
    )


def test_a_meld_run_refuses_an_iemocap_store_naming_both_label_sets(iemocap, store_root, local_ray, tmp_path, capsys):
    store = run_extraction(_config(iemocap, store_root))
    run_dir = tmp_path / "run"
    both = (
        f"run {run_dir} is trained in label set meld7 (neutral, surprise, fear, sadness, joy, disgust, anger), but "
        f"store {store} is labelled in iemocap-erc6 ({', '.join(ERC6_LABELS.labels)})"
    )
    # evaluate, predict and train --resume open a run's store through open_run_store; a run folder without a
    # recorded label set was trained before runs recorded one, in MELD's.
    with pytest.raises(RunFolderError) as refused:
        open_run_store(run_dir, str(store))
    assert str(refused.value).startswith(both)
    # A new run follows its store's label set.
    new_run = RunConfig(store=str(store), model=FusionConfig(variant="audio"))
    assert prepare_inputs(new_run, ("train",)).label_set.labels == ERC6_LABELS.labels
    # A sweep over stores of two label sets would pool them in one report: refused before anything is submitted.
    ser4 = run_extraction(_config(iemocap, store_root, ["iemocap.protocol=ser4", "iemocap.fold=1"]))
    sweep = ["sweep", "--seeds", "0", "--out", str(tmp_path / "sweep"), "--grid", f"store={store},{ser4}",
             f"store={store}"]
    assert main(sweep) == 2
    err = capsys.readouterr().err
    assert "iemocap-erc6" in err and "iemocap-ser4" in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()
