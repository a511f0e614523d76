"""The IEMOCAP reader: an unpacked `IEMOCAP_full_release` folder to utterance records.

Layout read (and never written): `Session1` … `Session5`, each with
`dialog/EmoEvaluation/<dialog>.txt` (a `%` header, then per turn one line
`[START - END]<TAB>TURN<TAB>LABEL<TAB>[V, A, D]` followed by annotator lines such as
`C-E1:` that are skipped), `dialog/transcriptions/<dialog>.txt` (lines
`TURN [START-END]: text`) and `sentences/wav/<dialog>/<turn>.wav`. A turn is an
utterance when it is both evaluated and transcribed. Its speaker is the session plus
the letter before the turn's number (`Ses01` + `F`). Transcripts keep their tags
(`[LAUGHTER]`, `[BREATHING]`) in `transcript_raw`; the text the encoders see has them
removed, since they are annotation, not speech.

Ids. Dialogues take their position in the sorted list of every dialog name the
release holds (`Ses01F_impro01` is 0 in the full release), and a turn its position
in its dialog ordered by start time, counted before any protocol drops a turn; so ids
do not depend on the protocol, and `IemocapCorpus.dialogue_names` and `turn_names`
give the names back for printing.

Protocols (`IemocapConfig.protocol`):

- `erc6`, the ERC benchmark (the default): happy, sad, neutral, angry, excited,
  frustrated. Sessions 1-4 are train and dev, session 5 is test. Turns whose majority
  label is another (`sur`, `fea`, `dis`, `oth`, or `xxx`, no majority) are dropped, as
  the ERC literature does; `keep_unscored=true` keeps them in their dialogue as
  context with no label. The full release's majority labels give 7,380 utterances in
  these six classes: neutral 1,708, frustrated 1,849, angry 1,103, sad 1,084,
  excited 1,041, happy 595; this reader reproduces that count. The ERC literature's
  preprocessed features (DialogueRNN onwards) count 151 dialogues and 7,433
  utterances (5,810 in sessions 1-4, 1,623 in session 5), 53 more. Our hypothesis,
  not verified since that preprocessing was never published: those features took
  some labels from elsewhere than the evaluation files' majority line (for example
  the per-annotator categorical files, or an earlier release of the evaluations),
  so that some turns this reader drops as `xxx` carry one of the six labels there.
- `ser4`, the speech-emotion benchmark: neutral, happy (with excited merged in), sad,
  angry; the same majority labels give 5,531 utterances (1,708 + 1,636 + 1,084 +
  1,103). Leave-one-session-out: fold k tests on session k (`fold`), the others are
  train and dev.

Dev is carved from whole train dialogues by a rule a paper can state: "the
round(dev_fraction × n) of the n train dialogues with the smallest SHA-256 of
`<dev_seed>:<dialogue name>`" (`IemocapCorpus.dev_rule` spells it out with the numbers).
"""

import hashlib
import logging
import re
import wave
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from extract.corpus import Corpus, CorpusError, CorpusFlag
from extract.labels import LabelSet
from extract.utterance import Utterance

log = logging.getLogger(__name__)

SESSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)
Protocol = Literal["erc6", "ser4"]

# The evaluation files' label codes and the names they stand for; `xxx` means the annotators had no majority.
LABEL_CODES: dict[str, str] = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "sad": "sad",
    "ang": "angry",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgusted",
    "oth": "other",
    "xxx": "no majority",
}

ERC6_LABELS = LabelSet(
    name="iemocap-erc6", labels=("happy", "sad", "neutral", "angry", "excited", "frustrated"), noun="emotion"
)
SER4_LABELS = LabelSet(name="iemocap-ser4", labels=("neutral", "happy", "sad", "angry"), noun="emotion")

# Each protocol's label set, and the label each kept code becomes; a code not listed is outside the protocol.
PROTOCOL_LABELS: dict[str, tuple[LabelSet, dict[str, str]]] = {
    "erc6": (
        ERC6_LABELS,
        {"hap": "happy", "sad": "sad", "neu": "neutral", "ang": "angry", "exc": "excited", "fru": "frustrated"},
    ),
    "ser4": (SER4_LABELS, {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}),
}

