"""A small formant speech synthesiser whose prosody carries emotion.

The demo corpus needs speech in which the voice alone tells some emotions apart, as
in the paper's Figure 1 ("Okay." said with a low voice and sobs reads as sad). Each
utterance is additive harmonic synthesis: a glottal source at a moving F0, harmonic
amplitudes shaped by three vowel formants, aspiration noise, and noise bursts for
consonants. The emotion sets the cues studied in the speech-emotion literature: pitch
level and range, contour shape, loudness, speaking rate, and voice quality (spectral
tilt for pressed or soft voice, breath noise, jitter, tremor, creak). Only numpy:
a system text-to-speech package is not available on every machine.
"""

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000

# Formants (Hz) of the vowels syllables draw from: /a/, /i/, /u/, /e/, /o/, /ae/.
_VOWELS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410], [660, 1720, 2410]],
    dtype=np.float64,
)
_FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


@dataclass(frozen=True, kw_only=True)
class Prosody:
    """How an emotion colours the voice, relative to the speaker's neutral voice."""

    pitch_factor: float
    """Mean F0 as a multiple of the speaker's base F0."""
    pitch_range_semitones: float
    """Size of the pitch accents on stressed syllables."""
    final_contour_semitones: float
    """Pitch movement over the last syllable: positive rises (surprise), negative falls."""
    loudness_db: float
    """Level relative to neutral speech."""
    rate: float
    """Speaking rate as a multiple of neutral."""
    spectral_tilt: float
    """Harmonic roll-off exponent: low is a pressed, bright voice (anger), high a soft one (sadness)."""
    breathiness: float
    """Aspiration noise level relative to the voiced signal."""
    jitter: float
    """Cycle-to-cycle F0 irregularity, as a fraction of F0."""
    tremor_hz: float = 0.0
    """Rate of a slow F0 wobble (fear); 0 for none."""
    creak: float = 0.0
    """Strength of a subharmonic at F0/2 (creaky voice, disgust)."""


EMOTION_PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(pitch_factor=1.0, pitch_range_semitones=2.0, final_contour_semitones=-1.5, loudness_db=0.0,
                       rate=1.0, spectral_tilt=1.3, breathiness=0.03, jitter=0.004),
    "joy": Prosody(pitch_factor=1.3, pitch_range_semitones=6.0, final_contour_semitones=2.0, loudness_db=4.0,
                   rate=1.15, spectral_tilt=1.0, breathiness=0.03, jitter=0.004),
    "surprise": Prosody(pitch_factor=1.4, pitch_range_semitones=5.0, final_contour_semitones=8.0, loudness_db=3.0,
                        rate=1.0, spectral_tilt=1.1, breathiness=0.05, jitter=0.004),
    "anger": Prosody(pitch_factor=1.15, pitch_range_semitones=4.0, final_contour_semitones=-3.0, loudness_db=9.0,
                     rate=1.25, spectral_tilt=0.6, breathiness=0.02, jitter=0.015),
    "sadness": Prosody(pitch_factor=0.82, pitch_range_semitones=1.0, final_contour_semitones=-2.5, loudness_db=-7.0,
                       rate=0.7, spectral_tilt=2.0, breathiness=0.25, jitter=0.008),
    "fear": Prosody(pitch_factor=1.35, pitch_range_semitones=3.0, final_contour_semitones=1.0, loudness_db=-2.0,
                    rate=1.35, spectral_tilt=1.5, breathiness=0.15, jitter=0.01, tremor_hz=7.0),
    "disgust": Prosody(pitch_factor=0.88, pitch_range_semitones=3.0, final_contour_semitones=-6.0, loudness_db=1.0,
                       rate=0.8, spectral_tilt=1.2, breathiness=0.06, jitter=0.02, creak=0.6),
}


@dataclass(frozen=True, kw_only=True)
class Voice:
    """A speaker's neutral voice."""

    base_f0: float
    """Neutral mean F0 in Hz (about 100-130 for low voices, 190-230 for high ones)."""
    formant_scale: float
    """Vocal-tract length factor applied to every formant (shorter tracts have higher formants)."""


def _vary(prosody: Prosody, rng: np.random.Generator, amount: float) -> Prosody:
    """The same emotion said a little differently each time, so the voice cue is strong but not perfect."""
    jitter = lambda scale: float(rng.normal(0.0, scale * amount))  # noqa: E731 - local shorthand
    return Prosody(
        pitch_factor=prosody.pitch_factor * float(np.exp(jitter(0.08))),
        pitch_range_semitones=max(0.3, prosody.pitch_range_semitones + jitter(1.0)),
        final_contour_semitones=prosody.final_contour_semitones + jitter(1.5),
        loudness_db=prosody.loudness_db + jitter(2.0),
        rate=prosody.rate * float(np.exp(jitter(0.08))),
        spectral_tilt=max(0.3, prosody.spectral_tilt + jitter(0.15)),
        breathiness=max(0.0, prosody.breathiness * float(np.exp(jitter(0.3)))),
        jitter=max(0.0, prosody.jitter * float(np.exp(jitter(0.3)))),
        tremor_hz=prosody.tremor_hz,
        creak=prosody.creak,
    )


