"""Small feature stores with learnable random features, for tests that train real models.

Each utterance's features are its class's prototype (fixed per family) scaled by `separation`,
plus unit noise and `offset`; so a model can learn them, and seeds give different, non-trivial
scores. Stores are written with `build_store_from_arrays`, exactly as the pipeline writes them.
"""

from pathlib import Path

import numpy as np

from extract.feature_store import build_store_from_arrays
from extract.split_arrays import SplitArrays
from tests.synthetic_splits import split_of_rows

DIMS: dict[str, int] = {"opensmile": 6, "openl3": 4, "text": 8}


def learnable_split(split: str, dialogues: int, seed: int, separation: float = 1.0, offset: float = 0.0) -> SplitArrays:
    """One split of 1-6 utterances a dialogue, labels uniform over the seven emotions."""
    rng = np.random.default_rng(seed)
    prototypes = {f: np.random.default_rng(100 + i).normal(size=(7, d)) for i, (f, d) in enumerate(DIMS.items())}
    rows = [(d, u) for d in range(dialogues) for u in range(int(rng.integers(1, 7)))]
    labels = rng.integers(0, 7, len(rows))
    features = {
        f: (separation * prototypes[f][labels] + rng.normal(size=(len(rows), d)) + offset).astype(np.float32)
        for f, d in DIMS.items()
    }
    return split_of_rows(
        split,
        rows,
        speaker="Monica",
        transcript="Okay.",
        emotion=labels,
        sentiment=np.zeros(len(rows), dtype=int),
        features=features,
    )


def write_learnable_store(
    store_dir: Path, test_dialogues: int = 12, separation: float = 1.0, offset: float = 0.0
) -> Path:
    """A store of 32 train, 8 dev and `test_dialogues` test dialogues at `store_dir`."""
    arrays = {
        "train": learnable_split("train", 32, 0, separation, offset),
        "dev": learnable_split("dev", 8, 1, separation, offset),
        "test": learnable_split("test", test_dialogues, 2, separation, offset),
    }
    return build_store_from_arrays(store_dir, arrays, {"corpus": "/nowhere"}, shard_dialogues=16)
