"""Dialogue datasets from a real feature store: train-only standardisation, padding and masks, rank sharding."""

import numpy as np
import pytest

from extract.feature_store import FeatureStore, FeatureStoreError, build_store_from_arrays
from extract.split_arrays import SplitArrays
from model.batch_samplers import DialogueBatchSampler
from model.dialogue_data import (
    IGNORE_LABEL,
    DialogueDataConfig,
    load_datasets,
    select_modalities,
    store_modalities,
)
from model.feature_statistics import FeatureStatistics

DIMS = {"opensmile": 5, "openl3": 3, "text": 4}
# Dialogue id -> number of utterances; ids deliberately not contiguous.
TRAIN_DIALOGUES = {0: 3, 2: 1, 5: 4, 6: 2}
DEV_DIALOGUES = {1: 2, 3: 5}


def make_split(split: str, dialogues: dict[int, int], seed: int, shift: float, families=DIMS) -> SplitArrays:
    rng = np.random.default_rng(seed)
    rows = [(d, u) for d, n in dialogues.items() for u in range(n)]
    n = len(rows)
    features = {f: (rng.normal(size=(n, dim)) * 2.0 + shift).astype(np.float32) for f, dim in families.items()}
    valid = {f: np.ones(n, dtype=bool) for f in families}
    # A failed clip: the audio families invalid, text kept. Its values are huge, so a statistic
    # that included it would be far off.
    for family in ("opensmile", "openl3"):
        if family in families:
            valid[family][1] = False
            features[family][1] = 1e6
    if "opensmile" in families:
        features["opensmile"][:, 2] = 7.0  # a constant column
    return SplitArrays(
        keys=[f"{split}/dia{d}_utt{u}" for d, u in rows],
        dialogue_ids=[d for d, _ in rows],
        utterance_ids=[u for _, u in rows],
        speakers=["Ross"] * n,
        transcripts=["Okay."] * n,
        emotion=rng.integers(0, 7, n),
        sentiment=np.zeros(n, dtype=int),
        features=features,
        valid=valid,
    )


@pytest.fixture(scope="module")
def arrays() -> dict[str, SplitArrays]:
    return {
        "train": make_split("train", TRAIN_DIALOGUES, 0, shift=3.0),
        "dev": make_split("dev", DEV_DIALOGUES, 1, shift=-5.0),
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory, arrays) -> FeatureStore:
    path = tmp_path_factory.mktemp("stores") / "toy-000000000000"
    return FeatureStore.open(build_store_from_arrays(path, arrays, {"corpus": "/nowhere"}, shard_dialogues=2))


def expected_standardised(train: SplitArrays, split: SplitArrays, family: str) -> np.ndarray:
    """Standardise with plain numpy over the train rows marked valid, computed here independently."""
    reference = train.features[family][train.valid[family]].astype(np.float64)
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    std[std == 0.0] = 1.0  # the constant column is centred, not scaled; every other column here varies widely
    out = (split.features[family] - mean) / std
    out[~split.valid[family]] = 0.0
    return out


