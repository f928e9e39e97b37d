"""Exact confidence intervals and McNemar tests against independently computed values."""

import math
from fractions import Fraction

import numpy as np
import pytest

from speechbrain_quads.evaluation.stats import clopper_pearson, compare, mcnemar_exact


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k), X ~ Binomial(n, p), summed term by term with exact binomial coefficients."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    # R: binom.test(8, 10)$conf.int
    (8, 10, 0.4439045376923585, 0.9747892736731666),
    # closed forms: 0/n -> [0, 1 - (alpha/2)^(1/n)], n/n -> [(alpha/2)^(1/n), 1]
    (0, 10, 0.0, 1 - 0.025 ** (1 / 10)),
    (10, 10, 0.025 ** (1 / 10), 1.0),
    (1, 1, 0.025, 1.0),
    (113, 120, 0.8835016203543854, 0.9762279762094809),
])
def test_clopper_pearson_known_bounds(k, n, low, high):
    got = clopper_pearson(k, n)
    assert got == pytest.approx((low, high), abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(8, 10), (3, 17), (57, 120)])
def test_clopper_pearson_bounds_solve_their_defining_tails(k, n):
    low, high = clopper_pearson(k, n)
    assert 1 - _binomial_cdf(k - 1, n, low) == pytest.approx(0.025, abs=1e-12)
    assert _binomial_cdf(k, n, high) == pytest.approx(0.025, abs=1e-12)
    assert low < k / n < high


def test_clopper_pearson_large_test_set_and_other_levels():
    low, high = clopper_pearson(9000, 13078)  # SLURP's test set size
    assert (low, high) == pytest.approx((0.6801598826955115, 0.696113544696646), abs=1e-12)
    low95, high95 = clopper_pearson(8, 10)
    low90, high90 = clopper_pearson(8, 10, confidence=0.90)
    assert low95 < low90 < high90 < high95
    assert 1 - _binomial_cdf(7, 10, low90) == pytest.approx(0.05, abs=1e-12)


@pytest.mark.parametrize(("args", "message"), [((11, 10), "successes <= trials"),
                                               ((0, 0), "trials >= 1"), ((-1, 5), "0 <=")])
def test_clopper_pearson_refuses_impossible_counts(args, message):
    with pytest.raises(ValueError, match=message):
        clopper_pearson(*args)


@pytest.mark.parametrize(("a_only", "b_only", "expected"), [
    (1, 5, Fraction(2 * (1 + 6), 2**6)),            # 0.21875
    (0, 6, Fraction(2, 2**6)),                      # 0.03125
    (3, 7, Fraction(2 * (1 + 10 + 45 + 120), 2**10)),  # 0.34375
    (7, 2, Fraction(2 * (1 + 9 + 36), 2**9)),       # 0.1796875
    (4, 4, Fraction(1)),                            # the doubled tail exceeds 1
    (0, 0, Fraction(1)),                            # no discordant pair: no evidence
    (0, 1, Fraction(1)),
])
def test_mcnemar_exact_by_hand(a_only, b_only, expected):
    assert mcnemar_exact(a_only, b_only) == float(expected)
    assert mcnemar_exact(b_only, a_only) == float(expected)


def test_mcnemar_exact_large_counts_stay_finite():
    p = mcnemar_exact(400, 500)  # 2**900 overflows a float; integers do not
    assert 0.0 < p < 0.002


def test_compare_pairs_by_recording_id():
    a = {"f1": 1, "f2": 1, "f3": 1, "f4": 0, "f5": 1, "f6": 1, "f7": 1, "f8": 1, "f9": 1, "f10": 0}
    b = {**{key: 0 for key in a}, "f1": 1, "f2": 1, "f4": 1}
    result = compare(a, b)
    assert (result.n, result.a_only, result.b_only) == (10, 6, 1)
    assert (result.accuracy_a, result.accuracy_b) == (0.8, 0.3)
    assert result.p_value == float(Fraction(2 * (1 + 7), 2**7))  # 0.125
    assert result.ci95_a == pytest.approx((0.4439045376923585, 0.9747892736731666), abs=1e-12)
    assert result.as_dict()["ci95_b"] == list(clopper_pearson(3, 10))


def test_compare_refuses_unpaired_or_non_binary_maps():
    with pytest.raises(ValueError, match="different recordings.*only in A"):
        compare({"x": 1, "y": 0}, {"x": 1, "z": 0})
    with pytest.raises(ValueError, match="0 or 1"):
        compare({"x": 1}, {"x": 2})
    with pytest.raises(ValueError, match="no recordings"):
        compare({}, {})


def test_sign_flip_test_counts_every_sign_pattern():
    """Against brute force over all 2^m sign patterns, and hand-counted cases."""
    import itertools

    from speechbrain_quads.evaluation.stats import sign_flip_exact

    assert sign_flip_exact([2, 1]) == 0.5       # sums 3, 1, -1, -3
    assert sign_flip_exact([4, 4, 4]) == 0.25   # only all + or all - reach |12|
    assert sign_flip_exact([2, -1]) == 1.0      # |1| is the smallest possible sum
    assert sign_flip_exact([0, 0]) == 1.0 and sign_flip_exact([]) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = [int(x) for x in rng.integers(-4, 5, size=int(rng.integers(1, 11)))]
        sizes = [abs(x) for x in d if x]
        observed = abs(sum(d))
        sums = [abs(sum(s * z for s, z in zip(signs, sizes, strict=True)))
                for signs in itertools.product((1, -1), repeat=len(sizes))]
        expected = sum(v >= observed for v in sums) / len(sums) if sizes else 1.0
        assert sign_flip_exact(d) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(("a_only", "b_only"), [(0, 0), (1, 5), (5, 1), (7, 7), (12, 30),
                                                (0, 9), (98, 59)])
def test_sign_flip_test_with_one_recording_per_cluster_is_mcnemar(a_only, b_only):
    from speechbrain_quads.evaluation.stats import sign_flip_exact

    differences = [1] * a_only + [-1] * b_only + [0] * 5
    assert sign_flip_exact(differences) == pytest.approx(mcnemar_exact(a_only, b_only),
                                                         rel=1e-12)


def test_comparison_by_cluster_counts_a_sentence_once():
    """Four voices of one sentence that A gets right and B wrong are one piece of evidence,
    not four: McNemar says p = 0.125, the clustered test p = 1."""
    from speechbrain_quads.evaluation.stats import compare, compare_by_cluster

    a = {f"s1-v{v}": 1 for v in range(4)} | {f"s2-v{v}": 1 for v in range(4)}
    b = {f"s1-v{v}": 0 for v in range(4)} | {f"s2-v{v}": 1 for v in range(4)}
    sentence = {key: key.split("-")[0] for key in a}
    assert compare(a, b).p_value == 0.125
    assert compare_by_cluster(a, b, sentence) == 1.0
    assert compare_by_cluster(a, b, {key: key for key in a}) == 0.125
    with pytest.raises(ValueError, match=r"1 recording\(s\) have no cluster, e\.g\. \['s2-v3'\]"):
        compare_by_cluster(a, b, {k: v for k, v in sentence.items() if k != "s2-v3"})
    with pytest.raises(ValueError, match="different recordings"):
        compare_by_cluster(a, {"s1-v0": 1}, sentence)
