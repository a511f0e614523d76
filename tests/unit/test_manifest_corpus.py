"""The manifest corpus reader and `prepare` on a 4-label corpus the tests write (tests/manifest_layout.py)."""

import json
import os

import pytest

from extract.corpus import CorpusError
from extract.labels import EMOTIONS, MELD_EMOTIONS, LabelSet, UnknownLabelError, emotion_index
from extract.manifest_corpus import read_manifest_corpus
from launch.cli import main
from tests.manifest_layout import LABELS, write_manifest_corpus


def table_rows(printed: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in printed.splitlines() if line.split()[:1] in
            (["split"], ["train"], ["dev"], ["test"])}


def test_prepare_prints_the_four_label_columns(tmp_path, capsys):
    manifest = write_manifest_corpus(tmp_path / "corpus")
    assert main(["prepare", str(manifest.parent)]) == 0
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    assert "manifest: label set quad (neutral, happy, sad, angry)" in printed
    assert rows["split"] == ["split", "utterances", "dialogues", "neutral", "happy", "sad", "angry", "unscored"]
    assert rows["train"] == ["train", "5", "2", "1", "1", "1", "1", "1"]
    assert rows["dev"] == ["dev", "2", "1", "1", "1", "0", "0", "0"]
    assert rows["test"] == ["test", "2", "1", "0", "0", "1", "1", "0"]
    assert "1 flagged clip(s)" in printed and "audio/missing.wav (line 8) does not exist" in printed


def test_records_are_keyed_labelled_and_placed(tmp_path):
    manifest = write_manifest_corpus(tmp_path / "corpus")
    corpus = read_manifest_corpus(manifest)
    assert corpus.label_set == LabelSet(name="quad", labels=("neutral", "happy", "sad", "angry"))
    first = corpus.dialogues("train")[1]
    assert [(u.utterance_id, u.speaker, u.label) for u in first] == [(0, "Al", "happy"), (1, "Bo", "neutral"),
                                                                      (2, "Al", None)]
    assert first[0].media_path == str((tmp_path / "corpus" / "audio" / "d1_u0.wav").resolve())
    cut = corpus.dialogues("test")[4][0]
    assert (cut.start_time, cut.end_time) == (0.5, 1.5)
    assert corpus.dialogues("dev")[3][1].media_path is None
    assert corpus.row_errors == []


def test_every_bad_row_is_named_with_file_line_and_field(tmp_path):
    folder = tmp_path / "corpus"
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"RIFF")
    folder.mkdir()
    os.symlink(outside, folder / "link.wav")
    # The manifest's header is line 1 and ROWS fill lines 2-10, so these rows are lines 11 onwards.
    bad_rows = {
        11: (["train", "5", "0", "Al", "Hi.", "audio/d1_u0.wav", "", "", "joy"], "field label: unknown label 'joy'"),
        12: (["train", "5", "1", "Al", "Hi.", "../outside.wav", "", "", "sad"],
             "field audio: '../outside.wav' leads out"),
        13: (["train", "5", "2", "Al", "Hi.", "link.wav", "", "", "sad"], "field audio: 'link.wav' leads out"),
        14: (["train", "5", "3", "Al", "Hi.", str(outside), "", "", "sad"], "field audio: "),
        15: (["training", "5", "4", "Al", "Hi.", "", "", "", "sad"], "field split: 'training'"),
        16: (["train", "x", "5", "Al", "Hi.", "", "", "", "sad"], "field dialogue_id: 'x' is not a whole number"),
        17: (["train", "5", "6", "Al", "Hi.", "", "1.0", "", "sad"], "field end: empty while start is given"),
        18: (["train", "5", "7", "Al", "Hi.", "", "2.0", "1.0", "sad"], "field end: 1.0 is not after start 2.0"),
        19: (["train", "5", "8", "", "Hi.", "", "", "", "sad"], "field speaker is empty"),
        20: (["train", "5", "9", "Al", "Hi."], "the row has 5 fields, the header 9: field audio"),
        21: (["train", "1", "0", "Al", "Again.", "", "", "", "sad"], "train dialogue 1 utterance 0 appears twice"),
        22: (["train", "5", "10", "Al", "Hi.", "", "nan", "1.0", "sad"], "field start: 'nan' must be a finite"),
    }
    manifest = write_manifest_corpus(folder, [row for row, _ in bad_rows.values()])
    corpus = read_manifest_corpus(manifest)
    assert len(corpus.row_errors) == len(bad_rows)
    for error, (line, (_, message)) in zip(corpus.row_errors, bad_rows.items()):
        assert error.startswith(f"manifest.csv line {line}: {message}"), error
    assert "is absolute" in corpus.row_errors[3]
    assert len(corpus.utterances) == 9


@pytest.mark.parametrize(
    "labels_json, message",
    [
        (None, "no label set file"),
        ("{not json", "cannot be read as UTF-8 JSON"),
        (json.dumps({"labels": ["a", "b"]}), 'exactly the keys "name" and "labels"'),
        (json.dumps({"name": "q", "labels": ["sad", "sad"]}), "lists sad more than once"),
        (json.dumps({"name": "q", "labels": ["Sad", "happy"]}), "must be a non-empty lower-case name"),
    ],
)
def test_a_bad_label_set_file_is_one_line(tmp_path, capsys, labels_json, message):
    manifest = write_manifest_corpus(tmp_path / "corpus")
    if labels_json is None:
        (manifest.parent / "labels.json").unlink()
    else:
        (manifest.parent / "labels.json").write_text(labels_json)
    assert main(["prepare", str(manifest)]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_missing_columns_and_protocol_keys_are_refused(tmp_path, capsys):
    manifest = write_manifest_corpus(tmp_path / "corpus")
    assert main(["prepare", str(manifest), "protocol=ser4"]) == 2
    assert "is not an IEMOCAP release" in capsys.readouterr().err
    manifest.write_text("split,dialogue_id,utterance_id,speaker,transcript\ntrain,0,0,Al,Hi.\n")
    with pytest.raises(CorpusError, match="lacks the column\\(s\\) audio, label"):
        read_manifest_corpus(manifest)


def test_label_set_round_trips_and_meld_is_unchanged():
    quad = LabelSet.from_json(LABELS)
    assert LabelSet.from_json(json.loads(json.dumps(quad.to_json()))) == quad
    assert quad.index(" Angry ") == 3
    assert MELD_EMOTIONS.labels == EMOTIONS == ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
    assert [emotion_index(name) for name in EMOTIONS] == list(range(7))
    with pytest.raises(UnknownLabelError, match="^unknown emotion 'happy': expected one of neutral, surprise"):
        emotion_index("happy")
    with pytest.raises(UnknownLabelError, match="unknown label 'joy': expected one of neutral, happy, sad, angry"):
        quad.index("joy")
