"""Statistics of results over seeds and over test dialogues, by scipy.stats.

Three questions, three tools:

- How much does a score vary with the seed? `spread`: the mean, the sample standard deviation
  (n - 1 in the denominator) and the confidence interval of the mean, mean ± t(1 - α/2, n - 1) · sd / √n,
  with Student's t from `scipy.stats.t`.
- Is configuration A better than B, given the seed noise? `paired_t_test`: Student's paired t-test
  over the seeds both finished (`scipy.stats.ttest_rel`). Pairing by seed removes the part of the
  seed noise the two share (the same data order, the same initial draws where shapes agree).
- Would the difference hold on other test dialogues? `paired_dialogue_bootstrap`: a paired bootstrap
  over the test split's dialogues (`scipy.stats.bootstrap`). Dialogues, not utterances, are the
  unit resampled, because utterances of one dialogue share speakers and context and are not
  independent. Each resample draws as many dialogues as the split has, with replacement, and
  rescores every run of both configurations on the utterances of the drawn dialogues (a dialogue
  drawn twice counts twice); the statistic is the mean over seeds of weighted F1(A, seed) −
  weighted F1(B, seed). Both configurations see the same resampled dialogues, so the comparison is
  paired. The interval is the bootstrap's percentile interval; the p-value is two-sided, twice the
  share of resamples on the far side of zero from the estimate (capped at 1). The random draws come
  from `numpy.random.default_rng(seed)`, so a report is reproducible.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from extract.labels import EMOTION_INDEX, EMOTIONS
from model.metrics import weighted_f1_of_confusions

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Resamples scored at once: bounds the memory of one batch to about resamples x dialogues x runs x 49 floats.
_BOOTSTRAP_BATCH = 250


class StatisticsError(Exception):
    """Results that cannot be compared as asked; the message names what differs."""


@dataclass(frozen=True, kw_only=True)
class Spread:
    """Mean and spread of one score over seeds."""

    n: int
    """Number of seeds."""
    mean: float
    """Mean over the seeds."""
    std: float | None
    """Sample standard deviation (n - 1 in the denominator); None for one seed."""
    ci_low: float | None
    """Lower end of the confidence interval of the mean; None for one seed."""
    ci_high: float | None
    """Upper end of that interval; None for one seed."""


def spread(values: Sequence[float], confidence: float = CONFIDENCE) -> Spread:
    """Mean, sample standard deviation and Student-t confidence interval of the mean of `values`."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to summarise")
    mean = float(data.mean())
    if data.size < 2:
        return Spread(n=1, mean=mean, std=None, ci_low=None, ci_high=None)
    std = float(data.std(ddof=1))
    if std == 0.0:
        # scipy refuses a zero scale; every seed agrees, so the interval is the point.
        return Spread(n=int(data.size), mean=mean, std=0.0, ci_low=mean, ci_high=mean)
    low, high = stats.t.interval(confidence, data.size - 1, loc=mean, scale=stats.sem(data))
    return Spread(n=int(data.size), mean=mean, std=std, ci_low=float(low), ci_high=float(high))


@dataclass(frozen=True, kw_only=True)
class PairedTest:
    """Student's paired t-test of A − B over seeds."""

    n: int
    """Seeds both finished."""
    t: float | None
    """The t statistic; None with fewer than two seeds or identical differences."""
    p_value: float | None
    """Two-sided p-value; None when `t` is."""


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of the per-seed scores `a` against `b` (the same seeds in the same order)."""
    a_values, b_values = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_values.shape != b_values.shape or a_values.ndim != 1:
        raise ValueError(f"paired scores must be two lists of one length, not {a_values.shape} and {b_values.shape}")
    differences = a_values - b_values
    if differences.size < 2 or np.all(differences == differences[0]):
        return PairedTest(n=int(differences.size), t=None, p_value=None)
    result = stats.ttest_rel(a_values, b_values)
    return PairedTest(n=int(differences.size), t=float(result.statistic), p_value=float(result.pvalue))


@dataclass(frozen=True, kw_only=True)
class Predictions:
    """One run's test predictions: utterance keys with gold and predicted emotion indices."""

    keys: tuple[str, ...]
    """Utterance keys, 'test/dia3_utt0'."""
    gold: np.ndarray
    """int64 [N] true emotions."""
    pred: np.ndarray
    """int64 [N] predicted emotions."""


