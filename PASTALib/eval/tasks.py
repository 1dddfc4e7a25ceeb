"""Task-level evaluations used by ``pasta evaluate``: segmentation folders, classification tables."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from PASTALib.errors import PastaError
from PASTALib.eval.metrics import (
    accuracy,
    accuracy_rows,
    auc,
    auc_rows,
    dice,
    labels_from_scores,
    macro_f1,
    macro_f1_rows,
)
from PASTALib.eval.stats import bootstrap_ci, bootstrap_mean_ci

IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class EvaluationError(PastaError):
    """Inputs of an evaluation do not fit together (missing cases, columns, one class only)."""


def case_id(path: str | os.PathLike) -> str:
    """File name without its image suffix (``case_001.nii.gz`` → ``case_001``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder")
    files = {case_id(p): p for p in sorted(folder.iterdir())
             if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}
    if not files:
        raise EvaluationError(f"no label maps ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def evaluate_segmentation_dirs(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike,
                               labels: Iterable[int] | None = None, *, empty: float = 1.0) -> pd.DataFrame:
    """Dice per case and label for label maps matched by file name (suffix ignored).

    Every reference case needs a prediction (a missing one is an error: scoring it 0 silently
    hides a failed inference run). Prediction and reference must share the voxel grid.
    Returns a long table: case, label, dsc.
    """
    import SimpleITK as sitk

    from PASTALib.io import read_label

    preds, refs = _label_files(Path(pred_dir)), _label_files(Path(ref_dir))
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise EvaluationError(f"{len(missing)} reference case(s) without a prediction in {pred_dir}: {missing[:5]}")
    rows = []
    for case in sorted(refs):
        ref_img, pred_img = read_label(refs[case]), read_label(preds[case])
        if ref_img.GetSize() != pred_img.GetSize() or not np.allclose(ref_img.GetOrigin(), pred_img.GetOrigin(), atol=1e-3) \
                or not np.allclose(ref_img.GetSpacing(), pred_img.GetSpacing(), atol=1e-4):
            raise EvaluationError(f"{case}: prediction grid {pred_img.GetSize()} differs from the reference "
                                  f"{ref_img.GetSize()}; resample the prediction onto the reference first")
        ref, pred = sitk.GetArrayViewFromImage(ref_img), sitk.GetArrayViewFromImage(pred_img)
        case_labels = labels
        if case_labels is None:
            case_labels = sorted(int(v) for v in np.unique(ref) if v != 0)
        for lab, value in dice(pred, ref, case_labels, empty=empty).items():
            rows.append(dict(case=case, label=lab, dsc=value))
    return pd.DataFrame(rows, columns=["case", "label", "dsc"])


def segmentation_summary(per_case: pd.DataFrame, *, rng: np.random.Generator, n_resamples: int = 1000) -> pd.DataFrame:
    """Mean Dice per label with a percentile bootstrap 95% CI over cases (NaN cases dropped)."""
    rows = []
    for lab, sub in per_case.groupby("label", sort=True):
        values = sub["dsc"].to_numpy(float)
        values = values[~np.isnan(values)]
        if len(values) >= 2:
            ci = bootstrap_mean_ci(values, rng=rng, n_resamples=n_resamples)
            low, high = ci.low, ci.high
        else:
            low = high = float("nan")
        rows.append(dict(label=int(lab), n_cases=len(values), dsc_mean=float(np.mean(values)) if len(values) else float("nan"),
                         dsc_median=float(np.median(values)) if len(values) else float("nan"), ci_low=low, ci_high=high))
    return pd.DataFrame(rows)


def classification_summary(y_true: Sequence, y_score: Sequence | None = None, y_pred: Sequence | None = None, *,
                           rng: np.random.Generator, threshold: float = 0.5, n_resamples: int = 1000) -> pd.DataFrame:
    """AUC (needs scores), accuracy and macro F1 with percentile bootstrap 95% CIs (cases resampled;
    replicates with one class are redrawn for AUC). Hard labels come from ``y_pred`` if given, else
    from the scores at ``threshold`` (binary) or argmax (multi-class)."""
    y_true = np.asarray(y_true)
    if y_score is None and y_pred is None:
        raise EvaluationError("need scores (for AUC) or predicted labels")
    if len(np.unique(y_true)) < 2:
        raise EvaluationError("the reference labels contain one class only; AUC/F1 are undefined")
    if y_pred is None:
        y_pred = labels_from_scores(y_score, threshold)
    y_pred = np.asarray(y_pred)
    rows = []
    if y_score is not None:
        y_score = np.asarray(y_score, float)
        binary = y_score.ndim == 1 and len(np.unique(y_true)) == 2
        ci = bootstrap_ci(auc, y_true, y_score, rng=rng, n_resamples=n_resamples,
                          batch_statistic=auc_rows if binary else None)
        rows.append(dict(metric="AUC", n=len(y_true), estimate=ci.estimate, ci_low=ci.low, ci_high=ci.high))
    for name, fn, rows_fn in (("ACC", accuracy, accuracy_rows), ("F1_macro", macro_f1, macro_f1_rows)):
        ci = bootstrap_ci(fn, y_true, y_pred, rng=rng, n_resamples=n_resamples, batch_statistic=rows_fn)
        rows.append(dict(metric=name, n=len(y_true), estimate=ci.estimate, ci_low=ci.low, ci_high=ci.high))
    return pd.DataFrame(rows)


def find_column(df: pd.DataFrame, wanted: str | None, candidates: Sequence[str], what: str) -> str:
    """``wanted`` if given (must exist), else the first candidate present (case-insensitive)."""
    if wanted:
        if wanted not in df.columns:
            raise EvaluationError(f"column {wanted!r} not in the table (columns: {list(df.columns)})")
        return wanted
    lower = {c.lower(): c for c in df.columns}
    for cand in candidates:
        if cand.lower() in lower:
            return lower[cand.lower()]
    raise EvaluationError(f"no {what} column found (tried {list(candidates)}; columns: {list(df.columns)}); "
                          f"name it explicitly")


def score_columns(df: pd.DataFrame, prefix: str = "prob_") -> list[str]:
    """Multi-class probability columns ``prob_0, prob_1, ...`` sorted by class index."""
    cols = [c for c in df.columns if re.fullmatch(re.escape(prefix) + r"\d+", str(c))]
    return sorted(cols, key=lambda c: int(str(c)[len(prefix):]))
