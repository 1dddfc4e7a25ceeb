"""Self-contained HTML report of a realism study: tables + matplotlib PNGs embedded as base64."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from PASTALib.review.db import ATTRIBUTES

_COLOURS = {"real": "#4C72B0", "synthetic": "#DD8452"}


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _figure(width: float = 7.0, height: float = 3.6):
    # Figure() without pyplot: no global backend or figure registry is touched.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (float, int, type(None))) for v in value):
        return f"[{_fmt(value[0], digits)}, {_fmt(value[1], digits)}]"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _realism_figure(results: dict[str, Any]) -> str:
    import numpy as np

    entries = results["realism_by_type"]
    fig, ax = _figure(max(5.0, 1.2 * len(entries) + 2))
    x = np.arange(len(entries))
    for k, origin in enumerate(("real", "synthetic")):
        means = [e[origin]["mean"] or 0 for e in entries]
        sds = [e[origin]["sd"] or 0 for e in entries]
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=sds, capsize=3, label=origin, color=_COLOURS[origin])
    ax.set_xticks(x, [e["lesion_type"].replace("_", " ") for e in entries], rotation=20, ha="right")
    ax.set_ylim(0, 5.5)
    ax.set_ylabel("Realism (1–5), mean ± SD")
    ax.set_title("Realism by lesion type (cf. paper Fig. 2b)")
    ax.legend()
    return _png(fig)


def _roc_figure(results: dict[str, Any]) -> str:
    fig, ax = _figure(4.5, 4.2)
    for reader in results["per_reader"]:
        if reader["roc"]["fpr"]:
            ax.plot(reader["roc"]["fpr"], reader["roc"]["tpr"], marker=".", label=f"{reader['reader']} (AUC {_fmt(reader['auc'], 2)})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance (indistinguishable)")
    ax.set_xlabel("1 − specificity (synthetic called real)")
    ax.set_ylabel("Sensitivity (real called real)")
    ax.set_title("Realism score as a real-vs-synthetic detector")
    ax.legend(fontsize=7)
    return _png(fig)


def _histogram_figure(results: dict[str, Any]) -> str:
    import numpy as np

    fig, ax = _figure(5.0, 3.2)
    x = np.arange(1, 6)
    for k, origin in enumerate(("real", "synthetic")):
        counts = np.asarray(results["rating_counts"][origin], float)
        ax.bar(x + (k - 0.5) * 0.38, counts / max(counts.sum(), 1), 0.38, label=origin, color=_COLOURS[origin])
    ax.set_xlabel("Realism rating")
    ax.set_ylabel("Share of ratings")
    ax.legend()
    return _png(fig)


def _attribute_figure(results: dict[str, Any]) -> str | None:
    import numpy as np

    rows = [r for r in results["attribute_accuracy"] if r["origin"] == "synthetic"]
    if not rows:
        return None
    fig, ax = _figure(max(5.0, 1.5 * len(rows) + 2))
    x = np.arange(len(rows))
    width = 0.8 / len(ATTRIBUTES)
    for k, attribute in enumerate(ATTRIBUTES):
        ax.bar(x + (k - 2) * width, [r[attribute]["mean"] or 0 for r in rows], width, label=attribute)
    ax.set_xticks(x, [r["lesion_type"].replace("_", " ") for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 6.5)  # head room for the legend above the bars
    ax.set_ylabel("Attribute accuracy (1–5), mean")
    ax.set_title("Report attribute accuracy, synthetic cases (cf. paper Fig. 2c)")
    ax.legend(fontsize=7, ncol=5)
    return _png(fig)


def render(results: dict[str, Any]) -> str:
    """The report as one HTML string (no external files)."""
    r = results
    sections = [f"<h1>Realism reader study</h1><p>{r['n_readers']} readers, {r['n_cases']} cases "
                f"({r['n_cases_by_origin']['real']} real, {r['n_cases_by_origin']['synthetic']} synthetic), "
                f"{r['n_answers']} answers. AUC 0.5 = readers cannot tell synthetic from real.</p>"]
    if not r.get("complete", True):
        sections.append("<p><b>Interim analysis:</b> not every reader has rated every case yet; statistics that are "
                        "not defined yet say why.</p>")
    d = r["realism_difference"]
    sections.append("<h2>Realism by lesion type</h2>" + _realism_figure(r) + _table(
        ["lesion type", "real n", "real mean", "real SD", "synthetic n", "synthetic mean", "synthetic SD"],
        [[e["lesion_type"], e["real"]["n"], e["real"]["mean"], e["real"]["sd"], e["synthetic"]["n"],
          e["synthetic"]["mean"], e["synthetic"]["sd"]] for e in r["realism_by_type"]])
        + "<h3>Realism difference (real − synthetic), mixed model</h3>" + _table(
        ["lesion type", "ratings", "cases", "difference", "95% CI", "90% CI", "p (difference = 0)", "p Holm",
         f"TOST p (margin ±{r['settings']['tost_margin']})", "TOST p Holm", "equivalent", "note"],
        [[e["lesion_type"], e["n_ratings"], e["n_cases"], e.get("difference"), e.get("ci95"), e.get("ci90"),
          e.get("p_difference"), e.get("p_difference_holm"), e.get("tost_p"), e.get("tost_p_holm"),
          e.get("equivalent"), e.get("reason") or " ".join(e.get("notes", []))] for e in [*d["by_type"], d["all"]]])
        + f"<p>Linear mixed model with crossed random reader and case intercepts (statsmodels MixedLM, REML, Wald "
        f"intervals); equivalence (TOST, α = 0.05) when the 90% CI lies within the margin. "
        f"{html.escape(d['multiple_comparisons'])}; the 'all' row is the pre-specified overall test.</p>")

    per_reader_rows = [[p["reader"], p["n"], p["auc"], p["auc_case_bootstrap"]["ci95"], p["accuracy"], p["accuracy_ci95"],
                        p["accuracy_p_vs_50"], p["sensitivity"], p["sensitivity_ci95"], p["specificity"], p["specificity_ci95"]]
                       for p in r["per_reader"]]
    a = r["all_readers"]
    per_reader_rows.append(["all readers (mean, OR-Hillis)", r["n_cases"], a["auc"]["estimate"], a["auc"]["ci95"],
                            a["accuracy"]["estimate"], a["accuracy"]["ci95"], a["accuracy"]["p_vs_null"],
                            a["sensitivity"]["estimate"], a["sensitivity"]["ci95"], a["specificity"]["estimate"],
                            a["specificity"]["ci95"]])
    auc = a["auc"]
    notes = "".join(f"<li>{html.escape(n)}</li>" for fom in a.values() for n in fom["notes"])
    sections.append("<h2>Discrimination</h2>"
        + f"<p><b>Reader-averaged AUC {_fmt(auc['estimate'])}, 95% CI {_fmt(auc['ci95'])}, test of AUC = 0.5: "
        f"t = {_fmt(auc['t'], 2)}, df = {_fmt(auc['df'], 1)}, p = {_fmt(auc['p_vs_null'], 4)}</b> "
        f"({html.escape(auc['method'])}; readers and cases random; {auc['n_readers']} readers, {auc['n_cases']} cases)."
        + (f" DeLong covariance instead: 95% CI {_fmt(auc['delong']['ci95'])}, p = {_fmt(auc['delong']['p_vs_null'], 4)}." if auc.get("delong") else "")
        + "</p>" + (f"<ul>{notes}</ul>" if notes else "")
        + _roc_figure(r) + _histogram_figure(r) + _table(
        ["reader", "n", "AUC", "AUC 95% CI", "accuracy", "95% CI", "p (accuracy = 50%)", "sensitivity", "95% CI",
         "specificity", "95% CI"], per_reader_rows)
        + f"<p>Threshold: rating ≥ {r['settings']['threshold']} calls a case real. Per reader: AUC CI by case bootstrap "
        f"({r['settings']['n_boot']} replicates, seed {r['settings']['seed']}; undefined replicates: "
        f"{', '.join(str(p['auc_case_bootstrap']['n_undefined']) for p in r['per_reader'])}), proportions with Wilson CIs "
        f"and an exact binomial test. All readers: the mean of the reader values with the Obuchowski–Rockette CI "
        f"(Hillis df) and its t test against 0.5; as in the OR-DBM MRMC software, these intervals are not "
        f"truncated to [0, 1].</p>")
    a = r["agreement"]
    agreement = "<h2>Inter-reader agreement</h2>"
    if a.get("note"):
        agreement += f"<p>{html.escape(a['note'])}</p>"
    else:
        alpha = a["krippendorff_alpha"]
        boot = alpha.get("bootstrap", {})
        agreement += (f"<p>Ordinal Krippendorff's α = {_fmt(alpha['value'])}, 95% CI {_fmt(boot.get('ci95'))} "
                      f"({alpha['n_cases_with_2_ratings']} cases with ≥ 2 ratings; undefined bootstrap replicates "
                      f"{boot.get('n_undefined', '–')}) {html.escape(alpha.get('reason') or boot.get('reason') or '')}</p>")
        icc = a["icc_primary"]
        agreement += (f"<p>Primary ICC: {icc['form']} ({html.escape(icc['description'])}) = {_fmt(icc.get('icc'))}, "
                      f"95% CI {_fmt(icc.get('ci95'))}, on the {icc['n_cases']} cases rated by all {icc['n_readers']} readers "
                      f"{html.escape(icc.get('reason', ''))}</p>")
        if a.get("icc"):
            agreement += _table(["ICC", "form", "value", "95% CI", "p"],
                                [[i["type"], i["description"], i["icc"], i["ci95"], i["p"]] for i in a["icc"]])
        agreement += _table(["readers", "n", "quadratic-weighted κ", "95% CI (case bootstrap)", "undefined replicates", "note"],
                            [[" vs ".join(k["readers"]), k["n"], k["kappa_quadratic"], k.get("bootstrap", {}).get("ci95"),
                              k.get("bootstrap", {}).get("n_undefined"), k.get("reason") or k.get("bootstrap", {}).get("reason")]
                             for k in a["kappa_pairs"]])
    sections.append(agreement)
    if r["attribute_accuracy"]:
        figure = _attribute_figure(r) or ""
        sections.append("<h2>Report attribute accuracy</h2>" + figure + _table(
            ["lesion type", "origin", *ATTRIBUTES],
            [[e["lesion_type"], e["origin"], *(f"{_fmt(e[k]['mean'], 2)} ± {_fmt(e[k]['sd'], 2)} (n={e[k]['n']})" for k in ATTRIBUTES)]
             for e in r["attribute_accuracy"]]))
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}")
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Realism study</title><style>{style}</style></head><body>{''.join(sections)}</body></html>\n"


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(results), encoding="utf-8")
    return path
