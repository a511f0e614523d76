"""The token cache: ids made once per tokenizer and input format beside the feature store, read back
in row order, padded per batch; and the sampler that buckets dialogues by length."""

import numpy as np
import pytest
import torch

from extract.feature_store import FeatureStore, build_store_from_arrays
from extract.split_arrays import SplitArrays
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from model.batch_samplers import DialogueBatchSampler, LengthBucketSampler
from model.text_encoder import TextEncoderConfig, load_tokenizer
from model.token_cache import (
    TokenCacheError,
    build_token_cache,
    read_token_split,
    token_cache_path,
)

WORDS = "okay so we were on a break you know I can not believe this oh my god what is going on here".split()


def split_rows(split: str, dialogues: int, seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    rows = [(d, u) for d in range(dialogues) for u in range(int(rng.integers(1, 5)))]
    transcripts = [" ".join(rng.choice(WORDS, int(rng.integers(1, 12)))) for _ in rows]
    return SplitArrays(
        keys=[f"{split}/dia{d}_utt{u}" for d, u in rows],
        dialogue_ids=[d for d, _ in rows],
        utterance_ids=[u for _, u in rows],
        speakers=[["Ross", "Rachel"][u % 2] for _, u in rows],
        transcripts=transcripts,
        emotion=rng.integers(0, 7, len(rows)),
        sentiment=np.zeros(len(rows), dtype=int),
        features={"opensmile": rng.normal(size=(len(rows), 3)).astype(np.float32)},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeatureStore:
    arrays = {"train": split_rows("train", 12, 0), "dev": split_rows("dev", 4, 1)}
    path = build_store_from_arrays(tmp_path_factory.mktemp("store") / "s-000000000000", arrays, {"corpus": "x"})
    return FeatureStore.open(path)


@pytest.fixture(scope="module")
def encoder_config(tmp_path_factory, store) -> TextEncoderConfig:
    texts = store.read_split("train", families=[]).transcripts + ["Ross", "Rachel"]
    folder = build_tiny_text_encoder(tmp_path_factory.mktemp("tiny"), texts, TinyEncoderConfig())
    return TextEncoderConfig(model=str(folder))


def test_round_trip_in_row_order_and_built_once(store, encoder_config):
    tokenizer = load_tokenizer(encoder_config)
    path = build_token_cache(store, tokenizer, encoder_config)
    assert path.parent == store.path / "tokens" and path.suffix == ".h5"
    modified = path.stat().st_mtime_ns
    assert build_token_cache(store, tokenizer, encoder_config) == path and path.stat().st_mtime_ns == modified
    for split in ("train", "dev"):
        rows = store.read_split(split, families=[])
        tokens = read_token_split(path, split, rows.keys)
        assert len(tokens.lengths) == len(rows)
        for row, text in enumerate(rows.transcripts):
            assert tokens.row_ids(row).tolist() == tokenizer(text)["input_ids"], (split, row)


def test_input_format_changes_the_cache(store, encoder_config):
    tokenizer = load_tokenizer(encoder_config)
    plain = token_cache_path(store.path, tokenizer, encoder_config)
    speaker = TextEncoderConfig(model=encoder_config.model, with_speaker=True)
    context = TextEncoderConfig(model=encoder_config.model, context_window=1, max_tokens=16)
    assert len({plain, token_cache_path(store.path, tokenizer, speaker),
                token_cache_path(store.path, tokenizer, context)}) == 3
    rows = store.read_split("train", families=[])
    with_speaker = read_token_split(build_token_cache(store, tokenizer, speaker), "train", rows.keys)
    assert with_speaker.row_ids(0).tolist() == tokenizer(f"{rows.speakers[0]}: {rows.transcripts[0]}")["input_ids"]
    with_context = read_token_split(build_token_cache(store, tokenizer, context), "train", rows.keys)
    assert with_context.lengths.max() <= 16
    # The documented pair: the utterance, then '<separator> <next utterance>' for a dialogue's first utterance.
    first = next(i for i in range(len(rows) - 1) if rows.utterance_ids[i] == 0 and rows.utterance_ids[i + 1] == 1)
    expected = tokenizer(
        rows.transcripts[first], f"{tokenizer.sep_token} {rows.transcripts[first + 1]}",
        truncation="longest_first", max_length=16,
    )["input_ids"]
    assert with_context.row_ids(first).tolist() == expected


def test_batches_pad_to_the_longest_utterance_in_row_major_order(store, encoder_config):
    tokenizer = load_tokenizer(encoder_config)
    rows = store.read_split("train", families=[])
    tokens = read_token_split(build_token_cache(store, tokenizer, encoder_config), "train", rows.keys)
    batch_rows = torch.tensor([[4, 5, -1], [0, 1, 2], [7, -1, -1]])
    batch = tokens.batch(batch_rows)
    order = [4, 5, 0, 1, 2, 7]
    longest = max(int(tokens.lengths[r]) for r in order)
    assert batch.input_ids.shape == batch.attention_mask.shape == (len(order), longest)
    for i, row in enumerate(order):
        n = int(tokens.lengths[row])
        assert batch.input_ids[i, :n].tolist() == tokens.row_ids(row).tolist()
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * (longest - n)
        assert (batch.input_ids[i, n:] == tokenizer.pad_token_id).all()
    assert batch.num_tokens == sum(int(tokens.lengths[r]) for r in order)


def test_a_cache_that_does_not_match_its_store_is_refused(store, encoder_config, tmp_path):
    tokenizer = load_tokenizer(encoder_config)
    path = build_token_cache(store, tokenizer, encoder_config)
    keys = store.read_split("dev", families=[]).keys
    with pytest.raises(TokenCacheError, match="delete the file to rebuild"):
        read_token_split(path, "dev", keys[::-1])
    with pytest.raises(TokenCacheError, match="no split 'test'"):
        read_token_split(path, "test", keys)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(TokenCacheError, match="cannot be read"):
        read_token_split(broken, "dev", keys)


def test_length_buckets_cover_every_dialogue_and_cut_padding():
    rng = np.random.default_rng(3)
    lengths = rng.integers(3, 100, 203)
    batch = 8
    bucketed = LengthBucketSampler(lengths, batch, seed=1, pool_batches=8)
    plain = DialogueBatchSampler(len(lengths), batch, shuffle=True, seed=1)
    for epoch in (1, 2):
        bucketed.set_epoch(epoch)
        plain.set_epoch(epoch)
        order = bucketed.order()
        assert sorted(order.tolist()) == list(range(len(lengths)))

        def padded(sampler):
            return sum(len(b.indices) * lengths[b.indices].max() for b in sampler)

        assert padded(bucketed) < 0.8 * padded(plain)
    bucketed.set_epoch(1)
    first = bucketed.order()
    bucketed.set_epoch(2)
    assert not np.array_equal(first, bucketed.order())
    bucketed.set_epoch(1)
    assert np.array_equal(first, bucketed.order())
    # Two ranks split every global batch between them, the same way the plain sampler does.
    ranks = [LengthBucketSampler(lengths, batch, rank=r, world_size=2, seed=1, pool_batches=8) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
    for a, b in zip(*ranks):
        assert a.global_indices == b.global_indices
        assert sorted(a.indices + b.indices) == sorted(a.global_indices)


def test_micro_batches_split_a_share_and_never_run_empty():
    sampler = DialogueBatchSampler(10, 5, rank=1, world_size=2)
    for rank_batch in sampler:
        for parts in (1, 2, 3):
            micro = rank_batch.micro_batches(parts)
            assert len(micro) == parts and all(m.indices for m in micro)
            assert all(m.global_indices == rank_batch.global_indices for m in micro)
            counted = sorted(i for m in micro for i, c in zip(m.indices, m.counted) if c)
            assert counted == sorted(i for i, c in zip(rank_batch.indices, rank_batch.counted) if c)
        assert [m.counted for m in rank_batch.micro_batches(3)][-1] == [False]


def test_an_interrupted_build_leaves_no_partial_file(tmp_path, encoder_config, monkeypatch):
    import model.token_cache as token_cache

    arrays = {"dev": split_rows("dev", 2, 5)}
    source = FeatureStore.open(build_store_from_arrays(tmp_path / "s-111111111111", arrays, {"corpus": "y"}))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(token_cache, "tokenize_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_token_cache(source, load_tokenizer(encoder_config), encoder_config)
    assert list((source.path / "tokens").iterdir()) == []
