"""pgrun/stats.py: the comparison's statistics against hand computations and, for the intervals,
their coverage over many simulated experiments (fixed seeds; tolerances from the binomial
standard error of a coverage estimate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm, trim_mean

from pgrun import stats


def test_probability_of_improvement_counts_pairs_and_half_the_ties():
    x, y = np.array([3.0, 1.0]), np.array([2.0, 1.0, 0.0])
    # pairs (x, y): 3 beats all three; 1 ties 1 and beats 0 -> (3 + 1 + 0.5) / 6
    assert stats.probability_of_improvement(x, y) == pytest.approx(4.5 / 6)
    assert stats.probability_of_improvement(y, x) == pytest.approx(1.5 / 6)
    assert stats.probability_of_improvement(x, x) == 0.5
    batched = stats.probability_of_improvement(np.stack([x, x[::-1]]), np.stack([y[:2], y[1:]]))
    assert batched.shape == (2,)


def test_iqm_is_scipys_trimmed_mean():
    rng = np.random.default_rng(0)
    for n in (1, 2, 4, 5, 7, 12):
        x = rng.normal(size=n)
        assert stats.iqm(x) == pytest.approx(trim_mean(x, 0.25))


def test_normalise_puts_random_at_0_and_solved_at_1():
    assert stats.normalise(np.array([22.0, 475.0, 248.5]), 22.0, 475.0).tolist() == [0, 1, 0.5]
    with pytest.raises(ValueError, match="must exceed"):
        stats.normalise(np.zeros(1), -100.0, -200.0)


def test_too_few_runs_follows_the_exact_rank_test():
    # 2 / C(m + n, m): the smallest two-sided p-value of complete separation
    assert stats.smallest_p_value([(2, 2)]) == pytest.approx(2 / 6)
    assert stats.smallest_p_value([(3, 3)]) == pytest.approx(0.1)
    assert stats.smallest_p_value([(4, 4)]) == pytest.approx(2 / 70)
    assert not stats.enough_runs([(3, 3)]) and stats.enough_runs([(4, 4)])
    assert stats.enough_runs([(2, 8)])  # 2 / 45
    assert stats.enough_runs([(2, 2), (2, 2), (2, 2)])  # across tasks: 2 / 6^3
    assert stats.runs_needed() == 4


def test_bootstrap_is_stratified_by_task():
    """Task 1: x beats y in every pair; task 2: y beats x in every pair. Resampled within each
    task, every resample gives (1 + 0) / 2: the interval is the point. Resampling the pooled
    runs would mix the tasks and spread it."""
    x = [np.array([10.0, 11, 12, 13]), np.array([0.0, 1, 2, 3])]
    y = [np.array([0.0, 1, 2, 3]), np.array([10.0, 11, 12, 13])]
    assert stats.poi_interval(x, y) == (0.5, 0.5, 0.5)


def test_one_run_gives_no_interval():
    p, low, high = stats.poi_interval([np.array([1.0])], [np.array([0.0, 2.0])])
    assert p == 0.5 and math.isnan(low) and math.isnan(high)


def test_the_intervals_are_seeded():
    rng = np.random.default_rng(1)
    x, y = [rng.normal(size=6)], [rng.normal(size=6)]
    assert stats.poi_interval(x, y, seed=3) == stats.poi_interval(x, y, seed=3)


def test_the_intervals_are_scipys_bootstrap_to_the_last_bit():
    """pgrun/stats.py draws the resamples and interpolates the quantiles as
    scipy.stats.bootstrap (percentile, vectorized, the same seeded generator): the same
    intervals exactly, ties and tasks of unequal sizes included."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(2)
    x = [rng.normal(size=5).round(1), rng.normal(size=7).round(1)]  # rounded: ties
    y = [rng.normal(size=6).round(1), rng.normal(size=3)]
    taus = np.linspace(-2.0, 2.0, 9)

    def scipys(samples, statistic, seed):
        ci = bootstrap(
            samples,
            statistic,
            n_resamples=stats.RESAMPLES,
            vectorized=True,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        return ci.low, ci.high

    def poi(*s, axis=-1):
        return np.mean([stats.probability_of_improvement(a, b, axis) for a, b in
                        zip(s[:2], s[2:], strict=True)], axis=0)  # fmt: skip

    def iqm(*s, axis=-1):
        return stats.iqm(np.concatenate(s, axis=axis), axis=axis)

    def profile(*s, axis=-1):
        fractions = [(np.moveaxis(a, axis, -1)[..., None, :] > taus[:, None]).mean(-1) for a in s]
        return np.moveaxis(np.mean(fractions, axis=0), -1, 0)

    for seed in (0, 7):
        assert stats.poi_interval(x, y, seed=seed)[1:] == scipys([*x, *y], poi, seed)
        assert stats.iqm_interval(x, seed=seed)[1:] == scipys(x, iqm, seed)
        low, high = scipys(y, profile, seed)
        _, ours_low, ours_high = stats.performance_profile(y, taus, seed=seed)
        assert ours_low.tolist() == low.tolist() and ours_high.tolist() == high.tolist()


REPLICATIONS = 400
# A coverage estimate from R replications has standard error sqrt(c (1 - c) / R) = 0.011 at
# c = 0.95: three of them either side.
TOLERANCE = 3 * math.sqrt(0.95 * 0.05 / REPLICATIONS)


def test_probability_of_improvement_interval_covers_the_truth_95_percent_of_the_time():
    """X ~ N(0.5, 1), Y ~ N(0, 1), 10 runs each: P(X > Y) = Phi(0.5 / sqrt 2) = 0.638."""
    rng = np.random.default_rng(0)
    truth = norm.cdf(0.5 / math.sqrt(2))
    hits = 0
    for r in range(REPLICATIONS):
        x, y = rng.normal(0.5, 1.0, 10), rng.normal(0.0, 1.0, 10)
        p, low, high = stats.poi_interval([x], [y], seed=r)
        assert low <= p <= high
        hits += low <= truth <= high
    assert abs(hits / REPLICATIONS - 0.95) <= TOLERANCE, hits / REPLICATIONS


def test_iqm_interval_covers_the_truth_95_percent_of_the_time():
    """Two tasks of 10 runs each, N(0, 1) and N(3, 1) (one scale): the population IQM of the
    pooled scores is the mean of the middle half of the even mixture, 1.5 by symmetry."""
    rng = np.random.default_rng(1)
    hits = 0
    for r in range(REPLICATIONS):
        scores = [rng.normal(0.0, 1.0, 10), rng.normal(3.0, 1.0, 10)]
        value, low, high = stats.iqm_interval(scores, seed=r)
        assert low <= value <= high
        hits += low <= 1.5 <= high
    assert abs(hits / REPLICATIONS - 0.95) <= TOLERANCE, hits / REPLICATIONS


def test_performance_profile_falls_from_1_to_0():
    scores = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0])]
    taus = np.array([0.0, 2.5, 25.0, 50.0])
    profile, low, high = stats.performance_profile(scores, taus)
    # mean over the tasks of the fraction above each tau
    assert profile.tolist() == [1.0, (0.5 + 1.0) / 2, (0 + 0.5) / 2, 0.0]
    assert np.all(low <= profile) and np.all(profile <= high)
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0
