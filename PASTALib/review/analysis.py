"""Statistics of a realism study (paper Fig. 2b/2c): realism by type, AUC, tests, agreement.

Conventions: the realism score is used to detect REAL cases (positive class = real), so an
AUC of 0.5 means readers cannot tell synthetic from real. At a threshold (default >= 4)
a rating "calls" a case real; sensitivity = real called real, specificity = synthetic called
synthetic. Pooled tests (Mann-Whitney U, TOST) treat ratings as independent, which they are
not within a reader or case; the case x reader bootstrap AUC CI is the clustered estimate.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from PASTALib.review import db
from PASTALib.review.errors import ReviewError

LIKERT = (1, 2, 3, 4, 5)


# ---------------------------------------------------------------- primitives (tested on tiny arrays)


def auc(scores: np.ndarray, is_real: np.ndarray) -> float:
    """ROC AUC of ``scores`` for real (1) vs synthetic (0) (sklearn); NaN if one class is missing."""
    from sklearn.metrics import roc_auc_score

    is_real = np.asarray(is_real, bool)
    if is_real.all() or not is_real.any():
        return float("nan")
    return float(roc_auc_score(is_real, np.asarray(scores, float)))


def _auc_rank(scores: np.ndarray, is_real: np.ndarray) -> float:
    """Mann-Whitney form of the AUC (mid-ranks for ties): same value as sklearn, cheap in a bootstrap."""
    from scipy.stats import rankdata

    n1 = int(is_real.sum())
    n0 = is_real.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[is_real].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def weighted_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Quadratic-weighted Cohen's kappa of two readers on the 1-5 scale (sklearn)."""
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(np.asarray(a, int), np.asarray(b, int), labels=list(LIKERT), weights="quadratic"))


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


def tost(x: np.ndarray, y: np.ndarray, margin: float) -> dict[str, float]:
    """Two one-sided tests (pingouin, Student pooled variance): equivalent if p < alpha."""
    import pingouin

    result = pingouin.tost(np.asarray(x, float), np.asarray(y, float), bound=margin)
    return {"margin": float(margin), "p": float(result["pval"].iloc[0]), "dof": float(result["dof"].iloc[0]),
            "mean_difference": float(np.mean(x) - np.mean(y))}


