"""Statistics of a comparison over seeds (Agarwal et al. 2021, "Deep Reinforcement Learning at the
Edge of the Statistical Precipice"): probability of improvement, interquartile mean, performance
profiles, each with a stratified-bootstrap confidence interval, and normalised scores.

Pure functions of arrays of final returns. A *task* is one environment: `scores` is a list with
one (S_t,) array per task (S_t runs, i.e. seeds, on task t). The stratified bootstrap resamples
the runs within each task (and, for two algorithms, within each algorithm) independently, and
recomputes the statistic over all tasks; percentile intervals. It draws and computes exactly as
`scipy.stats.bootstrap` with one sample per (task, algorithm) (`vectorized=True`,
`method="percentile"`, `rng=np.random.default_rng(seed)`): the same numbers, without the second
that importing scipy.stats takes (tests/test_stats.py holds the two equal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def _last(a: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + P(X = Y)/2 for a random run X of x and a random run Y of y (the Mann-Whitney
    U statistic divided by m·n).

    Args:
        x: (..., m) scores along `axis`; y: (..., n), the same leading shape.
    Returns:
        (...) in [0, 1]; 0.5 when neither is better.
    """
    a, b = _last(x, axis)[..., :, None], _last(y, axis)[..., None, :]
    return ((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1))


def iqm(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean along `axis`: the mean after dropping floor(n/4) runs at each end.

    (..., n) -> (...).
    """
    x = np.sort(_last(scores, axis), axis=-1)
    k = x.shape[-1] // 4
    return x[..., k : x.shape[-1] - k].mean(axis=-1)


def _bootstrap(samples: Sequence[np.ndarray], statistic, seed: int, level: float):
    """The percentile bootstrap over independent samples (one stratum each): each sample of n_i
    runs is resampled RESAMPLES times with replacement, (RESAMPLES, n_i), one sample after the
    other from one generator; the statistic is recomputed on the resamples
    (`statistic(*resamples, axis=-1)`: the runs last, the resamples last in its result) and the
    interval's ends are the (1 - level)/2 and (1 + level)/2 quantiles of those values.

    Returns (low, high), each the statistic's shape; NaN where a stratum has one run (a resample
    of one run is that run: no interval)."""
    point = statistic(*samples, axis=-1)
    if min(len(s) for s in samples) < 2:
        nan = np.full(np.shape(point), np.nan)
        return nan, nan
    rng = np.random.default_rng(seed)
    resamples = []
    for sample in samples:
        x = np.asarray(sample, dtype=np.float64)
        resamples.append(x[rng.integers(0, x.size, (RESAMPLES, x.size))])
    values = statistic(*resamples, axis=-1)  # (..., RESAMPLES)
    alpha = (1 - level) / 2
    return _quantile(values, alpha), _quantile(values, 1 - alpha)


def _quantile(values: np.ndarray, p: float) -> np.ndarray:
    """(..., B) -> (...): the p-quantile along the last axis, interpolated linearly between order
    statistics (Hyndman & Fan's type 7, the default of numpy and scipy) in the arithmetic of
    scipy.stats.quantile, so that the intervals are scipy's bit for bit; NaN where a value is."""
    y = np.sort(values, axis=-1)
    n = float(y.shape[-1])
    jg = p * n + (1 - p)
    j = jg // 1 - 1  # the lower order statistic, counted from 0
    g = 0.0 if j < 0 else jg % 1
    lo, hi = int(min(max(j, 0.0), n - 1)), int(min(max(j + 1, 0.0), n - 1))
    q = (1 - g) * y[..., lo] + g * y[..., hi]
    return np.where(np.isnan(values).any(axis=-1), np.nan, q)


def poi_interval(
    x: Sequence[np.ndarray], y: Sequence[np.ndarray], seed: int = 0, level: float = CONFIDENCE
) -> tuple[float, float, float]:
    """Average probability of improvement of x over y across tasks, with its CI.

    Args:
        x, y: one (m_t,) and one (n_t,) array of scores per task t (the same tasks in order).
    Returns:
        (estimate, low, high): the mean over tasks of P(X_t > Y_t), and the stratified-bootstrap
        interval (NaN when a task has a single run of x or y).
    """
    if len(x) != len(y) or not x:
        raise ValueError("x and y need the same tasks, at least one")
    tasks = len(x)

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        pairs = zip(samples[:tasks], samples[tasks:], strict=True)
        return np.mean([probability_of_improvement(a, b, axis) for a, b in pairs], axis=0)

    low, high = _bootstrap([*x, *y], statistic, seed, level)
    return float(statistic(*x, *y)), float(low), float(high)


def iqm_interval(
    scores: Sequence[np.ndarray], seed: int = 0, level: float = CONFIDENCE
) -> tuple[float, float, float]:
    """IQM of all runs of all tasks (pooled), with its stratified-bootstrap CI.

    Args:
        scores: one (S_t,) array per task; across tasks they must be on one scale (normalised).
    Returns:
        (estimate, low, high); low and high NaN when a task has a single run.
    """

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return iqm(np.concatenate([_last(s, axis) for s in samples], axis=-1))

    low, high = _bootstrap(list(scores), statistic, seed, level)
    return float(statistic(*scores)), float(low), float(high)


def performance_profile(
    scores: Sequence[np.ndarray], thresholds: np.ndarray, seed: int = 0, level: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs whose score exceeds each threshold (the mean over tasks of each task's
    fraction), with stratified-bootstrap CIs.

    Args:
        scores: one (S_t,) array per task; thresholds: (K,).
    Returns:
        profile, low, high: (K,) each.
    """
    taus = np.asarray(thresholds, dtype=np.float64)

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        fractions = [(_last(s, axis)[..., None, :] > taus[:, None]).mean(-1) for s in samples]
        return np.moveaxis(np.mean(fractions, axis=0), -1, 0)  # (K, ...)

    low, high = _bootstrap(list(scores), statistic, seed, level)
    return statistic(*scores), np.asarray(low), np.asarray(high)


def normalise(score: np.ndarray, random: float, solved: float) -> np.ndarray:
    """(score − random) / (solved − random): a uniform-random policy's return -> 0, the env's
    solved_return -> 1."""
    if not solved > random:
        raise ValueError(f"solved return {solved} must exceed the random return {random}")
    return (np.asarray(score, dtype=np.float64) - random) / (solved - random)


def smallest_p_value(sizes: Sequence[tuple[int, int]]) -> float:
    """The smallest two-sided p-value an exact rank test can give for two algorithms with
    (m_t, n_t) runs on each task t: every run of one beating every run of the other on every
    task, under the null hypothesis that the runs are exchangeable within each task, has
    probability 1 / Π_t C(m_t + n_t, m_t); two-sided, twice that."""
    return min(1.0, 2.0 / math.prod(math.comb(m + n, m) for m, n in sizes))


def enough_runs(sizes: Sequence[tuple[int, int]], level: float = CONFIDENCE) -> bool:
    """Whether the data could show a difference at `level` at all: if even a complete
    separation is not significant, a bootstrap interval (which then collapses to [1, 1]) is no
    evidence either."""
    return smallest_p_value(sizes) <= 1.0 - level


def runs_needed(level: float = CONFIDENCE) -> int:
    """The fewest runs per algorithm, equal on one task, for `enough_runs`: 4 at 95%
    (2/C(8, 4) = 0.029; 3 and 3 give 2/C(6, 3) = 0.1)."""
    s = 1
    while not enough_runs([(s, s)], level):
        s += 1
    return s
