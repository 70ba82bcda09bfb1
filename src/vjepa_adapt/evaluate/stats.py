"""Statistics of probe results: bootstrap CIs, paired arm-vs-reference tests, per-class scores.

Pure numpy (plus the standard library's ``statistics.NormalDist`` for Φ and Φ⁻¹); every random
draw comes from an explicit seed, so the same inputs always give the same numbers.

Conventions
-----------
- Accuracies and deltas are fractions (0.566, not 56.6).
- ``bootstrap_ci_bca``: BCa interval (Efron & Tibshirani 1993, §14.3) for mean per-clip
  correctness. z0 uses the mid-rank share of bootstrap values below the estimate (ties count
  half — accuracy is discrete, as in ``scipy.stats.bootstrap``); the acceleration comes from the
  leave-one-out jackknife; interval ends are linear-interpolated percentiles of the bootstrap
  distribution. When every clip has the same outcome (all correct or all wrong) the bootstrap
  distribution is one point and BCa is undefined: we return the Wilson score interval instead, so
  the interval still reflects how few clips there were.
- ``paired_bootstrap``: ``delta = acc(arm) − acc(reference)`` over the SAME clips. Clip indices are
  resampled jointly (both arms keep their outcome on the drawn clip). CI = BCa of the mean per-clip
  difference d_i = arm_i − ref_i. p-value = exact two-sided sign-flip permutation test of H0 "the
  two arms are exchangeable on every clip": only discordant clips carry signs, so the null
  distribution is Binomial(m, ½) over the m discordant clips — i.e. the exact McNemar test. It
  needs no random draws, so it is exact and reproducible for any n.
"""

from __future__ import annotations

import dataclasses
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()
_CHUNK_ELEMS = 2_000_000  # resample indices in chunks so 10k x n never materialises at once


@dataclasses.dataclass(frozen=True)
class PairedResult:
    """Arm vs reference on shared clips. ``delta = acc_arm − acc_ref`` (fractions)."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int  # shared clips
    acc_ref: float
    acc_arm: float
    n_ref_only: int  # clips only the reference got right
    n_arm_only: int  # clips only the arm got right
    n_resamples: int
    alpha: float
    ci_method: str = "bca"
    p_method: str = "exact sign-flip (McNemar)"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_correct(correct: np.ndarray, name: str = "correct") -> np.ndarray:
    arr = np.asarray(correct)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-clip correctness, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: no clips to compute a statistic on")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 or True/False values")
    return arr.astype(np.float64)


def _check_resampling(n_resamples: int, alpha: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_mean_distribution(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples (n clips drawn with replacement) of ``values`` (n,) or (n, m).

    With a 2-D input the rows (clips) are drawn jointly, giving (n_resamples, m) means — this is
    what keeps paired comparisons paired.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    chunk = max(1, _CHUNK_ELEMS // max(n, 1))
    out = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))  # (chunk, n) clip indices
        out.append(values[idx].mean(axis=1))
    return np.concatenate(out, axis=0)


def bca_interval_of_mean(values: np.ndarray, boot_means: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """BCa (1 − alpha) interval for the mean of ``values`` (n,) given its bootstrap means (B,).

    Raises ``ValueError`` on constant ``values`` (the interval is undefined there).
    """
    values = np.asarray(values, dtype=np.float64)
    boot = np.asarray(boot_means, dtype=np.float64)
    n, b = values.size, boot.size
    if n < 2 or np.ptp(values) == 0:
        raise ValueError("BCa is undefined for fewer than 2 values or constant values")
    estimate = values.mean()
    # Bias correction: mid-rank share of the bootstrap distribution below the estimate. Clipped
    # away from 0/1 so Φ⁻¹ stays finite for tiny resample counts.
    share = (np.count_nonzero(boot < estimate) + np.count_nonzero(boot <= estimate)) / (2.0 * b)
    share = min(max(share, 0.5 / b), 1.0 - 0.5 / b)
    z0 = _NORMAL.inv_cdf(share)
    # Acceleration from the jackknife: leave-one-out means.
    jack = (values.sum() - values) / (n - 1)  # (n,)
    u = jack.mean() - jack
    accel = float((u**3).sum() / (6.0 * (u**2).sum() ** 1.5))
    ends = []
    for q in (alpha / 2.0, 1.0 - alpha / 2.0):
        zq = _NORMAL.inv_cdf(q)
        num = z0 + zq
        denom = 1.0 - accel * num
        # denom <= 0 only for absurd skew; the adjusted level then saturates at the far end.
        level = _NORMAL.cdf(z0 + num / denom) if denom > 0 else (1.0 if num > 0 else 0.0)
        ends.append(float(np.percentile(boot, 100.0 * level)))
    return ends[0], ends[1]


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (used when BCa is undefined)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    z = _NORMAL.inv_cdf(1.0 - alpha / 2.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At p = 0 or 1 one end is exactly 0 or 1; set it so rounding cannot leave 1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return float(low), float(high)


def bootstrap_ci_bca(
    correct: np.ndarray, n_resamples: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(accuracy, low, high): mean per-clip correctness with its BCa (1 − alpha) bootstrap interval.

    All-correct / all-wrong inputs return the Wilson score interval (see module docstring).
    """
    _check_resampling(n_resamples, alpha)
    values = _as_correct(correct)
    estimate = float(values.mean())
    if values.size < 2 or np.ptp(values) == 0:
        low, high = wilson_interval(int(values.sum()), values.size, alpha)
        return estimate, low, high
    boot = bootstrap_mean_distribution(values, n_resamples, np.random.default_rng(seed))
    low, high = bca_interval_of_mean(values, boot, alpha)
    return estimate, low, high


