"""The IEMOCAP reader and `prepare` on a folder in IEMOCAP's layout that the tests write (tests/iemocap_layout.py).

Every expected count below is read off the fixture's table by hand: which turns are both
evaluated and transcribed, which labels each protocol keeps, and which dialogue the dev rule
picks (the smallest SHA-256 of '0:<name>' among the train dialogues, stated beside each case).
"""

import hashlib
import os

import pytest

from extract.corpus import CorpusError
from extract.iemocap import ERC6_LABELS, SER4_LABELS, IemocapConfig, carve_dev, read_iemocap
from launch.cli import main
from tests.iemocap_layout import MALFORMED_EVALUATION, NONCONFORMING_TRANSCRIPTION, write_iemocap


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    return write_iemocap(tmp_path_factory.mktemp("IEMOCAP_full_release"))


def folder_state(root):
    """Every file and folder under root with its size and modification time, to show nothing was written."""
    return {
        path: (os.stat(path).st_size, os.stat(path).st_mtime_ns)
        for path in [root, *root.rglob("*")]
    }


def table_rows(printed: str) -> dict[str, list[str]]:
    """The count table `prepare` prints, by its first cell (header and the three splits)."""
    rows = {}
    for line in printed.splitlines():
        cells = line.split()
        if cells and cells[0] in ("split", "train", "dev", "test"):
            rows.setdefault(cells[0], cells)
    return rows


ERC6_FLAGS = [
    ("Ses01F_impro01_MXX0", "not_evaluated"),
    ("Ses01F_impro01_F002", "not_transcribed"),
    ("Ses01F_impro01_M001", "missing"),
    ("Ses05F_impro01_M000", "corrupt"),
]


def test_prepare_erc6_counts_flags_and_writes_nothing(iemocap, capsys):
    before = folder_state(iemocap)
    assert main(["prepare", str(iemocap)]) == 0
    printed = capsys.readouterr().out
    assert folder_state(iemocap) == before
    rows = table_rows(printed)
    # Dev is Ses01M_script01_1 (exc, sad; sur dropped). Train: Ses01F_impro01 (neu, fru, ang; xxx dropped,
    # F002 and MXX0 incomplete) and Ses01F_impro02 (neu, hap). Test: Session 5 (ang, neu, exc, sad, hap; fea dropped).
    assert rows["split"] == ["split", "utterances", "dialogues", *ERC6_LABELS.labels]
    assert rows["train"] == ["train", "5", "2", "1", "0", "2", "1", "0", "1"]
    assert rows["dev"] == ["dev", "2", "1", "0", "1", "0", "0", "1", "0"]
    assert rows["test"] == ["test", "5", "2", "1", "1", "1", "1", "1", "0"]
    assert "protocol erc6; dev is the 1 of the 3 train dialogues" in printed
    assert "outside the label set: fea 1, sur 1, xxx 1 (dropped)" in printed
    assert "4 flagged turn(s)" in printed
    for turn, kind in ERC6_FLAGS:
        assert any(line.split()[:2] == [turn, kind] for line in printed.splitlines()), (turn, kind)
    assert "2 line(s) or file(s) skipped" in printed
    for path, line, _ in (NONCONFORMING_TRANSCRIPTION, MALFORMED_EVALUATION):
        assert f"{path} line {line}: " in printed


def test_erc6_records_ids_order_speakers_and_transcripts(iemocap):
    corpus = read_iemocap(iemocap)
    assert [(flag.key, flag.kind) for flag in corpus.flags] == ERC6_FLAGS
    # Dialogue ids are positions in the sorted dialog names; utterance ids count by start time before the
    # protocol drops a turn, so the dropped xxx turn F001 leaves a gap at 2.
    impro01 = [u for u in corpus.utterances if u.dialogue_id == 0]
    assert corpus.dialogue_names[("train", 0)] == "Ses01F_impro01"
    assert [(u.utterance_id, corpus.turn_names[u.key], u.speaker, u.emotion) for u in impro01] == [
        (0, "Ses01F_impro01_F000", "Ses01F", "neutral"),
        (1, "Ses01F_impro01_M000", "Ses01M", "frustrated"),
        (3, "Ses01F_impro01_M001", "Ses01M", "angry"),
    ]
    tagged = impro01[1]
    assert tagged.transcript_raw == "[LAUGHTER] Not now, please."
    assert tagged.transcript == "Not now, please."
    assert tagged.media_path.endswith("Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav")
    assert (tagged.start_time, tagged.end_time) == (2.5, 3.5)
    assert impro01[2].media_path is None  # its wav is missing: text only
    assert {u.sentiment for u in corpus.utterances} == {""}


