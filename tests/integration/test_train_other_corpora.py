"""`train`, `evaluate` and `predict` on corpora other than MELD: the run follows its store's label set.

Real Ray and openSMILE (the only family extracted, so the 'audio' variant trains), real DeepSpeed,
one epoch of a tiny head: what is under test is the label set reaching the model's width, the loss,
the metrics, the records and predict's columns, not what the model learns.
"""

import csv
import json
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from cluster.config import load_config
from cluster.ray_config import RayConfig
from cluster.ray_runtime import ray_session
from extract.extract_config import ExtractConfig
from extract.feature_store import FeatureStore
from extract.labels import NO_LABEL
from extract.pipeline import run_extraction
from launch.cli import main
from launch.report import report_tables
from launch.run_results import read_run_result
from launch.ser_table import ser_table
from model.run_config import RunConfig
from model.run_folder import RunFolder
from model.run_inputs import prepare_inputs
from model.run_store import run_label_set
from model.train import train
from tests.iemocap_layout import write_iemocap
from tests.manifest_layout import LABELS, write_manifest_corpus

pytestmark = pytest.mark.integration

# The smallest head that trains: one epoch, so the test runs in seconds; scores are not asserted.
RUN_OVERRIDES = [
    "model.variant=audio",
    "model.hidden_size=4",
    "model.feedforward_size=8",
    "model.classifier_hidden=8",
    "train.batch_dialogues=2",
    "train.max_epochs=1",
    "train.patience=1",
    "seed=3",
]


@pytest.fixture(scope="module")
def local_ray():
    with ray_session(RayConfig(num_workers=2)) as resources:
        yield resources


def _extract(corpus: Path, store_root: Path, overrides: list[str] = ()) -> FeatureStore:
    config = load_config(
        ExtractConfig,
        None,
        [f"corpus={corpus}", f"store_root={store_root}", 'families=["opensmile"]', "shard_dialogues=2",
         "ray.num_workers=2", *overrides],
    )
    return FeatureStore.open(run_extraction(config))


def _train(store: FeatureStore, run_dir: Path) -> dict:
    config = load_config(RunConfig, None, [*RUN_OVERRIDES, f"store={json.dumps(str(store.path))}"])
    # The model the run builds has one output per label of its store's set.
    assert prepare_inputs(config, ("test",)).model.classifier[-1].out_features == len(store.label_set)
    return train(config, run_dir)


def _assert_run_follows(store: FeatureStore, run_dir: Path, record: dict) -> None:
    labels = list(store.label_set.labels)
    assert record["emotions"] == labels and record["label_set"] == store.label_set.to_json()
    assert list(record["per_class_f1"]) == labels and list(record["support"]) == labels
    assert len(record["confusion"]) == len(labels) and all(len(row) == len(labels) for row in record["confusion"])
    assert record["majority_floor"]["label"] in labels
    # Only labelled test utterances are scored; one stored without a label stays out of every count.
    test_labels = store.read_split("test").emotion
    assert record["count"] == int((test_labels != NO_LABEL).sum())
    predictions = [json.loads(line) for line in RunFolder(run_dir).predictions_path("test").read_text().splitlines()]
    assert len(predictions) == record["count"]
    assert all(set(row) == {"key", "gold", "pred", *labels} for row in predictions)
    assert run_label_set(run_dir).labels == store.label_set.labels


def test_iemocap_erc6_trains_with_six_outputs(tmp_path, local_ray):
    store = _extract(write_iemocap(tmp_path / "IEMOCAP_full_release"), tmp_path / "stores")
    assert len(store.label_set) == 6
    record = _train(store, tmp_path / "run")
    _assert_run_follows(store, tmp_path / "run", record)


