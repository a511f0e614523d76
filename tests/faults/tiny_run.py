"""What several fault tests build: a tiny split of a store, and the overrides of a tiny head that trains in seconds."""

import numpy as np

from extract.split_arrays import SplitArrays

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


def tiny_split(split: str) -> SplitArrays:
    """Two dialogues of two utterances, a 3-wide text family of ones."""
    n = 4
    return SplitArrays(
        keys=[f"{split}/dia{i // 2}_utt{i % 2}" for i in range(n)],
        dialogue_ids=[i // 2 for i in range(n)],
        utterance_ids=[i % 2 for i in range(n)],
        speakers=["Joey"] * n,
        transcripts=["How you doin'?"] * n,
        emotion=[0, 1, 2, 3],
        sentiment=[0, 1, 2, 0],
        features={"text": np.ones((n, 3), dtype=np.float32)},
    )
