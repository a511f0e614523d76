"""Hostile and damaged CSV rows: each is skipped with one message naming file, line and field.

Every case writes a real CSV in MELD's layout and reads it with the real reader; the good
rows around the bad one must survive.
"""

import csv
from pathlib import Path

import pytest

from extract.meld import CSV_COLUMNS, CSV_NAMES, CorpusError, read_meld

GOOD = ["1", "Hello there.", "Ross", "neutral", "neutral", "0", "0", "1", "2", "00:00:01,000", "00:00:02,000"]


def write_rows(root: Path, rows: list[list[str]], header: tuple[str, ...] = CSV_COLUMNS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / CSV_NAMES["train"], "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return root


def changed(**fields: str) -> list[str]:
    row = list(GOOD)
    row[CSV_COLUMNS.index("Utterance_ID")] = "1"
    for name, value in fields.items():
        row[CSV_COLUMNS.index(name.replace("__", " "))] = value
    return row


def read_train(root: Path):
    return read_meld(root, splits=("train",), check_clips=False)


BAD_ROWS = {
    "dialogue id not a number": (changed(Dialogue_ID="abc"), "field Dialogue_ID: 'abc' is not a whole number"),
    "dialogue id 2**31": (changed(Dialogue_ID=str(2**31)), "field Dialogue_ID: 2147483648 is outside 0..2147483647"),
    "utterance id 20 digits": (
        changed(Utterance_ID="12345678901234567890"),
        "field Utterance_ID: 12345678901234567890 is outside 0..2147483647",
    ),
    "negative dialogue id": (changed(Dialogue_ID="-1"), "field Dialogue_ID: -1 is outside 0..2147483647"),
    "season overflows": (changed(Season="99999999999"), "field Season: 99999999999 is outside"),
    "episode not a number": (changed(Episode="two"), "field Episode: 'two' is not a whole number"),
    "unknown emotion": (changed(Emotion="happiness"), "field Emotion: unknown emotion 'happiness'"),
    "unknown sentiment": (changed(Sentiment="meh"), "field Sentiment: unknown sentiment 'meh'"),
    "bad start time": (changed(StartTime="1:2:3"), "field StartTime: timestamp '1:2:3' is not of the form"),
    "bad end time": (changed(EndTime=""), "field EndTime: timestamp '' is not of the form"),
    "NUL in transcript": (changed(Utterance="Oh\x00my"), "field Utterance holds control characters (U+0000)"),
    "escape in transcript": (changed(Utterance="\x1b[31mred"), "field Utterance holds control characters (U+001B)"),
    "C1 control in transcript": (changed(Utterance="x\x85y"), "field Utterance holds control characters (U+0085)"),
    "NUL in speaker": (changed(Speaker="Ro\x00ss"), "field Speaker holds control characters (U+0000)"),
    "row ends at Speaker": (changed()[:3], "the row has 3 fields, the header 11: field Emotion and after are missing"),
    "row with an extra field": (
        changed() + ["extra"],
        "the row has 12 fields, the header 11: a field has an unquoted comma",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_is_skipped_with_its_file_line_and_field(tmp_path, case):
    bad, message = BAD_ROWS[case]
    root = write_rows(tmp_path / "corpus", [GOOD, bad])
    corpus = read_train(root)
    assert [u.key for u in corpus.utterances] == ["train/dia0_utt0"]
    assert len(corpus.row_errors) == 1
    error = corpus.row_errors[0]
    assert error.startswith("train_sent_emo.csv line 3: ") and error.endswith("; the row was skipped")
    assert message in error
    assert "\n" not in error


def test_a_quoted_multi_line_transcript_keeps_its_line_break_and_later_lines_are_counted(tmp_path):
    spanning = changed(Utterance="First line,\nsecond line.")
    after = changed(Utterance_ID="2", Emotion="nope")
    root = write_rows(tmp_path / "corpus", [GOOD, spanning, after])
    corpus = read_train(root)
    [_, multi] = corpus.utterances
    assert multi.transcript_raw == "First line,\nsecond line."
    assert multi.transcript == "First line, second line."
    # The bad row starts on line 5: the header, GOOD, and the two lines of the spanning row come first.
    assert corpus.row_errors == [
        "train_sent_emo.csv line 5: field Emotion: unknown emotion 'nope' "
        "(expected one of neutral, surprise, fear, sadness, joy, disgust, anger); the row was skipped"
    ]


def test_a_windows_line_ending_inside_a_quoted_transcript_survives(tmp_path):
    root = write_rows(tmp_path / "corpus", [GOOD, changed(Utterance="one\r\ntwo")])
    assert read_train(root).utterances[1].transcript_raw == "one\r\ntwo"


def test_an_unterminated_quote_is_named_by_line(tmp_path):
    root = write_rows(tmp_path / "corpus", [GOOD])
    with open(root / CSV_NAMES["train"], "a", encoding="utf-8") as stream:
        stream.write('2,"never closed,Ross\n')
    corpus = read_train(root)
    # The csv module reads to the end of the file for the closing quote: the row is one bad record.
    assert [u.key for u in corpus.utterances] == ["train/dia0_utt0"]
    assert corpus.row_errors == [
        "train_sent_emo.csv line 3: the row has 2 fields, the header 11: field Speaker and after are missing; "
        "the row was skipped"
    ]


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / CSV_NAMES["train"]).write_bytes((",".join(CSV_COLUMNS) + "\n1,caf\xe9\n").encode("latin-1"))
    with pytest.raises(CorpusError, match="is not UTF-8 .*re-export the file as UTF-8"):
        read_train(root)


def test_an_empty_file_is_one_clear_error(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / CSV_NAMES["train"]).write_text("", encoding="utf-8")
    with pytest.raises(CorpusError, match="lacks the MELD columns Sr No., Utterance"):
        read_train(root)


def test_prepare_names_the_row_with_a_nul_and_extraction_never_sees_it(tmp_path, capsys):
    from launch.cli import main

    root = write_rows(tmp_path / "corpus", [GOOD, changed(Utterance="Oh\x00my")])
    for split in ("dev", "test"):
        (root / CSV_NAMES[split]).write_bytes((root / CSV_NAMES["train"]).read_bytes())
    assert main(["prepare", str(root), "--no-check-clips"]) == 0
    out = capsys.readouterr().out
    assert "train_sent_emo.csv line 3: field Utterance holds control characters (U+0000)" in out