def test_a_four_label_manifest_corpus_trains_reports_and_predicts_with_four_columns(tmp_path, local_ray, capsys):
    store = _extract(write_manifest_corpus(tmp_path / "mine"), tmp_path / "stores")
    run_dir = tmp_path / "runs" / "run"
    record = _train(store, run_dir)
    _assert_run_follows(store, run_dir, record)
    assert record["emotions"] == LABELS["labels"]

    assert main(["evaluate", str(run_dir)]) == 0
    assert json.loads(RunFolder(run_dir).test_metrics_path.read_text())["emotions"] == LABELS["labels"]

    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert all(label in report for label in LABELS["labels"])
    assert "surprise" not in report and "paper" not in report.lower()

    # A predict input in the file form, with gold labels in the run's own set.
    rows = [
        {"dialogue_id": 0, "utterance_id": i, "speaker": "Al", "transcript": "Hello.",
         "audio": str(tmp_path / "mine" / "audio" / f"d1_u{i}.wav"), "emotion": label}
        for i, label in enumerate(["neutral", "happy"])
    ]
    source = tmp_path / "input.csv"
    with open(source, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "labels.csv"
    assert main(["predict", str(run_dir), str(source), "--out", str(out)]) == 0
    with open(out, newline="") as stream:
        predicted = list(csv.DictReader(stream))
    assert list(predicted[0]) == ["key", "label", *LABELS["labels"], "gold", "reason"]
    assert [row["gold"] for row in predicted] == ["neutral", "happy"]
    assert all(row["label"] in LABELS["labels"] for row in predicted)
    printed = capsys.readouterr().out
    assert all(label in printed for label in LABELS["labels"])

    # A corpus in MELD's layout carries gold labels in MELD's seven emotions: refused, naming both sets.
    meld = tmp_path / "meld"
    meld.mkdir()
    (meld / "test_sent_emo.csv").write_text(
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
        "1,Okay.,Al,joy,positive,0,0,1,1,\"00:00:01,000\",\"00:00:02,000\"\n"
    )
    assert main(["predict", str(run_dir), str(meld), "--out", str(tmp_path / "meld.csv")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in error[0]
    assert "labelled in meld7 (neutral, surprise" in error[0] and f"label set {LABELS['name']} (" in error[0]
    assert not (tmp_path / "meld.csv").exists()


def test_ser4_folds_train_with_four_outputs_and_report_ua_wa_and_their_mean(tmp_path, local_ray):
    corpus = write_iemocap(tmp_path / "IEMOCAP_full_release")
    runs = []
    # The fixture holds sessions 1 and 5: leave-one-session-out over them is two folds.
    for fold in (1, 5):
        store = _extract(corpus, tmp_path / "stores", ["iemocap.protocol=ser4", f"iemocap.fold={fold}"])
        assert len(store.label_set) == 4
        run_dir = tmp_path / "runs" / f"fold{fold}"
        _assert_run_follows(store, run_dir, _train(store, run_dir))
        runs.append(read_run_result(run_dir))
    rows = dict(ser_table(runs).rows)
    folds = [cells for name, cells in rows.items() if "mean over" not in name]
    assert len(folds) == 2 and len(rows) == 3
    for run, (ua, wa, weighted) in zip(runs, folds):
        gold, pred = run.predictions.gold, run.predictions.pred
        # One seed per fold: each cell holds exactly that run's score, in percent.
        assert ua.values == (100 * balanced_accuracy_score(gold, pred),)
        assert wa.values == (100 * accuracy_score(gold, pred),) == (100 * run.test["accuracy"],)
        assert weighted.values == (100 * run.test["weighted_f1"],)
    (mean_name, mean_cells), = [(name, cells) for name, cells in rows.items() if "mean over" in name]
    assert mean_name == "audio: mean over 2 folds"
    for column, mean in enumerate(mean_cells):
        assert mean.values == tuple(fold[column].mean for fold in folds)
    # The paper's MELD rows stand beside MELD runs only.
    assert not any(name.startswith("paper") for table in report_tables(runs) for name, _ in table.rows)
