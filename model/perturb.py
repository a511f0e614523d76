"""Perturbations of a split's inputs, for robustness evaluation: a modality missing, noisy audio, ASR-like text.

A perturbation is written as a short spec, `NAME` or `NAME:key=value,key=value`:

    audio_missing                       every utterance's audio input is masked to zeros
    text_missing                        every utterance's text input is masked to zeros
    audio_noise:noise=white,snr_db=10   noise added to each waveform at that signal-to-noise ratio,
    audio_noise:noise=babble,snr_db=5   then the audio families extracted again from the noisy clip
    text_asr:wer=0.3                    simulated ASR errors at that word error rate, then the text
                                        features (or, end to end, the token ids) made again
    every spec takes seed=N (default 0) for its random draws

A missing modality reaches the model through `model.fusion.ModalityDropout.absent`, the mask that
modality dropout trains with (zeros, the train mean after standardisation).

Noise: the noise is scaled so that 10·log10(P_clean / P_noise) = snr_db over the whole clip. White
noise is Gaussian, drawn per clip from (seed, key). Babble is the sum of `BABBLE_TALKERS` other
utterances of the same split, each scaled to unit RMS and looped to the clip's length; the talkers
come from a pool of `BABBLE_POOL` utterances drawn once from (seed), and each clip draws its talkers
from the pool by (seed, key), never itself. snr_db = inf adds nothing.

ASR errors: each reference word (whitespace-separated token) is, with probability `wer`, an error;
an error is a substitution with probability 0.60, a deletion with 0.25, an insertion with 0.15
(substitutions dominate real ASR output). A substitution replaces the word with another word, an
insertion keeps the word and adds one after it; new words are drawn uniformly from the vocabulary
of the split's own transcripts. The expected (S + D + I) / N is therefore `wer`; the realised rate
is reported with the scores. Draws come from (seed, key), so a spec gives the same text every time.
wer = 0 changes nothing.
"""

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

Kind = Literal["audio_missing", "text_missing", "audio_noise", "text_asr"]
NoiseKind = Literal["white", "babble"]

ASR_ERROR_SHARES: dict[str, float] = {"substitution": 0.60, "deletion": 0.25, "insertion": 0.15}
"""How an ASR error splits into substitutions, deletions and insertions."""
BABBLE_TALKERS = 4
"""Other utterances summed into one clip's babble."""
BABBLE_POOL = 16
"""Utterances of the split that babble talkers are drawn from (decoded once per sample rate)."""


class PerturbationError(ValueError):
    """A perturbation spec that cannot be parsed or applied; the message shows the accepted form."""


_USAGE = (
    "write audio_missing[:seed=N], text_missing[:seed=N], audio_noise:noise=white|babble,snr_db=DB[,seed=N] "
    "or text_asr:wer=RATE[,seed=N]"
)


