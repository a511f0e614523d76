"""The MELD reader on a corpus built here with every defect the real archive has."""

import csv
from pathlib import Path

import numpy as np
import pytest

from extract.audio import encode_clip
from extract.meld import CLIP_FOLDERS, CSV_COLUMNS, CSV_NAMES, CorpusError, parse_timestamp, read_meld

RATE = 16000


def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)


def row(sr: int, text: str, emotion: str, dia: int, utt: int, start: str, end: str, sentiment: str = "neutral"):
    return [str(sr), text, "Ross", emotion, sentiment, str(dia), str(utt), "1", "2", start, end]


@pytest.fixture(scope="module")
def defect_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("meld")
    clips = {split: root / folder for split, folder in CLIP_FOLDERS.items()}
    for folder in clips.values():
        folder.mkdir()
    # train: dialogue 0 has a gap in its utterance ids (0, 1, 3); there is no dialogue 1.
    write_csv(
        root / CSV_NAMES["train"],
        [
            row(1, "You’re kidding…", "surprise", 0, 0, "00:14:38,127", "00:14:40,127", "positive"),
            row(2, "Fine—whatever.", "anger", 0, 1, "0:13:42,477", "0:13:43,477", "negative"),
            row(3, "Okay.", "neutral", 0, 3, "00:00:01,000", "00:00:02,000"),
            row(4, "Corrupt clip.", "neutral", 2, 0, "00:00:01,000", "00:00:02,000"),
            row(5, "Missing clip.", "joy", 2, 1, "00:00:01,000", "00:00:02,000", "positive"),
            row(6, "Cut wrongly.", "sadness", 2, 2, "00:00:01,000", "00:00:02,000", "negative"),
            row(7, "Bad label.", "happiness", 2, 3, "00:00:01,000", "00:00:02,000"),
            row(8, "Bad time.", "neutral", 2, 4, "1:2:3", "00:00:02,000"),
        ],
    )
    encode_clip(tone(2.0), RATE, clips["train"] / "dia0_utt0.mp4")
    encode_clip(tone(1.0), RATE, clips["train"] / "dia0_utt1.mp4")
    encode_clip(tone(1.0), RATE, clips["train"] / "dia0_utt3.wav")
    (clips["train"] / "dia2_utt0.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    encode_clip(tone(12.0), RATE, clips["train"] / "dia2_utt2.mp4")
    for name in ("dia2_utt3", "dia2_utt4"):
        encode_clip(tone(1.0), RATE, clips["train"] / f"{name}.mp4")

    write_csv(root / CSV_NAMES["dev"], [row(1, "Hi.", "joy", 5, 0, "00:00:01,000", "00:00:02,500", "positive")])
    encode_clip(tone(1.5), RATE, clips["dev"] / "dia5_utt0.mp4")

    # test: a clip and its final_videos_test twin; the twin matches the CSV's 3 s.
    write_csv(root / CSV_NAMES["test"], [row(1, "Twins.", "fear", 7, 0, "00:01:00,000", "00:01:03,000", "negative")])
    encode_clip(tone(9.0), RATE, clips["test"] / "dia7_utt0.mp4")
    encode_clip(tone(3.0), RATE, clips["test"] / "final_videos_testdia7_utt0.mp4")
    return root


def test_records_keyed_by_ids_not_rows(defect_corpus):
    corpus = read_meld(defect_corpus)
    train = corpus.dialogues("train")
    assert sorted(train) == [0, 2]
    assert [u.utterance_id for u in train[0]] == [0, 1, 3]
    assert [u.utterance_id for u in train[2]] == [0, 1, 2]
    assert len(corpus.split("dev")) == 1 and len(corpus.split("test")) == 1


def test_bad_rows_are_reported_and_skipped(defect_corpus):
    corpus = read_meld(defect_corpus)
    assert len(corpus.row_errors) == 2
    assert any("happiness" in e and "line 8" in e for e in corpus.row_errors)
    assert any("1:2:3" in e and "line 9" in e for e in corpus.row_errors)


def test_transcripts_normalised_and_original_kept(defect_corpus):
    first = read_meld(defect_corpus, check_clips=False).split("train")[0]
    assert first.transcript_raw == "You’re kidding…"
    assert first.transcript == "You're kidding..."
    assert first.start_time == pytest.approx(14 * 60 + 38.127)


def test_flags_for_each_defect(defect_corpus):
    corpus = read_meld(defect_corpus)
    flags = {key: [f.kind for f in fl] for key, fl in corpus.flags_by_key().items()}
    assert flags == {
        "train/dia2_utt0": ["corrupt"],
        "train/dia2_utt1": ["missing"],
        "train/dia2_utt2": ["duration_mismatch"],
        "test/dia7_utt0": ["twin_chosen"],
    }
    by_key = {u.key: u for u in corpus.utterances}
    assert by_key["train/dia2_utt0"].media_path is None
    assert by_key["train/dia2_utt1"].media_path is None
    assert by_key["train/dia2_utt2"].media_path.endswith("dia2_utt2.mp4")
    assert Path(by_key["test/dia7_utt0"].media_path).name == "final_videos_testdia7_utt0.mp4"
    assert Path(by_key["train/dia0_utt3"].media_path).suffix == ".wav"


def test_without_clip_checks_only_existence_is_flagged(defect_corpus):
    corpus = read_meld(defect_corpus, check_clips=False)
    assert [(f.key, f.kind) for f in corpus.flags] == [("train/dia2_utt1", "missing")]


def test_csvs_one_level_up(defect_corpus, tmp_path):
    clips_root = tmp_path / "MELD.Raw" / "clips"
    clips_root.mkdir(parents=True)
    for split, folder in CLIP_FOLDERS.items():
        (clips_root / folder).symlink_to(defect_corpus / folder)
        (tmp_path / "MELD.Raw" / CSV_NAMES[split]).symlink_to(defect_corpus / CSV_NAMES[split])
    corpus = read_meld(clips_root, check_clips=False)
    assert len(corpus.utterances) == 8


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="train_sent_emo.csv"):
        read_meld(tmp_path)


def test_wrong_columns_are_a_clear_error(tmp_path):
    (tmp_path / CSV_NAMES["train"]).write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="lacks the MELD columns"):
        read_meld(tmp_path, splits=("train",))


@pytest.mark.parametrize(
    "text, seconds", [("00:14:38,127", 878.127), ("0:13:42,477", 822.477), ("01:00:00,5", 3600.5)]
)
def test_parse_timestamp(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds)
