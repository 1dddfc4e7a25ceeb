"""Answers as rows / CSV: blinded (reader files only) or unblinded (joined with the key)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from PASTALib.review import db
from PASTALib.review.errors import ReviewError
from PASTALib.review.session import reader_order
from PASTALib.review.study import Study, load_key

BLINDED_COLUMNS = ["reader", "case_id", "position", "lesion_type", "realism", *db.ATTRIBUTES,
                   "reason", "seconds", "answered_at", "revision"]
KEY_COLUMNS = ["origin", "source_image", "source_mask"]


def spreadsheet_safe(value: Any) -> Any:
    """``value`` unchanged unless it is text a spreadsheet would evaluate as a formula (CSV injection,
    OWASP): then prefixed with an apostrophe, which spreadsheets show as text and hide."""
    if isinstance(value, str) and value.startswith(db.FORMULA_LEADS):
        return "'" + value
    return value


def answer_rows(study_dir: str | os.PathLike, key_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per (reader, case) answer; with the key, origin and source paths are added."""
    study = Study.open(study_dir)
    key = load_key(key_dir) if key_dir is not None else None
    if key is not None and key["study_id"] != study.study_id:
        raise ReviewError(f"The key in {key_dir} belongs to study {key['study_id']}, not {study.study_id}; "
                          "pass the key folder made with this study.")
    conn = db.connect(study.db_path)
    try:
        seeds = db.readers(conn)
        all_answers = db.answers(conn)
    finally:
        conn.close()
    positions = {r: {c: i + 1 for i, c in enumerate(reader_order(study.case_ids, s))} for r, s in seeds.items()}
    rows = []
    for a in all_answers:
        row: dict[str, Any] = {
            "reader": a.reader, "case_id": a.case_id, "position": positions[a.reader].get(a.case_id),
            "lesion_type": study.cases[a.case_id]["lesion_type"], "realism": a.realism,
            **{k: a.attributes.get(k) for k in db.ATTRIBUTES},
            "reason": a.reason, "seconds": a.seconds, "answered_at": a.answered_at, "revision": a.revision,
        }
        if key is not None:
            entry = key["cases"][a.case_id]
            row.update(origin=entry["origin"], lesion_type=entry["lesion_type"],
                       source_image=entry["image"], source_mask=entry["mask"])
        rows.append(row)
    rows.sort(key=lambda r: (r["reader"], r["position"] or 0))
    return rows


def check_output(path: str | os.PathLike, study_dir: str | os.PathLike, key_dir: str | os.PathLike | None = None,
                 *, folder: bool = False) -> Path:
    """Refuse an output that would land in the study folder (readers get it: unblinded answers there
    leak, and any new file makes `verify` fail), replace the key, or replace a source image of the key.
    ``folder``: ``path`` is an output folder rather than a file. Returns the resolved path."""
    out = Path(path).expanduser().resolve()
    root = Path(study_dir).resolve()
    if out == root or root in out.parents:
        raise ReviewError(f"{out} is inside the study folder {root}: readers get that folder, and nothing may be "
                          "added to or replaced in it (study.json, case files, the answer database). Write the "
                          "output outside it, e.g. beside the key.")
    if not folder and out.is_dir():
        raise ReviewError(f"{out} is a folder; give a file name for the CSV (e.g. {out / 'answers.csv'}).")
    if folder and out.exists() and not out.is_dir():
        raise ReviewError(f"{out} is a file; give a folder for the analysis output.")
    if key_dir is not None:
        key_root = Path(key_dir).resolve()
        protected = {key_root / "key.json"}
        try:
            key = load_key(key_dir)
            protected |= {Path(c[k]).resolve() for c in key["cases"].values() for k in ("image", "mask") if c.get(k)}
        except ReviewError:
            pass  # the caller reports a bad key itself
        targets = {out / n for n in ("results.json", "answers.csv", "report.html")} if folder else {out}
        clash = sorted(str(t) for t in targets & protected)
        if clash:
            raise ReviewError(f"writing {clash[0]} would replace an input of the study (the key or a source "
                              "image); choose another output path.")
    from PASTALib.io.outputs import check_writable

    check_writable(out, folder=folder)  # a file in the folder's place, a read-only disk: before any work
    return out


def export_csv(study_dir: str | os.PathLike, path: str | os.PathLike, key_dir: str | os.PathLike | None = None) -> Path:
    """Write the answers CSV (unblinded when ``key_dir`` is given) atomically: a failure leaves no
    partial file and an existing file at ``path`` as it was."""
    from PASTALib.io.files import write_text_atomic

    path = check_output(path, study_dir, key_dir)
    rows = answer_rows(study_dir, key_dir)
    columns = BLINDED_COLUMNS + (KEY_COLUMNS if key_dir is not None else [])
    stream = io.StringIO(newline="")
    writer = csv.DictWriter(stream, columns, extrasaction="ignore")
    writer.writeheader()
    # Free text (a reader's reason) and key paths may begin like a formula; numbers are never text here.
    writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
    try:
        return write_text_atomic(path, stream.getvalue())
    except OSError as exc:
        raise ReviewError(f"cannot write {path} ({exc.strerror or exc}); choose a writable location.") from None
