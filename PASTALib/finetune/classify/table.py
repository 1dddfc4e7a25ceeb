"""The task table of ``pasta classify``: rows → cases (image, organ or point, label), fixed CV splits, HU crops."""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from PASTALib.anatomy.labelmaps import LABELS_KINDS
from PASTALib.errors import AnatomyError
from PASTALib.finetune.classify.config import (
    ATTRIBUTE_COLUMNS,
    COORD_COLUMNS,
    IMAGE_COLUMNS,
    SPLITS_FORMAT,
    TASKS,
    ClassifyError,
)
from PASTALib.model.attributes import ATTRIBUTE_GROUPS, IGNORE_INDEX
from PASTALib.train.common import StopFlag


@dataclass(frozen=True)
class Case:
    """One table row, resolved."""

    row: int
    id: str
    image: Path
    organs: Path | None = None  # detection
    organ: str | None = None  # detection
    labels_kind: str = "totalsegmentator"
    point: tuple[float, float, float] | None = None  # roi / attributes, LPS mm
    target: int | tuple[int, ...] | None = None  # class index, or 5 attribute option indices
    group: str | None = None


@dataclass
class CaseTable:
    task: str
    cases: list[Case]
    class_values: list[Any] = field(default_factory=list)  # class index -> table value (detection, roi)
    attribute_columns: dict[str, str] = field(default_factory=dict)  # group name -> table column
    group_column: str | None = None
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_values)


