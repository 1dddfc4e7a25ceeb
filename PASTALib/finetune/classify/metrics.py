"""Outputs of ``pasta classify``: prediction tables and AUC / ACC / F1 with bootstrap CIs."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from PASTALib.finetune.classify.table import Case
from PASTALib.io.files import write_text_atomic
from PASTALib.model.attributes import ATTRIBUTE_GROUPS, IGNORE_INDEX


def write_frame_csv(df: pd.DataFrame, path: Path) -> Path:
    return write_text_atomic(path, df.to_csv(index=False, float_format="%.8g", lineterminator="\n"))


def prediction_frame(task: str, cases: Sequence[Case], logits: np.ndarray, class_values: Sequence[Any],
                      fold: int | None, with_labels: bool = True) -> pd.DataFrame:
    """Predictions table of some cases (see the module docstring for the columns)."""
    rows: dict[str, Any] = {"id": [c.id for c in cases]}
    if fold is not None:
        rows["fold"] = [fold] * len(cases)
    if task == "attributes":
        from PASTALib.model.attributes import decode_attributes

        decoded = decode_attributes(torch.from_numpy(logits)) if len(cases) else []
        for gi, group in enumerate(ATTRIBUTE_GROUPS):
            if with_labels:
                rows[group.name] = [group.options[c.target[gi]] if c.target and c.target[gi] != IGNORE_INDEX else ""
                                    for c in cases]
            rows[f"{group.name}_pred"] = [d.values[group.name] for d in decoded]
            rows[f"{group.name}_confidence"] = [d.confidence(group.name) for d in decoded]
        return pd.DataFrame(rows)
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    if with_labels:
        rows["label"] = [c.target if c.target is not None else "" for c in cases]
        if list(class_values) != list(range(len(class_values))):
            rows["label_value"] = [class_values[c.target] if c.target is not None else "" for c in cases]
    for k in range(probs.shape[1]):
        rows[f"prob_{k}"] = probs[:, k]
    rows["pred"] = probs.argmax(1) if len(cases) else []
    if list(class_values) != list(range(len(class_values))):
        rows["pred_value"] = [class_values[int(k)] for k in rows["pred"]]
    return pd.DataFrame(rows)


def _metric_rows(y_true: np.ndarray, scores: np.ndarray | None, y_pred: np.ndarray, rng: np.random.Generator,
                 n_boot: int) -> list[dict[str, Any]]:
    """AUC (when scores and ≥ 2 classes), ACC and macro F1 with percentile bootstrap 95% CIs."""
    from PASTALib.eval.metrics import accuracy, accuracy_rows, macro_f1, macro_f1_rows
    from PASTALib.eval.stats import bootstrap_ci
    from PASTALib.eval.tasks import EvaluationError, classification_summary

    if len(y_true) == 0:
        return []
    if scores is not None and len(np.unique(y_true)) >= 2 and len(y_true) >= 2:
        try:
            return classification_summary(y_true, scores, y_pred, rng=rng, n_resamples=n_boot).to_dict("records")
        except (EvaluationError, ValueError):
            pass  # e.g. a multi-class fold missing a class: AUC undefined, ACC/F1 below
    rows = []
    for name, fn, rows_fn in (("ACC", accuracy, accuracy_rows), ("F1_macro", macro_f1, macro_f1_rows)):
        if len(y_true) >= 2:
            ci = bootstrap_ci(fn, y_true, y_pred, rng=rng, n_resamples=n_boot, batch_statistic=rows_fn)
            rows.append(dict(metric=name, n=len(y_true), estimate=ci.estimate, ci_low=ci.low, ci_high=ci.high))
        else:
            rows.append(dict(metric=name, n=len(y_true), estimate=float(fn(y_true, y_pred)), ci_low=math.nan,
                             ci_high=math.nan))
    return rows


def summarize_predictions(predictions: pd.DataFrame, task: str, *, seed: int = 0, n_boot: int = 1000) -> pd.DataFrame:
    """Metrics table (scope, [attribute,] metric, n, estimate, ci_low, ci_high) of out-of-fold
    predictions: scope "all" pools every fold, "fold_i" is one fold. Bootstrap seeded per scope."""
    scopes = [("all", predictions)] + [(f"fold_{int(f)}", sub) for f, sub in predictions.groupby("fold", sort=True)]
    rows = []
    for si, (scope, df) in enumerate(scopes):
        if task == "attributes":
            for gi, group in enumerate(ATTRIBUTE_GROUPS):
                if group.name not in df.columns:
                    continue
                known = df[df[group.name].astype(str) != ""]
                if known.empty:
                    continue
                options = list(group.options)
                y = np.array([options.index(v) for v in known[group.name]])
                p = np.array([options.index(v) for v in known[f"{group.name}_pred"]])
                rng = np.random.default_rng([seed, si, gi])
                rows += [dict(scope=scope, attribute=group.name, **r) for r in _metric_rows(y, None, p, rng, n_boot)]
        else:
            from PASTALib.eval.tasks import score_columns

            cols = score_columns(df)
            probs = df[cols].to_numpy(float)
            y = df["label"].to_numpy(int)
            scores = probs[:, 1] if probs.shape[1] == 2 else probs
            rng = np.random.default_rng([seed, si])
            rows += [dict(scope=scope, **r) for r in _metric_rows(y, scores, probs.argmax(1), rng, n_boot)]
    return pd.DataFrame(rows)


def write_metrics_tables(df: pd.DataFrame, prefix: Path, title: str) -> dict[str, Path]:
    from PASTALib.eval.report import write_table

    staging = Path(tempfile.mkdtemp(prefix=".metrics-", dir=prefix.parent))
    try:
        paths = write_table(df, staging / prefix.name, title=title)
        final = {}
        for key, p in paths.items():
            final[key] = prefix.with_name(p.name)
            os.replace(p, final[key])
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
