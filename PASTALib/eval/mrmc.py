"""Multi-reader multi-case (MRMC) analysis: Obuchowski-Rockette with Hillis degrees of freedom.

Readers AND cases are random: the reader-averaged figure of merit (FOM, e.g. the trapezoidal AUC)
gets a confidence interval and tests that generalise to new readers and new cases.

References (formulas cited at the lines that use them):

* Obuchowski NA, Rockette HE (1995). Hypothesis testing of diagnostic accuracy for multiple readers
  and multiple tests: an ANOVA approach with dependent observations. Commun Stat Simul Comput 24:285-308.
* Hillis SL (2007). A comparison of denominator degrees of freedom methods for multiple observer
  ROC analysis. Stat Med 26:596-619 (ddf_H, and ddf_H_single for one modality).
* Hillis SL, Berbaum KS, Metz CE (2008). Recent developments in the Dorfman-Berbaum-Metz procedure
  for multireader ROC study analysis. Acad Radiol 15:647-661 (single-modality CI, Table 1 / Appendix).
* DeLong ER, DeLong DM, Clarke-Pearson DL (1988). Comparing the areas under two or more correlated
  ROC curves: a nonparametric approach. Biometrics 44:837-845 (structural components).

Hand-written because no maintained Python package implements OR-Hillis (the reference
implementations are the Iowa OR-DBM MRMC software, RJafroc and MRMCaov in R, iMRMC in Java).
Validated against OR-DBM MRMC 2.51's published output for the Van Dyke data
(Testing/test_mrmc.py): the jackknife covariance is the primary method because that is what
the published output uses; DeLong is offered as the alternative (``covariance="delong"``).

Ratings are an array ``(modalities, readers, cases)``; NaN marks a case a reader did not rate
(an interim/incomplete study): each reader's FOM then uses the cases that reader rated, which the
OR model (fully crossed design) does not strictly cover; :func:`or_hillis` says so in ``notes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

Covariance = Literal["jackknife", "delong"]


def trapezoidal_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Wilcoxon/trapezoidal AUC (ties count 1/2), NaN if a class is missing; NaN scores are dropped."""
    scores, truth = np.asarray(scores, float), np.asarray(truth, bool)
    ok = ~np.isnan(scores)
    pos, neg = scores[ok & truth], scores[ok & ~truth]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _fom_matrix(ratings: np.ndarray, truth: np.ndarray, fom: Callable[[np.ndarray, np.ndarray], float],
                keep: np.ndarray | None = None) -> np.ndarray:
    n_mod, n_read, _ = ratings.shape
    out = np.empty((n_mod, n_read))
    for t in range(n_mod):
        for r in range(n_read):
            s = ratings[t, r] if keep is None else ratings[t, r, keep]
            out[t, r] = fom(s, truth if keep is None else truth[keep])
    return out


def jackknife_covariance(ratings: np.ndarray, truth: np.ndarray,
                         fom: Callable[[np.ndarray, np.ndarray], float] = trapezoidal_auc) -> np.ndarray:
    """Covariance of the (modality, reader) FOMs by case jackknife, shape (T*R, T*R).

    cov = (C-1)/C * sum_k (theta_(k) - mean_k theta_(k)) (theta_(k) - ...)^T (Obuchowski & Rockette 1995;
    Hillis et al. 2005 eq. 12). A leave-one-out replicate that is undefined for one FOM (NaN: the left-out
    case was that reader's only case of a class) is dropped for the pairs involving that FOM only; a pair
    with fewer than 2 common replicates gets NaN.
    """
    n_cases = ratings.shape[2]
    all_cases = np.ones(n_cases, bool)
    reps = []
    for k in range(n_cases):
        keep = all_cases.copy()
        keep[k] = False
        reps.append(_fom_matrix(ratings, truth, fom, keep).ravel())
    reps = np.asarray(reps)
    finite = ~np.isnan(reps)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: NaN, reported by the caller
        centred = np.where(finite, reps - np.nanmean(np.where(finite, reps, np.nan), axis=0), 0.0)
        n = finite.T.astype(float) @ finite.astype(float)  # common replicates of each pair
        cov = (n - 1) / n * (centred.T @ centred)
    cov[n < 2] = np.nan
    return cov


