"""The demo corpus: reproducible for a seed, in MELD's layout, read by the MELD reader, all seven labels."""

import hashlib
import json

import numpy as np
import pytest

from extract.audio import decode_audio
from extract.demo_corpus import AMBIGUOUS_LINES, DemoCorpusConfig, read_ambiguous_keys, write_demo_corpus
from extract.labels import EMOTIONS
from extract.meld import CLIP_FOLDERS, CSV_NAMES, read_meld
from extract.speech_synth import EMOTION_PROSODY, SAMPLE_RATE, Voice, synthesise

SMALL = dict(train_dialogues=14, dev_dialogues=3, test_dialogues=3, clip_format="wav")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return write_demo_corpus(tmp_path_factory.mktemp("demo"), DemoCorpusConfig(**SMALL))


@pytest.mark.integration
def test_meld_layout_and_readable(small_corpus):
    for split in CLIP_FOLDERS:
        assert (small_corpus / CSV_NAMES[split]).is_file()
        assert (small_corpus / CLIP_FOLDERS[split]).is_dir()
    corpus = read_meld(small_corpus)
    assert corpus.flags == [] and corpus.row_errors == []
    assert len(corpus.dialogues("train")) == 14
    assert set(corpus.dialogues("dev")) == {0, 1, 2}
    assert all(u.media_path for u in corpus.utterances)
    train_emotions = {u.emotion for u in corpus.split("train")}
    assert train_emotions == set(EMOTIONS)
    speakers_per_dialogue = [len({u.speaker for u in d}) for d in corpus.dialogues("train").values()]
    assert max(speakers_per_dialogue) >= 3


@pytest.mark.integration
def test_reproducible_for_a_seed(small_corpus, tmp_path):
    again = write_demo_corpus(tmp_path / "again", DemoCorpusConfig(**SMALL))
    for split in CLIP_FOLDERS:
        assert digest(small_corpus / CSV_NAMES[split]) == digest(again / CSV_NAMES[split])
    clip = "dia1_utt2.wav"
    assert digest(small_corpus / CLIP_FOLDERS["train"] / clip) == digest(again / CLIP_FOLDERS["train"] / clip)
    other = write_demo_corpus(tmp_path / "other", DemoCorpusConfig(**{**SMALL, "seed": 1}))
    assert digest(small_corpus / CSV_NAMES["train"]) != digest(other / CSV_NAMES["train"])


@pytest.mark.integration
def test_ambiguous_utterances_listed(small_corpus):
    corpus = read_meld(small_corpus, check_clips=False)
    ambiguous = read_ambiguous_keys(small_corpus)
    assert ambiguous == set(json.loads((small_corpus / "ambiguous.json").read_text()))
    by_key = {u.key: u for u in corpus.utterances}
    assert 0.15 < len(ambiguous) / len(by_key) < 0.45
    assert all(by_key[key].transcript in AMBIGUOUS_LINES for key in ambiguous)
    assert all(u.transcript not in AMBIGUOUS_LINES for key, u in by_key.items() if key not in ambiguous)


@pytest.mark.integration
def test_emotion_shares_imbalanced_like_meld(tmp_path):
    corpus = read_meld(
        write_demo_corpus(tmp_path, DemoCorpusConfig(**{**SMALL, "train_dialogues": 40})), check_clips=False
    )
    counts = corpus.emotion_counts("train")
    assert counts.most_common(1)[0][0] == "neutral"
    assert counts["neutral"] > 2 * counts["fear"] and counts["neutral"] > 2 * counts["disgust"]


def test_prosody_separates_emotions_on_one_sentence():
    """The voice carries emotion: loudness and pitch of 'Okay.' differ the way the prosody table says."""
    voice = Voice(base_f0=120.0, formant_scale=1.0)

    def mean_rms(emotion: str) -> float:
        return float(np.mean([np.sqrt(np.mean(synthesise("Okay.", emotion, voice, np.random.default_rng(s)) ** 2))
                              for s in range(5)]))

    def mean_duration(emotion: str) -> float:
        return float(np.mean([len(synthesise("Okay, I guess so.", emotion, voice, np.random.default_rng(s)))
                              for s in range(5)])) / SAMPLE_RATE

    assert mean_rms("anger") > 2 * mean_rms("neutral") > 2 * mean_rms("sadness")
    assert mean_duration("sadness") > mean_duration("neutral") > mean_duration("anger")
    assert set(EMOTION_PROSODY) == set(EMOTIONS)


@pytest.mark.integration
def test_mp4_clips_decode(tmp_path):
    corpus = write_demo_corpus(
        tmp_path, DemoCorpusConfig(train_dialogues=1, dev_dialogues=1, test_dialogues=1, max_utterances=4)
    )
    clip = next((corpus / CLIP_FOLDERS["train"]).glob("*.mp4"))
    audio = decode_audio(clip, 16000)
    assert len(audio) > 0.3 * 16000 and np.abs(audio).max() > 0.01


@pytest.mark.parametrize(
    "bad", [{"train_dialogues": 0}, {"min_utterances": 5, "max_utterances": 3}, {"ambiguous_share": 1.5}]
)
def test_bad_config_is_clear(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        DemoCorpusConfig(**bad)
