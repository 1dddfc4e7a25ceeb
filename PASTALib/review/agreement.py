"""Inter-reader agreement of a realism study: ICC, quadratic kappa and Krippendorff's alpha with case-bootstrap CIs."""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import Any

import numpy as np

#: The realism rating scale (Likert 1-5).
LIKERT = (1, 2, 3, 4, 5)


def weighted_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Quadratic-weighted Cohen's kappa of two readers on the 1-5 scale (sklearn)."""
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(np.asarray(a, int), np.asarray(b, int), labels=list(LIKERT), weights="quadratic"))


def quadratic_kappa_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa of many resamples at once (rows of ``a`` and ``b``), NaN where undefined.

    Hand-written for the bootstrap only (sklearn's per-call validation costs ~25 ms, x 1000 replicates
    x reader pairs): with weights (i - j)^2 kappa equals 2 cov(a, b) / (var a + var b + (mean a - mean b)^2)
    with population moments (Cohen 1968; Fleiss & Cohen 1973); the test checks it against sklearn.
    """
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    ma, mb = a.mean(axis=-1, keepdims=True), b.mean(axis=-1, keepdims=True)
    cov = ((a - ma) * (b - mb)).mean(axis=-1)
    denominator = a.var(axis=-1) + b.var(axis=-1) + (ma - mb)[..., 0] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * cov / np.where(denominator > 0, denominator, 1), np.nan)


def krippendorff_ordinal(matrix: np.ndarray) -> float:
    """Ordinal Krippendorff's alpha; ``matrix`` is readers x cases with NaN for missing ratings."""
    import krippendorff

    return float(krippendorff.alpha(reliability_data=np.asarray(matrix, float),
                                    level_of_measurement="ordinal", value_domain=list(LIKERT)))


#: pingouin 0.7 names ICC forms after McGraw & Wong; Shrout & Fleiss names in brackets.
_ICC_NAMES = {
    "ICC(1,1)": "one-way random, single reader (ICC1)",
    "ICC(A,1)": "two-way random, absolute agreement, single reader (ICC2)",
    "ICC(C,1)": "two-way mixed, consistency, single reader (ICC3)",
    "ICC(1,k)": "one-way random, mean of k readers (ICC1k)",
    "ICC(A,k)": "two-way random, absolute agreement, mean of k readers (ICC2k)",
    "ICC(C,k)": "two-way mixed, consistency, mean of k readers (ICC3k)",
}
#: The form reported in the summary: readers are a sample of radiologists, absolute agreement matters.
ICC_MAIN = "ICC(A,1)"


def icc_table(matrix: np.ndarray) -> list[dict[str, Any]]:
    """All six ICC forms (pingouin) from a complete readers x cases matrix."""
    import pandas as pd
    import pingouin

    readers, cases = np.asarray(matrix).shape
    long = pd.DataFrame({
        "case": np.tile(np.arange(cases), readers),
        "reader": np.repeat(np.arange(readers), cases),
        "rating": np.asarray(matrix, float).ravel(),
    })
    with warnings.catch_warnings():  # pingouin 0.7 uses a pandas keyword deprecated in pandas 3.1
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        table = pingouin.intraclass_corr(long, targets="case", raters="reader", ratings="rating")
    rows = []
    for _, r in table.iterrows():
        kind = str(r["Type"])
        rows.append({"type": kind, "description": _ICC_NAMES.get(kind, kind), "icc": float(r["ICC"]),
                     "F": float(r["F"]), "df1": float(r["df1"]), "df2": float(r["df2"]), "p": float(r["pval"]),
                     "ci95": [float(v) for v in r["CI95"]]})
    return rows