def count_syllables(text: str) -> int:
    """Vowel groups per word, at least one per word: a rough English syllable count."""
    total = 0
    for word in text.lower().split():
        groups, previous_vowel = 0, False
        for ch in word:
            vowel = ch in "aeiouy"
            groups += vowel and not previous_vowel
            previous_vowel = vowel
        total += max(1, groups) if any(ch.isalpha() for ch in word) else 0
    return max(1, total)


def synthesise(text: str, emotion: str, voice: Voice, rng: np.random.Generator, variation: float = 1.0) -> np.ndarray:
    """Speech-like audio (float32, mono, 16 kHz) for `text` said with `emotion` in `voice`."""
    prosody = _vary(EMOTION_PROSODY[emotion], rng, variation)
    n_syllables = count_syllables(text)
    syllable_s = rng.uniform(0.17, 0.23, n_syllables) / prosody.rate
    gap_s = rng.uniform(0.02, 0.06, n_syllables) / prosody.rate
    lead, tail = 0.15, 0.2
    total = int((lead + tail + syllable_s.sum() + gap_s.sum()) * SAMPLE_RATE)
    t = np.arange(total) / SAMPLE_RATE

    # Per-sample syllable index (-1 in pauses), and each syllable's vowel and accent.
    syllable_of = np.full(total, -1, dtype=np.int64)
    onsets = np.empty(n_syllables, dtype=np.int64)
    cursor = lead
    for i in range(n_syllables):
        start, stop = int(cursor * SAMPLE_RATE), int((cursor + syllable_s[i]) * SAMPLE_RATE)
        syllable_of[start:stop] = i
        onsets[i] = start
        cursor += syllable_s[i] + gap_s[i]
    vowels = rng.integers(0, len(_VOWELS), n_syllables)
    accents = rng.uniform(-0.5, 1.0, n_syllables) * prosody.pitch_range_semitones

    # F0 contour in semitones around the emotion's mean: accents, declination, final movement.
    semitones = np.zeros(total)
    voiced = syllable_of >= 0
    semitones[voiced] = accents[syllable_of[voiced]]
    semitones = np.convolve(semitones, np.hanning(801) / np.hanning(801).sum(), mode="same")
    semitones -= 1.5 * t / t[-1]
    last_start = onsets[-1]
    ramp = np.clip((np.arange(total) - last_start) / max(1, total - last_start - int(tail * SAMPLE_RATE)), 0, 1)
    semitones += prosody.final_contour_semitones * ramp
    if prosody.tremor_hz:
        semitones += 0.8 * np.sin(2 * np.pi * prosody.tremor_hz * t)
    f0 = voice.base_f0 * prosody.pitch_factor * 2.0 ** (semitones / 12.0)
    f0 *= 1.0 + prosody.jitter * rng.standard_normal(total).cumsum() / np.sqrt(np.arange(1, total + 1))
    f0 *= 1.0 + prosody.jitter * rng.standard_normal(total)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE

    # Harmonic amplitudes: source roll-off times the vowel's formant envelope.
    formants = _VOWELS[vowels] * voice.formant_scale
    envelope_gain = np.zeros(total)
    signal = np.zeros(total)
    n_harmonics = int(4000 / f0.min())
    syllable_safe = np.maximum(syllable_of, 0)
    for k in range(1, n_harmonics + 1):
        freq = k * f0
        audible = freq < 7000
        resonance = np.zeros(total)
        for j in range(3):
            centre = formants[syllable_safe, j]
            resonance += 1.0 / (1.0 + ((freq - centre) / _FORMANT_BANDWIDTHS[j]) ** 2) * (0.8**j)
        amplitude = resonance * k ** (-prosody.spectral_tilt) * audible
        signal += amplitude * np.sin(k * phase)
    if prosody.creak:
        signal += prosody.creak * 0.3 * np.sin(0.5 * phase) * (1 + np.sin(phase))

    # Syllable loudness envelope: quick attack, slower decay; silence in pauses.
    for i in range(n_syllables):
        span = syllable_of == i
        n = int(span.sum())
        shape = np.minimum(1.0, np.linspace(0, 6, n)) * np.linspace(1.0, 0.6, n)
        envelope_gain[span] = shape * (1.0 + 0.3 * accents[i] / max(1.0, prosody.pitch_range_semitones))
    envelope_gain = np.convolve(envelope_gain, np.ones(80) / 80, mode="same")
    signal *= envelope_gain
    signal /= np.sqrt(np.mean(signal[voiced] ** 2)) + 1e-9

    # Breath noise rides on the voiced envelope; consonants are short bright noise bursts before syllables.
    noise = rng.standard_normal(total)
    bright = np.diff(noise, prepend=0.0)
    signal += prosody.breathiness * 3.0 * noise * envelope_gain
    burst = np.zeros(total)
    for onset in onsets:
        length = int(rng.uniform(0.02, 0.05) * SAMPLE_RATE)
        start = max(0, onset - length)
        burst[start:onset] = np.hanning(onset - start) if onset > start else 0
    signal += 0.4 * bright * burst * rng.uniform(0.3, 1.0)

    level = 0.06 * 10.0 ** (prosody.loudness_db / 20.0)
    out = level * signal / (np.sqrt(np.mean(signal**2)) + 1e-9)
    out += 0.002 * rng.standard_normal(total)  # room noise, so silence is never digital zero
    return np.clip(out, -0.99, 0.99).astype(np.float32)
