"""What every corpus reader shares: the corpus record, the flag record, the error, and CSV field parsing.

A reader (`extract.meld`, `extract.iemocap`, `extract.manifest_corpus`) yields a `Corpus`:
its utterances keyed by (split, dialogue id, utterance id), the label set they are
labelled in, and everything it flagged or skipped, each with a reason, so `prepare` can
print any corpus the same way.
"""

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from extract.labels import LabelSet
from extract.utterance import SPLITS, ClipFlag, Utterance


class CorpusError(ValueError):
    """A corpus folder that cannot be read at all (no CSVs, wrong columns, no sessions)."""


@dataclass(frozen=True, kw_only=True)
class CorpusFlag:
    """Something wrong about an item of a corpus that names its items (IEMOCAP's turns), with the reason in words."""

    key: str
    """The item's own name, e.g. the turn `Ses01F_impro01_F000`."""
    kind: str
    """missing, corrupt, no_audio, not_evaluated or not_transcribed."""
    reason: str
    """What was found, and what the reader did about it."""


@dataclass(kw_only=True)
class Corpus:
    """What a reader found: the utterances, their label set, and the items it flagged or could not read."""

    root: Path
    """The corpus folder (or the manifest file) given to the reader."""
    kind: str
    """Which reader read it: meld, iemocap or manifest."""
    label_set: LabelSet
    """The ordered labels the utterances' `emotion` fields are drawn from."""
    protocol: str = ""
    """The corpus's protocol as the reader states it (IEMOCAP's `erc6` or `ser4 fold 3`); empty when it has one."""
    utterances: list[Utterance] = field(default_factory=list)
    """Every readable utterance, sorted by (split, dialogue_id, utterance_id)."""
    flags: list[ClipFlag | CorpusFlag] = field(default_factory=list)
    """Items that are missing, unreadable, incomplete, or chosen between twins."""
    row_errors: list[str] = field(default_factory=list)
    """Rows or lines that could not be read, each with its file, line and reason."""
    dialogue_names: dict[tuple[str, int], str] = field(default_factory=dict)
    """The corpus's own name of each (split, dialogue id), for corpora whose dialogues have names (IEMOCAP)."""

    def split(self, split: str) -> list[Utterance]:
        return [u for u in self.utterances if u.split == split]

    def dialogues(self, split: str) -> dict[int, list[Utterance]]:
        """Utterances of a split grouped by dialogue id, each list ordered by utterance id."""
        grouped: dict[int, list[Utterance]] = {}
        for utterance in self.split(split):
            grouped.setdefault(utterance.dialogue_id, []).append(utterance)
        return grouped

    def label_counts(self, split: str) -> Counter:
        """Scored utterances of a split per label; unscored context utterances are not counted."""
        return Counter(u.emotion for u in self.split(split) if u.label is not None)

    def sort_utterances(self) -> None:
        self.utterances.sort(key=lambda u: (SPLITS.index(u.split), u.dialogue_id, u.utterance_id))


# Ids are stored as int32 in the feature store: refuse what would overflow there, when reading.
INT32_MAX = 2**31 - 1


def field_id(row: dict, name: str, allow_empty: bool = False) -> int:
    """A non-negative id field that fits int32; the error names the field."""
    text = row[name].strip()
    if allow_empty and not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"field {name}: {row[name]!r} is not a whole number") from None
    if not 0 <= value <= INT32_MAX:
        raise ValueError(f"field {name}: {value} is outside 0..{INT32_MAX} (ids are stored as 32-bit integers)")
    return value


def field_text(row: dict, name: str) -> str:
    """A text field without control characters other than line breaks and tabs; the error names the field.

    Line breaks and tabs inside a quoted transcript are whitespace, which normalisation folds
    into one space. Every other control character (NUL, escape, ...) is damage: HDF5 cannot
    store a NUL in a string, and a tokenizer would see the rest as text.
    """
    text = row[name]
    bad = sorted(
        {f"U+{ord(ch):04X}" for ch in text if (ord(ch) < 0x20 and ch not in "\t\n\r") or 0x7F <= ord(ch) < 0xA0}
    )
    if bad:
        raise ValueError(f"field {name} holds control characters ({', '.join(bad)}); remove them from the CSV")
    return text


def csv_records(stream, csv_path: Path) -> list[tuple[int, list[str]]]:
    """Every record of a CSV with the line it starts on; a record the csv module cannot parse is a CorpusError."""
    reader = csv.reader(stream)
    records = []
    start = 1
    try:
        for values in reader:
            records.append((start, values))
            start = reader.line_num + 1
    except csv.Error as error:
        raise CorpusError(f"{csv_path.name} line {start}: {error}; fix the quoting of that row") from None
    return records


def csv_row(values: list[str], fieldnames: list[str]) -> dict[str, str]:
    """One CSV record as a dict by column; a record with too few or too many fields is a ValueError saying which."""
    if len(values) < len(fieldnames):
        lacking = fieldnames[len(values) :]
        raise ValueError(
            f"the row has {len(values)} fields, the header {len(fieldnames)}: field {lacking[0]} and after are missing"
        )
    if len(values) > len(fieldnames):
        raise ValueError(
            f"the row has {len(values)} fields, the header {len(fieldnames)}: a field has an unquoted comma"
        )
    return dict(zip(fieldnames, values))