def mann_whitney(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Two-sided Mann-Whitney U (scipy) of real ``x`` vs synthetic ``y``."""
    from scipy.stats import mannwhitneyu

    result = mannwhitneyu(np.asarray(x, float), np.asarray(y, float), alternative="two-sided")
    return {"U": float(result.statistic), "p": float(result.pvalue)}


def threshold_metrics(scores: np.ndarray, is_real: np.ndarray, threshold: int) -> dict[str, float]:
    """Accuracy / sensitivity / specificity when a rating >= ``threshold`` calls the case real."""
    called = np.asarray(scores) >= threshold
    is_real = np.asarray(is_real, bool)
    tp, tn = int((called & is_real).sum()), int((~called & ~is_real).sum())
    n_real, n_syn = int(is_real.sum()), int((~is_real).sum())
    return {"threshold": threshold, "accuracy": (tp + tn) / max(is_real.size, 1),
            "sensitivity": tp / n_real if n_real else float("nan"),
            "specificity": tn / n_syn if n_syn else float("nan"), "n": int(is_real.size)}


# ---------------------------------------------------------------- bootstrap


def bootstrap_auc(
    matrix: np.ndarray, is_real: np.ndarray, n_boot: int, seed: int, *, resample_readers: bool = True,
) -> dict[str, Any]:
    """Mean-over-readers AUC with a case x reader bootstrap CI (cases resampled within origin).

    ``matrix`` is readers x cases (NaN = not rated). Resampling cases within each origin keeps
    both classes in every replicate; resampling readers adds reader variability to the CI.
    """
    rng = np.random.default_rng(seed)
    matrix = np.asarray(matrix, float)
    is_real = np.asarray(is_real, bool)
    real_idx, syn_idx = np.flatnonzero(is_real), np.flatnonzero(~is_real)
    n_readers = matrix.shape[0]

    def mean_auc(rows: np.ndarray, cols: np.ndarray) -> float:
        values = []
        for r in rows:
            s = matrix[r, cols]
            ok = ~np.isnan(s)
            values.append(_auc_rank(s[ok], is_real[cols][ok]))
        return float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")

    estimate = mean_auc(np.arange(n_readers), np.arange(matrix.shape[1]))
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, n_readers, n_readers) if resample_readers else np.arange(n_readers)
        cols = np.concatenate([rng.choice(real_idx, real_idx.size), rng.choice(syn_idx, syn_idx.size)])
        replicates[b] = mean_auc(rows, cols)
    valid = replicates[~np.isnan(replicates)]
    lo, hi = (np.percentile(valid, [2.5, 97.5]) if valid.size else (float("nan"), float("nan")))
    return {"auc": estimate, "ci95": [float(lo), float(hi)], "n_boot": n_boot, "seed": seed,
            "method": "case x reader bootstrap (cases within origin)" if resample_readers else "case bootstrap (within origin)"}


# ---------------------------------------------------------------- study-level analysis


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, float)
    return {"n": int(values.size), "mean": float(values.mean()) if values.size else float("nan"),
            "sd": float(values.std(ddof=1)) if values.size > 1 else float("nan")}


def _matrix(rows: list[dict[str, Any]], readers: list[str], cases: list[str], column: str = "realism") -> np.ndarray:
    matrix = np.full((len(readers), len(cases)), np.nan)
    r_index = {r: i for i, r in enumerate(readers)}
    c_index = {c: j for j, c in enumerate(cases)}
    for row in rows:
        if row.get(column) is not None:
            matrix[r_index[row["reader"]], c_index[row["case_id"]]] = row[column]
    return matrix


def analyze_rows(
    rows: list[dict[str, Any]], *, threshold: int = 4, margin: float = 0.5, n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """All numbers of the study from unblinded answer rows (see :func:`export.answer_rows`)."""
    from sklearn.metrics import roc_curve

    if not rows:
        raise ReviewError("No answers yet: nothing to analyse. Readers answer with `pasta review rate`.")
    readers = sorted({r["reader"] for r in rows})
    cases = sorted({r["case_id"] for r in rows})
    origin = {r["case_id"]: r["origin"] for r in rows}
    is_real_case = np.array([origin[c] == "real" for c in cases])
    matrix = _matrix(rows, readers, cases)
    realism = np.array([r["realism"] for r in rows], float)
    row_real = np.array([r["origin"] == "real" for r in rows])
    types = sorted({r["lesion_type"] for r in rows})

    by_type = []
    for t in types + ["all"]:
        sel = np.array([t == "all" or r["lesion_type"] == t for r in rows])
        entry = {"lesion_type": t, "real": _summary(realism[sel & row_real]),
                 "synthetic": _summary(realism[sel & ~row_real])}
        if entry["real"]["n"] and entry["synthetic"]["n"]:
            entry["mann_whitney"] = mann_whitney(realism[sel & row_real], realism[sel & ~row_real])
        by_type.append(entry)

    per_reader = []
    for i, reader in enumerate(readers):
        ok = ~np.isnan(matrix[i])
        scores, labels = matrix[i, ok], is_real_case[ok]
        fpr, tpr, _ = roc_curve(labels, scores) if 0 < labels.sum() < labels.size else ([], [], [])
        per_reader.append({
            "reader": reader, "n": int(ok.sum()), "auc": auc(scores, labels),
            "auc_case_bootstrap": bootstrap_auc(matrix[i : i + 1], is_real_case, n_boot, seed, resample_readers=False),
            "roc": {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]},
            **threshold_metrics(scores, labels, threshold),
        })

    results: dict[str, Any] = {
        "n_readers": len(readers), "n_cases": len(cases), "n_answers": len(rows),
        "n_cases_by_origin": {"real": int(is_real_case.sum()), "synthetic": int((~is_real_case).sum())},
        "settings": {"threshold": threshold, "tost_margin": margin, "n_boot": n_boot, "seed": seed},
        "realism_by_type": by_type,
        "rating_counts": {o: [int(((realism == v) & (row_real == (o == "real"))).sum()) for v in LIKERT]
                          for o in ("real", "synthetic")},
        "per_reader": per_reader,
        "pooled_auc": bootstrap_auc(matrix, is_real_case, n_boot, seed),
        "pooled_threshold": threshold_metrics(realism, row_real, threshold),
        "mann_whitney": mann_whitney(realism[row_real], realism[~row_real]),
        "tost": tost(realism[row_real], realism[~row_real], margin),
        "agreement": agreement(matrix, readers),
        "attribute_accuracy": attribute_accuracy(rows),
    }
    return results


def agreement(matrix: np.ndarray, readers: list[str]) -> dict[str, Any]:
    """ICC (cases rated by all readers), pairwise quadratic kappa, ordinal Krippendorff's alpha."""
    out: dict[str, Any] = {"n_readers": len(readers)}
    if len(readers) < 2:
        out["note"] = "Agreement needs at least two readers."
        return out
    complete = ~np.isnan(matrix).any(axis=0)
    out["icc_n_cases"] = int(complete.sum())
    out["icc"] = icc_table(matrix[:, complete]) if complete.sum() >= 3 else None
    pairs = []
    for i, j in combinations(range(len(readers)), 2):
        both = ~np.isnan(matrix[i]) & ~np.isnan(matrix[j])
        pairs.append({"readers": [readers[i], readers[j]], "n": int(both.sum()),
                      "kappa_quadratic": weighted_kappa(matrix[i, both], matrix[j, both]) if both.sum() >= 2 else float("nan")})
    out["kappa_pairs"] = pairs
    out["krippendorff_alpha_ordinal"] = krippendorff_ordinal(matrix)
    return out


def attribute_accuracy(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean/SD of the 1-5 accuracy of each report attribute per lesion type and origin (Fig. 2c)."""
    out = []
    for t in sorted({r["lesion_type"] for r in rows}):
        for o in ("synthetic", "real"):
            sel = [r for r in rows if r["lesion_type"] == t and r["origin"] == o]
            stats = {a: _summary(np.array([r[a] for r in sel if r.get(a) is not None])) for a in db.ATTRIBUTES}
            if any(s["n"] for s in stats.values()):
                out.append({"lesion_type": t, "origin": o, **stats})
    return out


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def analyze(
    study_dir: str | os.PathLike, key_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
    threshold: int = 4, margin: float = 0.5, n_boot: int = 1000, seed: int = 0, verify: bool = True,
) -> dict[str, Any]:
    """Verify the study, analyse all answers and (with ``out_dir``) write results.json, answers.csv, report.html."""
    from PASTALib.review.export import answer_rows, export_csv
    from PASTALib.review.study import verify_study

    if verify:
        verify_study(study_dir, key_dir)
    results = _clean(analyze_rows(answer_rows(study_dir, key_dir), threshold=threshold, margin=margin,
                                  n_boot=n_boot, seed=seed))
    if out_dir is not None:
        from PASTALib.review.html import write_report

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        export_csv(study_dir, out / "answers.csv", key_dir)
        write_report(results, out / "report.html")
    return results
