"""Tiny runs several test files train: the overrides of heads that train in seconds, and a tiny split of a store."""

import numpy as np

from extract.split_arrays import SplitArrays
from tests.synthetic_splits import split_of_rows

# A frozen-text run small enough to train in a few seconds on a loaded CPU.
TINY_HEAD = [
    "text_mode=frozen",
    "model.variant=text",
    "model.hidden_size=8",
    "model.feedforward_size=16",
    "model.classifier_hidden=16",
    "train.max_epochs=2",
    "train.batch_dialogues=16",
]


def tiny_bimodal_head(
    *, epochs: int, batch_dialogues: int, seed: int, dropout: float, input_dropout: float
) -> list[str]:
    """A frozen-text bimodal head of width 8 on the learnable store, as `key=value` overrides, trained `epochs` epochs
    with patience to match (so it never stops early), learning rate 0.003."""
    return [
        # The learnable store's text vectors come from no encoder: the head trains on them as they are.
        "text_mode=frozen",
        "model.variant=bimodal",
        "model.hidden_size=8",
        "model.feedforward_size=16",
        "model.classifier_hidden=16",
        f"model.dropout={dropout}",
        f"model.input_dropout={input_dropout}",
        f"train.batch_dialogues={batch_dialogues}",
        "train.learning_rate=0.003",
        f"train.max_epochs={epochs}",
        f"train.patience={epochs}",
        f"seed={seed}",
    ]


def tiny_split(split: str) -> SplitArrays:
    """Two dialogues of two utterances, a 3-wide text family of ones."""
    n = 4
    return split_of_rows(
        split,
        [(i // 2, i % 2) for i in range(n)],
        speaker="Joey",
        transcript="How you doin'?",
        emotion=[0, 1, 2, 3],
        sentiment=[0, 1, 2, 0],
        features={"text": np.ones((n, 3), dtype=np.float32)},
    )
