"""Dialogues from the feature store as padded, masked batches, standardised with train-only statistics.

A dialogue is the sequence of its utterances' feature vectors. The audio vector of an utterance is
the concatenation of the store's audio families (openSMILE ⊕ OpenL3, as in the paper's section 3.1);
the text vector is the `text` family. Every family is standardised column by column with the mean
and standard deviation of the train split's valid rows, with relative thresholds: a column's scale
is at least 1% of its own size, and a column whose spread is negligible next to the family's typical
spread is centred but not scaled, so no column magnifies float noise in its values. The
statistics (mean and scale, whatever rule chose the scale) are saved beside the model, so that
evaluation applies exactly the same transform, to a run trained under an older rule too. A row
whose family failed in extraction (a corrupt clip) is all zeros after standardisation, that is,
the train mean: it carries no signal and no outlier.

Batches hold whole dialogues, padded to the longest one in the batch, with a Bool mask. Ranks share
one global batch: every rank walks the same seeded order of dialogues and takes every
world_size-th dialogue of each global batch, so N ranks see together exactly what one rank sees.

When the text encoder trains end to end, a dataset holds the split's token ids (`model.token_cache`)
instead of text vectors, and a batch's `text` is the token ids of its utterances (`TokenBatch`),
which the end-to-end model encodes; everything else about batches stays the same.
"""

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import h5py
import numpy as np
import torch

from extract.feature_store import FeatureStore, FeatureStoreError
from extract.labels import NO_LABEL
from extract.split_arrays import SplitArrays
from model.layer_mix import LayerBlock, mixed_width

if TYPE_CHECKING:
    # Only end-to-end runs hold token ids; the import (transformers and the tokenizer) waits for them.
    from model.token_cache import TokenBatch, TokenSplit

log = logging.getLogger(__name__)

IGNORE_LABEL = -100
"""Label of padded positions and of dialogues a rank holds only to keep step with the others."""

# Relative thresholds keep standardisation from magnifying noise (`ColumnStatistics.fit`). A column's scale is
# at least _OWN_SIZE_RATIO times its own root mean square, so its z-scores magnify a relative error in its
# values (float32 features computed again, with other threads or on other hardware, differ by about 1e-6 of
# their size) at most 100-fold; a column that varies by less than 1% of its size, such as an encoder's
# large-offset first-token columns, is shrunk rather than blown up. A column whose spread is at most
# _TYPICAL_SPREAD_RATIO times the family's median column spread is numerically dead (1e-33 beside a typical
# 7e-3 in a text encoder's vectors, 0 in openSMILE's): it is centred and not scaled.
_OWN_SIZE_RATIO = 1e-2
_TYPICAL_SPREAD_RATIO = 1e-6
# Rows per block when computing statistics in float64: bounds the temporary to ~100 MB at MELD's widths.
_STAT_BLOCK_ROWS = 1024


@dataclass(kw_only=True)
class DialogueDataConfig:
    """Which feature families make up each modality, and how they are normalised."""

    audio_families: list[str] = field(default_factory=lambda: ["opensmile", "openl3"])
    """Families concatenated, in this order, into the audio vector; those absent from the store are
    skipped (the demo store has no OpenL3), but a model that uses audio needs at least one."""
    text_family: str = "text"
    """Family that is the text vector."""
    speech_layers: Literal["weighted_sum", "concat"] = "weighted_sum"
    """A `speech` family stored with every encoder layer (speech.layers='all'): 'weighted_sum' mixes
    its layers with weights learned with the head (model.layer_mix), so the head sees one layer's
    width; 'concat' gives the head every layer side by side. A 'mean_last' store has one layer."""
    standardize: bool = True
    """Standardise every column with the train split's mean and standard deviation."""

    def __post_init__(self) -> None:
        if not self.audio_families:
            raise ValueError("audio_families must name at least one family, e.g. ['opensmile', 'openl3']")
        if len(set(self.audio_families)) != len(self.audio_families):
            raise ValueError(f"audio_families lists a family twice: {self.audio_families}")
        if not self.text_family.strip():
            raise ValueError("text_family must name a family, e.g. 'text'")
        if self.text_family in self.audio_families:
            raise ValueError(f"text_family {self.text_family!r} is also in audio_families")
        if self.speech_layers not in ("weighted_sum", "concat"):
            raise ValueError(f"speech_layers must be 'weighted_sum' or 'concat', not {self.speech_layers!r}")


