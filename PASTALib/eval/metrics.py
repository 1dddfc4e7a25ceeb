"""Point metrics: Dice (per class), AUC, accuracy, macro F1.

Pure numpy / scikit-learn. Conventions:

* **Dice, empty vs empty.** When a class is absent from both the prediction and the reference
  the Dice coefficient is 0/0. :func:`dice` returns ``empty`` for that case, by default ``1.0``
  (a correct "nothing there"; the nnU-Net / Medical Segmentation Decathlon habit is to return NaN
  and drop the case, which ``empty=float('nan')`` gives, and averages then use ``np.nanmean``).
  Present in one and absent in the other is 0.0.
* **AUC** is scikit-learn's ``roc_auc_score`` (ties counted as 1/2). Multi-class scores
  (N, C) use one-vs-rest, macro averaged. A reference with a single class raises ValueError.
* **Accuracy / macro F1** take hard labels; :func:`labels_from_scores` turns binary scores into
  labels at a threshold (default 0.5, score >= threshold is positive) and multi-class scores by
  argmax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def dice_binary(pred: np.ndarray, ref: np.ndarray, *, empty: float = 1.0) -> float:
    """Dice of two boolean masks: 2|P∩R| / (|P|+|R|); ``empty`` when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    denom = int(pred.sum()) + int(ref.sum())
    if denom == 0:
        return float(empty)
    return 2.0 * int(np.logical_and(pred, ref).sum()) / denom


def dice(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int] | None = None, *,
         empty: float = 1.0) -> dict[int, float]:
    """Dice per label value of two integer label maps of the same shape.

    ``labels``: the label values to score (default: every non-zero value in either map).
    Returns ``{label: dice}``; see the module docstring for the empty-vs-empty convention.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0)
    return {int(lab): dice_binary(pred == lab, ref == lab, empty=empty) for lab in labels}


def auc(y_true: Sequence, y_score: Sequence) -> float:
    """Area under the ROC curve (scikit-learn). Binary: scores of the positive class;
    multi-class: (N, C) probabilities, one-vs-rest macro average."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if len(np.unique(y_true)) < 2:
        raise ValueError("AUC needs both classes in the reference labels")
    if y_score.ndim == 2 and y_score.shape[1] > 2:
        return float(roc_auc_score(y_true, y_score, multi_class="ovr", average="macro"))
    if y_score.ndim == 2:
        y_score = y_score[:, 1]
    return float(roc_auc_score(y_true, y_score))


def labels_from_scores(y_score: Sequence, threshold: float = 0.5) -> np.ndarray:
    """Hard labels: binary scores → (score >= threshold); (N, C) scores → argmax."""
    y_score = np.asarray(y_score, dtype=float)
    if y_score.ndim == 2:
        return y_score.argmax(axis=1)
    return (y_score >= threshold).astype(int)


def accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Fraction of correct hard labels."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.shape} labels vs {y_pred.shape} predictions")
    return float(np.mean(y_true == y_pred))


def macro_f1(y_true: Sequence, y_pred: Sequence) -> float:
    """Unweighted mean of the per-class F1 over the classes in reference ∪ prediction
    (scikit-learn ``f1_score(average='macro', zero_division=0)``)."""
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(y_true), np.asarray(y_pred), average="macro", zero_division=0))


# --- row-wise versions (one resample per row) used by the bootstrap ----------------------------

def auc_rows(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Binary AUC of each row of (B, n) labels / scores by the Mann–Whitney rank formula with
    average ranks for ties (identical to ``roc_auc_score``); NaN where a row has one class."""
    from scipy.stats import rankdata

    y = np.atleast_2d(np.asarray(y_true))
    s = np.atleast_2d(np.asarray(y_score, dtype=float))
    classes = np.unique(y)
    if len(classes) > 2:
        raise ValueError("auc_rows is binary only")
    pos = y == classes[-1]
    n1 = pos.sum(axis=1)
    n0 = y.shape[1] - n1
    ranks = rankdata(s, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((ranks * pos).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    out[(n1 == 0) | (n0 == 0) | (len(classes) < 2)] = np.nan
    return out


def accuracy_rows(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Accuracy of each row of (B, n) labels / predictions."""
    return np.mean(np.atleast_2d(y_true) == np.atleast_2d(y_pred), axis=1)


def macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Macro F1 of each row over the classes present in that row's labels ∪ predictions
    (= ``f1_score(average="macro", zero_division=0)`` per row)."""
    y = np.atleast_2d(y_true)
    p = np.atleast_2d(y_pred)
    classes = np.union1d(np.unique(y), np.unique(p))
    f1 = np.zeros((y.shape[0], len(classes)))
    present = np.zeros_like(f1, dtype=bool)
    for j, c in enumerate(classes):
        yt, yp = y == c, p == c
        tp = (yt & yp).sum(axis=1)
        denom = yt.sum(axis=1) + yp.sum(axis=1)
        present[:, j] = denom > 0
        f1[:, j] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return (f1 * present).sum(axis=1) / present.sum(axis=1)
