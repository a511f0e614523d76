"""Dialogues from the feature store as padded, masked batches, standardised with train-only statistics.

A dialogue is the sequence of its utterances' feature vectors. The audio vector of an utterance is
the concatenation of the store's audio families (openSMILE ⊕ OpenL3, as in the paper's section 3.1);
the text vector is the `text` family. Every family is standardised with the train split's statistics
(`model.feature_statistics`).

Batches hold whole dialogues, padded to the longest one in the batch, with a Bool mask; which
dialogues make a batch on which rank is `model.batch_samplers`'s.

When the text encoder trains end to end, a dataset holds the split's token ids (`model.token_cache`)
instead of text vectors, and a batch's `text` is the token ids of its utterances (`TokenBatch`),
which the end-to-end model encodes; everything else about batches stays the same.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import h5py
import numpy as np
import torch

from extract.feature_store import FeatureStore, FeatureStoreError
from extract.labels import NO_LABEL
from extract.split_arrays import SplitArrays
from model.feature_statistics import FeatureStatistics, fit_statistics
from model.layer_mix import LayerBlock, mixed_width
from model.token_cache import TokenBatch, TokenSplit

log = logging.getLogger(__name__)

IGNORE_LABEL = -100
"""Label of padded positions and of dialogues a rank holds only to keep step with the others."""


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




@dataclass(kw_only=True)
class DialogueBatch:
    """Whole dialogues padded to the longest one; position (b, t) is utterance t of dialogue b."""

    audio: torch.Tensor | None
    """float32 [B, T, audio_dim], zeros at padding; None when the model does not use audio."""
    text: torch.Tensor | TokenBatch | None
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

        def move(features: torch.Tensor | TokenBatch | None) -> torch.Tensor | TokenBatch | None:
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
        tokens: TokenSplit | None = None,
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
