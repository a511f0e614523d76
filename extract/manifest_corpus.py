"""The manifest corpus reader: any corpus described by one CSV file and its label set, without imitating MELD.

The manifest is a UTF-8 CSV with a header row. Columns (any order; others are ignored):

| column | required | meaning |
| --- | --- | --- |
| `split` | yes | train, dev or test |
| `dialogue_id` | yes | whole number, 0 … 2^31-1 |
| `utterance_id` | yes | whole number; orders the utterances of a dialogue (gaps are fine) |
| `speaker` | yes | any non-empty name |
| `transcript` | yes | the text (may be empty when only the voice is given) |
| `audio` | yes | path of the audio file relative to the manifest's folder; empty: text only |
| `start`, `end` | no | seconds inside a longer audio file; both or neither, 0 ≤ start < end |
| `label` | yes | a label of the label set; empty: unscored context (no loss, no score) |

The label set and its order are in `labels.json` beside the manifest, the JSON that
`extract.labels.LabelSet.to_json` writes: `{"name": "mine", "labels": ["neutral", "happy",
"sad", "angry"]}`; class i is the i-th label. An audio path that is absolute or leads
out of the manifest's folder (through `..` or a link) is refused. Each bad row is
recorded with file, line and field and skipped; a missing audio file is flagged and its
row kept, text only. Rows are keyed by (split, dialogue_id, utterance_id), never by
their order in the file.
"""

import json
import logging
import math
from pathlib import Path

from extract.corpus import Corpus, CorpusError, csv_records, csv_row, field_id, field_text
from extract.labels import LabelSet, UnknownLabelError
from extract.utterance import SPLITS, ClipFlag, Utterance

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
LABEL_SET_NAME = "labels.json"
REQUIRED_COLUMNS: tuple[str, ...] = ("split", "dialogue_id", "utterance_id", "speaker", "transcript", "audio", "label")
TIME_COLUMNS: tuple[str, ...] = ("start", "end")


def find_manifest(path: Path) -> Path | None:
    """The manifest `path` names: the CSV file itself, or `manifest.csv` in the folder; None when it is neither."""
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return path / MANIFEST_NAME
    return None


def read_label_set(path: Path) -> LabelSet:
    """The label set file beside a manifest; a missing or malformed one is a CorpusError naming it."""
    try:
        return LabelSet.from_json(json.loads(path.read_text(encoding="utf-8")), where=str(path))
    except FileNotFoundError:
        raise CorpusError(
            f"no label set file {path}: write the labels in class order beside the manifest, e.g. "
            '{"name": "mine", "labels": ["neutral", "happy", "sad", "angry"]}'
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorpusError(
            f"{path} cannot be read as UTF-8 JSON ({error}); write it as the label set's JSON object"
        ) from None
    except UnknownLabelError as error:
        raise CorpusError(f"{path}: {error}") from None


def read_manifest_corpus(path: str | Path) -> Corpus:
    """Read a manifest corpus (the CSV, or a folder holding `manifest.csv`); nothing about one row stops the read."""
    given = Path(path).expanduser()
    manifest = find_manifest(given)
    if manifest is None:
        raise CorpusError(f"{given} is neither a manifest .csv file nor a folder holding {MANIFEST_NAME}")
    manifest = manifest.resolve()
    folder = manifest.parent
    corpus = Corpus(root=manifest, kind="manifest", label_set=read_label_set(folder / LABEL_SET_NAME))
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as stream:
            records = csv_records(stream, manifest)
    except UnicodeDecodeError as error:
        raise CorpusError(f"{manifest} is not UTF-8 ({error}); save the manifest as UTF-8") from None
    fieldnames = [name.strip() for name in records[0][1]] if records else []
    missing = [column for column in REQUIRED_COLUMNS if column not in fieldnames]
    if missing:
        raise CorpusError(
            f"{manifest} lacks the column(s) {', '.join(missing)}; the header needs {','.join(REQUIRED_COLUMNS)} "
            f"and may add {','.join(TIME_COLUMNS)}"
        )
    seen: set[tuple[str, int, int]] = set()
    for line_number, values in records[1:]:
        where = f"{manifest.name} line {line_number}"
        if not any(value.strip() for value in values):
            continue
        try:
            row = csv_row(values, fieldnames)
            fields = _read_row(row, folder, corpus.label_set)
        except ValueError as error:
            corpus.row_errors.append(f"{where}: {error}; the row was skipped")
            continue
        key = (fields["split"], fields["dialogue_id"], fields["utterance_id"])
        if key in seen:
            corpus.row_errors.append(
                f"{where}: {key[0]} dialogue {key[1]} utterance {key[2]} appears twice; the first row was kept"
            )
            continue
        seen.add(key)
        utterance = Utterance.from_transcript(**fields)
        if utterance.media_path is not None and not Path(utterance.media_path).is_file():
            corpus.flags.append(
                ClipFlag(
                    split=utterance.split,
                    dialogue_id=utterance.dialogue_id,
                    utterance_id=utterance.utterance_id,
                    kind="missing",
                    reason=f"{row['audio'].strip()} (line {line_number}) does not exist; text only",
                )
            )
            utterance = Utterance.from_transcript(**{**fields, "media_path": None})
        corpus.utterances.append(utterance)
    corpus.sort_utterances()
    for message in corpus.row_errors:
        log.warning(message)
    return corpus


def _read_row(row: dict[str, str], folder: Path, label_set: LabelSet) -> dict:
    """The Utterance fields of one manifest row; a bad field is a ValueError that names it."""
    split = row["split"].strip()
    if split not in SPLITS:
        raise ValueError(f"field split: {row['split']!r} is not one of {', '.join(SPLITS)}")
    speaker = field_text(row, "speaker").strip()
    if not speaker:
        raise ValueError("field speaker is empty; name the speaker (any name that is the same across a dialogue)")
    transcript_raw = field_text(row, "transcript")
    label = row["label"].strip()
    if label:
        try:
            label = label_set.labels[label_set.index(label)]
        except UnknownLabelError as error:
            raise ValueError(f"field label: {error}") from None
    start, end = _times(row)
    return dict(
        split=split,
        dialogue_id=field_id(row, "dialogue_id"),
        utterance_id=field_id(row, "utterance_id"),
        speaker=speaker,
        transcript_raw=transcript_raw,
        emotion=label,
        sentiment="",
        media_path=_audio_path(row, folder),
        start_time=start,
        end_time=end,
        media_span=(start, end) if end > 0 else None,
    )


def _audio_path(row: dict[str, str], folder: Path) -> str | None:
    """The audio file's absolute path, refused when it leaves the manifest's folder; None when the row has none."""
    text = field_text(row, "audio").strip()
    if not text:
        return None
    relative = Path(text)
    if relative.is_absolute():
        raise ValueError(f"field audio: {text!r} is absolute; give the path relative to the manifest's folder")
    # resolve() follows links, so a link inside the folder that points out of it is refused too.
    resolved = (folder / relative).resolve()
    if not resolved.is_relative_to(folder):
        raise ValueError(f"field audio: {text!r} leads out of the manifest's folder {folder}; keep audio inside it")
    return str(resolved)


def _times(row: dict[str, str]) -> tuple[float, float]:
    """Start and end inside a longer file, or (0, 0) for a whole file."""
    texts = [row.get(column, "").strip() for column in TIME_COLUMNS]
    if not any(texts):
        return 0.0, 0.0
    if not all(texts):
        given, lacking = (TIME_COLUMNS[0], TIME_COLUMNS[1]) if texts[0] else (TIME_COLUMNS[1], TIME_COLUMNS[0])
        raise ValueError(f"field {lacking}: empty while {given} is given; give both start and end, or neither")
    times = []
    for column, text in zip(TIME_COLUMNS, texts):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"field {column}: {text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"field {column}: {text!r} must be a finite, non-negative number of seconds")
        times.append(value)
    if times[0] >= times[1]:
        raise ValueError(f"field end: {texts[1]} is not after start {texts[0]}")
    return times[0], times[1]
