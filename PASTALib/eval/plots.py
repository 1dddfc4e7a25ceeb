"""Few-shot curves with CI bands (like PASTA Fig. 3c): metric vs K with a shaded 95% CI per method.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it
works headless and inside Slicer alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from PASTALib.eval.stats import bootstrap_mean_ci

FEW_SHOT_K = (1, 2, 4, 8, 16)


def summarize_fewshot(df: pd.DataFrame, *, rng: np.random.Generator, k_col: str = "K", value_col: str = "value",
                      group_col: str | None = "method", n_resamples: int = 1000) -> pd.DataFrame:
    """Per (method, K): mean of ``value_col`` over repeats/cases with a percentile bootstrap 95% CI.

    If the table already has ``low`` and ``high`` columns (one row per method and K) they are kept.
    Returns columns method, K, n, mean, low, high.
    """
    if k_col not in df or value_col not in df:
        raise ValueError(f"few-shot table needs columns {k_col!r} and {value_col!r}; has {list(df.columns)}")
    groups = df[group_col] if group_col and group_col in df else pd.Series("result", index=df.index)
    rows = []
    for (method, k), sub in df.groupby([groups, df[k_col]], sort=True):
        values = sub[value_col].to_numpy(float)
        if {"low", "high"} <= set(sub.columns) and len(sub) == 1:
            rows.append(dict(method=method, K=int(k), n=1, mean=float(values[0]), low=float(sub["low"].iloc[0]),
                             high=float(sub["high"].iloc[0])))
            continue
        values = values[~np.isnan(values)]
        if len(values) >= 2:
            ci = bootstrap_mean_ci(values, rng=rng, n_resamples=n_resamples)
            low, high = ci.low, ci.high
        else:
            low = high = float(values[0]) if len(values) else float("nan")
        rows.append(dict(method=method, K=int(k), n=len(values), mean=float(np.mean(values)) if len(values) else float("nan"),
                         low=low, high=high))
    return pd.DataFrame(rows)


def plot_fewshot(summary: pd.DataFrame, path: str | os.PathLike, *, metric: str = "DSC",
                 title: str = "Few-shot performance", log2_x: bool = True) -> Path:
    """Line per method (mean) with its shaded CI band, x = K (log2 axis, ticks at the K present)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.8), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for method, sub in summary.sort_values("K").groupby("method", sort=False):
        k = sub["K"].to_numpy(float)
        (line,) = ax.plot(k, sub["mean"], marker="o", lw=1.8, label=str(method))
        ax.fill_between(k, sub["low"], sub["high"], color=line.get_color(), alpha=0.2, lw=0)
    ks = sorted(summary["K"].unique())
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(int(k)) for k in ks])
    ax.set_xlabel("K (annotated training cases)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
