"""The scipy-backed statistics against independent definitions: printed t tables, the closed-form t
distribution with 3 degrees of freedom, and a bootstrap written out as a plain loop."""

import math

import numpy as np
import pytest

from launch.statistics import (
    Predictions,
    StatisticsError,
    dialogue_of,
    hierarchical_draws,
    holm,
    paired_dialogue_bootstrap,
    paired_hierarchical_bootstrap,
    paired_t_test,
    spread,
)

# Two-sided 95% critical values of Student's t, from printed tables (e.g. NIST/SEMATECH
# e-Handbook, table 1.3.6.7.2), to three decimals.
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042}


@pytest.mark.parametrize("dof", sorted(T_TABLE_975))
def test_interval_half_width_is_the_printed_t_times_the_standard_error(dof):
    values = np.random.default_rng(dof).uniform(0.4, 0.7, dof + 1)
    got = spread(values)
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    assert (got.n, got.mean, got.std) == (n, pytest.approx(mean), pytest.approx(sd))
    half = T_TABLE_975[dof] * sd / math.sqrt(n)
    assert (got.ci_low, got.ci_high) == pytest.approx((mean - half, mean + half), rel=2e-4)


def test_spread_of_one_value_has_no_interval_and_equal_values_a_point():
    single = spread([0.61])
    assert (single.n, single.mean, single.std, single.ci_low, single.ci_high) == (1, 0.61, None, None, None)
    same = spread([0.5, 0.5, 0.5])
    assert (same.std, same.ci_low, same.ci_high) == (0.0, 0.5, 0.5)


def t3_two_sided_p(t: float) -> float:
    """Two-sided p of Student's t with 3 degrees of freedom, from its closed-form CDF."""
    x = abs(t) / math.sqrt(3)
    cdf = 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi
    return 2 * (1 - cdf)


def test_paired_t_test_matches_the_textbook_statistic():
    a = [0.62, 0.66, 0.61, 0.70]
    b = [0.60, 0.61, 0.60, 0.64]
    differences = [x - y for x, y in zip(a, b)]
    mean = sum(differences) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3)
    t = mean / (sd / 2)
    got = paired_t_test(a, b)
    assert got.n == 4
    assert got.t == pytest.approx(t)
    assert got.p_value == pytest.approx(t3_two_sided_p(t), rel=1e-9)
    assert paired_t_test(b, a).t == pytest.approx(-t)


def test_paired_t_test_without_spread_has_no_p_value():
    assert paired_t_test([0.5], [0.4]).p_value is None
    assert paired_t_test([0.5, 0.6], [0.4, 0.5]).p_value is None


def make_runs(seeds: int, accuracy: float, dialogues: int = 30, offset: int = 0) -> list[Predictions]:
    rng = np.random.default_rng(99)
    lengths = rng.integers(2, 9, dialogues)
    keys = tuple(f"test/dia{d}_utt{u}" for d in range(dialogues) for u in range(lengths[d]))
    gold = rng.choice(7, size=len(keys), p=[0.45, 0.12, 0.03, 0.08, 0.16, 0.03, 0.13])
    runs = []
    for seed in range(seeds):
        draw = np.random.default_rng(offset + seed)
        pred = np.where(draw.random(len(keys)) < accuracy, gold, draw.integers(0, 7, len(keys)))
        runs.append(Predictions(keys=keys, gold=gold, pred=pred))
    return runs


def loop_weighted_f1(gold: list[int], pred: list[int]) -> float:
    """Weighted F1 by counting, class by class."""
    total = 0.0
    for c in range(7):
        tp = sum(1 for g, p in zip(gold, pred) if g == c and p == c)
        support = sum(1 for g in gold if g == c)
        predicted = sum(1 for p in pred if p == c)
        if support:
            total += support * (2 * tp / (support + predicted))
    return total / len(gold)


def loop_bootstrap(a: list[Predictions], b: list[Predictions], resamples: int, seed: int) -> np.ndarray:
    """The bootstrap as its definition says, one resample at a time: draw dialogues, rescore every run."""
    names = sorted({dialogue_of(key) for key in a[0].keys})
    rows = {name: [i for i, key in enumerate(a[0].keys) if dialogue_of(key) == name] for name in names}
    rng = np.random.default_rng(seed)
    statistics = []
    for _ in range(resamples):
        drawn = [rows[names[i]] for i in rng.integers(0, len(names), len(names))]
        chosen = [row for dialogue in drawn for row in dialogue]
        differences = [
            loop_weighted_f1(x.gold[chosen].tolist(), x.pred[chosen].tolist())
            - loop_weighted_f1(y.gold[chosen].tolist(), y.pred[chosen].tolist())
            for x, y in zip(a, b)
        ]
        statistics.append(sum(differences) / len(differences))
    return np.array(statistics)


def test_bootstrap_estimate_and_interval_match_a_plain_loop():
    a, b = make_runs(3, 0.7), make_runs(3, 0.55, offset=50)
    got = paired_dialogue_bootstrap(a, b, resamples=3000, seed=5)
    whole = [
        loop_weighted_f1(x.gold.tolist(), x.pred.tolist()) - loop_weighted_f1(y.gold.tolist(), y.pred.tolist())
        for x, y in zip(a, b)
    ]
    assert got.difference == pytest.approx(sum(whole) / 3, abs=1e-12)
    assert (got.dialogues, got.resamples, got.seed) == (30, 3000, 5)
    # Another draw of the same distribution: the percentile ends agree up to Monte Carlo error.
    reference = loop_bootstrap(a, b, resamples=1500, seed=123)
    low, high = np.percentile(reference, [2.5, 97.5])
    width = high - low
    assert got.ci_low == pytest.approx(low, abs=0.08 * width)
    assert got.ci_high == pytest.approx(high, abs=0.08 * width)
    assert got.ci_low > 0, "a 15-point accuracy gap on 30 dialogues is clear"
    assert got.p_value < 0.01