_NUMBER = r"(\d+(?:\.\d*)?)"
_EVALUATION_LINE = re.compile(
    rf"^\[{_NUMBER}\s*-\s*{_NUMBER}\]\t(\S+)\t(\w+)\t\[\s*{_NUMBER},\s*{_NUMBER},\s*{_NUMBER}\]$"
)
_ANNOTATOR_LINE = re.compile(r"^[A-Z]+-[A-Z]+\d*:")
_TRANSCRIPTION_LINE = re.compile(rf"^(\S+) \[{_NUMBER}-{_NUMBER}\]:\s?(.*)$")
_DIALOG_NAME = re.compile(r"^(Ses0[1-5])[FM]_\w+$")
_TURN_SPEAKER = re.compile(r"^([FM])[0-9X]")
# Annotation tags in transcripts: [LAUGHTER], [BREATHING], [GARBAGE], [LIPSMACK] ...
_TAG = re.compile(r"\[[A-Z][A-Z_ ]*\]")


@dataclass(kw_only=True)
class IemocapConfig:
    """Which IEMOCAP protocol to read, and how dev is carved from train."""

    protocol: Protocol = "erc6"
    """erc6 (six emotions, sessions 1-4 train, session 5 test) or ser4 (four emotions, leave one session out)."""
    fold: int = 5
    """ser4 only: the session that is test (1-5); erc6 always tests on session 5."""
    keep_unscored: bool = False
    """Keep turns whose label is outside the protocol in their dialogue as unscored context (no label, loss or
    score), instead of dropping them as the ERC literature does."""
    dev_fraction: float = 0.1
    """Share of the train dialogues that become dev, rounded to whole dialogues (at least one)."""
    dev_seed: int = 0
    """Seed of the dev rule: dev is the dialogues with the smallest SHA-256 of `<dev_seed>:<dialogue name>`."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_LABELS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_LABELS)}, not {self.protocol!r}")
        if self.fold not in SESSIONS:
            raise ValueError(f"fold must be a session number 1-5, not {self.fold}")
        if self.protocol == "erc6" and self.fold != 5:
            raise ValueError("fold applies to protocol=ser4 only: erc6 always tests on session 5")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction must be between 0 and 1 (exclusive), not {self.dev_fraction}")
        if self.dev_seed < 0:
            raise ValueError(f"dev_seed must be non-negative, not {self.dev_seed}")

    @property
    def test_session(self) -> int:
        return self.fold

    def describe(self) -> str:
        """The protocol as a report states it: `erc6` or `ser4 fold 3`."""
        return self.protocol if self.protocol == "erc6" else f"{self.protocol} fold {self.fold}"


@dataclass(kw_only=True)
class IemocapCorpus(Corpus):
    """What the IEMOCAP reader found, with the names behind the integer ids and the turns outside the label set."""

    kind: str = "iemocap"
    """Always iemocap."""
    turn_names: dict[str, str] = field(default_factory=dict)
    """The IEMOCAP turn name of each utterance key (`train/dia0_utt3` -> `Ses01F_impro01_F001`)."""
    outside_label_set: Counter = field(default_factory=Counter)
    """Turns whose label is outside the protocol's set, by label code (`xxx`, `sur`, ...): dropped, or kept as
    unscored context under `keep_unscored`."""
    dev_rule: str = ""
    """How dev was carved from train, in words a paper can quote."""


@dataclass(frozen=True)
class _Turn:
    """One line of an evaluation or transcription file."""

    name: str
    start: float
    end: float
    value: str
    """The label code (evaluation) or the transcript (transcription)."""


def is_iemocap(path: Path) -> bool:
    """Whether `path` is an unpacked IEMOCAP release: a SessionN folder with dialog/EmoEvaluation in it."""
    return path.is_dir() and any((path / f"Session{n}" / "dialog" / "EmoEvaluation").is_dir() for n in SESSIONS)


def read_iemocap(root: str | Path, config: IemocapConfig | None = None) -> IemocapCorpus:
    """Read an IEMOCAP release under `config`'s protocol; nothing about a single turn or line stops the read."""
    config = config or IemocapConfig()
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist; point it at the unpacked IEMOCAP_full_release folder")
    sessions = [n for n in SESSIONS if (root / f"Session{n}" / "dialog" / "EmoEvaluation").is_dir()]
    if not sessions:
        raise CorpusError(
            f"{root} holds no Session1..Session5/dialog/EmoEvaluation folder; is it IEMOCAP_full_release?"
        )
    if config.test_session not in sessions:
        raise CorpusError(
            f"{root} has no Session{config.test_session}, the test session of protocol {config.describe()}; "
            "choose a fold whose session is present"
        )
    if len(sessions) < 2:
        raise CorpusError(f"{root} holds only Session{sessions[0]}: a protocol needs a train session beside the test")
    label_set, code_to_label = PROTOCOL_LABELS[config.protocol]
    corpus = IemocapCorpus(root=root, label_set=label_set, protocol=config.describe())
    dialogs = sorted(
        (path.stem, session)
        for session in sessions
        for path in (root / f"Session{session}" / "dialog" / "EmoEvaluation").glob("*.txt")
        if not path.name.startswith(".")  # macOS copies carry `._name` resource forks beside each file
    )
    train_names = [name for name, session in dialogs if session != config.test_session]
    dev_names, corpus.dev_rule = carve_dev(train_names, config.dev_fraction, config.dev_seed)
    for dialogue_id, (name, session) in enumerate(tqdm(dialogs, desc="reading IEMOCAP", unit="dialog", disable=None)):
        split = "test" if session == config.test_session else "dev" if name in dev_names else "train"
        _read_dialog(corpus, root / f"Session{session}", name, split, dialogue_id, code_to_label, config.keep_unscored)
    corpus.sort_utterances()
    for message in corpus.row_errors:
        log.warning(message)
    return corpus


