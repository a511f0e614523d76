"""Perturbation specs, the ASR error simulation, noise at a given SNR, and modality dropout's masks."""

import math
import re

import numpy as np
import pytest
import torch

from model.fusion import FusionConfig, ModalityDropout, build_fusion_model
from model.perturb import (
    ASR_ERROR_SHARES,
    NoiseMaker,
    PerturbationError,
    mix_at_snr,
    parse_perturbation,
    simulate_asr_errors,
)


def test_specs_parse_and_name_their_condition():
    assert parse_perturbation("audio_missing").missing == "audio"
    noise = parse_perturbation("audio_noise:noise=babble,snr_db=5,seed=2")
    assert (noise.noise, noise.snr_db, noise.seed, noise.changes_audio) == ("babble", 5.0, 2, True)
    assert noise.condition == "audio_noise-babble-5db"
    asr = parse_perturbation("text_asr:wer=0.3")
    assert asr.condition == "text_asr-wer0.3" and asr.describe() == "text at 30% WER"
    assert parse_perturbation("audio_noise:snr_db=inf").snr_db == math.inf


@pytest.mark.parametrize("spec, message", [
    ("audio_gone", "unknown perturbation"),
    ("audio_noise:noise=white", "needs snr_db"),
    ("text_asr:wer=1.5", "within [0, 1]"),
    ("text_asr:wer=abc", "must be a number"),
    ("text_missing:wer=0.1", "text_missing takes seed"),
    ("audio_noise:noise=pink,snr_db=3", "white or babble"),
])
def test_bad_specs_say_what_is_accepted(spec, message):
    with pytest.raises(PerturbationError, match=re.escape(message)):
        parse_perturbation(spec)


def _transcripts(n=400):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    return [f"u{i}" for i in range(n)], [" ".join(rng.choice(words, 8)) for _ in range(n)]


def test_asr_errors_reach_the_target_rate_in_the_stated_proportions():
    keys, texts = _transcripts()
    errors = simulate_asr_errors(keys, texts, wer=0.3, seed=1)
    assert errors.wer == pytest.approx(0.3, abs=0.03)
    total = errors.substitutions + errors.deletions + errors.insertions
    assert errors.substitutions / total == pytest.approx(ASR_ERROR_SHARES["substitution"], abs=0.05)
    assert errors.deletions / total == pytest.approx(ASR_ERROR_SHARES["deletion"], abs=0.05)
    changed = sum(a != b for a, b in zip(texts, errors.transcripts))
    assert changed > 0.8 * len(texts)
    # Word counts follow the errors: N - D + I.
    words = sum(len(t.split()) for t in errors.transcripts)
    assert words == errors.reference_words - errors.deletions + errors.insertions


def test_asr_errors_are_seeded_per_utterance_and_zero_changes_nothing():
    keys, texts = _transcripts(50)
    once = simulate_asr_errors(keys, texts, wer=0.2, seed=4).transcripts
    assert simulate_asr_errors(keys, texts, wer=0.2, seed=4).transcripts == once
    assert simulate_asr_errors(keys, texts, wer=0.2, seed=5).transcripts != once
    assert simulate_asr_errors(keys, texts, wer=0.0, seed=4).transcripts == texts


def test_noise_is_mixed_at_the_asked_snr():
    rng = np.random.default_rng(0)
    clean = (0.3 * np.sin(np.linspace(0, 300, 16000))).astype(np.float32)
    noise = rng.standard_normal(16000).astype(np.float32)
    for snr in (-5.0, 0.0, 10.0):
        mixed = mix_at_snr(clean, noise, snr)
        residual = (mixed - clean).astype(np.float64)
        measured = 10 * math.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(residual**2))
        assert measured == pytest.approx(snr, abs=1e-3)
    assert mix_at_snr(clean, noise, math.inf) is clean


def test_babble_talks_over_a_clip_from_other_utterances_only():
    voices = {f"k{i}": np.full(100, float(i + 1), np.float32) for i in range(6)}
    decoded = []

    def decode(key, rate):
        decoded.append(key)
        return voices[key]

    maker = NoiseMaker(parse_perturbation("audio_noise:noise=babble,snr_db=0"), list(voices), decode)
    babble = maker.noise("k0", 250, 16000)
    # Each talker is scaled to unit RMS; k0's own voice (all ones) is never among them.
    assert babble.shape == (250,) and np.allclose(babble, 4.0)
    assert "k0" not in decoded
    maker.noise("k1", 250, 16000)
    assert len(decoded) == len(set(decoded))  # talkers are decoded once


def test_modality_dropout_never_drops_both_and_drops_at_its_rate():
    torch.manual_seed(0)
    dropout = ModalityDropout(0.4).train()
    mask = torch.ones(200, 50, dtype=torch.bool)
    keep = dropout.keep_masks(mask)
    audio, text = keep["audio"].squeeze(-1), keep["text"].squeeze(-1)
    assert bool((audio | text).all())
    # P(drop audio) = p - p²/2: both drawn (p²) keeps one of the two at random.
    assert float((~audio).float().mean()) == pytest.approx(0.4 - 0.08, abs=0.02)
    assert float((~text).float().mean()) == pytest.approx(0.4 - 0.08, abs=0.02)
    dropout.eval()
    assert dropout.keep_masks(mask) == {"audio": None, "text": None}
    dropout.absent = frozenset({"audio"})
    x = torch.ones(200, 50, 3)
    masked_audio, same_text = dropout(x, x, mask)
    assert bool((masked_audio == 0).all()) and same_text is x


def test_modality_dropout_is_a_bimodal_option_without_parameters():
    with pytest.raises(ValueError, match="needs two modalities"):
        FusionConfig(variant="text", modality_dropout=0.2)
    with pytest.raises(ValueError, match="within"):
        FusionConfig(modality_dropout=1.0)
    plain = build_fusion_model(FusionConfig(hidden_size=8), 6, 8)
    robust = build_fusion_model(FusionConfig(hidden_size=8, modality_dropout=0.3), 6, 8)
    assert plain.state_dict().keys() == robust.state_dict().keys()
    # In evaluation the dropout does nothing: same weights, same logits.
    robust.load_state_dict(plain.state_dict())
    audio, text, mask = torch.randn(2, 4, 6), torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    assert torch.equal(plain.eval()(audio, text, mask), robust.eval()(audio, text, mask))
    robust.modality_dropout.absent = frozenset({"text"})
    assert torch.equal(robust(audio, text, mask), plain(audio, torch.zeros_like(text), mask))