def test_bootstrap_is_seeded_and_a_model_against_itself_differs_by_nothing():
    a, b = make_runs(2, 0.6), make_runs(2, 0.58, offset=7)
    assert paired_dialogue_bootstrap(a, b, resamples=500, seed=1) == paired_dialogue_bootstrap(
        a, b, resamples=500, seed=1
    )
    assert paired_dialogue_bootstrap(a, b, resamples=500, seed=1) != paired_dialogue_bootstrap(
        a, b, resamples=500, seed=2
    )
    same = paired_dialogue_bootstrap(a, a, resamples=200)
    assert (same.difference, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_refuses_runs_on_different_utterances():
    a = make_runs(1, 0.6)
    b = make_runs(1, 0.6, dialogues=31)
    with pytest.raises(StatisticsError, match="different utterances"):
        paired_dialogue_bootstrap(a, b)
    with pytest.raises(ValueError, match="paired by seed"):
        paired_dialogue_bootstrap(a, a + a)


def test_bounded_intervals_never_leave_the_bounds_and_say_when_they_were_clipped():
    # Three spread-out seeds near the top: the t interval (t = 4.303 for 2 degrees of freedom) reaches past 100.
    values = [99.0, 80.0, 99.5]
    unbounded = spread(values)
    assert unbounded.ci_high > 100
    bounded = spread(values, bounds=(0.0, 100.0))
    assert (bounded.ci_low, bounded.ci_high, bounded.clipped) == (unbounded.ci_low, 100.0, True)
    rng = np.random.default_rng(3)
    for _ in range(200):
        sample = rng.uniform(0, 100, rng.integers(2, 6)) ** rng.uniform(0.2, 1)
        s = spread(sample, bounds=(0.0, 100.0))
        assert 0.0 <= s.ci_low <= s.mean <= s.ci_high <= 100.0
    inside = spread([60.0, 61.0, 62.0], bounds=(0.0, 100.0))
    assert not inside.clipped and inside == spread([60.0, 61.0, 62.0])


def loop_hierarchical(a: list[Predictions], b: list[Predictions], resamples: int, seed: int) -> np.ndarray:
    """The hierarchical bootstrap by its definition, one resample at a time, on the function's own draws."""
    names = sorted({dialogue_of(key) for key in a[0].keys})
    rows = {name: [i for i, key in enumerate(a[0].keys) if dialogue_of(key) == name] for name in names}
    seed_draws, dialogue_draws = hierarchical_draws(np.random.default_rng(seed), len(a), len(names), resamples)
    statistics = []
    for seeds, dialogues in zip(seed_draws, dialogue_draws):
        chosen = [row for d in dialogues for row in rows[names[d]]]
        differences = [
            loop_weighted_f1(a[s].gold[chosen].tolist(), a[s].pred[chosen].tolist())
            - loop_weighted_f1(b[s].gold[chosen].tolist(), b[s].pred[chosen].tolist())
            for s in seeds
        ]
        statistics.append(sum(differences) / len(differences))
    return np.array(statistics)


def test_hierarchical_bootstrap_matches_its_definition_written_as_a_loop():
    a, b = make_runs(3, 0.7), make_runs(3, 0.6, offset=50)
    got = paired_hierarchical_bootstrap(a, b, resamples=400, seed=9)
    reference = loop_hierarchical(a, b, resamples=400, seed=9)
    low, high = np.percentile(reference, [2.5, 97.5])
    # The same draws and the same statistic: only the order of floating-point sums differs.
    assert got.ci_low == pytest.approx(low, abs=1e-12)
    assert got.ci_high == pytest.approx(high, abs=1e-12)
    far = np.mean(reference <= 0) if got.difference > 0 else np.mean(reference >= 0)
    assert got.p_value == pytest.approx(min(1.0, 2 * far), abs=1e-12)
    assert (got.seeds, got.dialogues) == (3, 30)


def test_hierarchical_bootstrap_is_seeded_and_wider_than_resampling_dialogues_alone():
    # Seeds that disagree: two runs of A far apart, so resampling seeds must widen the interval.
    a, b = make_runs(1, 0.9) + make_runs(1, 0.5, offset=3), make_runs(2, 0.6, offset=50)
    first = paired_hierarchical_bootstrap(a, b, resamples=500, seed=1)
    assert first == paired_hierarchical_bootstrap(a, b, resamples=500, seed=1)
    assert first != paired_hierarchical_bootstrap(a, b, resamples=500, seed=2)
    dialogues_only = paired_dialogue_bootstrap(a, b, resamples=500, seed=1)
    assert first.ci_high - first.ci_low > dialogues_only.ci_high - dialogues_only.ci_low
    same = paired_hierarchical_bootstrap(a, a, resamples=100)
    assert (same.difference, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_holm_matches_a_worked_example():
    # m = 4, sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (monotone), 0.06; the order given is kept.
    assert holm([0.03, 0.01, None, 0.04, 0.02]) == pytest.approx([0.06, 0.04, None, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []
