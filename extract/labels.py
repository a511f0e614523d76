"""The label sets: one definition, imported by every part of the project.

A corpus declares its own ordered `LabelSet`; class indices, per-class F1 columns and
confusion-matrix axes follow its order. MELD's is `MELD_EMOTIONS`, the seven emotions
in the paper's Table 2 column order; `EMOTIONS`, `emotion_index` and the sentiment
names are MELD's sets under the names every existing caller imports.
"""

import re
from dataclasses import dataclass
from typing import Any

# A label set's name is printed in tables and recorded in manifests: a short identifier.
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class UnknownLabelError(ValueError):
    """A label outside its label set, or a label set that cannot be used."""


@dataclass(frozen=True, kw_only=True)
class LabelSet:
    """An ordered, named set of class labels: the label at position i is class i."""

    name: str
    """Short identifier of the set, e.g. `meld7` or `iemocap-erc6`; recorded in manifests and printed in reports."""
    labels: tuple[str, ...]
    """The labels in class-index order, lower case, each once."""
    noun: str = "label"
    """What one label is called in messages ("emotion" for MELD)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise UnknownLabelError(
                f"label set name {self.name!r} must be lower-case letters, digits, '-' or '_', starting with a letter"
            )
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if len(labels) < 2:
            raise UnknownLabelError(f"label set {self.name} needs at least two labels, got {list(labels)}")
        for label in labels:
            if not isinstance(label, str) or not label or label != label.strip().lower() or "," in label:
                raise UnknownLabelError(
                    f"label set {self.name}: label {label!r} must be a non-empty lower-case name without commas "
                    "or surrounding spaces"
                )
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise UnknownLabelError(f"label set {self.name} lists {', '.join(repeated)} more than once")

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, name: str) -> int:
        """Class index of a label; case and surrounding spaces are ignored."""
        key = name.strip().lower()
        if key not in self.labels:
            raise UnknownLabelError(f"unknown {self.noun} {name!r}: expected one of {', '.join(self.labels)}")
        return self.labels.index(key)

    def same_labels(self, other: "LabelSet") -> bool:
        """The same name and labels in the same order: scores of one are scores of the other (the noun used in
        messages does not count)."""
        return (self.name, self.labels) == (other.name, other.labels)

    def describe(self) -> str:
        """The name and the labels in order, as messages and reports print a set."""
        return f"{self.name} ({', '.join(self.labels)})"

    def to_json(self) -> dict[str, Any]:
        """The set as a JSON object, as manifests and label set files hold it."""
        return {"name": self.name, "labels": list(self.labels)}

    @classmethod
    def from_json(cls, data: Any, where: str = "label set") -> "LabelSet":
        """Read `to_json`'s object back; anything else is refused naming `where` and what it lacks."""
        if not isinstance(data, dict) or set(data) != {"name", "labels"}:
            raise UnknownLabelError(
                f'{where} must be a JSON object with exactly the keys "name" and "labels", '
                'e.g. {"name": "mine", "labels": ["neutral", "happy", "sad", "angry"]}'
            )
        if not isinstance(data["labels"], list):
            raise UnknownLabelError(f'{where}: "labels" must be a list of label names in class order')
        return cls(name=data["name"], labels=tuple(data["labels"]))


MELD_EMOTIONS = LabelSet(
    name="meld7", labels=("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"), noun="emotion"
)
MELD_SENTIMENTS = LabelSet(name="meld-sentiment3", labels=("neutral", "positive", "negative"), noun="sentiment")

# The label index stored for an utterance without a label: an IEMOCAP or manifest utterance kept
# only as unscored context, and the sentiment of every utterance of a corpus without sentiments.
NO_LABEL = -1

EMOTIONS: tuple[str, ...] = MELD_EMOTIONS.labels
SENTIMENTS: tuple[str, ...] = MELD_SENTIMENTS.labels

EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
SENTIMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(SENTIMENTS)}


def emotion_index(name: str) -> int:
    """Class index of an emotion name; case and surrounding spaces are ignored."""
    return MELD_EMOTIONS.index(name)


def sentiment_index(name: str) -> int:
    """Class index of a sentiment name; case and surrounding spaces are ignored."""
    return MELD_SENTIMENTS.index(name)
