"""One reader's session: seeded stable order, resume at the first unanswered case, immediate commits.

The same class drives the terminal prompt (``pasta review rate``) and the Slicer panel.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from PASTALib.review import db
from PASTALib.review.errors import ReviewError
from PASTALib.review.study import Study


@dataclass(frozen=True)
class CaseView:
    """What a reader is shown for one case (no origin information)."""

    case_id: str
    position: int  # 1-based position in this reader's order
    total: int
    lesion_type: str
    report: dict[str, str] | None  # attribute -> wording; rate its accuracy when present
    answer: db.Answer | None  # the reader's current answer, if any


@dataclass(frozen=True)
class CasePaths:
    """Files of one case plus the lesion centre (LPS mm) for a lesion-centred view."""

    image: Path
    mask: Path
    centre_lps_mm: tuple[float, float, float]


def reader_order(case_ids: tuple[str, ...], seed: int) -> tuple[str, ...]:
    """A reader's case order: a seeded permutation of the sorted ids (same seed -> same order)."""
    ids = sorted(case_ids)
    return tuple(ids[i] for i in np.random.default_rng(seed).permutation(len(ids)))


class ReaderSession:
    """A reader working through a study. Every :meth:`rate` is committed before it returns."""

    def __init__(self, study_dir: str | os.PathLike, reader: str) -> None:
        self.study = Study.open(study_dir)
        self.reader = db.reader_name(reader)
        self._conn = db.connect(self.study.db_path)
        try:
            self.seed = db.reader_seed(self._conn, reader)
            self.settings = db.settings(self._conn)
        except BaseException:
            self._conn.close()
            raise
        self.order = reader_order(self.study.case_ids, self.seed)
        self._index = self.first_unanswered()
        self._shown_at: tuple[str, float] | None = None

    # -- context manager / lifetime
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ReaderSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state
    @property
    def allow_changes(self) -> bool:
        return bool(self.settings.get("allow_changes", False))

    def _answers(self) -> dict[str, db.Answer]:
        return {a.case_id: a for a in db.answers(self._conn, self.reader)}

    def first_unanswered(self) -> int:
        """Index of the first case in this reader's order without an answer (len(order) when done)."""
        done = self._answers()
        return next((i for i, c in enumerate(self.order) if c not in done), len(self.order))

    def progress(self) -> tuple[int, int]:
        """(answered, total) for this reader."""
        done = self._answers()
        return sum(c in done for c in self.order), len(self.order)

    @property
    def finished(self) -> bool:
        return self.progress()[0] == len(self.order)

    def _view(self, index: int) -> CaseView:
        case_id = self.order[index]
        case = self.study.cases[case_id]
        return CaseView(case_id, index + 1, len(self.order), case["lesion_type"], case.get("report"),
                        self._answers().get(case_id))

    # -- navigation
    def current(self) -> CaseView | None:
        """The case at the cursor (None past the last case); starts its reading clock."""
        if self._index >= len(self.order):
            return None
        view = self._view(self._index)
        if self._shown_at is None or self._shown_at[0] != view.case_id:
            self._shown_at = (view.case_id, time.monotonic())
        return view

    def next(self) -> CaseView | None:
        self._index = min(self._index + 1, len(self.order))
        return self.current()

    def previous(self) -> CaseView | None:
        self._index = max(self._index - 1, 0)
        return self.current()

    def go_to(self, case_id: str) -> CaseView:
        if case_id not in self.order:
            raise ReviewError(f"Case {case_id} is not in this study.")
        self._index = self.order.index(case_id)
        view = self.current()
        assert view is not None
        return view

    def resume(self) -> CaseView | None:
        """Jump to the first unanswered case (where a crashed session left off)."""
        self._index = self.first_unanswered()
        return self.current()

    # -- files and answers
    def case_paths(self, case_id: str | None = None) -> CasePaths:
        """Image and mask of a case (the current one by default), checked against the manifest."""
        case_id = case_id or self.order[min(self._index, len(self.order) - 1)]
        if case_id not in self.study.cases:
            raise ReviewError(f"Case {case_id} is not in this study.")
        self.study.verify_case(case_id)
        case = self.study.cases[case_id]
        folder = self.study.root / "cases" / case_id
        return CasePaths(folder / case["image"], folder / case["mask"], tuple(case["centre_lps_mm"]))

    def rate(
        self, case_id: str, realism: int, attributes: dict[str, Any] | None = None,
        reason: str | None = None, seconds: float | None = None,
    ) -> db.Answer:
        """Save (commit) an answer. ``seconds`` defaults to the time since the case was shown.

        Attribute ratings are accepted only for cases that show a report (others have no questions).
        """
        if case_id not in self.study.cases:
            raise ReviewError(f"Case {case_id} is not in this study.")
        report = self.study.cases[case_id].get("report")
        if attributes:
            asked = set(report or {})
            # Unknown attribute names are left to db.record_answer (RatingRangeError names the valid ones).
            extra = {k for k, v in attributes.items() if v is not None and k in db.ATTRIBUTES} - asked
            if extra:
                raise ReviewError(f"Case {case_id} asks no accuracy question for {', '.join(sorted(extra))} "
                                  f"(its report shows: {', '.join(sorted(asked)) or 'nothing'}).")
        if seconds is None and self._shown_at and self._shown_at[0] == case_id:
            seconds = round(time.monotonic() - self._shown_at[1], 3)
        answer = db.record_answer(self._conn, self.reader, case_id, realism, attributes,
                                  (reason or "").strip() or None, seconds, self.allow_changes)
        return answer

    def answers(self) -> dict[str, db.Answer]:
        """This reader's current answers by case id."""
        return self._answers()


