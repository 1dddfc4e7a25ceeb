"""Confidence intervals and paired tests.

* :func:`bootstrap_ci` — case-resampling bootstrap, 1,000 replicates by default, with a
  ``numpy.random.Generator`` that the caller passes explicitly (no global seed).
  ``method="percentile"`` (default) is implemented here: resample the cases (rows of all arrays
  together, i.e. paired), recompute the statistic, take the 2.5 / 97.5 percentiles. It is our own
  loop rather than ``scipy.stats.bootstrap`` because a resample of a small test set can contain a
  single class, where AUC is undefined: such replicates are **redrawn** (their number is reported
  as ``n_redrawn``) so every interval rests on exactly ``n_resamples`` valid replicates.
  ``method="BCa"`` / ``"basic"`` delegate to ``scipy.stats.bootstrap(..., paired=True)``
  (use them for statistics defined on every resample, e.g. a mean Dice).
* :func:`wilcoxon_test` — one-sided (default ``alternative="greater"``: a > b) Wilcoxon
  signed-rank test on paired values, ``scipy.stats.wilcoxon`` (exact null distribution for
  small samples without ties, normal approximation otherwise: scipy's ``method="auto"``).
* :func:`paired_permutation_test` — paired (sign-flip) permutation test of the mean
  difference, ``scipy.stats.permutation_test(permutation_type="samples")`` with 10,000
  permutations; when 2**n <= n_resamples scipy enumerates all sign flips (exact p-value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Alternative = Literal["greater", "less", "two-sided"]


@dataclass(frozen=True)
class CI:
    """A point estimate with its confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95
    n_resamples: int = 0
    method: str = "percentile"
    n_redrawn: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return format_ci(self.estimate, self.low, self.high)


def format_ci(estimate: float, low: float, high: float, digits: int = 3) -> str:
    """``0.812 [0.774, 0.851]``."""
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError("pass a numpy.random.Generator explicitly, e.g. rng=np.random.default_rng(0)")
    return rng


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: Sequence,
    rng: np.random.Generator,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    method: Literal["percentile", "BCa", "basic"] = "percentile",
    max_redraw_factor: int = 10,
    batch_statistic: Callable[..., np.ndarray] | None = None,
) -> CI:
    """Bootstrap CI of ``statistic(*arrays)``, resampling the cases (rows) of all arrays together.

    ``statistic`` takes the arrays (same first dimension) and returns a float; a replicate for which
    it raises ValueError or returns NaN is redrawn (percentile method). ``batch_statistic``, if
    given, computes the statistic of many resamples at once from arrays with a leading resample axis
    (e.g. :func:`~PASTALib.eval.metrics.auc_rows`), NaN for undefined ones; it must agree with
    ``statistic``. Example::

        bootstrap_ci(auc, y_true, y_score, rng=np.random.default_rng(0))
        bootstrap_ci(np.mean, dsc_per_case, rng=rng)
    """
    rng = _check_rng(rng)
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("all arrays must have the same number of cases")
    if n < 2:
        raise ValueError("bootstrap needs at least 2 cases")
    estimate = float(statistic(*arrays))
    alpha = 1.0 - confidence
    if method != "percentile":
        from scipy import stats

        res = stats.bootstrap(arrays, statistic, n_resamples=n_resamples, paired=True, vectorized=False,
                              confidence_level=confidence, method=method, rng=rng)
        return CI(estimate, float(res.confidence_interval.low), float(res.confidence_interval.high),
                  confidence, n_resamples, method)
    values = np.empty(n_resamples)
    filled, redrawn = 0, 0
    while batch_statistic is not None and filled < n_resamples:
        if redrawn > max_redraw_factor * n_resamples:
            raise ValueError(f"statistic undefined on too many resamples ({redrawn}); is one class nearly absent?")
        need = n_resamples - filled
        idx = rng.integers(0, n, size=(need, n))
        batch = np.asarray(batch_statistic(*(a[idx] for a in arrays)), dtype=float)
        ok = batch[~np.isnan(batch)]
        redrawn += need - len(ok)
        values[filled:filled + len(ok)] = ok
        filled += len(ok)
    while filled < n_resamples:
        if redrawn > max_redraw_factor * n_resamples:
            raise ValueError(f"statistic undefined on too many resamples ({redrawn}); is one class nearly absent?")
        idx = rng.integers(0, n, size=n)
        try:
            value = float(statistic(*(a[idx] for a in arrays)))
        except ValueError:
            value = float("nan")
        if np.isnan(value):
            redrawn += 1
            continue
        values[filled] = value
        filled += 1
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return CI(estimate, float(low), float(high), confidence, n_resamples, "percentile", redrawn)


def bootstrap_mean_ci(values: Sequence[float], *, rng: np.random.Generator, n_resamples: int = 1000,
                      confidence: float = 0.95) -> CI:
    """Percentile bootstrap CI of the mean of per-case values (vectorised; NaNs dropped first)."""
    rng = _check_rng(rng)
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        raise ValueError("bootstrap needs at least 2 non-NaN values")
    idx = rng.integers(0, len(v), size=(n_resamples, len(v)))
    means = v[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return CI(float(v.mean()), float(low), float(high), confidence, n_resamples, "percentile")


@dataclass(frozen=True)
class TestResult:
    """A paired test of a against b."""

    test: str
    statistic: float
    p_value: float
    alternative: str
    n: int
    mean_difference: float
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired tests need two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired values contain NaN; drop those cases first")
    return a, b


def wilcoxon_test(a: Sequence[float], b: Sequence[float], *, alternative: Alternative = "greater",
                  method: str = "auto") -> TestResult:
    """Wilcoxon signed-rank test of the paired differences a - b (scipy.stats.wilcoxon;
    zero differences dropped, scipy's default ``zero_method="wilcox"``)."""
    from scipy import stats

    a, b = _paired(a, b)
    res = stats.wilcoxon(a, b, alternative=alternative, method=method)
    return TestResult("wilcoxon", float(res.statistic), float(res.pvalue), alternative, len(a),
                      float(np.mean(a - b)), f"scipy.stats.wilcoxon method={method}")


def paired_permutation_test(a: Sequence[float], b: Sequence[float], *, rng: np.random.Generator,
                            n_resamples: int = 10000, alternative: Alternative = "greater") -> TestResult:
    """Paired permutation test of mean(a - b): each pair's values are swapped at random
    (``scipy.stats.permutation_test``, ``permutation_type="samples"``)."""
    from scipy import stats

    rng = _check_rng(rng)
    a, b = _paired(a, b)

    def mean_diff(x, y, axis=-1):
        return np.mean(x - y, axis=axis)

    res = stats.permutation_test((a, b), mean_diff, permutation_type="samples", vectorized=True,
                                 n_resamples=n_resamples, alternative=alternative, rng=rng)
    exact = 2 ** len(a) <= n_resamples
    return TestResult("permutation", float(res.statistic), float(res.pvalue), alternative, len(a),
                      float(np.mean(a - b)),
                      f"scipy.stats.permutation_test samples, {'exact (all 2^n sign flips)' if exact else f'{n_resamples} permutations'}")
