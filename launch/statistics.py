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
- How sure is a difference, given both sources of noise? `paired_hierarchical_bootstrap`: each
  resample first draws as many seeds as both configurations share, with replacement (a seed brings
  its pair of runs), then as many test dialogues as the split has, with replacement; the statistic
  is the mean over the drawn seeds of weighted F1(A, seed) − weighted F1(B, seed) on the drawn
  dialogues. The t-test sees only seed noise (the test set is fixed) and the dialogue bootstrap only
  test sampling (the trained models are fixed); this interval carries both, so it is the one to read.
  When the two single-source tests disagree, the difference is established only against the noise of
  the one that finds it, and the hierarchical interval says whether it survives both. Percentile
  interval and two-sided p as for the dialogue bootstrap; seeded, so reproducible.
- Many comparisons in one report? `holm`: Holm's step-down correction of a family of p-values
  (Holm 1979), which controls the chance of any false rejection in the family without assuming the
  tests independent. Sorted ascending, p_(i) becomes max over j ≤ i of min(1, (m − j + 1) · p_(j)).
  A report prints each p-value raw and corrected.
- Scores are bounded: a weighted F1 lies in [0, 100] (or [0, 1]), but a t interval from a few
  spread-out seeds can reach past the bound. `spread(..., bounds=...)` clips the interval to the
  bounds and records that it did (`Spread.clipped`), so the report can say so in its legend.
"""

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from scipy import stats

from extract.labels import EMOTIONS
from model.metrics import weighted_f1_of_confusions

# One run of a configuration, whatever a caller reads runs into.
Run = TypeVar("Run")

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
    clipped: bool = False
    """Whether the t interval reached past the score's bounds and was clipped to them."""


def spread(
    values: Sequence[float], confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None
) -> Spread:
    """Mean, sample standard deviation and Student-t confidence interval of the mean of `values`.

    With `bounds` (low, high), the values are scores that cannot leave them, and the interval is clipped
    to them; `clipped` says whether it had to be.
    """
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
    clipped = bool(bounds is not None and (low < bounds[0] or high > bounds[1]))
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Spread(n=int(data.size), mean=mean, std=std, ci_low=float(low), ci_high=float(high), clipped=clipped)


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
    """One run's test predictions: utterance keys with gold and predicted label indices."""

    keys: tuple[str, ...]
    """Utterance keys, 'test/dia3_utt0'."""
    gold: np.ndarray
    """int64 [N] true emotions."""
    pred: np.ndarray
    """int64 [N] predicted emotions."""
    labels: tuple[str, ...] = EMOTIONS
    """The run's label set, in class order (MELD's emotions by default)."""


def read_predictions(path: Path, labels: Sequence[str] = EMOTIONS) -> Predictions:
    """A run's predictions.jsonl: one {key, gold, pred} record per utterance, labels of the run's set `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    keys, gold, pred = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            keys.append(str(record["key"]))
            gold.append(index[record["gold"]])
            pred.append(index[record["pred"]])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise StatisticsError(
                f"{path} line {number} is not a prediction record {{key, gold, pred}} ({error!r}); "
                "score the run again with `cmroberta evaluate RUN`"
            ) from None
    return Predictions(
        keys=tuple(keys),
        gold=np.array(gold, dtype=np.int64),
        pred=np.array(pred, dtype=np.int64),
        labels=tuple(labels),
    )


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
    classes = len(run.labels)
    dialogue = np.array([dialogues[dialogue_of(key)] for key in run.keys], dtype=np.int64)
    flat = (dialogue * classes + run.gold) * classes + run.pred
    counts = np.bincount(flat, minlength=len(dialogues) * classes * classes)
    return counts.reshape(len(dialogues), classes * classes).astype(np.float64)


def _paired_dialogue_confusions(
    a: Sequence[Predictions], b: Sequence[Predictions]
) -> tuple[np.ndarray, np.ndarray]:
    """Each side's per-dialogue confusion counts, float64 [R, D, C*C]; a[i] and b[i] share a seed."""
    if not a or len(a) != len(b):
        raise ValueError(f"need one or more runs on each side, paired by seed; got {len(a)} and {len(b)}")
    reference = sorted(a[0].keys)
    for run in (*a, *b):
        if len(run.keys) != len(reference) or sorted(run.keys) != reference:
            raise StatisticsError(
                "the runs compared were tested on different utterances; compare runs of one test split"
            )
    dialogues = {name: i for i, name in enumerate(sorted({dialogue_of(key) for key in reference}))}
    a_counts = np.stack([_dialogue_confusions(run, dialogues) for run in a])
    b_counts = np.stack([_dialogue_confusions(run, dialogues) for run in b])
    return a_counts, b_counts


