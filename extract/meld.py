"""The MELD corpus reader: the official CSVs and clip folders to utterance records.

It reads MELD.Raw as unpacked from the archive, and every corpus written in the same
layout (the demo corpus is one). Records are keyed by (split, Dialogue_ID,
Utterance_ID), never by row order. The archive's known defects are handled and
recorded, each as a `ClipFlag` with a reason, instead of stopping the read: a missing
clip, a clip ffmpeg cannot read, a clip far longer than its CSV timestamps, and the
`final_videos_test…` twins of some test clips.
"""

import logging
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from extract.audio import AudioDecodeError, ClipInfo, probe_clip
from extract.corpus import Corpus, CorpusError, csv_records, csv_row, field_id, field_text
from extract.labels import EMOTIONS, MELD_EMOTIONS, SENTIMENTS, LabelSet
from extract.utterance import SPLITS, ClipFlag, Utterance

log = logging.getLogger(__name__)

CSV_NAMES: dict[str, str] = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_FOLDERS: dict[str, str] = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}
CSV_COLUMNS: tuple[str, ...] = (
    "Sr No.",
    "Utterance",
    "Speaker",
    "Emotion",
    "Sentiment",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)
CLIP_SUFFIXES: tuple[str, ...] = (".mp4", ".wav", ".flac")
TWIN_PREFIX = "final_videos_test"

_TIMESTAMP = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})[,.](\d{1,3})$")


# The lowest sampling rate of a wide-band clip: MELD's clips are 16 kHz or more, and openSMILE's emo_large
# and OpenL3 read frequencies a telephone-band (8 kHz) clip does not hold.
WIDE_BAND_HZ = 16000
# ffmpeg probes wait on subprocesses, so more threads than cores pays.
PROBE_THREADS = 4
DEFAULT_DURATION_TOLERANCE_S = 5.0


@dataclass(kw_only=True)
class MeldCorpus(Corpus):
    """What the MELD reader found: the utterances, the flagged clips and the CSV rows it had to skip."""

    kind: str = "meld"
    """Always meld."""
    label_set: LabelSet = MELD_EMOTIONS
    """MELD's seven emotions in the paper's Table 2 order."""

    def flags_by_key(self) -> dict[str, list[ClipFlag]]:
        grouped: dict[str, list[ClipFlag]] = {}
        for flag in self.flags:
            grouped.setdefault(flag.key, []).append(flag)
        return grouped

    def emotion_counts(self, split: str) -> Counter:
        return self.label_counts(split)


def parse_timestamp(text: str) -> float:
    """MELD's `hh:mm:ss,ms` (the hour has one digit in some rows) to seconds."""
    match = _TIMESTAMP.match(text.strip())
    if match is None:
        raise ValueError(f"timestamp {text!r} is not of the form hh:mm:ss,ms")
    hours, minutes, seconds, millis = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def _find_clip_folder(root: Path, split: str) -> Path | None:
    """The split's clip folder directly under root, or one level down (train/train_splits)."""
    name = CLIP_FOLDERS[split]
    for candidate in (root / name, *sorted(root.glob(f"*/{name}"))):
        if candidate.is_dir():
            return candidate
    return None


def _find_csv(root: Path, split: str, clip_folder: Path | None) -> Path | None:
    """The split's CSV beside the clip folders or one level up, as people unpack the archive differently."""
    places = [root, root.parent]
    if clip_folder is not None:
        places += [clip_folder.parent, clip_folder.parent.parent]
    for place in places:
        candidate = place / CSV_NAMES[split]
        if candidate.is_file():
            return candidate
    return None


def _find_clip(folder: Path | None, stem: str) -> Path | None:
    if folder is None:
        return None
    for suffix in CLIP_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _field_timestamp(row: dict, name: str) -> float:
    try:
        return parse_timestamp(row[name])
    except ValueError as error:
        raise ValueError(f"field {name}: {error}") from None