@dataclass(frozen=True, kw_only=True)
class Perturbation:
    """One perturbation of a split's inputs (module docstring)."""

    kind: Kind
    """audio_missing, text_missing, audio_noise or text_asr."""
    noise: NoiseKind = "white"
    """audio_noise: white Gaussian noise, or babble (other utterances talking)."""
    snr_db: float = math.inf
    """audio_noise: signal-to-noise ratio in dB; inf adds nothing."""
    wer: float = 0.0
    """text_asr: target word error rate, 0 to 1; 0 changes nothing."""
    seed: int = 0
    """Seed of every random draw."""
    spec: str = field(default="", compare=False)
    """The spec as written."""

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind):
            raise PerturbationError(f"unknown perturbation {self.kind!r}; {_USAGE}")
        if self.noise not in get_args(NoiseKind):
            raise PerturbationError(f"noise must be white or babble, not {self.noise!r}")
        if math.isnan(self.snr_db) or self.snr_db == -math.inf:
            raise PerturbationError(f"snr_db must be a number of dB (or inf for no noise), not {self.snr_db}")
        if not 0.0 <= self.wer <= 1.0:
            raise PerturbationError(f"wer must be within [0, 1], not {self.wer}")
        if self.seed < 0:
            raise PerturbationError(f"seed must be 0 or more, not {self.seed}")

    @property
    def missing(self) -> str | None:
        """The modality this perturbation removes, or None."""
        return {"audio_missing": "audio", "text_missing": "text"}.get(self.kind)

    @property
    def changes_audio(self) -> bool:
        """Whether the audio features are extracted again (from noisy clips)."""
        return self.kind == "audio_noise"

    @property
    def changes_text(self) -> bool:
        """Whether the text input is made again (from ASR-like transcripts)."""
        return self.kind == "text_asr"

    @property
    def condition(self) -> str:
        """A short, stable name for reports and file names: 'audio_noise-white-10db', 'text_asr-wer0.3'."""
        if self.kind == "audio_noise":
            return f"audio_noise-{self.noise}-{self.snr_db:g}db"
        if self.kind == "text_asr":
            return f"text_asr-wer{self.wer:g}"
        return self.kind

    def describe(self) -> str:
        """The condition in words: 'audio with white noise at 10 dB SNR', 'text at 30% WER'."""
        if self.kind == "audio_noise":
            return f"audio with {self.noise} noise at {self.snr_db:g} dB SNR"
        if self.kind == "text_asr":
            return f"text at {100 * self.wer:g}% WER"
        return self.kind.replace("_", " ")


def parse_perturbation(spec: str) -> Perturbation:
    """A Perturbation from `NAME[:key=value,...]`; a PerturbationError names what is wrong."""
    name, _, arguments = spec.strip().partition(":")
    if name not in get_args(Kind):
        raise PerturbationError(f"unknown perturbation {name!r} in {spec!r}; {_USAGE}")
    allowed = {"audio_noise": {"noise", "snr_db", "seed"}, "text_asr": {"wer", "seed"}}.get(name, {"seed"})
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in arguments.split(","))):
        key, equals, value = item.partition("=")
        if not equals or key not in allowed:
            raise PerturbationError(f"{spec!r}: {name} takes {', '.join(sorted(allowed))}, not {item!r}; {_USAGE}")
        if key in values:
            raise PerturbationError(f"{spec!r} gives {key} twice; give it once")
        try:
            values[key] = value if key == "noise" else int(value) if key == "seed" else float(value)
        except ValueError:
            raise PerturbationError(f"{spec!r}: {key} must be a number, not {value!r}") from None
    if name == "audio_noise" and "snr_db" not in values:
        raise PerturbationError(f"{spec!r}: audio_noise needs snr_db (e.g. audio_noise:noise=white,snr_db=10)")
    if name == "text_asr" and "wer" not in values:
        raise PerturbationError(f"{spec!r}: text_asr needs wer (e.g. text_asr:wer=0.3)")
    return Perturbation(kind=name, spec=spec.strip(), **values)  # type: ignore[arg-type]