def sign_flip_p_value(n_ref_only: int, n_arm_only: int) -> float:
    """Exact two-sided p of the paired sign-flip test (= exact McNemar) from the discordant counts.

    Under H0 each of the m discordant clips favours either arm with probability ½, so
    p = P(|2X − m| >= |n_arm_only − n_ref_only|), X ~ Binomial(m, ½) = 2·P(X <= min(counts)).
    Exact integer arithmetic, so no rounding until the final division.
    """
    if n_ref_only < 0 or n_arm_only < 0:
        raise ValueError("discordant counts must be >= 0")
    m = n_ref_only + n_arm_only
    if n_ref_only == n_arm_only:
        return 1.0
    k_max = min(n_ref_only, n_arm_only)
    tail, c = 0, 1  # c = C(m, k)
    for k in range(k_max + 1):
        tail += c
        c = c * (m - k) // (k + 1)
    return min(1.0, 2 * tail / 2**m)


def paired_bootstrap(
    correct_ref: np.ndarray,
    correct_arm: np.ndarray,
    n_resamples: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
) -> PairedResult:
    """Δ = acc(arm) − acc(reference) on the same clips (same order), BCa CI, exact sign-flip p."""
    _check_resampling(n_resamples, alpha)
    ref = _as_correct(correct_ref, "correct_ref")
    arm = _as_correct(correct_arm, "correct_arm")
    if ref.shape != arm.shape:
        raise ValueError(f"paired comparison needs the same clips: {ref.size} vs {arm.size} outcomes")
    diff = arm - ref  # (n,) in {-1, 0, 1}
    delta = float(diff.mean())
    n_ref_only = int(np.count_nonzero(diff < 0))
    n_arm_only = int(np.count_nonzero(diff > 0))
    if diff.size < 2 or np.ptp(diff) == 0:
        # Every clip differs the same way (usually: no discordant clips at all) — resampling can
        # only reproduce Δ, so the bootstrap interval is the point itself.
        low = high = delta
    else:
        boot = bootstrap_mean_distribution(diff, n_resamples, np.random.default_rng(seed))
        low, high = bca_interval_of_mean(diff, boot, alpha)
    return PairedResult(
        delta=delta,
        ci_low=low,
        ci_high=high,
        p_value=sign_flip_p_value(n_ref_only, n_arm_only),
        n=int(diff.size),
        acc_ref=float(ref.mean()),
        acc_arm=float(arm.mean()),
        n_ref_only=n_ref_only,
        n_arm_only=n_arm_only,
        n_resamples=n_resamples,
        alpha=alpha,
    )


def _check_labels(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and equally long, got {t.shape} and {p.shape}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} must hold integer class ids in [0, {num_classes})")
    return t.astype(np.int64), p.astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, normalize: bool = True) -> np.ndarray:
    """(K, K) matrix, rows = true class, columns = predicted class.

    ``normalize=True`` divides each row by its support (rows of absent classes stay 0), so the
    diagonal is the per-class recall; ``False`` returns integer counts.
    """
    t, p = _check_labels(y_true, y_pred, num_classes)
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    if not normalize:
        return counts
    support = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, support, out=np.zeros(counts.shape, dtype=np.float64), where=support > 0)


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) accuracy (recall) per true class; NaN for classes with no clips in ``y_true``."""
    counts = confusion_matrix(y_true, y_pred, num_classes, normalize=False)
    support = counts.sum(axis=1)
    acc = np.full(num_classes, np.nan)
    np.divide(np.diag(counts), support, out=acc, where=support > 0)
    return acc


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in ``y_true`` or ``y_pred``.

    A class that is never predicted (or only ever predicted wrongly) scores F1 = 0; a class absent
    from both has no F1 and is left out (same as scikit-learn's default label set).
    """
    counts = confusion_matrix(y_true, y_pred, num_classes, normalize=False)
    tp = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)  # true count per class
    predicted = counts.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        raise ValueError("macro_f1 needs at least one clip")
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); 0 when TP = 0.
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return float(f1.mean())