def _read_rows(csv_path: Path, split: str, row_errors: list[str]) -> list[dict]:
    """Parse one split's CSV into plain dicts; a bad row is recorded (file, line, field) and skipped, never fatal.

    The file is read with newline="" as the csv module requires, so a quoted transcript that
    spans lines keeps its line break; a row's line is where the row starts.
    """
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as stream:
            records = csv_records(stream, csv_path)
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"{csv_path} is not UTF-8 ({error}); MELD's CSVs are UTF-8: re-export the file as UTF-8"
        ) from None
    fieldnames = records[0][1] if records else []
    records = records[1:]
    missing = [c for c in CSV_COLUMNS if c not in fieldnames]
    if missing:
        raise CorpusError(
            f"{csv_path} lacks the MELD columns {', '.join(missing)}; expected the header: {','.join(CSV_COLUMNS)}"
        )
    rows = []
    seen: set[tuple[int, int]] = set()
    for line_number, values in records:
        where = f"{csv_path.name} line {line_number}"
        if not any(value.strip() for value in values):
            continue
        try:
            row = csv_row(values, fieldnames)
            dialogue_id, utterance_id = field_id(row, "Dialogue_ID"), field_id(row, "Utterance_ID")
            emotion, sentiment = row["Emotion"].strip().lower(), row["Sentiment"].strip().lower()
            if emotion not in EMOTIONS:
                raise ValueError(
                    f"field Emotion: unknown emotion {row['Emotion']!r} (expected one of {', '.join(EMOTIONS)})"
                )
            if sentiment not in SENTIMENTS:
                raise ValueError(
                    f"field Sentiment: unknown sentiment {row['Sentiment']!r} (expected one of {', '.join(SENTIMENTS)})"
                )
            start, end = _field_timestamp(row, "StartTime"), _field_timestamp(row, "EndTime")
            season = field_id(row, "Season", allow_empty=True)
            episode = field_id(row, "Episode", allow_empty=True)
            speaker = field_text(row, "Speaker").strip()
            transcript_raw = field_text(row, "Utterance")
        except ValueError as error:
            row_errors.append(f"{where}: {error}; the row was skipped")
            continue
        if (dialogue_id, utterance_id) in seen:
            row_errors.append(f"{where}: dia{dialogue_id}_utt{utterance_id} appears twice; the first row was kept")
            continue
        seen.add((dialogue_id, utterance_id))
        rows.append(
            dict(
                split=split,
                dialogue_id=dialogue_id,
                utterance_id=utterance_id,
                speaker=speaker,
                transcript_raw=transcript_raw,
                emotion=emotion,
                sentiment=sentiment,
                start_time=start,
                end_time=end,
                season=season,
                episode=episode,
            )
        )
    return rows


def _probe(path: Path) -> ClipInfo | AudioDecodeError:
    try:
        return probe_clip(path)
    except AudioDecodeError as error:
        return error


def read_meld(
    root: str | Path,
    splits: tuple[str, ...] = SPLITS,
    check_clips: bool = True,
    duration_tolerance_s: float = DEFAULT_DURATION_TOLERANCE_S,
) -> MeldCorpus:
    """Read a corpus in MELD's layout; nothing about a single clip or row stops the read.

    With `check_clips`, every clip's header is probed (tens of milliseconds a clip) so
    that corrupt, silent and wrongly cut clips are flagged now rather than during
    extraction; without it, only the files' existence is checked. A clip whose duration
    differs from EndTime - StartTime by more than `duration_tolerance_s` is flagged.
    """
    if duration_tolerance_s <= 0:
        raise CorpusError(f"duration_tolerance_s must be positive, got {duration_tolerance_s}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist; point it at the unpacked MELD.Raw folder")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise CorpusError(f"unknown split(s) {', '.join(unknown)}: choose from {', '.join(SPLITS)}")
    corpus = MeldCorpus(root=root)
    pending: list[tuple[dict, list[Path]]] = []
    for split in splits:
        folder = _find_clip_folder(root, split)
        csv_path = _find_csv(root, split, folder)
        if csv_path is None:
            raise CorpusError(
                f"no {CSV_NAMES[split]} in {root} or its parent; MELD.Raw holds it beside the clip folders"
            )
        if folder is None:
            log.warning(
                "no %s folder under %s: every %s clip will be flagged missing", CLIP_FOLDERS[split], root, split
            )
        for row in _read_rows(csv_path, split, corpus.row_errors):
            stem = f"dia{row['dialogue_id']}_utt{row['utterance_id']}"
            candidates = [p for p in (_find_clip(folder, stem), _find_clip(folder, TWIN_PREFIX + stem)) if p]
            pending.append((row, candidates))
    probes = _probe_all([p for _, candidates in pending for p in candidates]) if check_clips else {}
    for row, candidates in pending:
        media_path, flags = _choose_clip(row, candidates, probes, duration_tolerance_s)
        corpus.utterances.append(Utterance.from_transcript(media_path=str(media_path) if media_path else None, **row))
        corpus.flags.extend(flags)
    corpus.sort_utterances()
    for message in corpus.row_errors:
        log.warning(message)
    return corpus


