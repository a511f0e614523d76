"""The label sets: one definition, imported by every part of the project.

The emotion order is the paper's Table 2 column order, so class indices, per-class
F1 columns and confusion-matrix axes all read the same way everywhere.
"""

EMOTIONS: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
SENTIMENTS: tuple[str, ...] = ("neutral", "positive", "negative")

EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
SENTIMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(SENTIMENTS)}


class UnknownLabelError(ValueError):
    """A label outside the fixed label sets."""


def emotion_index(name: str) -> int:
    """Class index of an emotion name; case and surrounding spaces are ignored."""
    key = name.strip().lower()
    if key not in EMOTION_INDEX:
        raise UnknownLabelError(f"unknown emotion {name!r}: expected one of {', '.join(EMOTIONS)}")
    return EMOTION_INDEX[key]


def sentiment_index(name: str) -> int:
    """Class index of a sentiment name; case and surrounding spaces are ignored."""
    key = name.strip().lower()
    if key not in SENTIMENT_INDEX:
        raise UnknownLabelError(f"unknown sentiment {name!r}: expected one of {', '.join(SENTIMENTS)}")
    return SENTIMENT_INDEX[key]