def _column(df: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    lower = {str(c).lower(): str(c) for c in df.columns}
    return next((lower[c.lower()] for c in candidates if c.lower() in lower), None)


def _need(df: pd.DataFrame, path: Path, task: str, names: Sequence[str | tuple[str, ...]]) -> dict[str, str]:
    found, missing = {}, []
    for name in names:
        cands = (name,) if isinstance(name, str) else name
        col = _column(df, cands)
        if col is None:
            missing.append(" or ".join(repr(c) for c in cands))
        else:
            found[cands[0]] = col
    if missing:
        raise ClassifyError(f"{path} lacks column(s) {', '.join(missing)} needed by the {task} task; "
                            f"columns present: {list(map(str, df.columns))} (name the label column with --label-col, "
                            "the case id column with --id-col)")
    return found


def _class_values(raw: Sequence[str]) -> list[Any]:
    """Sorted distinct labels: numerically when every value is an integer, else as text."""
    values = sorted(set(raw))
    try:
        as_int = sorted({int(float(v)) for v in values})
        if all(float(v) == int(float(v)) for v in values):
            return as_int
    except (ValueError, OverflowError):  # text classes (or nan/inf): keep the text
        pass
    return values


def _read_csv(path: Path, task: str) -> pd.DataFrame:
    if task not in TASKS:
        raise ClassifyError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if not path.is_file():
        raise ClassifyError(f"table {path} not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ClassifyError(f"{path} is not a readable CSV table ({str(exc).splitlines()[0]})") from None
    if df.empty:
        raise ClassifyError(f"{path} has no rows")
    return df


def _attribute_columns(df: pd.DataFrame, path: Path, require_labels: bool) -> dict[str, str]:
    attr_cols = {group.name: col for group in ATTRIBUTE_GROUPS
                 if (col := _column(df, ATTRIBUTE_COLUMNS[group.name])) is not None}
    if not attr_cols and require_labels:
        wanted = ", ".join("/".join(c) for c in ATTRIBUTE_COLUMNS.values())
        raise ClassifyError(f"{path} has none of the report-attribute columns ({wanted}) the attributes task "
                            f"learns; columns present: {list(map(str, df.columns))}")
    return attr_cols


def _row_ids(df: pd.DataFrame, path: Path, id_column: str) -> list[str]:
    id_col = _column(df, [id_column])
    ids = [str(df[id_col].iloc[i]).strip() if id_col else str(i) for i in range(len(df))]
    if id_col and any(not v for v in ids):
        raise ClassifyError(f"{path}: column {id_col!r} has empty ids (rows {[i for i, v in enumerate(ids) if not v][:5]})")
    dup = sorted(v for v, n in Counter(ids).items() if n > 1)
    if dup:
        raise ClassifyError(f"{path}: ids are not unique ({dup[:5]}); give each row its own {id_column!r}")
    return ids


def _labels(df: pd.DataFrame, path: Path, task: str, label_col: str | None, require_labels: bool,
            class_values: Sequence[Any] | None) -> tuple[list[str | None], list[Any]]:
    """(raw label per row or None, class values: class index -> table value)."""
    labels_raw: list[str | None] = [None] * len(df)
    values: list[Any] = list(class_values) if class_values is not None else []
    if label_col is None:
        return labels_raw, ([0, 1] if task == "detection" and class_values is None else values)
    labels_raw = [str(v).strip() or None for v in df[label_col]]
    empty = [i for i, v in enumerate(labels_raw) if v is None]
    if empty and require_labels:
        raise ClassifyError(f"{path}: rows {empty[:10]} have no {label_col!r}; every training row needs a label")
    if class_values is not None:
        return labels_raw, values
    values = _class_values([v for v in labels_raw if v is not None])
    if task == "detection":
        bad = [v for v in values if v not in (0, 1)]
        if bad:
            raise ClassifyError(f"{path}: detection labels must be 0 (normal) or 1 (tumour in the organ); "
                                f"found {bad[:5]}")
        values = [0, 1]
    elif len(values) < 2 and require_labels:
        raise ClassifyError(f"{path}: column {label_col!r} holds one class only ({values}); "
                            "classification needs at least two")
    return labels_raw, values


def _class_index(raw: str | None, values: Sequence[Any], path: Path, row: int) -> int | None:
    if raw is None:
        return None
    keys = [str(v) for v in values]
    key = raw
    with contextlib.suppress(ValueError):
        if all(isinstance(v, int) for v in values) and float(raw) == int(float(raw)):
            key = str(int(float(raw)))
    if key not in keys:
        raise ClassifyError(f"{path} row {row}: label {raw!r} is not one of the model's classes {values}")
    return keys.index(key)


def _resolve(base: Path, text: str) -> Path:
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() else base / path


def _detection_fields(rec: pd.Series, cols: dict[str, str], base: Path, kind_col: str | None, labels_kind: str,
                      path: Path, row: int) -> dict[str, Any]:
    from PASTALib.finetune.crops import parse_organ

    kind = (str(rec[kind_col]).strip().lower() if kind_col else "") or labels_kind
    if kind not in LABELS_KINDS:
        raise ClassifyError(f"{path} row {row}: labels_kind {kind!r}; use one of {', '.join(LABELS_KINDS)}")
    organ = str(rec[cols["organ"]]).strip()
    try:
        parse_organ(organ)
    except AnatomyError as exc:  # an unknown organ name: say which row
        raise ClassifyError(f"{path} row {row}: {exc}") from None
    return {"organs": _resolve(base, str(rec[cols["organs"]])), "organ": organ, "labels_kind": kind}


def _point(rec: pd.Series, cols: dict[str, str], path: Path, row: int) -> tuple[float, float, float]:
    try:
        point = tuple(float(rec[cols[c]]) for c in COORD_COLUMNS)
    except ValueError:
        raise ClassifyError(f"{path} row {row}: coordinates {[rec[cols[c]] for c in COORD_COLUMNS]} are not "
                            "numbers (LPS millimetres)") from None
    if not all(math.isfinite(v) for v in point):
        raise ClassifyError(f"{path} row {row}: coordinates {point} are not finite")
    return point


def _attribute_target(rec: pd.Series, attr_cols: dict[str, str], path: Path, row: int) -> tuple[int, ...]:
    from PASTALib.model.attributes import encode_attributes

    report = {g: str(rec[c]).strip() for g, c in attr_cols.items()}
    try:
        return tuple(encode_attributes(report))
    except ValueError as exc:
        group = next((g for g in ATTRIBUTE_GROUPS if f"unknown {g.title}" in str(exc)), None)
        col = attr_cols.get(group.name, "") if group else ""
        raise ClassifyError(f"{path} row {row}, column {col!r}: {exc}") from None


def read_case_table(table: str | os.PathLike, task: str, *, label_column: str = "label", id_column: str = "id",
                    group_column: str | None = None, labels_kind: str = "totalsegmentator",
                    require_labels: bool = True, class_values: Sequence[Any] | None = None) -> CaseTable:
    """Read and check a task table (paths relative to the table's folder).

    ``require_labels=False`` (prediction) accepts rows without labels; ``class_values`` then maps
    any labels that are present with a trained model's classes."""
    path = Path(table)
    df = _read_csv(path, task)
    base = path.resolve().parent
    need: list[str | tuple[str, ...]] = [IMAGE_COLUMNS, *(("organs", "organ") if task == "detection" else COORD_COLUMNS)]
    label_col = None
    if task != "attributes":
        if require_labels:
            need.append(label_column)
        label_col = _column(df, [label_column])
    cols = _need(df, path, task, need)
    attr_cols = _attribute_columns(df, path, require_labels) if task == "attributes" else {}
    if group_column is not None and _column(df, [group_column]) is None:
        raise ClassifyError(f"group column {group_column!r} not in {path}; columns present: {list(map(str, df.columns))}")
    group_col = _column(df, [group_column or "patient_id"])
    kind_col = _column(df, ["labels_kind"])
    ids = _row_ids(df, path, id_column)
    labels_raw, values = _labels(df, path, task, label_col, require_labels, class_values)
    cases = []
    for i in range(len(df)):
        rec = df.iloc[i]
        if not str(rec[cols["image"]]).strip():
            raise ClassifyError(f"{path} row {i}: empty {cols['image']!r}")
        kw: dict[str, Any] = dict(row=i, id=ids[i], image=_resolve(base, str(rec[cols["image"]])),
                                  group=str(rec[group_col]).strip() if group_col else None)
        if task == "detection":
            kw.update(_detection_fields(rec, cols, base, kind_col, labels_kind, path, i))
        else:
            kw["point"] = _point(rec, cols, path, i)
        kw["target"] = (_attribute_target(rec, attr_cols, path, i) if task == "attributes"
                        else _class_index(labels_raw[i], values, path, i))
        cases.append(Case(**kw))
    if task == "attributes" and require_labels and not (np.array([c.target for c in cases]) != IGNORE_INDEX).any():
        raise ClassifyError(f"{path}: every attribute cell is empty; nothing to learn")
    return CaseTable(task, cases, values, attr_cols, group_col, path)


# --- splits ------------------------------------------------------------------------------------


def make_cv_splits(ids: Sequence[str], *, folds: int, seed: int, strata: Sequence[Any] | None = None,
                   groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Fixed k-fold split: StratifiedKFold(shuffle, random_state=seed) on ``strata`` (StratifiedGroupKFold
    with ``groups``: a group's cases share a fold); KFold / GroupKFold without strata.

    Returns {"format", "seed", "folds", "stratified", "grouped", "validation": [[ids of fold i], ...]}."""
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
    )

    ids = [str(i) for i in ids]
    n = len(ids)
    if n < folds:
        raise ClassifyError(f"{n} case(s) cannot make {folds} folds; add cases or use --folds {max(2, n)}"
                            if n >= 2 else f"{n} case: cross-validation needs at least 2 cases")
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < folds:
            raise ClassifyError(f"{n_groups} patient group(s) cannot make {folds} folds (the cases of a patient stay "
                                f"in one fold); add patients or use --folds {max(2, n_groups)}")
    if strata is not None:
        values, counts = np.unique(np.asarray([str(s) for s in strata]), return_counts=True)
        few = {str(v): int(c) for v, c in zip(values, counts) if c < folds}
        if few:
            lowest = min(few.values())
            fix = (f"add cases of that class or use --folds {lowest}" if lowest >= 2
                   else "add cases of that class (each class needs at least 2 cases)")
            raise ClassifyError(f"class(es) {few} have fewer cases than the {folds} folds; stratified cross-validation "
                                f"needs at least {folds} cases per class: {fix}")
        if groups is not None:
            per_class = {str(v): len({g for g, s in zip(groups, strata) if str(s) == v}) for v in values}
            few = {v: c for v, c in per_class.items() if c < folds}
            if few:
                lowest = min(few.values())
                raise ClassifyError(f"class(es) {few} occur in fewer patients than the {folds} folds; add patients "
                                    + (f"or use --folds {lowest}" if lowest >= 2 else "with that class"))
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            split = splitter.split(np.zeros(n), [str(s) for s in strata], list(groups))
        else:
            splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
            split = splitter.split(np.zeros(n), [str(s) for s in strata])
    elif groups is not None:
        split = GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n), groups=list(groups))
    else:
        split = KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(n))
    validation = [[ids[j] for j in sorted(val)] for _, val in split]
    if any(not v for v in validation):
        raise ClassifyError(f"a fold came out empty; use fewer --folds (now {folds})")
    return {"format": SPLITS_FORMAT, "seed": seed, "folds": folds, "stratified": strata is not None,
            "grouped": groups is not None, "validation": validation}


# --- crops ---------------------------------------------------------------------------------------


def _crop_spec(case: Case, task: str, size: int, margin_mm: float) -> dict[str, Any]:
    from PASTALib.finetune.crops import file_stamp

    spec: dict[str, Any] = {"version": 1, "image": file_stamp(case.image), "size": size}
    if task == "detection":
        spec.update(kind="organ_box", organs=file_stamp(case.organs), organ=case.organ, labels_kind=case.labels_kind,
                    margin_mm=float(margin_mm))
    else:
        spec.update(kind="point", point=[round(float(v), 4) for v in case.point])
    return spec


def compute_crops(cases: Sequence[Case], task: str, *, size: int, margin_mm: float = 10.0,
                  cache_dir: Path | None = None, on_case: Callable[[int, str], None] | None = None,
                  stop: StopFlag | None = None) -> np.ndarray | None:
    """(N, S, S, S) int16 HU crops of the cases; each CT (and label map) is read once, every crop
    is cached under ``cache_dir``. Returns None when ``stop`` was set (cached crops are kept)."""
    from PASTALib.embed.crop import crop_at_point, point_inside
    from PASTALib.errors import PastaError
    from PASTALib.finetune.crops import (
        cached,
        detection_crop,
        load_organ_masks,
        parse_organ,
    )
    from PASTALib.io import read_ct, read_label

    out = np.empty((len(cases), size, size, size), np.int16)
    loaded: dict[str, Any] = {}  # the last CT and label map: rows are usually grouped by image

    def compute(case: Case) -> np.ndarray:
        if loaded.get("image") != case.image:
            loaded.clear()
            loaded.update(image=case.image, ct=read_ct(case.image))
        ct = loaded["ct"]
        if task == "detection":
            key = (case.organs, case.labels_kind)
            if loaded.get("masks_key") != key:
                loaded.update(masks_key=key, masks=load_organ_masks(read_label(case.organs), ct, case.labels_kind,
                                                                    str(case.organs)))
            organ, side = parse_organ(case.organ)
            return detection_crop(ct, loaded["masks"], organ, side, margin_mm=margin_mm, size=size).array
        if not point_inside(ct, case.point):
            raise ClassifyError(f"point {case.point} (LPS mm) lies outside the image {case.image}; check the "
                                "coordinates' convention (LPS world mm: negate X and Y of Slicer's RAS)")
        return crop_at_point(ct, case.point, size)

    for n, case in enumerate(cases):
        if stop is not None and stop.stop:
            return None
        for path, what in ((case.image, "image"), (case.organs, "organ label map")):
            if path is not None and not path.exists():
                raise ClassifyError(f"row {case.row} ({case.id}): {what} {path} not found")
        try:
            out[n] = cached(cache_dir, _crop_spec(case, task, size, margin_mm), lambda case=case: compute(case))
        except PastaError as exc:  # say which row; keep the error's class (AnatomyError, InputImageError...)
            raise type(exc)(f"row {case.row} ({case.id}): {exc}") from None
        if on_case is not None:
            on_case(n + 1, case.id)
    return out