def carve_dev(train_names: list[str], fraction: float, seed: int) -> tuple[set[str], str]:
    """The dev dialogues among `train_names`, and the rule that chose them in words."""
    count = min(max(1, int(fraction * len(train_names) + 0.5)), len(train_names) - 1)
    if count < 1:
        raise CorpusError(f"only {len(train_names)} train dialogue(s): dev needs whole dialogues of its own")
    ranked = sorted(train_names, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    rule = (
        f"dev is the {count} of the {len(train_names)} train dialogues with the smallest SHA-256 of "
        f"'{seed}:<dialogue name>' (dev_fraction {fraction}, dev_seed {seed})"
    )
    return set(ranked[:count]), rule


def _read_dialog(
    corpus: IemocapCorpus,
    session_dir: Path,
    name: str,
    split: str,
    dialogue_id: int,
    code_to_label: dict[str, str],
    keep_unscored: bool,
) -> None:
    match = _DIALOG_NAME.match(name)
    evaluation_path = session_dir / "dialog" / "EmoEvaluation" / f"{name}.txt"
    if match is None:
        corpus.row_errors.append(
            f"{_relative(corpus.root, evaluation_path)}: {name!r} is not an IEMOCAP dialog name "
            "(Ses0<session><F|M>_<name>); the file was skipped"
        )
        return
    corpus.dialogue_names[(split, dialogue_id)] = name
    evaluated = _read_evaluation(evaluation_path, name, corpus)
    transcribed = _read_transcription(session_dir / "dialog" / "transcriptions" / f"{name}.txt", name, corpus)
    for turn in sorted(transcribed.keys() - evaluated.keys()):
        corpus.flags.append(
            CorpusFlag(key=turn, kind="not_evaluated", reason="transcribed but not in the evaluation file; skipped")
        )
    for turn in sorted(evaluated.keys() - transcribed.keys()):
        corpus.flags.append(
            CorpusFlag(key=turn, kind="not_transcribed", reason="evaluated but not in the transcription; skipped")
        )
    both = sorted(
        (evaluated[turn] for turn in evaluated.keys() & transcribed.keys()), key=lambda turn: (turn.start, turn.name)
    )
    for utterance_id, evaluation in enumerate(both):
        label = code_to_label.get(evaluation.value)
        if label is None:
            corpus.outside_label_set[evaluation.value] += 1
            if not keep_unscored:
                continue
        speaker = _TURN_SPEAKER.match(evaluation.name.rsplit("_", 1)[-1])
        wav = session_dir / "sentences" / "wav" / name / f"{evaluation.name}.wav"
        problem = _wav_problem(wav)
        if problem is not None:
            corpus.flags.append(CorpusFlag(key=evaluation.name, kind=problem[0], reason=problem[1]))
        transcript_raw = transcribed[evaluation.name].value
        utterance = Utterance.from_transcript(
            split=split,
            dialogue_id=dialogue_id,
            utterance_id=utterance_id,
            speaker=match.group(1) + speaker.group(1),
            transcript_raw=transcript_raw,
            spoken=_TAG.sub(" ", transcript_raw),
            emotion=label or "",
            sentiment="",
            media_path=None if problem else str(wav),
            start_time=evaluation.start,
            end_time=evaluation.end,
        )
        corpus.utterances.append(utterance)
        corpus.turn_names[utterance.key] = evaluation.name


def _read_evaluation(path: Path, dialog: str, corpus: IemocapCorpus) -> dict[str, _Turn]:
    """The turns of an evaluation file: each `[START - END] TURN LABEL [V, A, D]` line; annotator lines skipped."""
    turns: dict[str, _Turn] = {}
    for number, line in _lines(path, corpus):
        if not line.strip() or line.startswith("%") or _ANNOTATOR_LINE.match(line):
            continue
        match = _EVALUATION_LINE.match(line.rstrip("\r\n"))
        problem = None
        if match is None:
            problem = "not '[START - END]<TAB>TURN<TAB>LABEL<TAB>[V, A, D]' nor an annotator line"
        elif match.group(4) not in LABEL_CODES:
            problem = f"unknown label code {match.group(4)!r} (expected one of {', '.join(LABEL_CODES)})"
        else:
            problem = _turn_problem(match.group(3), dialog, turns)
        if problem:
            corpus.row_errors.append(f"{_relative(corpus.root, path)} line {number}: {problem}; the line was skipped")
            continue
        turns[match.group(3)] = _Turn(match.group(3), float(match.group(1)), float(match.group(2)), match.group(4))
    return turns


def _read_transcription(path: Path, dialog: str, corpus: IemocapCorpus) -> dict[str, _Turn]:
    """The turns of a transcription file (`TURN [START-END]: text`); a missing file transcribes nothing."""
    turns: dict[str, _Turn] = {}
    if not path.is_file():
        corpus.row_errors.append(f"{_relative(corpus.root, path)}: missing; no turn of {dialog} is transcribed")
        return turns
    for number, line in _lines(path, corpus):
        if not line.strip():
            continue
        match = _TRANSCRIPTION_LINE.match(line.rstrip("\r\n"))
        problem = "not 'TURN [START-END]: text'" if match is None else _turn_problem(match.group(1), dialog, turns)
        if problem:
            corpus.row_errors.append(f"{_relative(corpus.root, path)} line {number}: {problem}; the line was skipped")
            continue
        turns[match.group(1)] = _Turn(match.group(1), float(match.group(2)), float(match.group(3)), match.group(4))
    return turns


def _turn_problem(turn: str, dialog: str, seen: dict[str, _Turn]) -> str | None:
    if not turn.startswith(f"{dialog}_") or _TURN_SPEAKER.match(turn[len(dialog) + 1 :]) is None:
        return f"turn {turn!r} is not {dialog}_<F|M><number>"
    if turn in seen:
        return f"turn {turn} appears twice; the first line was kept"
    return None


def _lines(path: Path, corpus: IemocapCorpus) -> list[tuple[int, str]]:
    """A text file's lines with their numbers; a file that is not text is recorded and reads as empty."""
    try:
        # IEMOCAP's files are ASCII; Latin-1 decodes any byte, so one stray byte costs one line, not the file.
        text = path.read_text(encoding="latin-1")
    except OSError as error:
        corpus.row_errors.append(f"{_relative(corpus.root, path)}: cannot be read ({error.strerror}); skipped")
        return []
    return list(enumerate(text.splitlines(), start=1))


def _wav_problem(path: Path) -> tuple[str, str] | None:
    """Why a turn's wav cannot be used (kind, reason), or None when its header and length are sound."""
    if not path.is_file():
        return "missing", f"no {path.name}; text only"
    try:
        with wave.open(str(path), "rb") as clip:
            frames, frame_bytes = clip.getnframes(), clip.getsampwidth() * clip.getnchannels()
    except (wave.Error, EOFError, OSError) as error:
        return "corrupt", f"{path.name} is not a readable wav ({error}); text only"
    if frames == 0:
        return "no_audio", f"{path.name} holds no samples; text only"
    # The header promises `frames` frames; a file cut short by a failed copy holds fewer bytes than that.
    if path.stat().st_size < frames * frame_bytes:
        return "corrupt", f"{path.name} is shorter than its header says (truncated); text only"
    return None


def _relative(root: Path, path: Path) -> str:
    return str(path.relative_to(root))