def test_keep_unscored_keeps_other_labels_as_context_without_a_label(iemocap, capsys):
    corpus = read_iemocap(iemocap, IemocapConfig(keep_unscored=True))
    unscored = sorted(corpus.turn_names[u.key] for u in corpus.utterances if u.label is None)
    assert unscored == ["Ses01F_impro01_F001", "Ses01M_script01_1_M001", "Ses05F_impro01_M001"]
    assert [u.utterance_id for u in corpus.utterances if u.dialogue_id == 0] == [0, 1, 2, 3]
    assert main(["prepare", str(iemocap), "keep_unscored=true"]) == 0
    printed = capsys.readouterr().out
    assert "outside the label set: fea 1, sur 1, xxx 1 (kept as unscored context)" in printed
    rows = table_rows(printed)
    assert rows["split"][-1] == "unscored"
    assert rows["train"] == ["train", "6", "2", "1", "0", "2", "1", "0", "1", "1"]
    assert rows["dev"] == ["dev", "3", "1", "0", "1", "0", "0", "1", "0", "1"]
    assert rows["test"] == ["test", "6", "2", "1", "1", "1", "1", "1", "0", "1"]


@pytest.mark.parametrize(
    "fold, expected",
    [
        # Test is Session 1: Ses01F_impro01 (neu, ang), Ses01F_impro02 (neu, hap), Ses01M_script01_1 (exc as happy,
        # sad). Of Session 5 the dev rule picks Ses05F_impro01 (ang, neu, exc as happy); train is Ses05M_script01_1.
        (1, {"train": ["2", "1", "0", "1", "1", "0"], "dev": ["3", "1", "1", "1", "0", "1"],
             "test": ["6", "3", "2", "2", "1", "1"]}),
        # Test is Session 5; of Session 1 the dev rule picks Ses01M_script01_1 as for erc6.
        (5, {"train": ["4", "2", "2", "1", "0", "1"], "dev": ["2", "1", "0", "1", "1", "0"],
             "test": ["5", "2", "1", "2", "1", "1"]}),
    ],
)
def test_prepare_ser4_fold_counts(iemocap, capsys, fold, expected):
    assert main(["prepare", str(iemocap), "protocol=ser4", f"fold={fold}"]) == 0
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    assert rows["split"] == ["split", "utterances", "dialogues", *SER4_LABELS.labels]
    for split, cells in expected.items():
        assert rows[split] == [split, *cells]
    assert f"protocol ser4 fold {fold};" in printed
    assert any(line.split()[:2] == ["Ses01F_impro01_M001", "missing"] for line in printed.splitlines())


def test_dev_rule_is_the_smallest_hashes():
    names = [f"Ses0{s}F_impro0{i}" for s in (1, 2) for i in range(1, 10)]
    dev, rule = carve_dev(names, 0.25, 7)
    # round(0.25 x 18) = 5 (4.5 rounds up), the five names with the smallest SHA-256 of '7:<name>'.
    assert dev == set(sorted(names, key=lambda n: hashlib.sha256(f"7:{n}".encode()).hexdigest())[:5])
    assert rule.startswith("dev is the 5 of the 18 train dialogues with the smallest SHA-256 of '7:<dialogue name>'")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["protocol=erc7"], "protocol"),
        (["fold=3"], "fold applies to protocol=ser4 only"),
        (["protocol=ser4", "fold=6"], "fold must be a session number 1-5"),
        (["protocol=ser4", "fold=3"], "has no Session3, the test session of protocol ser4 fold 3"),
        (["dev_fraction=1.0"], "dev_fraction must be between 0 and 1"),
    ],
)
def test_bad_protocol_keys_are_one_line(iemocap, capsys, overrides, message):
    assert main(["prepare", str(iemocap), *overrides]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


def test_a_folder_without_sessions_is_not_iemocap(tmp_path):
    (tmp_path / "Session9").mkdir()
    with pytest.raises(CorpusError, match="no Session1..Session5"):
        read_iemocap(tmp_path)