@dataclass(frozen=True, kw_only=True)
class Modalities:
    """The families a model reads from a store, and the resulting input widths."""

    audio_families: list[str]
    """Audio families present in the store, in concatenation order; empty when audio is unused."""
    text_family: str | None
    """Text family, or None when text is unused."""
    audio_dim: int
    """Width of the audio vector (sum of the audio families' dims)."""
    text_dim: int
    """Width of the text vector."""
    layer_blocks: tuple[LayerBlock, ...] = ()
    """Blocks of stored encoder layers in the audio vector that the head mixes by learned weights."""

    @property
    def head_audio_dim(self) -> int:
        """Width of the audio vector the head sees, after the layer blocks are mixed."""
        return mixed_width(self.audio_dim, self.layer_blocks)

    @property
    def families(self) -> list[str]:
        """Every family to read."""
        return [*self.audio_families, *([self.text_family] if self.text_family else [])]


def store_modalities(store: FeatureStore, config: DialogueDataConfig) -> Modalities:
    """The audio families of `config` that `store` holds, its text family, and their widths.

    Both modalities are reported whenever the store has them; `select_modalities` then keeps the
    ones a model variant reads.
    """
    audio = [family for family in config.audio_families if family in store.families]
    text = config.text_family if config.text_family in store.families else None
    blocks = []
    offset = 0
    for family in audio:
        if family == "speech" and config.speech_layers == "weighted_sum":
            layers = _stored_layers(store, family)
            if layers > 1:
                blocks.append(LayerBlock(offset=offset, layers=layers, width=store.families[family] // layers))
        offset += store.families[family]
    return Modalities(
        audio_families=audio,
        text_family=text,
        audio_dim=offset,
        text_dim=store.families[text] if text else 0,
        layer_blocks=tuple(blocks),
    )


def _stored_layers(store: FeatureStore, family: str) -> int:
    """Encoder layers a family holds side by side, from its column names in the first shard."""
    entry = next(entry for split in store.splits for entry in store.shards(split))
    try:
        with h5py.File(store.path / entry["file"], "r") as shard:
            names = [str(name) for name in shard[family].attrs.get("names", [])]
    except (OSError, KeyError) as error:
        raise FeatureStoreError(
            f"store {store.path}: cannot read the {family} columns of {entry['file']} ({error}); "
            "re-run `cmroberta extract` to redo it"
        ) from None
    return stored_layer_count(names)


def stored_layer_count(names: Sequence[str]) -> int:
    """Layers side by side in columns named as extract.speech_features names them ('layer03.mean.0007'); else 1."""
    if not names or not names[0].startswith("layer"):
        return 1
    return len({name.split(".", 1)[0] for name in names})


def select_modalities(modalities: Modalities, store: FeatureStore, uses_audio: bool, uses_text: bool) -> Modalities:
    """Keep the modalities a model uses; a used modality the store lacks is a FeatureStoreError."""
    if uses_audio and not modalities.audio_families:
        raise FeatureStoreError(
            f"store {store.path} has none of the audio families the model needs; it has "
            f"{', '.join(store.families)}. Extract openSMILE or OpenL3 features, or train the 'text' variant."
        )
    if uses_text and modalities.text_family is None:
        raise FeatureStoreError(
            f"store {store.path} has no text family; it has {', '.join(store.families)}. "
            "Extract text features, or train the 'audio' variant."
        )
    return Modalities(
        audio_families=modalities.audio_families if uses_audio else [],
        text_family=modalities.text_family if uses_text else None,
        audio_dim=modalities.audio_dim if uses_audio else 0,
        text_dim=modalities.text_dim if uses_text else 0,
        layer_blocks=modalities.layer_blocks if uses_audio else (),
    )


@dataclass(frozen=True, kw_only=True)
class ColumnStatistics:
    """Mean and scale of each column of one family, from the train split's valid rows."""

    mean: np.ndarray
    """float32 [dim]."""
    scale: np.ndarray
    """float32 [dim]: the standard deviation, floored at 1% of the column's root mean square; 1 for a dead column
    (relative thresholds, `fit`)."""

    @classmethod
    def fit(cls, features: np.ndarray, valid: np.ndarray) -> "ColumnStatistics":
        """Two-pass mean and standard deviation in float64 over the valid rows, block by block. A column's scale
        is floored at 1% of its own size; a dead column (its spread negligible next to the typical column's)
        is centred, not scaled."""
        rows = np.flatnonzero(valid)
        dim = features.shape[1]
        if rows.size == 0:
            return cls(mean=np.zeros(dim, np.float32), scale=np.ones(dim, np.float32))
        total = np.zeros(dim, np.float64)
        for start in range(0, rows.size, _STAT_BLOCK_ROWS):
            total += features[rows[start : start + _STAT_BLOCK_ROWS]].sum(axis=0, dtype=np.float64)
        mean = total / rows.size
        squares = np.zeros(dim, np.float64)
        for start in range(0, rows.size, _STAT_BLOCK_ROWS):
            centred = features[rows[start : start + _STAT_BLOCK_ROWS]].astype(np.float64) - mean
            squares += (centred * centred).sum(axis=0)
        std = np.sqrt(squares / rows.size)
        floored = np.maximum(std, _OWN_SIZE_RATIO * np.sqrt(std * std + mean * mean))
        scale = np.where(std <= _TYPICAL_SPREAD_RATIO * np.median(std), 1.0, floored)
        return cls(mean=mean.astype(np.float32), scale=scale.astype(np.float32))

    @classmethod
    def identity(cls, dim: int) -> "ColumnStatistics":
        """Statistics that leave features unchanged (standardisation switched off)."""
        return cls(mean=np.zeros(dim, np.float32), scale=np.ones(dim, np.float32))

    def apply(self, features: np.ndarray, valid: np.ndarray, out: np.ndarray) -> None:
        """Write standardised `features` into `out` (same shape); invalid rows become zeros."""
        np.subtract(features, self.mean, out=out)
        np.divide(out, self.scale, out=out)
        out[~valid] = 0.0


@dataclass(frozen=True, kw_only=True)
class FeatureStatistics:
    """Standardisation of every family a model reads; saved with the model as one .npz file."""

    families: dict[str, ColumnStatistics]
    """Family name -> its column statistics."""

    def save(self, path: Path) -> Path:
        """Write `<family>.mean` and `<family>.scale` arrays to `path` (an .npz file)."""
        path = Path(path)
        arrays = {}
        for family, stats in self.families.items():
            arrays[f"{family}.mean"] = stats.mean
            arrays[f"{family}.scale"] = stats.scale
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as stream:
            np.savez(stream, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "FeatureStatistics":
        """Read statistics written by `save`; a missing or damaged file is a FeatureStoreError."""
        path = Path(path)
        try:
            with np.load(path) as arrays:
                names = sorted({name.rsplit(".", 1)[0] for name in arrays.files})
                families = {
                    name: ColumnStatistics(mean=arrays[f"{name}.mean"], scale=arrays[f"{name}.scale"]) for name in names
                }
        except (OSError, KeyError, ValueError) as error:
            raise FeatureStoreError(
                f"standardisation statistics {path} cannot be read ({error}); retrain the run to rewrite them"
            ) from None
        return cls(families=families)


def fit_statistics(train: SplitArrays, families: Sequence[str], standardize: bool) -> FeatureStatistics:
    """Column statistics of each family over the train split's valid rows (identity if not `standardize`)."""
    statistics = {}
    for family in families:
        features, valid = train.features[family], train.valid[family]
        if not standardize:
            statistics[family] = ColumnStatistics.identity(features.shape[1])
            continue
        stats = ColumnStatistics.fit(features, valid)
        # A NaN or infinity anywhere in a column's valid rows makes its mean or scale non-finite.
        if not (np.isfinite(stats.mean).all() and np.isfinite(stats.scale).all()):
            raise FeatureStoreError(
                f"family {family!r} of the train split has NaN or infinite values in rows marked valid; "
                "re-run `cmroberta extract` to rebuild the store"
            )
        statistics[family] = stats
    return FeatureStatistics(families=statistics)


@dataclass(kw_only=True)
class DialogueBatch:
    """Whole dialogues padded to the longest one; position (b, t) is utterance t of dialogue b."""

    audio: torch.Tensor | None
    """float32 [B, T, audio_dim], zeros at padding; None when the model does not use audio."""
    text: "torch.Tensor | TokenBatch | None"
    """float32 [B, T, text_dim], zeros at padding; the token ids of the real utterances when the text
    encoder trains end to end; None when the model does not use text."""
    mask: torch.Tensor
    """bool [B, T]: True at real utterances."""
    labels: torch.Tensor
    """int64 [B, T]: emotion index, IGNORE_LABEL at padding and in uncounted dialogues."""
    rows: torch.Tensor
    """int64 [B, T]: row of the utterance in its split, -1 at padding."""

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> "DialogueBatch":
        """The batch on `device`; features cast to `dtype` when given (bf16/fp16 training)."""

        def move(features: "torch.Tensor | TokenBatch | None") -> "torch.Tensor | TokenBatch | None":
            if features is None:
                return None
            if not isinstance(features, torch.Tensor):
                return features.to(device)  # token ids stay integers
            return features.to(device=device, dtype=dtype or features.dtype, non_blocking=True)

        return DialogueBatch(
            audio=move(self.audio),
            text=move(self.text),
            mask=self.mask.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            rows=self.rows.to(device, non_blocking=True),
        )


class DialogueDataset:
    """One split's standardised features, labels and dialogue boundaries, held in memory."""

    def __init__(
        self,
        *,
        split: str,
        keys: list[str],
        labels: np.ndarray,
        dialogues: list[np.ndarray],
        audio: np.ndarray | None,
        text: np.ndarray | None,
        tokens: "TokenSplit | None" = None,
    ):
        if text is not None and tokens is not None:
            raise ValueError(f"the {split} dataset is given both text features and token ids; a model reads one")
        self.split = split
        self.keys = keys
        self.labels = np.asarray(labels, dtype=np.int64)
        self.dialogues = dialogues
        self.audio = audio
        self.text = text
        self.tokens = tokens
        self.lengths = np.array([len(rows) for rows in dialogues], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.dialogues)

    @property
    def num_utterances(self) -> int:
        """Rows of the split."""
        return len(self.keys)

    def label_weight(self, dialogue_indices: Sequence[int], class_weights: np.ndarray | None) -> float:
        """Sum of the loss weights of every labelled utterance of these dialogues (its count without class
        weights); an utterance without a label (NO_LABEL) is context only and weighs nothing."""
        rows = np.concatenate([self.dialogues[i] for i in dialogue_indices]) if dialogue_indices else np.empty(0, int)
        labels = self.labels[rows]
        labels = labels[labels != NO_LABEL]
        if class_weights is None:
            return float(labels.size)
        return float(class_weights[labels].sum())

    def batch(self, dialogue_indices: Sequence[int], counted: Sequence[bool] | None = None) -> DialogueBatch:
        """Dialogues `dialogue_indices` as one padded batch; those not `counted` carry IGNORE_LABEL labels."""
        counted = [True] * len(dialogue_indices) if counted is None else list(counted)
        size = len(dialogue_indices)
        longest = int(max(self.lengths[i] for i in dialogue_indices))
        mask = torch.zeros(size, longest, dtype=torch.bool)
        labels = torch.full((size, longest), IGNORE_LABEL, dtype=torch.int64)
        rows = torch.full((size, longest), -1, dtype=torch.int64)
        audio = None if self.audio is None else torch.zeros(size, longest, self.audio.shape[1])
        text = None if self.text is None else torch.zeros(size, longest, self.text.shape[1])
        for b, (index, is_counted) in enumerate(zip(dialogue_indices, counted)):
            dialogue_rows = self.dialogues[index]
            length = len(dialogue_rows)
            mask[b, :length] = True
            rows[b, :length] = torch.from_numpy(dialogue_rows)
            if is_counted:
                dialogue_labels = torch.from_numpy(self.labels[dialogue_rows])
                # An utterance without a label stays in its dialogue as context, with no loss and no score.
                labels[b, :length] = dialogue_labels.masked_fill(dialogue_labels == NO_LABEL, IGNORE_LABEL)
            if audio is not None:
                audio[b, :length] = torch.from_numpy(self.audio[dialogue_rows])
            if text is not None:
                text[b, :length] = torch.from_numpy(self.text[dialogue_rows])
        if self.tokens is not None:
            return DialogueBatch(audio=audio, text=self.tokens.batch(rows), mask=mask, labels=labels, rows=rows)
        return DialogueBatch(audio=audio, text=text, mask=mask, labels=labels, rows=rows)


def _concatenated(
    split: str, arrays: SplitArrays, families: Sequence[str], statistics: FeatureStatistics
) -> np.ndarray | None:
    """The families' standardised columns side by side, built in one float32 array."""
    if not families:
        return None
    width = sum(arrays.features[family].shape[1] for family in families)
    out = np.empty((len(arrays), width), dtype=np.float32)
    start = 0
    for family in families:
        features = arrays.features[family]
        stop = start + features.shape[1]
        statistics.families[family].apply(features, arrays.valid[family], out[:, start:stop])
        start = stop
    # One float64 sum is a cheap test; the exact count is only computed when it fails.
    if not np.isfinite(out.sum(dtype=np.float64)):
        raise FeatureStoreError(
            f"the {split} split has {int((~np.isfinite(out)).sum())} NaN or infinite feature values in "
            f"{', '.join(families)}; re-run `cmroberta extract` to rebuild the store"
        )
    return out


def dataset_from_arrays(
    split: str, arrays: SplitArrays, modalities: Modalities, statistics: FeatureStatistics
) -> DialogueDataset:
    """A DialogueDataset from one split's rows: families standardised and concatenated per modality."""
    if len(arrays) == 0:
        raise FeatureStoreError(f"split {split!r} of the store has no utterances")
    dataset = DialogueDataset(
        split=split,
        keys=arrays.keys,
        labels=arrays.emotion,
        dialogues=arrays.dialogues(),
        audio=_concatenated(split, arrays, modalities.audio_families, statistics),
        text=_concatenated(split, arrays, [modalities.text_family] if modalities.text_family else [], statistics),
    )
    log.info(
        "%s: %d dialogues, %d utterances, audio %d, text %d",
        split,
        len(dataset),
        dataset.num_utterances,
        modalities.audio_dim,
        modalities.text_dim,
    )
    return dataset


def load_datasets(
    store: FeatureStore,
    modalities: Modalities,
    splits: Sequence[str],
    standardize: bool = True,
    statistics: FeatureStatistics | None = None,
) -> tuple[dict[str, DialogueDataset], FeatureStatistics]:
    """Read `splits` of the store as DialogueDatasets.

    Without `statistics`, they are fitted on the train split (which is then read even if not
    asked for); with them (a trained run's), they are applied as they are.
    """
    datasets: dict[str, DialogueDataset] = {}
    if statistics is None:
        train = store.read_split("train", families=modalities.families)
        statistics = fit_statistics(train, modalities.families, standardize)
        if "train" in splits:
            datasets["train"] = dataset_from_arrays("train", train, modalities, statistics)
        del train
    missing = [family for family in modalities.families if family not in statistics.families]
    if missing:
        raise FeatureStoreError(f"the saved statistics have no entry for {', '.join(missing)}")
    for split in splits:
        if split not in datasets:
            arrays = store.read_split(split, families=modalities.families)
            datasets[split] = dataset_from_arrays(split, arrays, modalities, statistics)
    return {split: datasets[split] for split in splits}, statistics


@dataclass(frozen=True, kw_only=True)
class RankBatch:
    """This rank's share of one global batch."""

    indices: list[int]
    """Dialogues this rank runs, never empty."""
    counted: list[bool]
    """False for a dialogue held only so that every rank runs a batch; its loss and predictions are dropped."""
    global_indices: list[int]
    """Every dialogue of the global batch, on all ranks: the loss is normalised by their utterances."""

    def micro_batches(self, parts: int) -> list["RankBatch"]:
        """This share cut into `parts` micro-batches for gradient accumulation, every one non-empty.

        A part left without a dialogue runs the global batch's first one uncounted, so every rank
        runs the same number of forward and backward passes.
        """
        micro = []
        for part in range(parts):
            indices, counted = self.indices[part::parts], self.counted[part::parts]
            if not indices:
                indices, counted = self.global_indices[:1], [False]
            micro.append(RankBatch(indices=indices, counted=counted, global_indices=self.global_indices))
        return micro


class DialogueBatchSampler:
    """Global batches of `batch_dialogues` dialogues in a seeded order, each split across ranks.

    Rank r takes dialogues r, r + world_size, ... of every global batch. A rank left without one
    (the last global batch can be smaller than world_size) runs the batch's first dialogue
    uncounted, so every rank calls forward and backward equally often, as DDP and ZeRO need.
    """

    def __init__(
        self,
        num_dialogues: int,
        batch_dialogues: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
    ):
        if num_dialogues < 1:
            raise ValueError(f"num_dialogues must be at least 1, not {num_dialogues}")
        if batch_dialogues < 1:
            raise ValueError(f"batch_dialogues must be at least 1, not {batch_dialogues}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), not {rank}")
        self.num_dialogues = num_dialogues
        self.batch_dialogues = batch_dialogues
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's order; the same (seed, epoch) gives the same order on every rank and run."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_dialogues / self.batch_dialogues)

    def order(self) -> np.ndarray:
        """The epoch's dialogue order."""
        if not self.shuffle:
            return np.arange(self.num_dialogues)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_dialogues)

    def __iter__(self) -> Iterator[RankBatch]:
        order = self.order().tolist()
        for start in range(0, self.num_dialogues, self.batch_dialogues):
            global_indices = order[start : start + self.batch_dialogues]
            mine = global_indices[self.rank :: self.world_size]
            if mine:
                yield RankBatch(indices=mine, counted=[True] * len(mine), global_indices=global_indices)
            else:
                yield RankBatch(indices=global_indices[:1], counted=[False], global_indices=global_indices)


class LengthBucketSampler(DialogueBatchSampler):
    """Shuffled global batches of dialogues of similar length, to cut padding (of tokens, end to end).

    The epoch's shuffled dialogues are cut into pools of `pool_batches` batches; each pool is sorted
    by length and cut into batches, and the full batches of all pools are shuffled, so every batch
    holds dialogues of similar length while the order of batches stays random. The last, short
    batch (if the split does not divide evenly) stays last: ranks cut global batches at fixed offsets.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_dialogues: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pool_batches: int = 16,
    ):
        super().__init__(len(lengths), batch_dialogues, rank=rank, world_size=world_size, shuffle=True, seed=seed)
        if pool_batches < 1:
            raise ValueError(f"pool_batches must be at least 1, not {pool_batches}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.pool_batches = pool_batches

    def order(self) -> np.ndarray:
        """The epoch's dialogue order: batch after batch of similar lengths."""
        generator = np.random.default_rng([self.seed, self.epoch])
        shuffled = generator.permutation(self.num_dialogues)
        full = (self.num_dialogues // self.batch_dialogues) * self.batch_dialogues
        pool = self.pool_batches * self.batch_dialogues
        batches = []
        for start in range(0, full, pool):
            members = shuffled[start : min(start + pool, full)]
            members = members[np.argsort(self.lengths[members], kind="stable")]
            batches.extend(np.split(members, len(members) // self.batch_dialogues))
        batch_order = generator.permutation(len(batches))
        return np.concatenate([*(batches[i] for i in batch_order), shuffled[full:]]).astype(np.int64)
