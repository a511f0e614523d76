"""The demo corpus: a small, deterministic corpus in MELD's own layout.

It is written as MELD.Raw is unpacked (the three `*_sent_emo.csv` files with MELD's
columns, clips `dia{D}_utt{U}.mp4` in MELD's clip folders), so the MELD reader serves
both. It is built so that the models can learn something real:

- dialogues between two to four speakers of a six-person cast, each with their own voice;
- all seven emotions, imbalanced roughly as in MELD (neutral most, fear and disgust least),
  and emotions that persist through a dialogue as they do in conversation;
- transcripts that carry their emotion ("I got the job, this is amazing!"), with
  typographic apostrophes as MELD has them;
- a share of ambiguous transcripts ("Okay.", "Really?", "Oh.") whose emotion only the
  voice carries, through pitch level and range, contour, loudness, rate and voice
  quality (see `extract.speech_synth`). Their keys are listed in `ambiguous.json`, so
  a report can score text-only against bimodal models where only audio can help.
"""

import csv
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from extract.audio import encode_clip
from extract.labels import EMOTIONS
from extract.meld import CLIP_FOLDERS, CSV_COLUMNS, CSV_NAMES
from extract.speech_synth import SAMPLE_RATE, Voice, synthesise
from extract.utterance import SPLITS, utterance_key

log = logging.getLogger(__name__)

AMBIGUOUS_FILE = "ambiguous.json"

# Share of each emotion, in EMOTIONS order: MELD's train shares, flattened a little so
# that a corpus of a few hundred utterances still has a few dozen of each.
EMOTION_SHARES: dict[str, float] = {
    "neutral": 0.38,
    "surprise": 0.12,
    "fear": 0.06,
    "sadness": 0.09,
    "joy": 0.16,
    "disgust": 0.06,
    "anger": 0.13,
}

# Voices sit at or above about 140 Hz: emo_large finds pitch on 25 ms frames, which
# judge lower voices mostly unvoiced (see extract/opensmile_features.py).
CAST: dict[str, Voice] = {
    "Avery": Voice(base_f0=210.0, formant_scale=1.15),
    "Blake": Voice(base_f0=150.0, formant_scale=0.95),
    "Casey": Voice(base_f0=195.0, formant_scale=1.12),
    "Devon": Voice(base_f0=140.0, formant_scale=0.92),
    "Emery": Voice(base_f0=225.0, formant_scale=1.18),
    "Flynn": Voice(base_f0=160.0, formant_scale=1.0),
}

# Transcripts that say their emotion. Some share words across emotions on purpose
# ("I can't believe it"), so text alone is strong but not perfect.
EMOTIONAL_LINES: dict[str, tuple[str, ...]] = {
    "neutral": (
        "I’m going to the store later.",
        "The meeting starts at three.",
        "Did you see where I put my keys?",
        "We should probably order some food.",
        "She said she’d call back tomorrow.",
        "I think the bus comes every ten minutes.",
        "Can you pass me that magazine?",
        "It’s on the second shelf, next to the lamp.",
        "I was just reading about that.",
        "Let’s meet at the coffee place.",
    ),
    "joy": (
        "I got the job, this is amazing!",
        "I love it, thank you so much!",
        "This is the best day ever!",
        "You guys are wonderful, I’m so happy!",
        "We’re getting married!",
        "That’s fantastic news, congratulations!",
        "Ha, that was hilarious!",
        "I can’t believe it, we won!",
    ),
    "surprise": (
        "Wait, what? You’re kidding me!",
        "No way, since when?",
        "Are you serious right now?",
        "Whoa, I did not see that coming!",
        "You did what?",
        "I can’t believe it, really?",
        "Since when do you have a cat?",
    ),
    "anger": (
        "Get out of my apartment!",
        "I can’t believe you did that to me!",
        "Stop it, I’m sick of this!",
        "You lied to me, again!",
        "That is so unfair, how dare you!",
        "Don’t you ever touch my stuff!",
        "This is ridiculous, I’m furious!",
    ),
    "sadness": (
        "I miss her so much.",
        "He’s gone, and he’s not coming back.",
        "I just feel so alone.",
        "Nobody remembered my birthday.",
        "I’m sorry, I really messed everything up.",
        "It’s over between us.",
        "I lost my job today.",
    ),
    "fear": (
        "Did you hear that noise?",
        "I’m scared, what if they find out?",
        "Oh no, please don’t let it be a spider.",
        "I think someone’s following me.",
        "What if the plane crashes?",
        "I’m terrified of the interview.",
    ),
    "disgust": (
        "Ew, that’s disgusting.",
        "Gross, what is that smell?",
        "Ugh, I can’t even look at it.",
        "That’s revolting, get it away from me.",
        "Yuck, there’s hair in my soup.",
        "You licked it? That’s nasty.",
    ),
}

