"""Answers as rows / CSV: blinded (reader files only) or unblinded (joined with the key)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from PASTALib.review import db
from PASTALib.review.session import reader_order
from PASTALib.review.study import Study, load_key

BLINDED_COLUMNS = ["reader", "case_id", "position", "lesion_type", "realism", *db.ATTRIBUTES,
                   "reason", "seconds", "answered_at", "revision"]
KEY_COLUMNS = ["origin", "source_image", "source_mask"]


def answer_rows(study_dir: str | os.PathLike, key_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per (reader, case) answer; with the key, origin and source paths are added."""
    study = Study.open(study_dir)
    key = load_key(key_dir) if key_dir is not None else None
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


def export_csv(study_dir: str | os.PathLike, path: str | os.PathLike, key_dir: str | os.PathLike | None = None) -> Path:
    """Write the answers CSV (unblinded when ``key_dir`` is given)."""
    rows = answer_rows(study_dir, key_dir)
    columns = BLINDED_COLUMNS + (KEY_COLUMNS if key_dir is not None else [])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
