"""Counts, ids and specs from the command line are bounded and validated before anything is allocated or run.

The hang case runs `cmroberta sweep` in a child process with a deadline, so that a regression is a
recorded hang and a failed test, never a test run that does not end. The others call the CLI in
process: each refusal comes before any run folder, store or model is touched, so none exists here.
"""

import json
import subprocess
import sys

import pytest

from launch.cli import main
from tests.faults.fault_summary import record_case

# Importing torch, DeepSpeed and the CLI takes about 10 s on the loaded 2-core build machine; a refusal
# of the seed range takes milliseconds after that. 120 s is far above both and far below the old hang.
SWEEP_DEADLINE_S = 120


def refusal(argv, capsys) -> tuple[int, list[str], str]:
    status = main([str(word) for word in argv])
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("cmroberta ")], err


def test_a_huge_seed_range_is_refused_at_once(tmp_path):
    """Before: `sweep --seeds 0-99999999` printed nothing for 120 s and grew to 8.6 GB before it was killed."""
    argv = [sys.executable, "-m", "launch.cli", "sweep", "--seeds", "0-99999999", "--out", str(tmp_path / "sweep"),
            f"store={json.dumps(str(tmp_path / 'store'))}"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=SWEEP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        record_case("sweep --seeds 0-99999999", traceback=False, silent=False, hang=True)
        pytest.fail(f"sweep --seeds 0-99999999 ran past {SWEEP_DEADLINE_S} s")
    record_case("sweep --seeds 0-99999999", traceback="Traceback" in result.stderr, silent=result.returncode == 0)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "cmroberta sweep: error: --seeds '0-99999999' asks for 100000000 seeds; a sweep takes at most 1000"
    )


def test_a_grid_of_too_many_runs_is_refused(tmp_path, capsys):
    sizes = ",".join(str(8 * k) for k in range(1, 12))
    status, lines, err = refusal(
        ["sweep", "--seeds", "0-999", "--grid", f"model.hidden_size={sizes}", "--out", tmp_path / "sweep",
         f"store={json.dumps(str(tmp_path / 'store'))}"],
        capsys,
    )
    record_case("sweep of 11000 runs", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    assert lines == [
        "cmroberta sweep: error: the grid and seeds make 11000 runs; a sweep takes at most 10000: split it into several"
    ]
    assert not (tmp_path / "sweep").exists()


def test_a_seed_past_int32_is_refused(tmp_path, capsys):
    argv = ["train", tmp_path / "store", "seed=2147483648", "--run-dir", tmp_path / "run"]
    status, lines, err = refusal(argv, capsys)
    record_case("train seed=2**31", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    assert len(lines) == 1 and "seed must be between 0 and 2147483647, not 2147483648" in lines[0]
    assert not (tmp_path / "run").exists()


BAD_IDS = {
    "two_to_the_31": (2**31, "dialogue_id must be between 0 and 2147483647, not 2147483648"),
    "negative": (-1, "dialogue_id must be between 0 and 2147483647, not -1"),
    "fraction": (1.2, "dialogue_id must be a whole number, not 1.2"),
    "boolean": (True, "dialogue_id must be a whole number, not True"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDS))
def test_a_predict_id_out_of_range_or_not_whole_is_refused(tmp_path, capsys, case):
    """Before: 2**31 was an OverflowError traceback; 1.2 and true became 1; -1 was taken."""
    value, expected = BAD_IDS[case]
    rows = tmp_path / "utterances.jsonl"
    row = {"dialogue_id": value, "utterance_id": 0, "speaker": "Joey", "transcript": "Hi.", "audio": "a.wav"}
    rows.write_text(json.dumps(row) + "\n")
    status, lines, err = refusal(["predict", tmp_path / "run", rows, "--out", tmp_path / "labels.jsonl"], capsys)
    record_case(f"predict dialogue_id {case}", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    assert lines == [f"cmroberta predict: error: utterances.jsonl row 1: {expected}"]
    assert not (tmp_path / "labels.jsonl").exists()


def test_predict_out_naming_a_folder_is_refused(tmp_path, capsys):
    """Before: the whole prediction ran, then IsADirectoryError."""
    out = tmp_path / "labels"
    out.mkdir()
    status, lines, err = refusal(["predict", tmp_path / "run", tmp_path / "in.jsonl", "--out", out], capsys)
    record_case("predict --out FOLDER", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    assert lines == [f"cmroberta predict: error: --out {out} is a folder; name the predictions file, "
                     f"e.g. {out / 'labels.jsonl'}"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("audio_missing,seed=5", "write audio_missing[:seed=N]"),
        ("text_asr:wer=0.3,wer=0.5", "'text_asr:wer=0.3,wer=0.5' gives wer twice; give it once"),
    ],
)
def test_a_perturbation_spec_is_read_as_its_usage_says(tmp_path, capsys, spec, expected):
    """Before: the usage offered `,seed=N` after the name, which it then refused; a key twice kept the last."""
    status, lines, err = refusal(["evaluate", tmp_path / "run", "--perturb", spec], capsys)
    record_case(f"--perturb {spec}", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    assert len(lines) == 1 and expected in lines[0]