# Said the same way in words whatever the feeling: only the voice tells (the paper's Figure 1).
AMBIGUOUS_LINES: tuple[str, ...] = ("Okay.", "Really?", "Oh.", "Yeah.", "Fine.", "Right.", "What?", "Hmm.", "Well.")

SENTIMENT_OF: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral",),
    "joy": ("positive",),
    "surprise": ("positive", "negative"),
    "anger": ("negative",),
    "sadness": ("negative",),
    "fear": ("negative",),
    "disgust": ("negative",),
}


@dataclass(kw_only=True)
class DemoCorpusConfig:
    """Size and make-up of the demo corpus."""

    seed: int = 0
    """Seed of everything random: the same seed writes the same corpus."""
    train_dialogues: int = 60
    """Dialogues in the train split."""
    dev_dialogues: int = 12
    """Dialogues in the dev split."""
    test_dialogues: int = 16
    """Dialogues in the test split."""
    min_utterances: int = 4
    """Fewest utterances in a dialogue."""
    max_utterances: int = 10
    """Most utterances in a dialogue."""
    ambiguous_share: float = 0.3
    """Share of utterances whose transcript is ambiguous, so that only the voice carries the emotion."""
    emotion_persistence: float = 0.3
    """Chance that an utterance keeps the previous utterance's emotion, as moods carry on in conversation."""
    prosody_variation: float = 2.0
    """How much each utterance's prosody varies around its emotion's (0: every anger sounds the same).
    At 2.0 a linear probe on emo_large features scores about 60-70% on the voice alone, below
    the transcripts, as on MELD; at 1.0 the voice is nearly as telling as the words."""
    clip_format: Literal["mp4", "wav", "flac"] = "mp4"
    """Clip container: mp4 with AAC audio as MELD has, or wav/flac, which write faster."""
    workers: int = 4
    """Clips encoded at once (each is an ffmpeg process)."""

    def __post_init__(self) -> None:
        for name in ("train_dialogues", "dev_dialogues", "test_dialogues"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.min_utterances <= self.max_utterances:
            raise ValueError(
                f"need 1 <= min_utterances <= max_utterances, got {self.min_utterances} and {self.max_utterances}"
            )
        if not 0.0 <= self.ambiguous_share <= 1.0:
            raise ValueError(f"ambiguous_share must be within [0, 1], got {self.ambiguous_share}")
        if not 0.0 <= self.emotion_persistence < 1.0:
            raise ValueError(f"emotion_persistence must be within [0, 1), got {self.emotion_persistence}")
        if self.prosody_variation < 0:
            raise ValueError(f"prosody_variation must be non-negative, got {self.prosody_variation}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    def dialogues(self, split: str) -> int:
        return {"train": self.train_dialogues, "dev": self.dev_dialogues, "test": self.test_dialogues}[split]


@dataclass(frozen=True)
class _Line:
    split: str
    dialogue_id: int
    utterance_id: int
    speaker: str
    text: str
    emotion: str
    sentiment: str
    ambiguous: bool
    seed: int


def _script(config: DemoCorpusConfig) -> list[_Line]:
    """Who says what with which emotion: every random choice but the audio, from one generator."""
    rng = np.random.default_rng(config.seed)
    shares = np.array([EMOTION_SHARES[e] for e in EMOTIONS])
    shares /= shares.sum()
    names = list(CAST)
    lines = []
    for split in SPLITS:
        for dialogue_id in range(config.dialogues(split)):
            cast = list(rng.choice(names, size=int(rng.integers(2, 5)), replace=False))
            emotion = None
            n_utterances = int(rng.integers(config.min_utterances, config.max_utterances + 1))
            for utterance_id in range(n_utterances):
                if emotion is None or rng.random() >= config.emotion_persistence:
                    emotion = EMOTIONS[int(rng.choice(len(EMOTIONS), p=shares))]
                ambiguous = bool(rng.random() < config.ambiguous_share)
                pool = AMBIGUOUS_LINES if ambiguous else EMOTIONAL_LINES[emotion]
                lines.append(
                    _Line(
                        split=split,
                        dialogue_id=dialogue_id,
                        utterance_id=utterance_id,
                        speaker=str(cast[utterance_id % len(cast)] if rng.random() < 0.7 else rng.choice(cast)),
                        text=str(pool[int(rng.integers(len(pool)))]),
                        emotion=emotion,
                        sentiment=str(rng.choice(SENTIMENT_OF[emotion])),
                        ambiguous=ambiguous,
                        seed=int(rng.integers(2**31)),
                    )
                )
    return lines


def _timestamp(seconds: float) -> str:
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def write_demo_corpus(out_dir: str | Path, config: DemoCorpusConfig | None = None) -> Path:
    """Write the demo corpus into `out_dir` (created if needed) and return its path."""
    config = config or DemoCorpusConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = _script(config)
    for split in SPLITS:
        (out_dir / CLIP_FOLDERS[split]).mkdir(exist_ok=True)

    def render(line: _Line) -> float:
        audio = synthesise(
            line.text, line.emotion, CAST[line.speaker], np.random.default_rng(line.seed), config.prosody_variation
        )
        clip = out_dir / CLIP_FOLDERS[line.split] / f"dia{line.dialogue_id}_utt{line.utterance_id}.{config.clip_format}"
        encode_clip(audio, SAMPLE_RATE, clip)
        return len(audio) / SAMPLE_RATE

    with ThreadPoolExecutor(config.workers) as pool:
        progress = tqdm(total=len(lines), desc="synthesising demo corpus", unit="clip", leave=False, disable=None)
        durations = [progress.update() or duration for duration in pool.map(render, lines)]
        progress.close()

    episode_clock: dict[tuple[str, int], float] = {}
    rows: dict[str, list[list[str]]] = {split: [] for split in SPLITS}
    for line, duration in zip(lines, durations):
        # One episode per dialogue, utterances back to back with a short pause between turns.
        start = episode_clock.setdefault((line.split, line.dialogue_id), 60.0 + 37.0 * line.dialogue_id)
        episode_clock[(line.split, line.dialogue_id)] = start + duration + 0.4
        season, episode = 1 + line.dialogue_id % 10, 1 + line.dialogue_id % 24
        sr_no = len(rows[line.split]) + 1
        rows[line.split].append(
            [str(sr_no), line.text, line.speaker, line.emotion, line.sentiment, str(line.dialogue_id),
             str(line.utterance_id), str(season), str(episode), _timestamp(start), _timestamp(start + duration)]
        )
    for split in SPLITS:
        with open(out_dir / CSV_NAMES[split], "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows[split])
    ambiguous = [utterance_key(line.split, line.dialogue_id, line.utterance_id) for line in lines if line.ambiguous]
    (out_dir / AMBIGUOUS_FILE).write_text(json.dumps(ambiguous, indent=1) + "\n", encoding="utf-8")
    log.info("wrote the demo corpus to %s: %d utterances, %d voice-only", out_dir, len(lines), len(ambiguous))
    return out_dir


def read_ambiguous_keys(corpus_dir: str | Path) -> set[str]:
    """Keys of the utterances whose emotion only the voice carries; empty for a corpus without the file."""
    path = Path(corpus_dir) / AMBIGUOUS_FILE
    return set(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else set()