def _weighted_f1_differences(weights: np.ndarray, a_counts: np.ndarray, b_counts: np.ndarray) -> np.ndarray:
    """[S, R]: weighted F1(a[r]) − weighted F1(b[r]) on each resample, from dialogue weights [S, D] (times each
    dialogue is drawn) and per-dialogue counts [R, D, C*C]."""
    classes = math.isqrt(a_counts.shape[-1])

    def weighted_f1(counts: np.ndarray) -> np.ndarray:
        confusions = np.einsum("sd,rdk->srk", weights, counts)
        return weighted_f1_of_confusions(confusions.reshape(*confusions.shape[:2], classes, classes))

    return weighted_f1(a_counts) - weighted_f1(b_counts)


def _draw_weights(drawn: np.ndarray, count: int) -> np.ndarray:
    """[S, count] float: how often each of `count` items was drawn in each row of `drawn` [S, n]."""
    offsets = count * np.arange(drawn.shape[0])[:, None]
    return np.bincount((drawn + offsets).ravel(), minlength=drawn.shape[0] * count).reshape(-1, count).astype(float)


def _two_sided_p(estimate: float, distribution: np.ndarray) -> float:
    """Twice the share of resamples on the far side of zero from the estimate, at most 1; 1 for no difference."""
    if estimate == 0:
        return 1.0
    far_side = np.mean(distribution <= 0.0) if estimate > 0 else np.mean(distribution >= 0.0)
    return float(min(1.0, 2.0 * far_side))


