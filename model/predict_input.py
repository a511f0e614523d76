"""Reading what a user gives `cmroberta predict`: the utterances of an input, with their gold labels.

An input comes in one of three forms:

- a folder in MELD's layout (MELD.Raw, the demo corpus): every split whose CSV it holds, or the
  one asked for; gold labels come from the CSV;
- a CSV or JSONL file, one utterance a row: `dialogue_id`, `utterance_id`, `speaker`, `transcript`,
  `audio` (the clip's path, relative to the file's folder unless absolute), and optionally `emotion`
  (the gold label) and `split`;
- a folder of clips with a transcripts file (`transcripts.csv` or `transcripts.jsonl`) in it or
  beside it (`<folder>.csv`, `<folder>.jsonl`): `clip` (the file name in the folder), `transcript`,
  and optionally `speaker`, `dialogue_id`, `utterance_id`, `emotion`. Without ids, a clip named like
  MELD's (`dia3_utt1.wav`) gives them; otherwise the rows are one dialogue in file order.

Rows of a file input get the split `predict` unless they name one; keys are `<split>/dia<D>_utt<U>`.
A row that cannot be read is a `PredictInputError` naming the file, the row and the fix.
"""

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extract.labels import MELD_EMOTIONS, LabelSet, UnknownLabelError
from extract.meld import CSV_NAMES, CorpusError, read_meld
from extract.shard_extraction import unusable_clips
from extract.utterance import MAX_ID, SPLITS, Utterance

PREDICT_SPLIT = "predict"
TRANSCRIPTS_STEM = "transcripts"
_MELD_CLIP_NAME = re.compile(r"dia(\d+)_utt(\d+)")
# Labels and sentiments the store format needs for rows without gold; never reported as gold.
_PLACEHOLDER_LABEL = "neutral"


class PredictInputError(ValueError):
    """An input that `cmroberta predict` cannot read; the message names the file, the row and the fix."""


@dataclass(kw_only=True)
class PredictInput:
    """The utterances of an input, with their gold labels where it has them."""

    utterances: list[Utterance]
    """Every utterance, in (split, dialogue, utterance) order; `emotion` is a placeholder where gold is None."""
    gold: dict[str, str | None]
    """Key -> gold emotion, or None."""
    unusable: dict[str, str]
    """Key -> why its clip cannot be used, for clips the reader already refused."""


def _utterance(split: str, dialogue_id: int, utterance_id: int, speaker: str, transcript: str,
               media_path: str | None) -> Utterance:
    return Utterance.from_transcript(
        split=split,
        dialogue_id=dialogue_id,
        utterance_id=utterance_id,
        speaker=speaker,
        transcript_raw=transcript,
        emotion=_PLACEHOLDER_LABEL,
        sentiment=_PLACEHOLDER_LABEL,
        media_path=media_path,
        start_time=0.0,
        end_time=0.0,
    )


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL file as dicts."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise PredictInputError(f"{path} cannot be read ({error}); give a UTF-8 CSV or JSONL file") from None
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PredictInputError(f"{path} line {number} is not JSON ({error}); write one object per line") from None
        if not isinstance(row, dict):
            raise PredictInputError(f"{path} line {number} is not a JSON object; write one object per line")
        rows.append(row)
    return rows


def _field(row: dict[str, Any], name: str, where: str, default: Any = None) -> Any:
    value = row.get(name)
    if value is None or str(value).strip() == "":
        if default is None:
            raise PredictInputError(f"{where} has no {name!r}; every row needs one")
        return default
    return value


def _integer(row: dict[str, Any], name: str, where: str, default: int | None = None) -> int:
    """An id: a JSON integer or a CSV cell of digits, 0..MAX_ID (shards store int32); 1.2 and true are refused."""
    value = _field(row, name, where, default)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        number = int(value.strip())
    else:
        raise PredictInputError(f"{where}: {name} must be a whole number, not {value!r}")
    if not 0 <= number <= MAX_ID:
        raise PredictInputError(f"{where}: {name} must be between 0 and {MAX_ID}, not {number}")
    return number


def _gold(row: dict[str, Any], where: str, label_set: LabelSet) -> str | None:
    value = row.get("emotion")
    if value is None or str(value).strip() == "":
        return None
    try:
        return label_set.labels[label_set.index(str(value))]
    except UnknownLabelError:
        raise PredictInputError(
            f"{where}: unknown emotion {value!r}; use one of {', '.join(label_set.labels)} (the run's label set "
            f"{label_set.name}) or leave it empty"
        ) from None


def _finish(rows: list[tuple[Utterance, str | None]], source: Path) -> PredictInput:
    if not rows:
        raise PredictInputError(f"{source} holds no utterances")
    seen: set[str] = set()
    for utterance, _ in rows:
        if utterance.key in seen:
            raise PredictInputError(f"{source}: utterance {utterance.key} appears twice; give each row its own ids")
        seen.add(utterance.key)
    rows.sort(key=lambda row: (row[0].split, row[0].dialogue_id, row[0].utterance_id))
    return PredictInput(
        utterances=[utterance for utterance, _ in rows], gold={u.key: gold for u, gold in rows}, unusable={}
    )