def test_standardisation_uses_train_only_and_zeroes_invalid_rows(store, arrays):
    modalities = store_modalities(store, DialogueDataConfig())
    datasets, statistics = load_datasets(store, modalities, ("train", "dev"))
    for split in ("train", "dev"):
        audio = np.concatenate(
            [expected_standardised(arrays["train"], arrays[split], f) for f in ("opensmile", "openl3")], axis=1
        )
        text = expected_standardised(arrays["train"], arrays[split], "text")
        np.testing.assert_allclose(datasets[split].audio, audio, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(datasets[split].text, text, rtol=1e-5, atol=1e-5)
        assert not datasets[split].audio[1].any(), "an invalid row must be all zeros"
        assert datasets[split].text[1].any(), "text of a row with a failed clip stays"
    # Dev is shifted by -8 against train; standardised with train statistics it must stay shifted.
    assert datasets["dev"].text.mean() < -2.0
    assert np.all(statistics.families["opensmile"].scale[2] == 1.0)
    np.testing.assert_array_equal(datasets["dev"].audio[:, 2], 0.0)


def test_saved_statistics_reproduce_the_datasets(store, tmp_path):
    modalities = store_modalities(store, DialogueDataConfig())
    fitted, statistics = load_datasets(store, modalities, ("dev",))
    path = statistics.save(tmp_path / "statistics.npz")
    again, _ = load_datasets(store, modalities, ("dev",), statistics=FeatureStatistics.load(path))
    np.testing.assert_array_equal(fitted["dev"].audio, again["dev"].audio)
    np.testing.assert_array_equal(fitted["dev"].text, again["dev"].text)
    with pytest.raises(FeatureStoreError, match="cannot be read"):
        FeatureStatistics.load(tmp_path / "missing.npz")


def one_split_store(path, families: dict[str, int]) -> FeatureStore:
    arrays = {"train": make_split("train", TRAIN_DIALOGUES, 0, 0.0, families)}
    return FeatureStore.open(build_store_from_arrays(path, arrays, {}))


def test_modalities_follow_the_store_and_the_model(tmp_path):
    no_openl3 = one_split_store(tmp_path / "no-openl3", {"opensmile": 5, "text": 4})
    modalities = store_modalities(no_openl3, DialogueDataConfig())
    assert modalities.audio_families == ["opensmile"] and modalities.audio_dim == 5 and modalities.text_dim == 4
    text_only = one_split_store(tmp_path / "text-only", {"text": 4})
    widths = store_modalities(text_only, DialogueDataConfig())
    assert select_modalities(widths, text_only, uses_audio=False, uses_text=True).families == ["text"]
    with pytest.raises(FeatureStoreError, match="none of the audio families"):
        select_modalities(widths, text_only, uses_audio=True, uses_text=True)


def test_batches_pad_to_the_longest_dialogue_and_mask_the_rest(store, arrays):
    datasets, _ = load_datasets(store, store_modalities(store, DialogueDataConfig()), ("train",))
    train = datasets["train"]
    assert list(train.lengths) == list(TRAIN_DIALOGUES.values())
    batch = train.batch([1, 2, 0], counted=[True, True, False])
    lengths = [1, 4, 3]
    assert batch.mask.shape == (3, 4) and batch.audio.shape == (3, 4, 8) and batch.text.shape == (3, 4, 4)
    labels = arrays["train"].emotion
    starts = np.cumsum([0, *TRAIN_DIALOGUES.values()])
    for b, (dialogue, length) in enumerate(zip([1, 2, 0], lengths)):
        assert batch.mask[b].tolist() == [True] * length + [False] * (4 - length)
        rows = np.arange(starts[dialogue], starts[dialogue] + length)
        assert batch.rows[b, :length].tolist() == rows.tolist()
        assert (batch.rows[b, length:] == -1).all()
        np.testing.assert_array_equal(batch.text[b, :length].numpy(), train.text[rows])
        assert not batch.audio[b, length:].any() and not batch.text[b, length:].any()
        assert (batch.labels[b, length:] == IGNORE_LABEL).all()
    assert batch.labels[0, :1].tolist() == labels[starts[1] : starts[1] + 1].tolist()
    assert (batch.labels[2] == IGNORE_LABEL).all(), "an uncounted dialogue contributes no labels"
    assert train.label_weight([1, 2], None) == 5.0
    weights = np.arange(1, 8, dtype=np.float32)
    assert train.label_weight([0], weights) == pytest.approx(float(weights[labels[:3]].sum()))


@pytest.mark.parametrize("num_dialogues, batch_dialogues, world_size", [(10, 4, 2), (9, 4, 3), (5, 2, 4), (1, 32, 2)])
def test_ranks_together_see_exactly_the_one_rank_batches(num_dialogues, batch_dialogues, world_size):
    single = DialogueBatchSampler(num_dialogues, batch_dialogues, shuffle=True, seed=3)
    single.set_epoch(2)
    reference = [batch.indices for batch in single]
    per_rank = []
    for rank in range(world_size):
        sampler = DialogueBatchSampler(
            num_dialogues, batch_dialogues, rank=rank, world_size=world_size, shuffle=True, seed=3
        )
        sampler.set_epoch(2)
        per_rank.append(list(sampler))
    assert all(len(batches) == len(reference) for batches in per_rank), "every rank runs as many steps"
    for step, indices in enumerate(reference):
        counted = sorted(i for batches in per_rank for i, c in zip(batches[step].indices, batches[step].counted) if c)
        assert counted == sorted(indices)
        assert all(batches[step].indices for batches in per_rank), "no rank runs an empty batch"
        assert all(batches[step].global_indices == indices for batches in per_rank)


def test_shuffle_depends_on_seed_and_epoch_only():
    def order(seed: int, epoch: int) -> list[int]:
        sampler = DialogueBatchSampler(50, 8, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return [i for batch in sampler for i in batch.indices]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    assert sorted(order(0, 1)) == list(range(50))
    assert [i for batch in DialogueBatchSampler(5, 2) for i in batch.indices] == [0, 1, 2, 3, 4]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="audio_families"):
        DialogueDataConfig(audio_families=[])
    with pytest.raises(ValueError, match="text_family"):
        DialogueDataConfig(audio_families=["text"], text_family="text")
