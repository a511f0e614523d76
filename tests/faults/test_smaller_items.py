"""The audit's smaller items: each a one-line refusal, or a message that says what is true.

One real run is trained (frozen features, a tiny head) and copied for each case that damages it.
A run still training is stood for by holding its run folder's lock, exactly the lock `train` holds.
"""

import json
import shutil

import pytest

from cluster.durable_files import exclusive_lock
from extract.audio import decode_audio, encode_clip
from extract.demo_corpus import DemoCorpusConfig, write_demo_corpus
from extract.meld import read_meld
from launch.cli import main
from tests.faults.fault_summary import record_case
from tests.learnable_store import write_learnable_store
from tests.tiny_runs import TINY_HEAD

# A telephone band: what the narrowband flag is for.
NARROWBAND_HZ = 8000
MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"


def command(argv, capsys) -> tuple[int, list[str], str]:
    status = main([str(word) for word in argv])
    captured = capsys.readouterr()
    err = captured.err
    return status, [line for line in err.splitlines() if line.startswith("cmroberta ")], captured.out + err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = write_learnable_store(tmp_path_factory.mktemp("features") / "small-000000000000")
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(store), *TINY_HEAD, "--run-dir", str(run_dir)]) == 0
    return store, run_dir


@pytest.fixture
def run_copy(trained, tmp_path):
    _, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def test_prepare_on_header_only_csvs_is_refused(tmp_path, capsys):
    """Before: prepare printed a table of zeros and exited 0."""
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}_sent_emo.csv").write_text(MELD_HEADER)
    status, lines, printed = command(["prepare", tmp_path], capsys)
    record_case("prepare on header-only CSVs", traceback="Traceback" in printed, silent=status == 0)
    assert status == 2
    assert lines == [f"cmroberta prepare: error: the corpus at {tmp_path} has no utterances: its *_sent_emo.csv "
                     "files hold no rows; point prepare at a corpus with transcripts"]


@pytest.mark.integration
def test_report_on_metrics_of_the_wrong_shape_is_one_line(run_copy, capsys):
    """Before: report raised TypeError on a test_metrics.json whose per-class F1 was a list of strings."""
    path = run_copy / "test_metrics.json"
    record = json.loads(path.read_text())
    record["per_class_f1"] = ["high"] * 7
    path.write_text(json.dumps(record))
    status, lines, printed = command(["report", run_copy], capsys)
    record_case("report on a test_metrics.json of the wrong shape", traceback="Traceback" in printed,
                silent=status == 0)
    assert status == 2
    assert len(lines) == 1
    assert f"{path} is damaged: its per_class_f1 is missing or not what this project writes" in lines[0]


@pytest.mark.integration
def test_verify_calls_metrics_of_the_wrong_shape_damaged(run_copy, capsys):
    path = run_copy / "test_metrics.json"
    record = json.loads(path.read_text())
    record["weighted_f1"] = "64.0"
    path.write_text(json.dumps(record))
    status = main(["verify", str(run_copy)])
    out = capsys.readouterr().out
    record_case("verify a test_metrics.json of the wrong shape", traceback="Traceback" in out, silent=status == 0)
    assert status == 1
    assert f"{path} is damaged or does not match the selected checkpoint" in out


@pytest.mark.integration
def test_an_edited_hidden_size_is_one_line_not_a_page_of_size_mismatches(run_copy, capsys):
    """Before: evaluate printed 40 lines of torch's `size mismatch`."""
    config = run_copy / "config.toml"
    config.write_text(config.read_text().replace("hidden_size = 8", "hidden_size = 12"))
    status, lines, printed = command(["evaluate", run_copy], capsys)
    record_case("evaluate with an edited hidden_size", traceback="Traceback" in printed, silent=status == 0)
    assert status == 2
    assert len(lines) == 1
    assert "does not fit the model its config.toml describes" in lines[0]
    assert "restore the config.toml it was trained with, or train the run again" in lines[0]