#: Columns of a scripted answers file; the other columns of an export (`pasta review export`) are ignored.
ANSWER_COLUMNS = ("case_id", "realism", *db.ATTRIBUTES, "reason", "seconds")
_EXPORT_COLUMNS = ("reader", "position", "lesion_type", "answered_at", "revision", "origin", "source_image", "source_mask")


def _answer_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) of every answer in a CSV or JSON file; ReviewError when it cannot be read."""
    fix = ("give a CSV with a header row case_id,realism[,shape,density,heterogeneity,surface,invasion][,reason]"
           "[,seconds] (or a .json list of objects with those keys)")
    if not path.exists():
        raise ReviewError(f"No answers file at {path}: {fix}.")
    if not path.is_file():
        raise ReviewError(f"{path} is a folder, not an answers file: {fix}.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ReviewError(f"cannot read the answers file {path} ({exc.strerror or exc}): check its permissions.") from None
    except UnicodeDecodeError as exc:
        raise ReviewError(f"{path} is not UTF-8 text (byte {exc.start}): {fix}.") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReviewError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}): {fix}.") from None
        if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
            data = [{"case_id": k, **v} for k, v in data.items()]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ReviewError(f"{path} holds no list of answer objects: {fix}.")
        records = [(f"entry {i}", r) for i, r in enumerate(data, 1)]
    else:
        if "\x00" in text:
            raise ReviewError(f"{path} contains NUL bytes (a binary file?): {fix}.")
        try:
            reader = csv.DictReader(text.splitlines(keepends=True))
            records = [(f"line {reader.line_num}", row) for row in reader]
            header = reader.fieldnames or []
        except csv.Error as exc:
            raise ReviewError(f"{path} is not a readable CSV ({exc}): {fix}.") from None
        if None in {k for _, r in records for k in r}:
            line = next(w for w, r in records if None in r)
            raise ReviewError(f"{path} {line} has more fields than the header: {fix}.")
        missing = [c for c in ("case_id", "realism") if c not in header]
        if missing:
            raise ReviewError(f"{path} has no column {', '.join(missing)}: {fix}.")
    return records


def read_answers(path: str | os.PathLike, study: Study) -> dict[str, dict[str, Any]]:
    """Read and check a whole scripted answers file before anything is recorded.

    Returns case id -> {realism, attributes, reason, seconds}. Raises ReviewError listing every
    problem (unknown columns or case ids, repeated cases, ratings outside 1-5, bad seconds)."""
    path = Path(path)
    records = _answer_records(path)
    if not records:
        raise ReviewError(f"{path} has no answers (only a header, or empty). Add one row per case.")
    problems: list[str] = []
    unknown = sorted({str(k) for _, r in records for k in r} - set(ANSWER_COLUMNS) - set(_EXPORT_COLUMNS))
    if unknown:
        problems.append(f"unknown column(s) {', '.join(db.shown(repr(k)) for k in unknown)} "
                        f"(allowed: {', '.join(ANSWER_COLUMNS)})")
    answers: dict[str, dict[str, Any]] = {}
    for where, row in records:
        case_id = str(row.get("case_id") or "").strip()
        if not case_id:
            problems.append(f"{where}: no case_id")
            continue
        if case_id not in study.cases:
            problems.append(f"{where}: case {db.shown(repr(case_id))} is not in this study")
            continue
        if case_id in answers:
            problems.append(f"{where}: case {case_id} is answered twice")
            continue
        try:
            realism = db.check_rating(row.get("realism"), "Realism")
            attributes = {a: db.check_rating(row[a], f"{a.capitalize()} accuracy")
                          for a in db.ATTRIBUTES if str(row.get(a) if row.get(a) is not None else "").strip()}
        except ReviewError as exc:
            problems.append(f"{where} (case {case_id}): {exc}")
            continue
        seconds = row.get("seconds")
        if seconds is not None and str(seconds).strip():
            try:
                seconds = float(seconds)
            except (TypeError, ValueError):
                seconds = float("nan")
            if not math.isfinite(seconds) or seconds < 0:
                problems.append(f"{where} (case {case_id}): seconds {db.shown(repr(row.get('seconds')))} is not a "
                                "number of seconds >= 0")
                continue
        else:
            seconds = None
        reason = row.get("reason")
        answers[case_id] = {"realism": realism, "attributes": attributes,
                            "reason": str(reason).strip() or None if reason is not None else None, "seconds": seconds}
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ReviewError(f"{path} was not used (nothing recorded): {shown}. Fix the file and run the command again.")
    return answers