def delong_covariance(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """DeLong et al. (1988) covariance of the (modality, reader) trapezoidal AUCs, shape (T*R, T*R).

    Structural components V10 (per abnormal case) and V01 (per normal case);
    cov = S10 / n1 + S01 / n0 with S the sample covariances (ddof 1) across cases. Needs complete ratings.
    """
    truth = np.asarray(truth, bool)
    flat = ratings.reshape(-1, ratings.shape[2])
    if np.isnan(flat).any():
        raise ValueError("DeLong covariance needs every reader to rate every case (use the jackknife)")
    pos, neg = flat[:, truth], flat[:, ~truth]
    diff = pos[:, :, None] - neg[:, None, :]
    psi = (diff > 0) + 0.5 * (diff == 0)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return np.atleast_2d(np.cov(v10)) / pos.shape[1] + np.atleast_2d(np.cov(v01)) / neg.shape[1]


def _cov_averages(cov: np.ndarray, n_mod: int, n_read: int) -> dict[str, float]:
    """Var(error), Cov1 (same reader, other modality), Cov2 (same modality, other reader),
    Cov3 (other modality and reader): averages of the OR error covariance matrix (OR 1995)."""
    idx = [(t, r) for t in range(n_mod) for r in range(n_read)]
    groups: dict[str, list[float]] = {"var": [], "cov1": [], "cov2": [], "cov3": []}
    for a, (t1, r1) in enumerate(idx):
        for b, (t2, r2) in enumerate(idx):
            key = "var" if a == b else "cov1" if r1 == r2 else "cov2" if t1 == t2 else "cov3"
            groups[key].append(cov[a, b])
    return {k: float(np.mean(v)) if v else float("nan") for k, v in groups.items()}


def or_hillis(
    ratings: np.ndarray, truth: np.ndarray, *, covariance: Covariance = "jackknife",
    fom: Callable[[np.ndarray, np.ndarray], float] = trapezoidal_auc, null: float = 0.5, alpha: float = 0.05,
) -> dict[str, Any]:
    """OR analysis, random readers and random cases, Hillis (2007) denominator degrees of freedom.

    ``ratings``: (modalities, readers, cases) or (readers, cases) for one modality; ``truth``: per case,
    True = abnormal (for us: the real case). Returns per modality the reader-averaged FOM, its standard
    error, ddf, (1 - alpha) CI and the t test of FOM = ``null``; with two or more modalities also the
    F test of equal FOMs and the pairwise differences. ``covariance="delong"`` applies only to the AUC.
    Undefined quantities are NaN with the reason in ``notes``.
    """
    ratings = np.asarray(ratings, float)
    if ratings.ndim == 2:
        ratings = ratings[None]
    truth = np.asarray(truth, bool)
    n_mod, n_read, n_cases = ratings.shape
    notes: list[str] = []
    out: dict[str, Any] = {"method": f"Obuchowski-Rockette, Hillis ddf, {covariance} covariance",
                           "n_modalities": n_mod, "n_readers": n_read, "n_cases": n_cases,
                           "n_abnormal": int(truth.sum()), "n_normal": int((~truth).sum()), "notes": notes}
    if np.isnan(ratings).any():
        notes.append("incomplete design: each reader's FOM uses the cases that reader rated; the OR model "
                     "assumes every reader rated every case, so treat this as an interim estimate")
    theta = _fom_matrix(ratings, truth, fom)
    out["reader_fom"] = theta.tolist()
    if not truth.any() or truth.all():
        notes.append("undefined: the cases do not include both classes")
    elif np.isnan(theta).any():
        notes.append("undefined: a reader has not yet rated cases of both classes")
    if n_read < 2:
        notes.append("undefined: the random-reader analysis needs at least 2 readers")
    if any(n.startswith("undefined") for n in notes):
        out["modalities"] = [{"fom": float(np.nanmean(theta[t])) if not np.isnan(theta[t]).all() else float("nan"),
                              "se": float("nan"), "df": float("nan"), "ci": [float("nan")] * 2, "t": float("nan"),
                              "p": float("nan")} for t in range(n_mod)]
        return out
    if covariance == "delong":
        if fom is not trapezoidal_auc:
            raise ValueError("the DeLong covariance applies to the trapezoidal AUC only")
        cov = delong_covariance(ratings, truth)
    else:
        cov = jackknife_covariance(ratings, truth, fom)
    if np.isnan(cov).any():
        notes.append("undefined: the case jackknife leaves a reader without cases of both classes "
                     "(each reader needs at least 2 rated cases of each class)")
        out["modalities"] = [{"fom": float(theta[t].mean()), "se": float("nan"), "df": float("nan"),
                              "ci": [float("nan")] * 2, "t": float("nan"), "p": float("nan")} for t in range(n_mod)]
        return out
    avg = _cov_averages(cov, n_mod, n_read)
    out["covariances"] = {"var_error": avg["var"], "cov1": avg["cov1"], "cov2": avg["cov2"], "cov3": avg["cov3"]}

    modalities = [_single_modality(cov, theta, t, n_read, null, alpha, notes) for t in range(n_mod)]
    out["modalities"] = modalities
    out["null"] = null
    out["confidence"] = 1 - alpha

    if n_mod >= 2:
        out["global_test"], out["differences"] = _global_test(theta, avg, alpha)
    return out


def _single_modality(cov: np.ndarray, theta: np.ndarray, t: int, n_read: int, null: float, alpha: float,
                     notes: list[str]) -> dict[str, Any]:
    """One modality's FOM, SE, Hillis ddf, CI and t test (appends to ``notes`` when undefined)."""
    from scipy import stats

    # Single-modality analysis (Hillis 2007 ddf_H_single; Hillis et al. 2008 Table 1):
    # SE = sqrt((MS(R) + r * max(Cov2, 0)) / r), df = (MS(R) + r max(Cov2,0))^2 / (MS(R)^2 / (r-1)),
    # with Cov2 estimated from this modality's block of the covariance matrix only.
    block = cov[t * n_read:(t + 1) * n_read, t * n_read:(t + 1) * n_read]
    cov2 = float(block[~np.eye(n_read, dtype=bool)].mean())
    ms_r = float(np.var(theta[t], ddof=1))
    denominator = ms_r + n_read * max(cov2, 0.0)
    mean = float(theta[t].mean())
    entry: dict[str, Any] = {"fom": mean, "ms_r": ms_r, "cov2": cov2, "var_error": float(np.mean(np.diag(block)))}
    if denominator <= 0:
        notes.append(f"modality {t}: undefined CI: all readers have the same FOM and no case covariance")
        entry.update(se=float("nan"), df=float("nan"), ci=[float("nan")] * 2, t=float("nan"), p=float("nan"))
        return entry
    se = float(np.sqrt(denominator / n_read))
    # ms_r == 0 gives infinite ddf: the t distribution becomes the normal.
    df = float(denominator**2 / (ms_r**2 / (n_read - 1))) if ms_r > 0 else float("inf")
    q = float(stats.t.ppf(1 - alpha / 2, df))
    t_stat = (mean - null) / se
    entry.update(se=se, df=df, ci=[mean - q * se, mean + q * se], t=float(t_stat),
                 p=float(2 * stats.t.sf(abs(t_stat), df)))
    return entry


def _global_test(theta: np.ndarray, avg: dict[str, float], alpha: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """F test of equal FOMs across modalities and the pairwise differences."""
    from scipy import stats

    n_mod, n_read = theta.shape
    # Global test (OR 1995 with Hillis 2007 ddf_H): F = MS(T) / (MS(T*R) + r max(Cov2 - Cov3, 0)),
    # ddf = (MS(T*R) + r max(Cov2 - Cov3, 0))^2 / (MS(T*R)^2 / ((t-1)(r-1))).
    grand = theta.mean()
    ms_t = n_read * float(((theta.mean(axis=1) - grand) ** 2).sum()) / (n_mod - 1)
    resid = theta - theta.mean(axis=1, keepdims=True) - theta.mean(axis=0, keepdims=True) + grand
    ms_tr = float((resid**2).sum()) / ((n_mod - 1) * (n_read - 1))
    error_term = ms_tr + n_read * max(avg["cov2"] - avg["cov3"], 0.0)
    if error_term <= 0:
        raise ValueError("the figures of merit do not vary between readers or cases (every rating identical?): "
                         "the OR/Hillis F test is undefined")
    ddf = error_term**2 / (ms_tr**2 / ((n_mod - 1) * (n_read - 1))) if ms_tr > 0 else float("inf")
    f_stat = ms_t / error_term
    test = {"ms_t": ms_t, "ms_tr": ms_tr, "error_term": error_term, "F": f_stat,
            "ndf": n_mod - 1, "ddf": ddf, "p": float(stats.f.sf(f_stat, n_mod - 1, ddf))}
    se_diff = float(np.sqrt(2 / n_read * error_term))
    q = float(stats.t.ppf(1 - alpha / 2, ddf))
    diffs = []
    for a in range(n_mod):
        for b in range(a + 1, n_mod):
            d = float(theta[a].mean() - theta[b].mean())
            diffs.append({"modalities": [a, b], "difference": d, "se": se_diff, "df": ddf,
                          "ci": [d - q * se_diff, d + q * se_diff],
                          "p": float(2 * stats.t.sf(abs(d / se_diff), ddf))})
    return test, diffs
