"""Uncertainty of test accuracies: exact confidence intervals and exact paired tests.

- :func:`clopper_pearson`: the exact (Clopper-Pearson) binomial interval of an accuracy.
- :func:`mcnemar_exact`: the exact McNemar test of two classifiers scored on the same test
  recordings (a two-sided binomial test with p = 1/2 on the discordant pairs).
- :func:`compare`: both, from two ``{recording id: correct (0/1)}`` maps.
- :func:`sign_flip_exact` / :func:`compare_by_cluster`: the exact paired test when recordings
  come in clusters (a sentence said by several voices): per-cluster differences with random
  signs; with one recording per cluster it is the exact McNemar test.

Pure Python and numpy (no scipy): binomial tails are summed in log space, so intervals stay exact
to about 1e-12 for test sets of any size (SLURP's 13,078 recordings take a few milliseconds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np


def _log_comb(trials: int) -> np.ndarray:
    """log C(trials, i) for i = 0..trials; shape (trials + 1,)."""
    return np.array([math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
                     for i in range(trials + 1)])


def _log_pmf(log_comb: np.ndarray, p: float) -> np.ndarray:
    """log P(X = i) for i = 0..n, X ~ Binomial(n, p), 0 < p < 1, from ``_log_comb(n)``."""
    n = len(log_comb) - 1
    i = np.arange(n + 1, dtype=np.float64)
    return log_comb + i * math.log(p) + (n - i) * math.log1p(-p)


def _tail(log_pmf: np.ndarray) -> float:
    """sum(exp(log_pmf)) computed stably (log-sum-exp)."""
    top = float(log_pmf.max())
    return math.exp(top) * float(np.exp(log_pmf - top).sum())


def _solve(function, target: float, increasing: bool) -> float:
    """The p in (0, 1) where the monotone ``function(p)`` equals ``target`` (bisection, 1e-15)."""
    low, high = 0.0, 1.0
    while high - low > 1e-15:
        middle = (low + high) / 2
        if (function(middle) < target) == increasing:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval (Clopper-Pearson) of ``successes / trials``.

    The lower bound p_L solves P(X >= successes | p_L) = alpha / 2 (0 when successes = 0), the
    upper p_U solves P(X <= successes | p_U) = alpha / 2 (1 when successes = trials), with
    alpha = 1 - confidence.

    Example
    -------
    >>> [round(x, 4) for x in clopper_pearson(8, 10)]
    [0.4439, 0.9748]
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha, log_comb = 1 - confidence, _log_comb(trials)
    low = 0.0 if successes == 0 else _solve(
        lambda p: _tail(_log_pmf(log_comb, p)[successes:]), alpha / 2, increasing=True)
    high = 1.0 if successes == trials else _solve(
        lambda p: _tail(_log_pmf(log_comb, p)[: successes + 1]), alpha / 2, increasing=False)
    return low, high


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    ``a_only``: recordings classifier A gets right and B wrong; ``b_only`` the reverse. Under the
    null hypothesis (equal accuracies) each discordant recording goes either way with probability
    1/2: p = min(1, 2 * P(X <= min(a_only, b_only))), X ~ Binomial(a_only + b_only, 1/2), computed
    with exact integers; 1.0 when there are no discordant recordings.

    Example
    -------
    >>> mcnemar_exact(1, 5)  # 2 * (1 + 6) / 2**6
    0.21875
    """
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only} and {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


@dataclass(frozen=True)
class Comparison:
    """Two classifiers scored on the same recordings (accuracies in [0, 1])."""

    n: int
    accuracy_a: float
    accuracy_b: float
    ci95_a: tuple[float, float]
    ci95_b: tuple[float, float]
    a_only: int
    """Recordings A gets right and B wrong."""
    b_only: int
    """Recordings B gets right and A wrong."""
    p_value: float
    """Exact McNemar p-value (two-sided)."""

    def as_dict(self) -> dict:
        """A JSON-ready dict (intervals as lists)."""
        return {**asdict(self), "ci95_a": list(self.ci95_a), "ci95_b": list(self.ci95_b)}


def _check_paired(a: Mapping[str, int], b: Mapping[str, int]) -> None:
    """Raise ValueError unless ``a`` and ``b`` score the same recordings with 0 or 1."""
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(f"the two classifiers were scored on different recordings: "
                         f"{len(only_a)} only in A (e.g. {only_a[:3]}), {len(only_b)} only in B "
                         f"(e.g. {only_b[:3]})")
    if not a:
        raise ValueError("no recordings to compare")
    bad = [key for key, value in {**a, **b}.items() if value not in (0, 1)]
    if bad:
        raise ValueError(f"correctness must be 0 or 1; e.g. {bad[0]!r}")


def compare(a: Mapping[str, int], b: Mapping[str, int]) -> Comparison:
    """Paired comparison of two ``{recording id: correct (0 or 1)}`` maps over the same ids.

    Raises ValueError when the ids differ (the pairs would not line up), naming a few.
    """
    _check_paired(a, b)
    n, right_a, right_b = len(a), sum(a.values()), sum(b.values())
    a_only = sum(1 for key in a if a[key] and not b[key])
    b_only = sum(1 for key in a if b[key] and not a[key])
    return Comparison(n=n, accuracy_a=right_a / n, accuracy_b=right_b / n,
                      ci95_a=clopper_pearson(right_a, n), ci95_b=clopper_pearson(right_b, n),
                      a_only=a_only, b_only=b_only, p_value=mcnemar_exact(a_only, b_only))


def sign_flip_exact(differences: Sequence[int]) -> float:
    """Two-sided exact sign-flip (randomization) p-value of paired, clustered 0/1 scores.

    ``differences``: per cluster, the recordings A gets right minus those B gets right. Under
    the null hypothesis that A and B are exchangeable within every cluster, each difference
    keeps or flips its sign with probability 1/2, independently: p = P(|S| >= |s|) with
    S = sum of +-|d_i| and s the observed sum, counted exactly over the 2^m sign patterns of the
    m non-zero clusters (a convolution of integer counts). With one recording per cluster the
    differences are +-1 or 0 and p equals ``mcnemar_exact``.

    Example
    -------
    >>> sign_flip_exact([2, 1])  # sums 3, 1, -1, -3: two of four at |S| >= 3
    0.5
    """
    sizes = [abs(int(d)) for d in differences if d]
    if not sizes:
        return 1.0
    total = sum(sizes)
    counts = [0] * (2 * total + 1)  # counts[k]: sign patterns with sum k - total
    counts[total] = 1
    for size in sizes:
        flipped = [0] * len(counts)
        for k, count in enumerate(counts):
            if count:
                flipped[k + size] += count
                flipped[k - size] += count
        counts = flipped
    observed = abs(sum(int(d) for d in differences))
    extreme = sum(c for k, c in enumerate(counts) if abs(k - total) >= observed)
    return float(Fraction(extreme, 2 ** len(sizes)))


def compare_by_cluster(a: Mapping[str, int], b: Mapping[str, int],
                       cluster: Mapping[str, object]) -> float:
    """``sign_flip_exact`` of two ``{recording id: correct (0/1)}`` maps over the same ids,
    clustered by ``cluster`` ({recording id: cluster key, e.g. the sentence's id}).

    Raises ValueError when the ids differ or a recording has no cluster.
    """
    _check_paired(a, b)
    missing = sorted(a.keys() - cluster.keys())
    if missing:
        raise ValueError(f"{len(missing)} recording(s) have no cluster, e.g. {missing[:3]}")
    differences: dict[object, int] = {}
    for key in a:
        differences[cluster[key]] = differences.get(cluster[key], 0) + a[key] - b[key]
    return sign_flip_exact(list(differences.values()))