def _probe_all(paths: list[Path]) -> dict[Path, ClipInfo | AudioDecodeError]:
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        progress = tqdm(total=len(paths), desc="checking clips", unit="clip", leave=False, disable=None)
        results = [progress.update() or result for result in pool.map(_probe, paths)]
        progress.close()
    return dict(zip(paths, results))


def _choose_clip(
    row: dict, candidates: list[Path], probes: dict[Path, ClipInfo | AudioDecodeError], duration_tolerance_s: float
) -> tuple[Path | None, list[ClipFlag]]:
    """Pick the usable clip for a row, and say why when anything is off."""
    ids = dict(split=row["split"], dialogue_id=row["dialogue_id"], utterance_id=row["utterance_id"])
    if not candidates:
        return None, [ClipFlag(**ids, kind="missing", reason="no clip file for this CSV row; text features only")]
    if not probes:
        return candidates[0], []
    expected = row["end_time"] - row["start_time"]
    readable = [(p, probes[p]) for p in candidates if isinstance(probes[p], ClipInfo) and probes[p].has_audio]
    if not readable:
        path, failure = candidates[0], probes[candidates[0]]
        if isinstance(failure, ClipInfo):
            return None, [ClipFlag(**ids, kind="no_audio", reason=f"{path.name} has no audio stream")]
        return None, [ClipFlag(**ids, kind=failure.kind, reason=f"{path.name}: {failure.reason}")]
    flags = []
    # Twins: keep the file whose duration agrees best with the CSV timestamps.
    path, info = min(readable, key=lambda item: abs(item[1].duration - expected))
    if len(candidates) > 1:
        others = ", ".join(_describe_probe(p, probes[p]) for p in candidates if p != path)
        flags.append(
            ClipFlag(
                **ids,
                kind="twin_chosen",
                reason=(
                    f"chose {path.name} ({info.duration:.2f} s) over {others}: "
                    f"closest to the CSV's {expected:.2f} s"
                ),
            )
        )
    if info.sample_rate is not None and info.sample_rate < WIDE_BAND_HZ:
        flags.append(
            ClipFlag(
                **ids,
                kind="narrowband",
                reason=(
                    f"{path.name} is sampled at {info.sample_rate} Hz: the paper's features assume wide-band audio "
                    f"({WIDE_BAND_HZ} Hz or more), and resampling cannot restore the missing band, so its audio "
                    "features differ from a wide-band clip's; kept"
                ),
            )
        )
    if abs(info.duration - expected) > duration_tolerance_s:
        flags.append(
            ClipFlag(
                **ids,
                kind="duration_mismatch",
                reason=(
                    f"{path.name} lasts {info.duration:.1f} s but the CSV says {expected:.1f} s; "
                    "extraction caps its length"
                ),
            )
        )
    return path, flags


def _describe_probe(path: Path, probe: ClipInfo | AudioDecodeError) -> str:
    if isinstance(probe, ClipInfo):
        return f"{path.name} ({probe.duration:.2f} s)" if probe.has_audio else f"{path.name} (no audio)"
    return f"{path.name} (unreadable)"