@pytest.mark.integration
def test_verify_names_an_edited_hidden_size_in_one_problem_line(run_copy, capsys):
    """Before: verify said all is well of a run whose config.toml builds a model its weights do not fit."""
    config = run_copy / "config.toml"
    config.write_text(config.read_text().replace("hidden_size = 8", "hidden_size = 12"))
    status = main(["verify", str(run_copy)])
    out = capsys.readouterr().out.strip().splitlines()
    record_case("verify with an edited hidden_size", traceback="Traceback" in "\n".join(out), silent=status == 0)
    assert status == 1
    assert out[-1] == f"run {run_copy}: 1 problem(s)"
    assert len(out) == 2
    assert out[0].startswith(f"{run_copy}: checkpoint epoch-")
    assert "does not fit the model its config.toml describes" in out[0]
    assert "(such as model.hidden_size) was changed after training" in out[0]
    assert out[0].endswith("restore the config.toml it was trained with, or train the run again")


@pytest.mark.integration
def test_a_damaged_optimizer_file_of_a_finished_run_does_not_lose_the_model(run_copy, capsys):
    """Before: verify said "the run's selected model is lost", though the weights were whole and evaluate used them."""
    progress = json.loads((run_copy / "checkpoints" / "progress.json").read_text())
    rank_file = run_copy / "checkpoints" / progress["best"] / "rank-00000.pt"
    rank_file.write_bytes(b"not a torch file")
    status = main(["verify", str(run_copy)])
    out = capsys.readouterr().out
    record_case("verify a finished run with a damaged rank-00000.pt", traceback="Traceback" in out, silent=status == 0)
    assert status == 1
    assert "selected model is lost" not in out
    assert f"checkpoint {progress['best']}'s training state is damaged" in out
    assert "its weights are intact, and `evaluate` and `predict` use them" in out
    assert main(["evaluate", str(run_copy)]) == 0


@pytest.mark.integration
def test_scoring_a_run_that_is_still_training_is_refused_naming_the_trainer(run_copy, capsys):
    """Before: predict and evaluate --perturb took the intermediate checkpoint, without the lock or a word."""
    with exclusive_lock(run_copy, "run folder"):
        status, lines, printed = command(["evaluate", run_copy, "--perturb", "audio_missing"], capsys)
    record_case("evaluate --perturb on a run still training", traceback="Traceback" in printed, silent=status == 0)
    assert status == 2
    assert len(lines) == 1 and "run folder" in lines[0] and str(run_copy) in lines[0]
    assert not (run_copy / "robustness").exists()


@pytest.mark.integration
def test_a_second_sweep_on_the_same_folder_is_refused_naming_the_first(trained, tmp_path, capsys):
    """Before: a second `sweep --wait` saw the first one's runs as queued, returned at once and wrote report.md."""
    store, _ = trained
    sweep_dir = tmp_path / "sweep"
    with exclusive_lock(sweep_dir, "sweep folder"):
        status, lines, printed = command(
            ["sweep", "--seeds", "0", "--out", sweep_dir, "--wait", f"store={json.dumps(str(store))}", *TINY_HEAD],
            capsys,
        )
    record_case("a second sweep on one folder", traceback="Traceback" in printed, silent=status == 0)
    assert status == 2
    assert len(lines) == 1 and "sweep folder" in lines[0]
    assert not (sweep_dir / "report.md").exists()


def test_prepare_flags_a_narrowband_clip(tmp_path, capsys):
    """Before: 8 kHz clips moved many openSMILE features with no warning; prepare now flags each one."""
    corpus = write_demo_corpus(
        tmp_path / "corpus",
        DemoCorpusConfig(train_dialogues=1, dev_dialogues=1, test_dialogues=1, clip_format="wav", workers=1),
    )
    utterance = read_meld(corpus, check_clips=False).utterances[0]
    samples = decode_audio(utterance.media_path, NARROWBAND_HZ)
    encode_clip(samples, NARROWBAND_HZ, utterance.media_path)
    status, _, printed = command(["prepare", corpus], capsys)
    narrowband = [line for line in printed.splitlines() if "narrowband" in line]
    record_case("prepare on an 8 kHz clip", traceback="Traceback" in printed, silent=not narrowband)
    assert status == 0
    assert len(narrowband) == 1
    assert utterance.key in narrowband[0] and "sampled at 8000 Hz" in narrowband[0]