def _bootstrap_cases(statistic, matrix: np.ndarray, n_boot: int, seed: int, batch=None) -> dict[str, Any]:
    """Case (column) bootstrap CI of ``statistic(matrix)`` via :func:`PASTALib.eval.stats.bootstrap_ci`:
    undefined replicates (NaN or ValueError) are redrawn and counted in ``n_undefined``."""
    from PASTALib.eval.stats import bootstrap_ci

    try:
        ci = bootstrap_ci(lambda cols: statistic(matrix[:, cols]), np.arange(matrix.shape[1]),
                          rng=np.random.default_rng(seed), n_resamples=n_boot,
                          batch_statistic=None if batch is None else lambda idx: batch(matrix[:, idx]))
    except ValueError as exc:
        return {"ci95": [float("nan")] * 2, "reason": f"undefined CI: {exc}"}
    return {"ci95": [ci.low, ci.high], "n_boot": n_boot, "n_undefined": ci.n_redrawn, "seed": seed,
            "method": "case bootstrap, percentile (undefined replicates redrawn and counted)"}


def agreement(matrix: np.ndarray, readers: list[str], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """ICC (cases rated by all readers), pairwise quadratic kappa and ordinal Krippendorff's alpha,
    each with a case-bootstrap CI; every undefined value carries a ``reason``."""
    out: dict[str, Any] = {"n_readers": len(readers)}
    if len(readers) < 2:
        out["note"] = "Agreement needs at least two readers."
        return out
    complete = ~np.isnan(matrix).any(axis=0)
    n_complete = int(complete.sum())
    out["icc_n_cases"] = n_complete
    out["icc_primary"] = {"form": ICC_MAIN, "description": _ICC_NAMES[ICC_MAIN], "n_cases": n_complete,
                          "n_readers": len(readers)}
    if n_complete >= 3:
        try:
            out["icc"] = icc_table(matrix[:, complete])
            main = next(i for i in out["icc"] if i["type"] == ICC_MAIN)
            out["icc_primary"].update(icc=main["icc"], ci95=main["ci95"], p=main["p"])
        except (ValueError, AssertionError) as exc:
            out["icc"] = None
            out["icc_primary"]["reason"] = f"undefined: {exc}"
    else:
        out["icc"] = None
        out["icc_primary"]["reason"] = f"undefined: {n_complete} case(s) rated by every reader; the ICC needs 3"
    pairs = []
    for k, (i, j) in enumerate(combinations(range(len(readers)), 2)):
        both = ~np.isnan(matrix[i]) & ~np.isnan(matrix[j])
        entry: dict[str, Any] = {"readers": [readers[i], readers[j]], "n": int(both.sum())}
        pair = matrix[[i, j]][:, both]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 when both readers are constant: NaN, reason below
            entry["kappa_quadratic"] = weighted_kappa(pair[0], pair[1]) if both.sum() >= 2 else float("nan")
            if both.sum() < 2:
                entry["reason"] = f"undefined: {int(both.sum())} case(s) rated by both readers"
            elif math.isnan(entry["kappa_quadratic"]):
                entry["reason"] = "undefined: both readers gave one and the same rating to every shared case"
            else:
                entry["bootstrap"] = _bootstrap_cases(lambda m: weighted_kappa(m[0], m[1]), pair, n_boot, seed + k,
                                                      batch=lambda m: quadratic_kappa_rows(m[0], m[1]))
        pairs.append(entry)
    out["kappa_pairs"] = pairs
    n_units = int((np.sum(~np.isnan(matrix), axis=0) >= 2).sum())
    out["krippendorff_n_cases"] = n_units
    alpha: dict[str, Any] = {"n_cases_with_2_ratings": n_units}
    if n_units == 0:
        alpha.update(value=float("nan"), reason="undefined: no case has been rated by two readers yet")
    else:
        try:
            alpha["value"] = krippendorff_ordinal(matrix)
        except ValueError as exc:  # e.g. every rating the same: no variation to compare with
            alpha.update(value=float("nan"), reason=f"undefined: {exc}")
        else:
            def safe_alpha(m: np.ndarray) -> float:
                return krippendorff_ordinal(m) if (np.sum(~np.isnan(m), axis=0) >= 2).any() else float("nan")
            alpha["bootstrap"] = _bootstrap_cases(safe_alpha, matrix, n_boot, seed)
    out["krippendorff_alpha"] = alpha
    out["krippendorff_alpha_ordinal"] = alpha["value"]
    return out
