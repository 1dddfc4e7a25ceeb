"""Statistics of a realism study (paper Fig. 2b/2c): realism by type, AUC, tests, agreement.

Conventions: the realism score is used to detect REAL cases (positive class = real), so an
AUC of 0.5 means readers cannot tell synthetic from real. At a threshold (default >= 4)
a rating "calls" a case real; sensitivity = real called real, specificity = synthetic called
synthetic.

Methods (ratings are clustered within readers and within cases, so nothing pools them as
independent): reader-averaged AUC / accuracy / sensitivity / specificity with the
Obuchowski-Rockette CI and Hillis degrees of freedom (readers and cases random,
:mod:`PASTALib.eval.mrmc`) and the test against 0.5; the realism difference real - synthetic from
a linear mixed model with crossed random reader and case intercepts, TOST on its 90% CI, Holm
across lesion types; per reader Wilson CIs and an exact binomial test of accuracy vs 50 %;
agreement (kappa, Krippendorff's alpha) with case-bootstrap CIs and counted undefined replicates;
the primary ICC is ICC(A,1) on the cases every reader rated. Interim studies (readers part-way,
shuffled orders) are analysed: every statistic that is undefined says why instead of raising.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from PASTALib.review import db
# The agreement statistics live in .agreement; its primitives stay importable from here (tests, users).
from PASTALib.review.agreement import (  # noqa: F401
    ICC_MAIN, LIKERT, agreement, icc_table, krippendorff_ordinal, quadratic_kappa_rows, weighted_kappa,
)
from PASTALib.review.errors import ReviewError


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


def threshold_metrics(scores: np.ndarray, is_real: np.ndarray, threshold: int) -> dict[str, float]:
    """Accuracy / sensitivity / specificity when a rating >= ``threshold`` calls the case real."""
    called = np.asarray(scores) >= threshold
    is_real = np.asarray(is_real, bool)
    tp, tn = int((called & is_real).sum()), int((~called & ~is_real).sum())
    n_real, n_syn = int(is_real.sum()), int((~is_real).sum())
    return {"threshold": threshold, "accuracy": (tp + tn) / max(is_real.size, 1),
            "sensitivity": tp / n_real if n_real else float("nan"),
            "specificity": tn / n_syn if n_syn else float("nan"), "n": int(is_real.size),
            "n_correct": tp + tn, "n_real": n_real, "n_real_called_real": tp,
            "n_synthetic": n_syn, "n_synthetic_called_synthetic": tn}


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval (statsmodels); NaNs when n = 0."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return [float("nan"), float("nan")]
    lo, hi = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return [float(lo), float(hi)]


def binomial_test(successes: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test (scipy) of a proportion against ``p``; NaN when n = 0."""
    from scipy.stats import binomtest

    return float(binomtest(successes, n, p).pvalue) if n else float("nan")


# ---------------------------------------------------------------- bootstrap (one reader, cases resampled)


