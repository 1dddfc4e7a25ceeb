"""Classifier two-sample test (C2ST): can a classifier tell real from synthetic feature rows?

AUC 0.5 = indistinguishable. Out-of-fold probabilities of a random forest (stratified k-fold,
seeded), AUC with a percentile bootstrap CI over the rows (Lopez-Paz & Oquab, ICLR 2017).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from PASTALib.eval.stats import CI, bootstrap_ci


@dataclass(frozen=True)
class C2STResult:
    auc: CI
    n_real: int
    n_synthetic: int
    feature_importance: dict[str, float]


def c2st_auc(real: np.ndarray, synthetic: np.ndarray, feature_names: list[str], *, rng: np.random.Generator,
             folds: int = 5, n_resamples: int = 1000, n_estimators: int = 300) -> C2STResult:
    """C2ST AUC of ``real`` vs ``synthetic`` rows (same columns, ``feature_names``)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    real, synthetic = np.asarray(real, float), np.asarray(synthetic, float)
    if real.ndim != 2 or synthetic.ndim != 2 or real.shape[1] != synthetic.shape[1] != len(feature_names):
        raise ValueError("real and synthetic must be 2-D with one column per feature name")
    if min(len(real), len(synthetic)) < folds:
        raise ValueError(f"need at least {folds} rows on each side (got {len(real)} real, {len(synthetic)} synthetic)")
    x = np.vstack([real, synthetic])
    y = np.r_[np.ones(len(real)), np.zeros(len(synthetic))]
    seed = int(rng.integers(0, 2**31 - 1))
    oof = np.empty(len(y))
    importance = np.zeros(x.shape[1])
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        forest = RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=3, random_state=seed, n_jobs=1)
        forest.fit(x[train], y[train])
        oof[test] = forest.predict_proba(x[test])[:, 1]
        importance += forest.feature_importances_ / folds
    auc = bootstrap_ci(roc_auc_score, y, oof, rng=rng, n_resamples=n_resamples)
    return C2STResult(auc, len(real), len(synthetic), dict(zip(feature_names, map(float, importance))))
