"""Frozen-feature probes: cosine k-NN and logistic regression, AUC over repeated stratified splits.

Protocol (TumorImagingBench style): each repeat draws a stratified train / validation / test split
(default 50 / 20 / 30 %, as their ``split_shuffle_data``); the hyper-parameter (k for k-NN, 1…50;
C for logistic regression) is the one with the best validation AUC (ties → smallest k / C); the
probe fitted on the training part is scored on the test part. Over ``n_repeats`` repeats we report

* ``mean`` — mean test AUC,
* ``ci_low, ci_high`` — 95 % t-interval of that mean (mean ± t·SD/√n; this is the kind of interval
  TumorImagingBench prints, e.g. FMCIB on NSCLC-Radiomics 0.577 [0.550, 0.604] over its splits),
* ``range_low, range_high`` — 2.5 / 97.5 percentiles of the per-split AUCs (what one split may give).

The k-NN is computed from one cosine-similarity matrix for all k at once (numpy; equal to
``KNeighborsClassifier(metric="cosine", weights="uniform")`` up to the order of exactly tied
neighbours, checked in the tests), which makes 50 repeats × 50 k values take well under a second.
Pure numpy / scikit-learn; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from PASTALib.eval.metrics import auc

DEFAULT_KS = tuple(range(1, 51))
DEFAULT_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of a vs rows of b; zero vectors get similarity 0."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return (a / np.where(na == 0, 1, na)) @ (b / np.where(nb == 0, 1, nb)).T


def knn_proba_all_k(sim: np.ndarray, y_train: np.ndarray, ks: Sequence[int], n_classes: int) -> np.ndarray:
    """Class probabilities of a uniform-weight k-NN for every k in ``ks`` from a (n_query, n_train)
    similarity matrix: array (len(ks), n_query, n_classes)."""
    kmax = min(max(ks), sim.shape[1])
    order = np.argsort(-sim, axis=1, kind="stable")[:, :kmax]
    onehot = np.eye(n_classes)[y_train[order]]  # (q, kmax, C)
    counts = np.cumsum(onehot, axis=1)
    ks_eff = np.minimum(np.asarray(ks), kmax)
    return np.stack([counts[:, k - 1, :] / k for k in ks_eff])


def binary_auc_many(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` (m, n) against binary ``y`` (n,), by the Mann–Whitney rank
    formula with average ranks for ties (= sklearn's roc_auc_score; checked in the tests)."""
    from scipy.stats import rankdata

    y = np.asarray(y)
    pos = y == np.max(y)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0 or len(np.unique(y)) != 2:
        return np.full(len(scores), np.nan)
    ranks = rankdata(np.atleast_2d(scores), axis=1)
    return (ranks[:, pos].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _score(y: np.ndarray, proba: np.ndarray) -> float:
    if proba.shape[1] == 2:
        return float(binary_auc_many(y, proba[:, 1][None])[0])
    try:
        return auc(y, proba)
    except ValueError:
        return float("nan")


def _score_many(y: np.ndarray, probas: np.ndarray) -> np.ndarray:
    """AUC for each of (K, n, C) probability sets."""
    if probas.shape[2] == 2:
        return binary_auc_many(y, probas[:, :, 1])
    return np.array([_score(y, p) for p in probas])


@dataclass
class ProbeFit:
    """One split: chosen hyper-parameter, validation and test AUC."""

    param: float
    val_auc: float
    test_auc: float


def knn_probe(X_train, y_train, X_val, y_val, X_test, y_test, ks: Sequence[int] = DEFAULT_KS) -> ProbeFit:
    """Cosine k-NN, k chosen on the validation AUC, test AUC of the probe fitted on the training part."""
    classes = np.unique(np.concatenate([y_train, y_val, y_test]))
    idx = {c: i for i, c in enumerate(classes)}
    ytr = np.array([idx[c] for c in y_train])
    ks = [k for k in ks if k <= len(ytr)] or [len(ytr)]
    pv = knn_proba_all_k(cosine_similarity_matrix(X_val, X_train), ytr, ks, len(classes))
    val = _score_many(y_val, pv)
    best = int(np.nanargmax(val))
    pt = knn_proba_all_k(cosine_similarity_matrix(X_test, X_train), ytr, [ks[best]], len(classes))[0]
    return ProbeFit(ks[best], float(val[best]), _score(y_test, pt))


def logistic_probe(X_train, y_train, X_val, y_val, X_test, y_test, Cs: Sequence[float] = DEFAULT_CS,
                   max_iter: int = 2000) -> ProbeFit:
    """Standardised features → L2 logistic regression (lbfgs), C chosen on the validation AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X_train)
    xtr, xva, xte = scaler.transform(X_train), scaler.transform(X_val), scaler.transform(X_test)
    if xtr.shape[1] > xtr.shape[0]:
        # n < d: the L2-penalised solution w lies in the row space of the training matrix
        # (w = -C·Xᵀr at the optimum), so fitting on coordinates in an orthonormal basis V of
        # that space gives the same decision function (‖Vβ‖ = ‖β‖) with n instead of d columns.
        _, s, vt = np.linalg.svd(xtr, full_matrices=False)
        basis = vt[s > s.max() * 1e-10].T
        xtr, xva, xte = xtr @ basis, xva @ basis, xte @ basis
    best = (-np.inf, None, None)
    for C in Cs:
        model = LogisticRegression(C=C, max_iter=max_iter).fit(xtr, y_train)
        score = _score(y_val, model.predict_proba(xva))
        if score > best[0]:
            best = (score, C, model)
    score, C, model = best
    return ProbeFit(float(C), float(score), _score(y_test, model.predict_proba(xte)))


@dataclass
class ProbeResult:
    """Test AUC over repeated stratified splits."""

    probe: str
    n_repeats: int
    mean: float
    ci_low: float
    ci_high: float
    range_low: float
    range_high: float
    sd: float
    test_aucs: list[float] = field(default_factory=list)
    params: list[float] = field(default_factory=list)

    def as_dict(self, with_values: bool = False) -> dict:
        d = asdict(self)
        if not with_values:
            d.pop("test_aucs")
            d.pop("params")
        return d


def stratified_three_way_split(y: np.ndarray, seed: int, train: float = 0.5, val: float = 0.2
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a stratified train / val / test split (test = 1 − train − val)."""
    from sklearn.model_selection import train_test_split

    test = 1.0 - train - val
    if not (0 < train < 1 and 0 < val < 1 and test > 0):
        raise ValueError("train and val fractions must be in (0, 1) and leave a test part")
    idx = np.arange(len(y))
    trval, te = train_test_split(idx, test_size=test, random_state=seed, stratify=y)
    tr, va = train_test_split(trval, test_size=val / (train + val), random_state=seed, stratify=y[trval])
    return tr, va, te


def repeated_split_auc(X, y, *, probe: Literal["knn", "logreg"] = "knn", rng: np.random.Generator,
                       n_repeats: int = 50, train: float = 0.5, val: float = 0.2,
                       ks: Sequence[int] = DEFAULT_KS, Cs: Sequence[float] = DEFAULT_CS,
                       blas_threads: int | None = 1) -> ProbeResult:
    """Probe test AUC over ``n_repeats`` stratified train/val/test splits (seeds drawn from ``rng``)."""
    from scipy import stats

    if not isinstance(rng, np.random.Generator):
        raise TypeError("pass a numpy.random.Generator, e.g. rng=np.random.default_rng(0)")
    X = np.asarray(X, np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"features {X.shape} and labels {y.shape} do not match")
    if np.isnan(X).any():
        raise ValueError("features contain NaN")
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2 or counts.min() < 3:
        raise ValueError(f"need at least 2 classes with ≥3 cases each, got counts {counts.tolist()}")
    from threadpoolctl import threadpool_limits

    seeds = rng.integers(0, 2**31 - 1, size=n_repeats)
    fits = []
    # These matrices are small: multi-threaded BLAS only oversubscribes a busy machine (10-40x
    # slower measured on a shared 2-core box), so the probes run single-threaded.
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        for seed in seeds:
            tr, va, te = stratified_three_way_split(y, int(seed), train, val)
            args = (X[tr], y[tr], X[va], y[va], X[te], y[te])
            fits.append(knn_probe(*args, ks=ks) if probe == "knn" else logistic_probe(*args, Cs=Cs))
    aucs = np.array([f.test_auc for f in fits])
    aucs_ok = aucs[~np.isnan(aucs)]
    mean, sd = float(aucs_ok.mean()), float(aucs_ok.std(ddof=1)) if len(aucs_ok) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(aucs_ok) - 1) * sd / np.sqrt(len(aucs_ok))) if len(aucs_ok) > 1 else float("nan")
    lo, hi = np.percentile(aucs_ok, [2.5, 97.5])
    return ProbeResult(probe, len(aucs_ok), mean, mean - half, mean + half, float(lo), float(hi), sd,
                       aucs.tolist(), [f.param for f in fits])