def read_predictions(path: Path) -> Predictions:
    """A run's predictions.jsonl: one {key, gold, pred} record per utterance."""
    keys, gold, pred = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            keys.append(str(record["key"]))
            gold.append(EMOTION_INDEX[record["gold"]])
            pred.append(EMOTION_INDEX[record["pred"]])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise StatisticsError(
                f"{path} line {number} is not a prediction record {{key, gold, pred}} ({error!r}); "
                "score the run again with `cmroberta evaluate RUN`"
            ) from None
    return Predictions(keys=tuple(keys), gold=np.array(gold, dtype=np.int64), pred=np.array(pred, dtype=np.int64))


def dialogue_of(key: str) -> str:
    """The dialogue of an utterance key: 'test/dia3_utt0' -> 'test/dia3'."""
    return key.rpartition("_utt")[0] or key


@dataclass(frozen=True, kw_only=True)
class DialogueBootstrap:
    """A paired bootstrap over test dialogues of the weighted F1 difference A − B (mean over seeds)."""

    difference: float
    """The difference on the whole test split."""
    ci_low: float
    """Lower end of the percentile interval."""
    ci_high: float
    """Upper end of the percentile interval."""
    p_value: float
    """Two-sided: twice the share of resamples on the far side of zero (at most 1)."""
    dialogues: int
    """Test dialogues resampled."""
    resamples: int
    """Bootstrap resamples drawn."""
    seed: int
    """Seed of the resampling."""
    confidence: float
    """Level of the interval."""


def _dialogue_confusions(run: Predictions, dialogues: dict[str, int]) -> np.ndarray:
    """float64 [D, C*C]: each dialogue's confusion counts, flattened row-major (true class, predicted class)."""
    classes = len(EMOTIONS)
    dialogue = np.array([dialogues[dialogue_of(key)] for key in run.keys], dtype=np.int64)
    flat = (dialogue * classes + run.gold) * classes + run.pred
    counts = np.bincount(flat, minlength=len(dialogues) * classes * classes)
    return counts.reshape(len(dialogues), classes * classes).astype(np.float64)


def paired_dialogue_bootstrap(
    a: Sequence[Predictions],
    b: Sequence[Predictions],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> DialogueBootstrap:
    """Bootstrap of mean-over-seeds weighted F1(a[i]) − weighted F1(b[i]); a[i] and b[i] share a seed."""
    if not a or len(a) != len(b):
        raise ValueError(f"need one or more runs on each side, paired by seed; got {len(a)} and {len(b)}")
    reference = sorted(a[0].keys)
    for run in (*a, *b):
        if len(run.keys) != len(reference) or sorted(run.keys) != reference:
            raise StatisticsError(
                "the runs compared were tested on different utterances; compare runs of one test split"
            )
    names = sorted({dialogue_of(key) for key in reference})
    dialogues = {name: i for i, name in enumerate(names)}
    count, classes = len(names), len(EMOTIONS)
    a_counts = np.stack([_dialogue_confusions(run, dialogues) for run in a])  # [R, D, C*C]
    b_counts = np.stack([_dialogue_confusions(run, dialogues) for run in b])

    def weighted_f1(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """[S, R]: each run's weighted F1 on each resample, from dialogue weights [S, D] and counts [R, D, C*C]."""
        confusions = np.einsum("sd,rdk->srk", weights, counts)
        return weighted_f1_of_confusions(confusions.reshape(*confusions.shape[:2], classes, classes))

    def mean_difference(weights: np.ndarray) -> np.ndarray:
        """weights [S, D] (times each dialogue is drawn) -> [S] mean over seeds of the F1 differences."""
        return (weighted_f1(weights, a_counts) - weighted_f1(weights, b_counts)).mean(axis=-1)

    def statistic(drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.moveaxis(np.asarray(drawn), axis, -1)
        batch_shape, flat = drawn.shape[:-1], drawn.reshape(-1, drawn.shape[-1])
        offsets = count * np.arange(flat.shape[0])[:, None]
        weights = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * count).reshape(flat.shape[0], count)
        return mean_difference(weights.astype(float)).reshape(batch_shape)

    estimate = float(mean_difference(np.ones((1, count)))[0])
    result = stats.bootstrap(
        (np.arange(count),),
        statistic,
        n_resamples=resamples,
        batch=_BOOTSTRAP_BATCH,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    distribution = result.bootstrap_distribution
    far_side = np.mean(distribution <= 0.0) if estimate > 0 else np.mean(distribution >= 0.0)
    return DialogueBootstrap(
        difference=estimate,
        ci_low=float(result.confidence_interval.low),
        ci_high=float(result.confidence_interval.high),
        p_value=float(min(1.0, 2.0 * far_side)) if estimate != 0 else 1.0,
        dialogues=count,
        resamples=resamples,
        seed=seed,
        confidence=confidence,
    )