def paired_dialogue_bootstrap(
    a: Sequence[Predictions],
    b: Sequence[Predictions],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> DialogueBootstrap:
    """Bootstrap of mean-over-seeds weighted F1(a[i]) − weighted F1(b[i]); a[i] and b[i] share a seed."""
    a_counts, b_counts = _paired_dialogue_confusions(a, b)
    count = a_counts.shape[1]

    def statistic(drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.moveaxis(np.asarray(drawn), axis, -1)
        batch_shape, flat = drawn.shape[:-1], drawn.reshape(-1, drawn.shape[-1])
        weights = _draw_weights(flat, count)
        return _weighted_f1_differences(weights, a_counts, b_counts).mean(axis=-1).reshape(batch_shape)

    estimate = float(_weighted_f1_differences(np.ones((1, count)), a_counts, b_counts).mean())
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
    return DialogueBootstrap(
        difference=estimate,
        ci_low=float(result.confidence_interval.low),
        ci_high=float(result.confidence_interval.high),
        p_value=_two_sided_p(estimate, result.bootstrap_distribution),
        dialogues=count,
        resamples=resamples,
        seed=seed,
        confidence=confidence,
    )


@dataclass(frozen=True, kw_only=True)
class HierarchicalBootstrap(DialogueBootstrap):
    """A paired bootstrap that resamples seeds, then test dialogues, of the weighted F1 difference A − B."""

    seeds: int
    """Seeds (pairs of runs) resampled."""


def hierarchical_draws(rng: np.random.Generator, seeds: int, dialogues: int, resamples: int) -> tuple[np.ndarray, ...]:
    """The resamples' seed draws [resamples, seeds] and dialogue draws [resamples, dialogues], in that order."""
    return rng.integers(0, seeds, size=(resamples, seeds)), rng.integers(0, dialogues, size=(resamples, dialogues))


def paired_hierarchical_bootstrap(
    a: Sequence[Predictions],
    b: Sequence[Predictions],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> HierarchicalBootstrap:
    """Bootstrap over seeds and test dialogues of mean-over-seeds weighted F1(a[i]) − weighted F1(b[i]).

    Dialogues are sorted by name and numbered from 0; `hierarchical_draws` with
    `numpy.random.default_rng(seed)` gives each resample's seeds and dialogues.
    """
    a_counts, b_counts = _paired_dialogue_confusions(a, b)
    runs, count = a_counts.shape[:2]
    seed_draws, dialogue_draws = hierarchical_draws(np.random.default_rng(seed), runs, count, resamples)
    distribution = np.empty(resamples)
    for start in range(0, resamples, _BOOTSTRAP_BATCH):
        stop = min(resamples, start + _BOOTSTRAP_BATCH)
        differences = _weighted_f1_differences(_draw_weights(dialogue_draws[start:stop], count), a_counts, b_counts)
        distribution[start:stop] = np.take_along_axis(differences, seed_draws[start:stop], axis=1).mean(axis=1)
    estimate = float(_weighted_f1_differences(np.ones((1, count)), a_counts, b_counts).mean())
    tail = 50 * (1 - confidence)
    low, high = np.percentile(distribution, [tail, 100 - tail])
    return HierarchicalBootstrap(
        difference=estimate,
        ci_low=float(low),
        ci_high=float(high),
        p_value=_two_sided_p(estimate, distribution),
        dialogues=count,
        seeds=runs,
        resamples=resamples,
        seed=seed,
        confidence=confidence,
    )


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of one family, in the given order; None (no test) stays None."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(sorted(present)):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True, kw_only=True)
class PairedTests:
    """A − B over the seeds both finished, by each tool: the spread of the per-seed differences, the paired
    t-test, and the two bootstraps (None when a run lacks its predictions)."""

    seeds: list[int]
    """Seeds both finished, ascending."""
    difference: Spread
    """Per-seed differences of the score."""
    t_test: PairedTest
    """Student's paired t-test over those seeds."""
    bootstrap: DialogueBootstrap | None
    """Paired bootstrap over test dialogues (fractions)."""
    hierarchical: HierarchicalBootstrap | None
    """Paired bootstrap over seeds and test dialogues (fractions)."""


def paired_tests(
    seeds: Sequence[int],
    a_scores: Sequence[float],
    b_scores: Sequence[float],
    a_predictions: Sequence[Predictions | None],
    b_predictions: Sequence[Predictions | None],
    confidence: float = CONFIDENCE,
) -> PairedTests:
    """Every paired test of A − B; the lists are in `seeds` order."""
    complete = all(p is not None for p in (*a_predictions, *b_predictions))
    return PairedTests(
        seeds=list(seeds),
        difference=spread(np.subtract(a_scores, b_scores), confidence),
        t_test=paired_t_test(a_scores, b_scores),
        bootstrap=paired_dialogue_bootstrap(a_predictions, b_predictions, confidence=confidence) if complete else None,
        hierarchical=(
            paired_hierarchical_bootstrap(a_predictions, b_predictions, confidence=confidence) if complete else None
        ),
    )


def paired_over_common_seeds(
    a: Mapping[int, Run],
    b: Mapping[int, Run],
    score: Callable[[Run], float],
    predictions: Callable[[Run], Predictions | None],
    confidence: float = CONFIDENCE,
) -> PairedTests | None:
    """Every paired test of A − B over the seeds both have (`a` and `b`: seed -> run), in seed order; None when
    they share no seed. `score` reads a run's score, `predictions` its test predictions."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    return paired_tests(
        common,
        [score(a[seed]) for seed in common],
        [score(b[seed]) for seed in common],
        [predictions(a[seed]) for seed in common],
        [predictions(b[seed]) for seed in common],
        confidence,
    )