def _generator(seed: int, key: str) -> np.random.Generator:
    """A generator of its own for one utterance: draws do not depend on which other utterances are perturbed."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


@dataclass(frozen=True, kw_only=True)
class AsrErrors:
    """Transcripts with simulated ASR errors, and the errors made."""

    transcripts: list[str]
    """The perturbed transcripts, in input order."""
    substitutions: int
    """Words replaced."""
    deletions: int
    """Words dropped."""
    insertions: int
    """Words added."""
    reference_words: int
    """Words of the original transcripts."""

    @property
    def wer(self) -> float:
        """The realised word error rate, (S + D + I) / N."""
        return (self.substitutions + self.deletions + self.insertions) / max(self.reference_words, 1)


def simulate_asr_errors(keys: Sequence[str], transcripts: Sequence[str], wer: float, seed: int) -> AsrErrors:
    """Each transcript with word-level substitutions, deletions and insertions at rate `wer` (module docstring)."""
    vocabulary = sorted({word for transcript in transcripts for word in transcript.split()})
    kinds = list(ASR_ERROR_SHARES)
    shares = np.array(list(ASR_ERROR_SHARES.values()))
    counts = dict.fromkeys(kinds, 0)
    out, reference = [], 0
    for key, transcript in zip(keys, transcripts):
        words = transcript.split()
        reference += len(words)
        if wer == 0 or not words:
            out.append(transcript)
            continue
        rng = _generator(seed, key)
        result: list[str] = []
        for word in words:
            if rng.random() >= wer:
                result.append(word)
                continue
            kind = kinds[int(rng.choice(len(kinds), p=shares))]
            counts[kind] += 1
            if kind == "deletion":
                continue
            if kind == "insertion":
                result.extend([word, vocabulary[int(rng.integers(len(vocabulary)))]])
                continue
            # A substitution draws among the other words of the vocabulary, so it is always an error.
            own = vocabulary.index(word)
            drawn = int(rng.integers(max(len(vocabulary) - 1, 1)))
            result.append(vocabulary[drawn + 1 if drawn >= own and len(vocabulary) > 1 else drawn])
        out.append(" ".join(result))
    return AsrErrors(
        transcripts=out,
        substitutions=counts["substitution"],
        deletions=counts["deletion"],
        insertions=counts["insertion"],
        reference_words=reference,
    )


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`clean` plus `noise` (same length) scaled to `snr_db`; clean itself for inf or a silent clip."""
    if snr_db == math.inf:
        return clean
    clean_power = float(np.mean(clean.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    if clean_power == 0 or noise_power == 0:
        return clean
    scale = math.sqrt(clean_power / (noise_power * 10 ** (snr_db / 10)))
    return (clean + scale * noise).astype(np.float32)


def _looped(samples: np.ndarray, length: int) -> np.ndarray:
    return np.resize(samples, length) if samples.size else np.zeros(length, np.float32)


class NoiseMaker:
    """Noise for one clip at one sample rate: white, or babble from other utterances of the split.

    `decode(key, sample_rate)` gives another utterance's clean waveform (for babble); babble talkers
    are decoded once per sample rate and kept.
    """

    def __init__(
        self, perturbation: Perturbation, pool_keys: Sequence[str], decode: Callable[[str, int], np.ndarray]
    ):
        self.perturbation = perturbation
        self.decode = decode
        pool = sorted(pool_keys)
        chosen = np.random.default_rng(perturbation.seed).permutation(len(pool))[:BABBLE_POOL]
        self.pool = [pool[i] for i in sorted(chosen)]
        self._talkers: dict[tuple[str, int], np.ndarray] = {}

    def _talker(self, key: str, sample_rate: int) -> np.ndarray:
        if (key, sample_rate) not in self._talkers:
            samples = self.decode(key, sample_rate).astype(np.float64)
            rms = math.sqrt(float(np.mean(samples**2))) if samples.size else 0.0
            self._talkers[(key, sample_rate)] = samples / rms if rms > 0 else samples
        return self._talkers[(key, sample_rate)]

    def noise(self, key: str, length: int, sample_rate: int) -> np.ndarray:
        """float32 [length] noise for the clip of utterance `key`."""
        rng = _generator(self.perturbation.seed, key)
        if self.perturbation.noise == "white":
            return rng.standard_normal(length).astype(np.float32)
        others = [other for other in self.pool if other != key]
        if not others:
            raise PerturbationError("babble noise needs other utterances in the split to talk over the clip")
        talkers = rng.choice(len(others), size=min(BABBLE_TALKERS, len(others)), replace=False)
        babble = sum(_looped(self._talker(others[i], sample_rate), length) for i in talkers)
        return np.asarray(babble, dtype=np.float32)

    def apply(self, key: str, clean: np.ndarray, sample_rate: int) -> np.ndarray:
        """The clip with its noise mixed in at the perturbation's SNR."""
        if self.perturbation.snr_db == math.inf:
            return clean
        return mix_at_snr(clean, self.noise(key, clean.size, sample_rate), self.perturbation.snr_db)
