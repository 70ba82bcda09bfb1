"""Statistics: BCa and paired tests against brute force and scipy; hand-computed per-class scores."""

import math
from itertools import product
from statistics import NormalDist
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats

from vjepa_adapt.evaluate.stats import (
    bca_interval_of_mean,
    bootstrap_ci_bca,
    bootstrap_mean_distribution,
    confusion_matrix,
    macro_f1,
    paired_bootstrap,
    per_class_accuracy,
    sign_flip_p_value,
    wilson_interval,
)

N = NormalDist()


def exact_bca_by_enumeration(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """BCa written out independently, on the EXACT bootstrap distribution: every one of the n^n
    equally likely index tuples is enumerated."""
    n = len(values)
    idx = np.array(list(product(range(n), repeat=n)))  # (n^n, n)
    boot = values[idx].mean(axis=1)
    est = values.mean()
    z0 = N.inv_cdf(np.mean(boot < est) + 0.5 * np.mean(boot == est))
    jack = np.array([np.delete(values, i).mean() for i in range(n)])
    u = jack.mean() - jack
    a = (u**3).sum() / (6 * (u**2).sum() ** 1.5)
    ends = []
    for q in (alpha / 2, 1 - alpha / 2):
        z = N.inv_cdf(q)
        ends.append(np.percentile(boot, 100 * N.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))))
    return ends[0], ends[1]


@pytest.mark.parametrize("alpha", [0.05, 0.3])
@pytest.mark.parametrize("bits", ["110101", "111110", "100100", "100000"])
def test_bca_matches_exact_enumerated_bootstrap(bits, alpha):
    # n = 6 -> all 46,656 resamples enumerated. Monte Carlo with 40k draws must land on the same
    # atoms (multiples of 1/6) of the discrete accuracy distribution.
    values = np.array([int(b) for b in bits], dtype=float)
    lo_exact, hi_exact = exact_bca_by_enumeration(values, alpha)
    est, lo, hi = bootstrap_ci_bca(values.astype(bool), n_resamples=40_000, alpha=alpha, seed=3)
    assert est == pytest.approx(values.mean())
    assert lo == pytest.approx(lo_exact, abs=1e-9)
    assert hi == pytest.approx(hi_exact, abs=1e-9)
    # the interval formula itself, fed the exact distribution, reproduces the enumeration exactly
    idx = np.array(list(product(range(6), repeat=6)))
    exact = bca_interval_of_mean(values, values[idx].mean(axis=1), alpha)
    assert exact == pytest.approx((lo_exact, hi_exact), abs=1e-12)


@pytest.mark.parametrize("p,n,seed", [(0.57, 300, 0), (0.9, 120, 1), (0.15, 80, 2)])
def test_bca_formula_equals_scipy_on_the_same_bootstrap_distribution(p, n, seed):
    rng = np.random.default_rng(seed)
    c = (rng.random(n) < p).astype(float)
    boot = bootstrap_mean_distribution(c, 5_000, np.random.default_rng(seed))
    ref = scipy.stats.bootstrap((c,), np.mean, n_resamples=0, method="BCa",
                                bootstrap_result=SimpleNamespace(bootstrap_distribution=boot))
    ci = ref.confidence_interval
    assert bca_interval_of_mean(c, boot) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_bca_agrees_with_scipy_bootstrap_end_to_end():
    rng = np.random.default_rng(7)
    c = rng.random(500) < 0.6
    est, lo, hi = bootstrap_ci_bca(c, n_resamples=10_000, seed=11)
    ref = scipy.stats.bootstrap((c.astype(float),), np.mean, n_resamples=10_000, method="BCa", rng=12)
    assert est == pytest.approx(c.mean())
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.006)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.006)
    assert lo < est < hi


def test_bca_is_reproducible_and_seeded():
    c = np.random.default_rng(0).random(200) < 0.5
    assert bootstrap_ci_bca(c, 2_000, seed=5) == bootstrap_ci_bca(c, 2_000, seed=5)
    assert bootstrap_ci_bca(c, 2_000, seed=5) != bootstrap_ci_bca(c, 2_000, seed=6)


def test_bca_degenerate_falls_back_to_wilson():
    z2 = NormalDist().inv_cdf(0.975) ** 2
    est, lo, hi = bootstrap_ci_bca(np.ones(10, bool))
    assert (est, hi) == (1.0, 1.0)
    assert lo == pytest.approx(1 / (1 + z2 / 10))  # Wilson lower bound at p = 1 is n / (n + z^2)
    est, lo, hi = bootstrap_ci_bca(np.zeros(10, bool))
    assert (est, lo) == (0.0, 0.0) and hi == pytest.approx(1 - 1 / (1 + z2 / 10))
    # Wilson against its textbook formula at an interior point
    lo, hi = wilson_interval(7, 20)
    p, n, z = 0.35, 20, math.sqrt(z2)
    c = (p + z2 / (2 * n)) / (1 + z2 / n)
    h = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    assert (lo, hi) == pytest.approx((c - h, c + h))