def _read_utterance_file(path: Path, label_set: LabelSet) -> PredictInput:
    """A CSV or JSONL with one utterance a row (module docstring)."""
    rows = []
    for number, row in enumerate(_read_table(path), start=2 if path.suffix.lower() == ".csv" else 1):
        where = f"{path.name} row {number}"
        audio = Path(str(_field(row, "audio", where))).expanduser()
        rows.append((
            _utterance(
                str(_field(row, "split", where, PREDICT_SPLIT)),
                _integer(row, "dialogue_id", where),
                _integer(row, "utterance_id", where),
                str(row.get("speaker") or ""),
                str(_field(row, "transcript", where)),
                str(audio if audio.is_absolute() else (path.parent / audio).resolve()),
            ),
            _gold(row, where, label_set),
        ))
    return _finish(rows, path)


def _transcripts_file(folder: Path) -> Path | None:
    for place in (folder / TRANSCRIPTS_STEM, folder.parent / folder.name):
        for suffix in (".csv", ".jsonl"):
            if place.with_suffix(suffix).is_file():
                return place.with_suffix(suffix)
    return None


def _read_clip_folder(folder: Path, label_set: LabelSet) -> PredictInput:
    """A folder of clips with a transcripts file (module docstring)."""
    transcripts = _transcripts_file(folder)
    if transcripts is None:
        raise PredictInputError(
            f"{folder} is neither in MELD's layout (no *_sent_emo.csv) nor a folder of clips with a transcripts "
            f"file: put {TRANSCRIPTS_STEM}.csv or {TRANSCRIPTS_STEM}.jsonl (columns clip, transcript) in it"
        )
    rows = []
    for index, row in enumerate(_read_table(transcripts)):
        where = f"{transcripts.name} row {index + (2 if transcripts.suffix == '.csv' else 1)}"
        clip = str(_field(row, "clip", where))
        named = _MELD_CLIP_NAME.search(Path(clip).stem)
        dialogue_default, utterance_default = (int(named[1]), int(named[2])) if named else (0, index)
        rows.append((
            _utterance(
                str(_field(row, "split", where, PREDICT_SPLIT)),
                _integer(row, "dialogue_id", where, dialogue_default),
                _integer(row, "utterance_id", where, utterance_default),
                str(row.get("speaker") or ""),
                str(_field(row, "transcript", where)),
                str((folder / clip).resolve()),
            ),
            _gold(row, where, label_set),
        ))
    return _finish(rows, transcripts)


def _read_meld_folder(folder: Path, splits: Sequence[str]) -> PredictInput | None:
    """The splits of a MELD-layout folder that have their CSV; None when it has none."""
    utterances, unusable = [], {}
    for split in splits:
        try:
            corpus = read_meld(folder, splits=(split,))
        except CorpusError as error:
            if str(error).startswith(f"no {CSV_NAMES[split]}"):
                continue
            raise
        utterances.extend(corpus.utterances)
        unusable.update(unusable_clips(corpus.flags))
    if not utterances:
        return None
    return PredictInput(utterances=utterances, gold={u.key: u.emotion for u in utterances}, unusable=unusable)


def read_predict_input(path: Path, split: str | None = None, label_set: LabelSet = MELD_EMOTIONS) -> PredictInput:
    """The utterances of a predict input in any of its three forms (module docstring); the gold labels of a
    file or clip-folder input are read in `label_set`, the run's."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".jsonl"):
            raise PredictInputError(f"{path} must be a .csv or .jsonl file, or a folder")
        found = _read_utterance_file(path, label_set)
    elif path.is_dir():
        if split is not None and split not in SPLITS:
            raise PredictInputError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        meld = _read_meld_folder(path, (split,) if split else SPLITS)
        if meld is not None and not label_set.same_labels(MELD_EMOTIONS):
            # MELD's CSVs carry gold labels in MELD's own set; scored against another set they would mean nothing.
            raise PredictInputError(
                f"{path} is a corpus in MELD's layout, labelled in {MELD_EMOTIONS.describe()}, but the run is "
                f"trained in label set {label_set.describe()}; give a run trained on MELD, or this run's own "
                "utterances as a CSV or JSONL file or a clip folder"
            )
        found = meld or _read_clip_folder(path, label_set)
    else:
        raise PredictInputError(
            f"input {path} does not exist; give a MELD-layout folder, a clip folder, or a CSV or JSONL file"
        )
    if split is not None:
        found.utterances = [u for u in found.utterances if u.split == split]
        if not found.utterances:
            raise PredictInputError(f"{path} has no utterances of split {split!r}")
    return found
