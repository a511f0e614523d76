"""`SplitArrays`: rows of one split, or of one shard, as column arrays: what the store writes and reads back."""

from dataclasses import dataclass, field

import numpy as np


@dataclass(kw_only=True)
class SplitArrays:
    """Rows of one split (or one shard), columns as arrays, ordered by (dialogue_id, utterance_id)."""

    keys: list[str]
    """Utterance keys, 'train/dia3_utt0'."""
    dialogue_ids: np.ndarray
    """int32 [N] dialogue ids."""
    utterance_ids: np.ndarray
    """int32 [N] utterance ids within the dialogue."""
    speakers: list[str]
    """Speaker names."""
    transcripts: list[str]
    """Normalised transcripts."""
    emotion: np.ndarray
    """int64 [N] indices into the store's label set (`FeatureStore.label_set`); NO_LABEL for an unscored utterance."""
    sentiment: np.ndarray
    """int64 [N] indices into `extract.labels.SENTIMENTS`; NO_LABEL for a corpus without sentiments."""
    features: dict[str, np.ndarray] = field(default_factory=dict)
    """Family name -> float32 [N, dim]."""
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    """Family name -> bool [N]; False where the family failed for the row (its features are zeros)."""
    feature_names: dict[str, list[str]] = field(default_factory=dict)
    """Family name -> column names, for the families whose extractor names its columns (openSMILE)."""

    def __post_init__(self) -> None:
        n = len(self.keys)
        self.dialogue_ids = np.asarray(self.dialogue_ids, dtype=np.int32)
        self.utterance_ids = np.asarray(self.utterance_ids, dtype=np.int32)
        self.emotion = np.asarray(self.emotion, dtype=np.int64)
        self.sentiment = np.asarray(self.sentiment, dtype=np.int64)
        columns = {
            "dialogue_ids": len(self.dialogue_ids),
            "utterance_ids": len(self.utterance_ids),
            "speakers": len(self.speakers),
            "transcripts": len(self.transcripts),
            "emotion": len(self.emotion),
            "sentiment": len(self.sentiment),
        }
        for name, length in columns.items():
            if length != n:
                raise ValueError(f"SplitArrays.{name} has {length} rows but keys has {n}")
        for family, array in self.features.items():
            array = np.asarray(array, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] != n:
                raise ValueError(f"SplitArrays.features[{family!r}] must have shape [{n}, dim], not {array.shape}")
            self.features[family] = array
            valid = np.asarray(self.valid.get(family, np.ones(n, dtype=bool)), dtype=bool)
            if valid.shape != (n,):
                raise ValueError(f"SplitArrays.valid[{family!r}] must have shape [{n}], not {valid.shape}")
            self.valid[family] = valid
        for family in self.valid:
            if family not in self.features:
                raise ValueError(f"SplitArrays.valid has family {family!r} with no features")
        for family, names in self.feature_names.items():
            if family in self.features and len(names) != self.features[family].shape[1]:
                raise ValueError(
                    f"SplitArrays.feature_names[{family!r}] has {len(names)} names "
                    f"for {self.features[family].shape[1]} columns"
                )

    def __len__(self) -> int:
        return len(self.keys)

    def dialogues(self) -> list[np.ndarray]:
        """Row indices of each dialogue, in row order (rows of a dialogue are contiguous)."""
        if len(self) == 0:
            return []
        starts = np.flatnonzero(np.diff(self.dialogue_ids)) + 1
        return np.split(np.arange(len(self), dtype=np.int64), starts)

    def take(self, rows: np.ndarray) -> "SplitArrays":
        """A new SplitArrays holding the given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        return SplitArrays(
            keys=[self.keys[i] for i in rows],
            dialogue_ids=self.dialogue_ids[rows],
            utterance_ids=self.utterance_ids[rows],
            speakers=[self.speakers[i] for i in rows],
            transcripts=[self.transcripts[i] for i in rows],
            emotion=self.emotion[rows],
            sentiment=self.sentiment[rows],
            features={family: array[rows] for family, array in self.features.items()},
            valid={family: array[rows] for family, array in self.valid.items()},
            feature_names=dict(self.feature_names),
        )

    def row_order(self) -> np.ndarray:
        """Indices that sort the rows by (dialogue_id, utterance_id)."""
        return np.lexsort((self.utterance_ids, self.dialogue_ids))


# A shard's rows are the same record as a split's rows; the writer takes one shard at a time.
ShardRows = SplitArrays


def is_ordered(rows: SplitArrays) -> bool:
    """Whether the rows are already in (dialogue_id, utterance_id) order."""
    order = rows.row_order()
    return bool(np.all(order == np.arange(len(rows))))