def bootstrap_auc(scores: np.ndarray, is_real: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """One reader's AUC with a case bootstrap CI (cases resampled within origin, so both classes stay).

    NaN scores (cases the reader has not rated) are dropped per replicate; a replicate left without
    one class is undefined: counted in ``n_undefined`` and left out of the percentiles.
    """
    rng = np.random.default_rng(seed)
    scores, is_real = np.asarray(scores, float), np.asarray(is_real, bool)
    real_idx, syn_idx = np.flatnonzero(is_real), np.flatnonzero(~is_real)

    def value(cols: np.ndarray) -> float:
        s = scores[cols]
        ok = ~np.isnan(s)
        return _auc_rank(s[ok], is_real[cols][ok])

    estimate = value(np.arange(scores.size))
    out: dict[str, Any] = {"auc": estimate, "ci95": [float("nan")] * 2, "n_boot": n_boot, "seed": seed,
                           "n_undefined": 0, "method": "case bootstrap within origin, percentile"}
    if math.isnan(estimate):
        out["reason"] = "undefined: this reader has not rated cases of both origins"
        return out
    replicates = np.array([value(np.concatenate([rng.choice(real_idx, real_idx.size), rng.choice(syn_idx, syn_idx.size)]))
                           for _ in range(n_boot)])
    valid = replicates[~np.isnan(replicates)]
    out["n_undefined"] = int(n_boot - valid.size)
    if valid.size:
        out["ci95"] = [float(v) for v in np.percentile(valid, [2.5, 97.5])]
    return out


# ---------------------------------------------------------------- MRMC and mixed model


def mrmc_fom(matrix: np.ndarray, is_real: np.ndarray, fom: str = "auc", threshold: int = 4,
             null: float = 0.5) -> dict[str, Any]:
    """Reader-averaged figure of merit with the Obuchowski-Rockette / Hillis CI and the test of FOM = ``null``.

    ``fom``: "auc" (trapezoidal), or "accuracy" / "sensitivity" / "specificity" at ``threshold``.
    Readers and cases are both random (:func:`PASTALib.eval.mrmc.or_hillis`, jackknife covariance);
    for the AUC with complete ratings the DeLong-covariance result is added as ``delong``.
    """
    from PASTALib.eval import mrmc

    def at_threshold(key: str):
        def f(scores: np.ndarray, truth: np.ndarray) -> float:
            ok = ~np.isnan(scores)
            value = threshold_metrics(scores[ok], truth[ok], threshold)[key]
            return value if ok.any() else float("nan")
        return f

    function = mrmc.trapezoidal_auc if fom == "auc" else at_threshold(fom)
    result = mrmc.or_hillis(matrix, is_real, fom=function, null=null)
    m = result["modalities"][0]
    out = {"fom": fom, "estimate": m["fom"], "ci95": m["ci"], "se": m["se"], "df": m["df"], "t": m["t"],
           "p_vs_null": m["p"], "null": null, "n_readers": result["n_readers"], "n_cases": result["n_cases"],
           "method": result["method"] + " (Obuchowski & Rockette 1995; Hillis 2007, 2008)",
           "covariances": result.get("covariances"), "notes": result["notes"]}
    if fom == "auc" and not np.isnan(matrix).any() and "covariances" in result:
        d = mrmc.or_hillis(matrix, is_real, covariance="delong", null=null)["modalities"][0]
        out["delong"] = {"ci95": d["ci"], "se": d["se"], "df": d["df"], "p_vs_null": d["p"]}
    return out


def mixed_model_difference(rows: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    """Realism difference real - synthetic from a linear mixed model with crossed random reader and
    case intercepts (statsmodels MixedLM, REML, variance components), with 95% and 90% CIs and TOST.

    Equivalence (TOST at alpha 0.05) holds when the 90% CI lies inside (-margin, margin); the TOST
    p-value is the larger of the two one-sided p-values. Wald (normal) intervals, as statsmodels reports.
    """
    import pandas as pd
    import statsmodels.formula.api as smf
    from scipy import stats

    frame = pd.DataFrame({"realism": [float(r["realism"]) for r in rows],
                          "real": [1.0 if r["origin"] == "real" else 0.0 for r in rows],
                          "reader": [r["reader"] for r in rows], "case": [r["case_id"] for r in rows]})
    n_readers, n_cases = frame["reader"].nunique(), frame["case"].nunique()
    out: dict[str, Any] = {"n_ratings": len(frame), "n_readers": n_readers, "n_cases": n_cases, "margin": margin,
                           "model": "realism ~ real + (1|reader) + (1|case), REML"}
    if frame["real"].nunique() < 2:
        out["reason"] = "undefined: ratings of both origins are needed"
        return out
    if n_cases < 4:
        out["reason"] = f"undefined: {n_cases} cases are too few for a case random effect"
        return out
    # A random effect is estimable only with replication: a case effect needs cases rated twice (else it
    # is the residual), a reader effect two readers. Without either, the ratings are independent: OLS.
    components = {}
    if frame.groupby("case").size().max() >= 2:
        components["case"] = "0 + C(case)"
    if n_readers >= 2:
        components["reader"] = "0 + C(reader)"
    out["model"] = "realism ~ real" + "".join(f" + (1|{k})" for k in components) + (", REML" if components else ", OLS")
    if not components:
        out["notes"] = ["one reader and one rating per case so far: no random effect is estimable, plain least squares"]
    frame["all"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence / boundary warnings: checked below via converged
        try:
            if components:
                # Variance components often sit on the boundary (0) in small studies, where the gradient
                # optimisers stop unconverged: statsmodels then tries the derivative-free ones in turn.
                fit = smf.mixedlm("realism ~ real", frame, groups="all", re_formula="0",
                                  vc_formula=components).fit(reml=True, method=["lbfgs", "powell", "nm"])
            else:
                fit = smf.ols("realism ~ real", frame).fit()
        except (ValueError, np.linalg.LinAlgError) as exc:
            out["reason"] = f"undefined: the mixed model could not be fitted ({exc})"
            return out
    if components:
        estimate, se = float(fit.fe_params["real"]), float(fit.bse_fe["real"])
        variances = {**dict(zip(fit.model.exog_vc.names, (float(v) for v in fit.vcomp))), "residual": float(fit.scale)}
        converged = bool(fit.converged)
    else:
        estimate, se = float(fit.params["real"]), float(fit.bse["real"])
        variances, converged = {"residual": float(fit.scale)}, True
    if not (math.isfinite(se) and se > 0):
        out["reason"] = "undefined: the model gave no standard error (e.g. all ratings equal)"
        out["difference"] = estimate
        return out
    # Wald intervals with the normal for the mixed model (as statsmodels reports), t for OLS.
    dist = stats.norm if components else stats.t(float(fit.df_resid))
    z90, z95 = dist.ppf(0.95), dist.ppf(0.975)
    p_lower = float(dist.sf((estimate + margin) / se))  # H0: difference <= -margin
    p_upper = float(dist.cdf((estimate - margin) / se))  # H0: difference >= +margin
    out.update({"difference": estimate, "se": se, "ci95": [estimate - z95 * se, estimate + z95 * se],
                "ci90": [estimate - z90 * se, estimate + z90 * se], "p_difference": float(2 * dist.sf(abs(estimate / se))),
                "tost_p": max(p_lower, p_upper), "converged": converged,
                "variance_components": variances})
    out["equivalent"] = out["tost_p"] < 0.05
    if not converged:
        out.setdefault("notes", []).append("the optimiser did not report convergence: read the estimate with care")
    return out


def realism_differences(rows: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    """:func:`mixed_model_difference` per lesion type and for all types; Holm across the lesion types."""
    from statsmodels.stats.multitest import multipletests

    types = sorted({r["lesion_type"] for r in rows})
    entries = [{"lesion_type": t, **mixed_model_difference([r for r in rows if r["lesion_type"] == t], margin)} for t in types]
    for key in ("tost_p", "p_difference"):
        defined = [e for e in entries if e.get(key) is not None and math.isfinite(e[key])]
        if defined:
            adjusted = multipletests([e[key] for e in defined], method="holm")[1]
            for e, p in zip(defined, adjusted):
                e[f"{key}_holm"] = float(p)
    overall = {"lesion_type": "all", **mixed_model_difference(rows, margin)}
    return {"by_type": entries, "all": overall,
            "multiple_comparisons": f"Holm over the {len(entries)} lesion type(s) (statsmodels multipletests)"}


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


def _reader_threshold(scores: np.ndarray, labels: np.ndarray, threshold: int) -> dict[str, Any]:
    m = threshold_metrics(scores, labels, threshold)
    m["accuracy_ci95"] = proportion_ci(m["n_correct"], m["n"])
    m["accuracy_p_vs_50"] = binomial_test(m["n_correct"], m["n"])
    m["sensitivity_ci95"] = proportion_ci(m["n_real_called_real"], m["n_real"])
    m["specificity_ci95"] = proportion_ci(m["n_synthetic_called_synthetic"], m["n_synthetic"])
    m["ci_method"] = "Wilson score; accuracy vs 50 %: exact binomial test"
    if not m["n_real"]:
        m["sensitivity_reason"] = "undefined: this reader has not rated a real case yet"
    if not m["n_synthetic"]:
        m["specificity_reason"] = "undefined: this reader has not rated a synthetic case yet"
    return m


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
        by_type.append({"lesion_type": t, "real": _summary(realism[sel & row_real]),
                        "synthetic": _summary(realism[sel & ~row_real])})

    per_reader = []
    for i, reader in enumerate(readers):
        ok = ~np.isnan(matrix[i])
        scores, labels = matrix[i, ok], is_real_case[ok]
        fpr, tpr, _ = roc_curve(labels, scores) if 0 < labels.sum() < labels.size else ([], [], [])
        per_reader.append({
            "reader": reader, "n": int(ok.sum()), "auc": auc(scores, labels),
            "auc_case_bootstrap": bootstrap_auc(matrix[i], is_real_case, n_boot, seed),
            "roc": {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]},
            **_reader_threshold(scores, labels, threshold),
        })

    # "All readers": every figure of merit is the mean over readers, each with its OR-Hillis CI
    # (readers and cases random); pooled ratings are not mixed in.
    all_readers = {"auc": mrmc_fom(matrix, is_real_case, "auc", threshold)}
    for fom in ("accuracy", "sensitivity", "specificity"):
        all_readers[fom] = mrmc_fom(matrix, is_real_case, fom, threshold)

    results: dict[str, Any] = {
        "n_readers": len(readers), "n_cases": len(cases), "n_answers": len(rows),
        "n_cases_by_origin": {"real": int(is_real_case.sum()), "synthetic": int((~is_real_case).sum())},
        "complete": bool(not np.isnan(matrix).any()),
        "settings": {"threshold": threshold, "tost_margin": margin, "n_boot": n_boot, "seed": seed},
        "realism_by_type": by_type,
        "realism_difference": realism_differences(rows, margin),
        "rating_counts": {o: [int(((realism == v) & (row_real == (o == "real"))).sum()) for v in LIKERT]
                          for o in ("real", "synthetic")},
        "per_reader": per_reader,
        "all_readers": all_readers,
        "agreement": agreement(matrix, readers, n_boot=n_boot, seed=seed),
        "attribute_accuracy": attribute_accuracy(rows),
    }
    return results


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
    from PASTALib.review.errors import ReviewError
    from PASTALib.review.export import answer_rows, check_output, export_csv
    from PASTALib.review.study import verify_study

    from PASTALib import limits
    from PASTALib.review.db import check_number

    threshold = check_number(threshold, "The threshold (--threshold; rating >= it calls a case real)", limits.REVIEW_THRESHOLD)
    margin = check_number(margin, "The equivalence margin (--margin, rating points)", limits.REVIEW_MARGIN)
    n_boot = check_number(n_boot, "The number of bootstrap replicates (--n-boot)", limits.REVIEW_N_BOOT)
    seed = check_number(seed, "The seed (--seed)", limits.SEED)
    if out_dir is not None:
        out_dir = check_output(out_dir, study_dir, key_dir, folder=True)
    if verify:
        verify_study(study_dir, key_dir)
    results = _clean(analyze_rows(answer_rows(study_dir, key_dir), threshold=threshold, margin=margin,
                                  n_boot=n_boot, seed=seed))
    if out_dir is not None:
        from PASTALib.review.html import write_report

        from PASTALib.io.files import write_text_atomic

        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
        except OSError as exc:
            raise ReviewError(f"cannot write the analysis to {out} ({exc.strerror or exc}); choose a writable "
                              "folder (--out).") from None
        export_csv(study_dir, out / "answers.csv", key_dir)
        write_report(results, out / "report.html")
    return results
