"""Report of ``pasta evaluate realism``: realism.png (AUC + the most separating features),
realism.html (self-contained: the figure embedded, the tables), features.csv, distances.csv and
summary.json, written into one folder through a staging folder (no partial output)."""
from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from PASTALib.eval.realism import RealismResult
from PASTALib.eval.report import to_html

_COLOURS = {"real": "#4C72B0", "synthetic": "#DD8452"}
N_PANELS = 4


def summary(result: RealismResult) -> dict:
    """What the command prints and writes to summary.json."""
    f = result.features
    auc = result.c2st.auc if result.c2st else None
    return {
        "n_real": int((f["source"] == "real").sum()), "n_synthetic": int((f["source"] == "synthetic").sum()),
        "auc": None if auc is None else {"estimate": auc.estimate, "low": auc.low, "high": auc.high,
                                         "n_resamples": auc.n_resamples},
        "classifier_features": result.classifier_features,
        "most_separating": result.top_features(5),
        "notes": result.notes, "failed": result.failed, "settings": result.settings,
    }


def _headline(result: RealismResult) -> str:
    s = summary(result)
    text = f"{s['n_real']} real vs {s['n_synthetic']} synthetic lesions"
    if s["auc"] is None:
        return text + "; classifier AUC not computed"
    a = s["auc"]
    return text + f"; C2ST AUC {a['estimate']:.3f} [{a['low']:.3f}, {a['high']:.3f}] (0.5 = indistinguishable)"


def render_png(result: RealismResult, path: str | os.PathLike) -> Path:
    """KS statistic of the top features (bar) + real/synthetic distributions of the top N_PANELS."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top = result.distances.head(12)
    fig = Figure(figsize=(12, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, N_PANELS)
    ax = fig.add_subplot(grid[0, :])
    x = np.arange(len(top))
    ax.bar(x, top["ks"], color="#8172B2")
    ax.set_xticks(x, [str(n) for n in top["feature"]], rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("KS statistic (real vs synthetic)")
    ax.set_title(_headline(result), fontsize=10)
    for i, smd in enumerate(top["smd"]):
        ax.text(i, float(top["ks"].iloc[i]) + 0.02, f"SMD {smd:+.2f}", ha="center", fontsize=7)
    f = result.features
    for k, name in enumerate(top["feature"].head(N_PANELS)):
        panel = fig.add_subplot(grid[1, k])
        values = [f.loc[f["source"] == src, name].to_numpy(float) for src in ("real", "synthetic")]
        values = [v[np.isfinite(v)] for v in values]
        edges = np.histogram_bin_edges(np.concatenate(values), bins=15)
        for src, v in zip(("real", "synthetic"), values):
            panel.hist(v, bins=edges, alpha=0.55, density=True, color=_COLOURS[src], label=f"{src} (n={len(v)})")
        panel.set_title(str(name), fontsize=9)
        panel.tick_params(labelsize=7)
        if k == 0:
            panel.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def render_html(result: RealismResult, png: Path) -> str:
    s = summary(result)
    image = base64.b64encode(png.read_bytes()).decode()
    top = ", ".join(html.escape(n) for n in s["most_separating"])
    parts = [f"<h1>Realism: real vs synthetic lesions</h1><p><b>{html.escape(_headline(result))}</b></p>",
             f"<p>Features that separate most (KS statistic): {top}.</p>",
             "<p>C2ST: out-of-fold random-forest probabilities, ROC AUC with a percentile bootstrap 95% CI over "
             f"lesions; classifier features: {html.escape(', '.join(s['classifier_features']))}. Acquisition "
             f"matching: {'on (synthetic masks resampled to the spacing of a randomly drawn real scan)' if s['settings']['match_acquisition'] else 'off'}. "
             "SMD = (synthetic − real mean) / pooled SD; Wasserstein distance in units of the real SD.</p>"]
    parts += [f"<p>Note: {html.escape(n)}</p>" for n in s["notes"]]
    if s["failed"]:
        parts.append("<p>Skipped lesions: " + "; ".join(html.escape(x) for x in s["failed"]) + "</p>")
    parts.append(f'<img alt="realism" style="max-width:100%" src="data:image/png;base64,{image}">')
    table = to_html(result.distances, title="Per-feature distances", digits=3)
    body = table.split("<body>", 1)[1].rsplit("</body>", 1)[0]
    head = table.split("<head>", 1)[1].split("</head>", 1)[0]
    return (f"<!DOCTYPE html>\n<html><head>{head}</head><body>{''.join(parts)}{body}"
            "<p>Per-lesion features: features.csv; settings: summary.json.</p></body></html>\n")


def write_realism_report(result: RealismResult, out: str | os.PathLike) -> dict[str, Path]:
    """Write realism.png, realism.html, features.csv, distances.csv, summary.json into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".realism.", dir=out))
    names = ("realism.png", "realism.html", "features.csv", "distances.csv", "summary.json")
    try:
        png = render_png(result, staging / "realism.png")
        (staging / "realism.html").write_text(render_html(result, png), encoding="utf-8")
        result.features.to_csv(staging / "features.csv", index=False)
        result.distances.to_csv(staging / "distances.csv", index=False)
        (staging / "summary.json").write_text(json.dumps(summary(result), indent=2) + "\n", encoding="utf-8")
        for name in names:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {name: out / name for name in names}
