"""`cmroberta reproduce`: the paper's experiment in one command, on a small corpus in MELD's layout made here
(the demo corpus generator, a tiny text encoder, OpenL3 with random weights), through Submitit's local
executor and, where one answers, the SLURM cluster."""

import csv
import json
from pathlib import Path

import pytest

from launch.cli import main
from model.run_folder import RunFolder
from tests.demo_corpora import corpus_text_encoder, write_wav_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reproduce") / "corpus"
    return write_wav_corpus(folder, train=8, dev=3, test=4, min_utterances=3, max_utterances=5)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, corpus) -> Path:
    return corpus_text_encoder(corpus, tmp_path_factory.mktemp("tiny"), hidden_size=8)


def small_plan(tiny_encoder: Path) -> list[str]:
    """Settings that make the paper's plan small: the tiny encoder, random OpenL3, a small head, 2 epochs."""
    extract = [
        f"text.model={tiny_encoder}", "openl3.weights=random", "openl3.input_repr=mel128", "openl3.embedding_size=512",
        "openl3.hop_seconds=1.0", "ray.num_workers=2", "shard_dialogues=4",
    ]  # fmt: skip
    train = [
        "train.max_epochs=2", "model.hidden_size=8", "train.batch_dialogues=4", "finetune.max_epochs=1",
        "finetune.engine.zero_stage=0",
    ]  # fmt: skip
    return [*(f"--extract={item}" for item in extract), *(f"--train={item}" for item in train)]


def test_the_dry_run_lists_every_stage_and_job_and_starts_nothing(corpus, tiny_encoder, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["reproduce", str(corpus), "--out", str(out), "--seeds", "0-1", "--robustness", "audio_missing"]
    assert main([*arguments, *small_plan(tiny_encoder), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    stages = {line.split("  ")[0]: line for line in printed.splitlines()}
    # Table 1's three text variants in two head modes and the audio model on three family sets, 2 seeds each;
    # the fine-tuned text runs (one per seed), then the fine-tuned bimodal ones.
    assert "18 runs (0 done): 2 local queue job(s)" in stages["sweep"]
    assert "2 runs (0 done): 1 local queue job(s)" in stages["finetune encoders"]
    assert "4 runs (0 done): 2 local queue job(s)" in stages["finetuned heads"]
    assert "1 extraction job" in stages["extract"] and "1 evaluation job" in stages["robustness"]
    assert stages["report"].split()[1:3] == ["extract,", "sweep,"]
    for command in ("cmroberta prepare", "cmroberta launch extract", "cmroberta sweep --seeds 0,1", "cmroberta report"):
        assert command in printed
    assert "preset `recommended`" in printed and "train.max_epochs differs from the paper" in printed
    assert printed.rstrip().endswith("dry run: nothing was submitted")
    assert not out.exists(), "a dry run writes nothing"


def test_a_corpus_that_would_invalidate_the_run_is_refused_in_one_line(corpus, tmp_path, capsys):
    broken = tmp_path / "corpus"
    broken.mkdir()
    for item in corpus.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "test_sent_emo.csv").unlink()
    header = (corpus / "test_sent_emo.csv").read_text(encoding="utf-8").splitlines()[0]
    (broken / "test_sent_emo.csv").write_text(header + "\n", encoding="utf-8")
    assert main(["reproduce", str(broken), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "test split has no utterances" in error


@pytest.mark.integration
def test_a_failed_stage_stops_its_dependants_and_names_the_job_and_its_log(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["reproduce", str(corpus), "--out", str(out), "--seeds", "0", "--extract=text.model=/no/such/encoder"]
    assert main([*arguments, "--extract=ray.num_workers=1"]) == 1
    printed = capsys.readouterr().out
    assert "extract: job" in printed and "failed" in printed and str(out / "logs" / "extract") in printed
    assert "sweep: not started, because extract failed" in printed
    assert "report: not started" in printed
    assert not (out / "sweep").exists()


@pytest.mark.integration
def test_the_one_command_runs_to_tables_1_2_and_3_and_a_second_call_trains_nothing(
    corpus, tiny_encoder, tmp_path, capsys
):
    out = tmp_path / "out"
    # The other text modes are planned as the dry run shows and trained by tests of their own (test_end_to_end,
    # test_finetune_text); the frozen mode alone keeps this test to 12 runs on 2 cores.
    arguments = ["reproduce", str(corpus), "--out", str(out), "--seeds", "0-1", "--text-modes", "frozen"]
    assert main([*arguments, *small_plan(tiny_encoder)]) == 0
    printed = capsys.readouterr().out
    assert "sweep: 12 runs: 0 finished already" in printed
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert report.splitlines()[2].startswith("Settings: preset `recommended`")
    for title in ("Table 1: weighted F1", "Table 2: per-class F1", "Table 3: the audio model"):
        assert title in report
    with open(out / "report" / "table3.csv", newline="", encoding="utf-8") as stream:
        table3 = {row["audio features"]: row for row in csv.DictReader(stream)}
    assert [row["paper"] for row in table3.values()] == ["37.3000", "41.3000", "43.1000"]
    assert all(row["seeds"] == "2" for row in table3.values())
    with open(out / "report" / "table1.csv", newline="", encoding="utf-8") as stream:
        table1 = [row["model"] for row in csv.DictReader(stream)]
    assert {"CM-RoBERTa", "CM-RoBERTa without SCA unit", "paper: CM-RoBERTa"} <= set(table1)
    finished = sorted((out / "sweep" / "runs").glob(f"*/{RunFolder(out).test_metrics_path.name}"))
    assert len(finished) == 12
    before = {path: path.stat().st_mtime_ns for path in finished}
    attempts = {path: (path.parent / "attempts.jsonl").read_text() for path in finished}

    assert main([*arguments, *small_plan(tiny_encoder)]) == 0
    printed = capsys.readouterr().out
    assert "extract: reusing the complete feature store" in printed
    assert "sweep: 12 runs: 12 finished already (reused from their hash-keyed folders), 0 submitted" in printed
    assert {path: path.stat().st_mtime_ns for path in finished} == before, "nothing trained again"
    assert {path: (path.parent / "attempts.jsonl").read_text() for path in finished} == attempts, "no job started"
    assert json.loads((out / "sweep" / "preset.json").read_text())["preset"] == "recommended"


@pytest.mark.slurm
@pytest.mark.integration
@pytest.mark.usefixtures("slurm_cluster")
def test_on_the_slurm_cluster_a_minimal_plan_runs_end_to_end(corpus, tiny_encoder, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["reproduce", str(corpus), "--out", str(out), "--seeds", "0", "--text-modes", "frozen"]
    minimal = [*small_plan(tiny_encoder), "--train=train.max_epochs=1"]
    assert main([*arguments, *minimal, "--cluster", "slurm", "--profile-set", "time=15"]) == 0
    printed = capsys.readouterr().out
    assert "sweep: 6 runs: 0 finished already (reused from their hash-keyed folders), 6 submitted in 6 job" in printed
    report = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "Table 1: weighted F1" in report and "Table 3: the audio model" in report
    submissions = [json.loads(path.read_text()) for path in (out / "sweep" / "runs").glob("*/submission.json")]
    assert len(submissions) == 6 and all(record["cluster"] == "slurm" for record in submissions)
    assert len(list((out / "sweep" / "runs").glob(f"*/{RunFolder(out).test_metrics_path.name}"))) == 6
