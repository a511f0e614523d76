"""Metrics (scikit-learn's) against an independent computation (per-class loops over precision and recall),
a case worked by hand, and MELD's known floor."""

import numpy as np
import pytest

from extract.labels import EMOTIONS
from model.metrics import (
    ClassificationMetrics,
    classification_metrics,
    confusion_matrix,
    constant_prediction_metrics,
    weighted_f1_of_confusions,
)

C = len(EMOTIONS)


def reference_scores(gold: list[int], pred: list[int]) -> dict:
    """Precision/recall per class by counting pairs one by one; F1 as their harmonic mean."""
    f1, support = [], []
    for c in range(C):
        tp = sum(1 for g, p in zip(gold, pred) if g == c and p == c)
        predicted = sum(1 for p in pred if p == c)
        actual = sum(1 for g in gold if g == c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        support.append(actual)
    present = [c for c in range(C) if support[c] or c in pred]
    return {
        "per_class_f1": f1,
        "weighted_f1": sum(f * s for f, s in zip(f1, support)) / len(gold),
        "macro_f1": sum(f1[c] for c in present) / len(present),
        "accuracy": sum(1 for g, p in zip(gold, pred) if g == p) / len(gold),
        "support": support,
    }


@pytest.mark.parametrize("seed", range(6))
def test_scores_match_an_independent_computation(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    # Skewed labels, so weighted and macro F1 differ; some seeds leave classes out entirely.
    probabilities = rng.dirichlet(np.full(C, 0.6))
    gold = rng.choice(C, size=n, p=probabilities)
    pred = np.where(rng.random(n) < 0.5, gold, rng.choice(C, size=n, p=probabilities))
    got = classification_metrics(gold, pred)
    want = reference_scores(gold.tolist(), pred.tolist())
    assert got.per_class_f1 == pytest.approx(want["per_class_f1"], abs=1e-12)
    assert got.weighted_f1 == pytest.approx(want["weighted_f1"], abs=1e-12)
    assert got.macro_f1 == pytest.approx(want["macro_f1"], abs=1e-12)
    assert got.accuracy == pytest.approx(want["accuracy"], abs=1e-12)
    assert got.support == want["support"]


def test_confusion_matrix_counts_pairs():
    rng = np.random.default_rng(7)
    gold, pred = rng.integers(0, C, 300), rng.integers(0, C, 300)
    confusion = confusion_matrix(gold, pred)
    for i in range(C):
        for j in range(C):
            assert confusion[i, j] == sum(1 for g, p in zip(gold, pred) if g == i and p == j)
    assert confusion.sum() == 300


def test_always_neutral_on_meld_test_gives_the_documented_floor():
    # MELD's test split by class (neutral, surprise, fear, sadness, joy, disgust, anger); MELD.md
    # documents that always predicting neutral scores accuracy 48.12 and weighted F1 31.27.
    counts = [1256, 281, 50, 208, 402, 68, 345]
    gold = np.repeat(np.arange(C), counts)
    floor = constant_prediction_metrics(gold, EMOTIONS.index("neutral"))
    assert round(100 * floor.accuracy, 2) == 48.12
    assert round(100 * floor.weighted_f1, 2) == 31.27
    assert floor.per_class_f1[1:] == [0.0] * (C - 1)


def test_perfect_predictions_and_round_trip():
    gold = np.array([0, 1, 2, 3, 4, 5, 6, 6])
    metrics = classification_metrics(gold, gold)
    assert metrics.weighted_f1 == metrics.accuracy == metrics.macro_f1 == 1.0
    assert ClassificationMetrics.from_dict(metrics.to_dict()) == metrics
    assert list(metrics.to_dict()["per_class_f1"]) == list(EMOTIONS)


def test_labels_outside_the_classes_are_rejected():
    with pytest.raises(ValueError, match="pred labels"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(np.array([0, 1]), np.array([0]))


def test_a_case_worked_by_hand():
    # gold: neutral x4, joy x2; pred: 3 of 4 neutral right, one neutral called joy, both joys called neutral.
    gold = np.array([0, 0, 0, 0, 4, 4])
    pred = np.array([0, 0, 0, 4, 0, 0])
    metrics = classification_metrics(gold, pred)
    # neutral: TP 3, FP 2, FN 1 -> F1 6/9; joy: TP 0 -> F1 0; weighted (4 * 6/9 + 2 * 0) / 6 = 4/9.
    assert metrics.per_class_f1[0] == pytest.approx(2 / 3)
    assert metrics.per_class_f1[4] == 0.0
    assert metrics.weighted_f1 == pytest.approx(4 / 9)
    assert metrics.macro_f1 == pytest.approx(1 / 3)
    assert metrics.accuracy == pytest.approx(0.5)


def test_weighted_f1_of_many_confusions_matches_one_by_one_scores():
    rng = np.random.default_rng(11)
    confusions, expected = [], []
    for _ in range(20):
        n = int(rng.integers(1, 80))
        gold, pred = rng.integers(0, 4, n), rng.integers(0, C, n)
        confusions.append(confusion_matrix(gold, pred))
        expected.append(reference_scores(gold.tolist(), pred.tolist())["weighted_f1"])
    stacked = np.stack(confusions).reshape(4, 5, C, C)
    assert weighted_f1_of_confusions(stacked) == pytest.approx(np.reshape(expected, (4, 5)), abs=1e-12)
    assert weighted_f1_of_confusions(np.zeros((C, C))) == 0.0
