"""One split of a synthetic feature store, assembled from its (dialogue, utterance) rows: what the tests' and the
benches' stores share, whatever features and labels each draws."""

import numpy as np

from extract.split_arrays import SplitArrays


def split_of_rows(
    split: str,
    rows: list[tuple[int, int]],
    *,
    speaker: str,
    transcript: str,
    emotion: np.ndarray | list[int],
    sentiment: np.ndarray | list[int],
    features: dict[str, np.ndarray],
) -> SplitArrays:
    """The arrays of `split` for utterances `rows`, keyed as MELD's `split/diaD_uttU`, each one said by `speaker`
    as `transcript`, with `emotion`, `sentiment` and `features` one row per utterance in the order of `rows`."""
    return SplitArrays(
        keys=[f"{split}/dia{d}_utt{u}" for d, u in rows],
        dialogue_ids=[d for d, _ in rows],
        utterance_ids=[u for _, u in rows],
        speakers=[speaker] * len(rows),
        transcripts=[transcript] * len(rows),
        emotion=emotion,
        sentiment=sentiment,
        features=features,
    )
