"""Results tables: one table written as CSV, Markdown and HTML side by side."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from PASTALib.io.files import write_text_atomic


def _cell(value, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) < 10 ** -digits):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(table: pd.DataFrame | Sequence[Mapping], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame | Sequence[Mapping], title: str = "Results", digits: int = 3) -> str:
    """A standalone HTML page with the table (escaped)."""
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v, digits))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
        "</tbody></table></body></html>\n"
    )


def write_table(table: pd.DataFrame | Sequence[Mapping], prefix: str | os.PathLike, *, title: str = "Results",
                digits: int = 3) -> dict[str, Path]:
    """Write ``<prefix>.csv`` (full precision), ``<prefix>.md`` and ``<prefix>.html``; returns the paths."""
    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {"csv": prefix.with_name(prefix.name + ".csv"), "md": prefix.with_name(prefix.name + ".md"),
             "html": prefix.with_name(prefix.name + ".html")}
    write_text_atomic(paths["csv"], df.to_csv(index=False))
    write_text_atomic(paths["md"], to_markdown(df, digits))
    write_text_atomic(paths["html"], to_html(df, title, digits))
    return paths


def check_table_outputs(prefix: str | os.PathLike, inputs: Sequence[str | os.PathLike | None]) -> None:
    """Refuse a ``--out`` prefix whose .csv/.md/.html would replace an input (or cannot be written)."""
    from PASTALib.io.outputs import check_outputs

    prefix = Path(prefix)
    check_outputs(inputs, files=[prefix.with_name(prefix.name + s) for s in (".csv", ".md", ".html")])