def test_bca_input_validation():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci_bca(np.array([], bool))
    with pytest.raises(ValueError, match="0/1"):
        bootstrap_ci_bca(np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci_bca(np.ones((2, 2), bool))


def test_paired_hand_example():
    ref = np.array([1, 1, 0, 0, 1, 0, 1, 0], bool)
    arm = np.array([1, 0, 1, 1, 1, 1, 1, 0], bool)
    r = paired_bootstrap(ref, arm, n_resamples=2_000, seed=0)
    assert r.delta == pytest.approx(6 / 8 - 4 / 8)
    assert (r.acc_ref, r.acc_arm, r.n, r.n_ref_only, r.n_arm_only) == (0.5, 0.75, 8, 1, 3)
    # 4 discordant clips, 3 favour the arm: p = 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * 5/16
    assert r.p_value == pytest.approx(10 / 16)
    assert r.ci_low <= r.delta <= r.ci_high


def test_paired_p_value_equals_brute_force_sign_flips_and_binomtest():
    rng = np.random.default_rng(4)
    ref = rng.random(14) < 0.4
    arm = rng.random(14) < 0.7
    d = arm.astype(int) - ref.astype(int)
    observed = abs(d.sum())
    flips = np.array(list(product([-1, 1], repeat=14)))  # all 2^14 sign assignments
    brute = np.mean(np.abs((flips * d).sum(axis=1)) >= observed)
    r = paired_bootstrap(ref, arm, n_resamples=1_000)
    assert r.p_value == pytest.approx(brute, abs=1e-12)
    for a, b in [(3, 10), (0, 7), (25, 40), (400, 450)]:
        assert sign_flip_p_value(a, b) == pytest.approx(scipy.stats.binomtest(a, a + b, 0.5).pvalue, rel=1e-9)
    assert sign_flip_p_value(5, 5) == 1.0 and sign_flip_p_value(0, 0) == 1.0


def test_paired_ci_equals_scipy_paired_bca_on_same_distribution():
    rng = np.random.default_rng(9)
    ref = (rng.random(300) < 0.55).astype(float)
    arm = np.where(rng.random(300) < 0.8, ref, 1 - ref)
    arm[:30] = 1.0
    r = paired_bootstrap(ref, arm, n_resamples=4_000, seed=21)
    boot = bootstrap_mean_distribution(arm - ref, 4_000, np.random.default_rng(21))
    sp = scipy.stats.bootstrap((ref, arm), lambda a, b, axis=-1: b.mean(axis=axis) - a.mean(axis=axis),
                               paired=True, n_resamples=0, method="BCa",
                               bootstrap_result=SimpleNamespace(bootstrap_distribution=boot))
    assert (r.ci_low, r.ci_high) == pytest.approx((sp.confidence_interval.low, sp.confidence_interval.high), abs=1e-12)


def test_paired_resampling_is_joint():
    # Two arms that are right on exactly the same clips: a joint resample can never separate them,
    # so the CI is the point 0. (Independent resampling would give a wide interval around 0.)
    c = np.random.default_rng(1).random(100) < 0.5
    r = paired_bootstrap(c, c.copy())
    assert (r.delta, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same clips"):
        paired_bootstrap(c, c[:-1])


def test_per_class_scores_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    acc = per_class_accuracy(y_true, y_pred, 4)
    np.testing.assert_allclose(acc[:3], [0.5, 1.0, 0.5])
    assert np.isnan(acc[3])  # class 3 has no clips
    # F1: class 0 = 2*1/(2+2) = .5; class 1 = 2*2/(2+3) = .8; class 2 = 2*1/(2+1) = 2/3; class 3 absent
    assert macro_f1(y_true, y_pred, 4) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class predicted but never true counts with F1 = 0
    assert macro_f1(np.array([0, 0]), np.array([0, 1]), 2) == pytest.approx((2 / 3 + 0) / 2)
    counts = confusion_matrix(y_true, y_pred, 4, normalize=False)
    np.testing.assert_array_equal(counts, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    norm = confusion_matrix(y_true, y_pred, 4)
    np.testing.assert_allclose(norm[:3].sum(axis=1), 1.0)
    np.testing.assert_allclose(norm[3], 0.0)
    with pytest.raises(ValueError, match="class ids"):
        per_class_accuracy(np.array([0, 4]), np.array([0, 1]), 4)
