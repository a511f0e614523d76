"""The utterance record: what every corpus reader yields and every later stage keys on."""

from dataclasses import dataclass
from typing import Any

from extract.transcript import normalise_transcript

SPLITS: tuple[str, ...] = ("train", "dev", "test")
# Shards store dialogue and utterance ids as int32.
MAX_ID = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class Utterance:
    """One utterance of a dialogue, keyed by (split, dialogue_id, utterance_id), never by row order."""

    split: str
    """Corpus split: train, dev or test."""
    dialogue_id: int
    """MELD's Dialogue_ID; ids can skip (train has no dialogue 60). Other corpora map their dialogue names to ids."""
    utterance_id: int
    """MELD's Utterance_ID within the dialogue; 76 MELD dialogues have gaps. Ids follow the order of speech."""
    speaker: str
    """Speaker name as the corpus spells it."""
    transcript: str
    """Transcript after `extract.transcript.normalise_transcript`."""
    transcript_raw: str
    """Transcript exactly as the CSV holds it."""
    emotion: str
    """The label in the corpus's label set: one of `extract.labels.EMOTIONS` for MELD; "" for an utterance kept
    only as unscored context (no loss, no score)."""
    sentiment: str
    """One of `extract.labels.SENTIMENTS`; "" for a corpus without sentiment labels."""
    media_path: str | None
    """Absolute path of the clip chosen for this utterance, or None when no usable clip exists."""
    start_time: float
    """StartTime in seconds from the start of the episode."""
    end_time: float
    """EndTime in seconds from the start of the episode."""
    season: int = 0
    """Season of the episode (0 when the corpus has none)."""
    episode: int = 0
    """Episode number (0 when the corpus has none)."""
    media_span: tuple[float, float] | None = None
    """(start, end) in seconds of the utterance inside a longer media file (a manifest's start and end);
    None: the whole file is the utterance (MELD's and IEMOCAP's times are not offsets into the clip)."""

    @classmethod
    def from_transcript(cls, *, transcript_raw: str, spoken: str | None = None, **fields: Any) -> "Utterance":
        """An utterance read from a corpus: `transcript_raw` kept as the corpus holds it, and `transcript` made
        from it by `normalise_transcript`, or from `spoken` where a reader keeps less than the raw text (IEMOCAP's
        transcript without its `[LAUGHTER]` tags)."""
        return cls(
            transcript=normalise_transcript(transcript_raw if spoken is None else spoken),
            transcript_raw=transcript_raw,
            **fields,
        )

    @property
    def key(self) -> str:
        """Stable string key, the name MELD gives the clip: 'train/dia12_utt3'."""
        return utterance_key(self.split, self.dialogue_id, self.utterance_id)

    @property
    def label(self) -> str | None:
        """The label in the corpus's label set, or None for an unscored context utterance."""
        return self.emotion or None

    @property
    def csv_duration(self) -> float:
        """EndTime minus StartTime, in seconds."""
        return self.end_time - self.start_time


def utterance_key(split: str, dialogue_id: int, utterance_id: int) -> str:
    """The string key of an utterance, shared by the manifest, the feature store and reports."""
    return f"{split}/dia{dialogue_id}_utt{utterance_id}"


@dataclass(frozen=True, kw_only=True)
class ClipFlag:
    """Something wrong (or chosen) about an utterance's clip, with the reason in words."""

    split: str
    """Split of the utterance."""
    dialogue_id: int
    """Dialogue id of the utterance."""
    utterance_id: int
    """Utterance id within the dialogue."""
    kind: str
    """missing, corrupt, no_audio, duration_mismatch, twin_chosen or narrowband."""
    reason: str
    """What was found, and what the reader did about it."""

    @property
    def key(self) -> str:
        return utterance_key(self.split, self.dialogue_id, self.utterance_id)
