"""Input cases of a reader study: real CT + mask (+ report) and synthesizer case folders."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PASTALib.labels import LesionType
from PASTALib.layout import CASE_IMAGE_NAME, CASE_LABEL_NAME, CASE_REPORT_NAME, CASE_TYPE_NAME, FOLDER_TYPES
from PASTALib.review.errors import ReviewError

ORIGINS = ("real", "synthetic")


@dataclass(frozen=True)
class SourceCase:
    """One input case: a CT, its lesion mask and (optionally) a report."""

    origin: str  # "real" or "synthetic"
    image: Path
    mask: Path
    lesion_type: LesionType
    report: dict[str, Any] | None = None
    lesion_values: tuple[int, ...] | None = None  # mask values of the lesion; None = any non-zero

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ReviewError(f"Case origin must be one of {ORIGINS}, not {self.origin!r}.")


def real_case(
    image: str | os.PathLike, mask: str | os.PathLike, lesion_type: str | int | LesionType,
    report: dict[str, Any] | str | os.PathLike | None = None, lesion_values: Sequence[int] | None = None,
) -> SourceCase:
    """A real case; ``report`` may be a dict or a JSON file with the attribute wordings."""
    if report is not None and not isinstance(report, dict):
        path = Path(report)
        try:
            report = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReviewError(f"cannot read the report {path} ({exc}); give a JSON file with the attribute "
                              "wordings (shape, density, heterogeneity, surface, invasion).") from None
        if not isinstance(report, dict):
            raise ReviewError(f"the report {path} is not a JSON object; give one with the attribute wordings.")
    return SourceCase("real", Path(image), Path(mask), LesionType.parse(lesion_type), report,
                      tuple(int(v) for v in lesion_values) if lesion_values else None)


#: The CT of a synthesizer case folder: ``img.nii.gz`` is the PASTA-Gen layout that `pasta synth generate`
#: writes and the trainers read (PASTALib.train.data, refine, finetune); ``ct.nii.gz`` (what
#: `pasta synth lesion` writes) is read too.
SYNTHETIC_CT_NAMES = (CASE_IMAGE_NAME, "ct.nii.gz")
#: The report of a synthesizer case folder: our ``report.json`` (`pasta synth`), else the PASTA-Gen
#: ``type.json`` (the only report of a `pasta data pasta-gen-30k` subset).
SYNTHETIC_REPORT_NAMES = (CASE_REPORT_NAME, CASE_TYPE_NAME)


def _folder_lesion_type(folder: Path) -> LesionType | None:
    """The lesion type of a PASTA-Gen-30K case folder ``<Organ>/<Kind>/<n>`` from its path (None if none fits)."""
    return FOLDER_TYPES.get((folder.parent.parent.name, folder.parent.name))


def synthetic_case(folder: str | os.PathLike) -> SourceCase:
    """A synthesizer case folder: img.nii.gz (or ct.nii.gz), label.nii.gz (lesion 11-25) and report.json,
    as `pasta synth generate` writes; or a PASTA-Gen-30K case (`pasta data pasta-gen-30k`), whose
    report is type.json and whose lesion type is its ``<Organ>/<Kind>`` folder when type.json omits it."""
    folder = Path(folder)
    ct = next((folder / n for n in SYNTHETIC_CT_NAMES if (folder / n).is_file()), None)
    report_path = next((folder / n for n in SYNTHETIC_REPORT_NAMES if (folder / n).is_file()), None)
    missing = [n for n, ok in (("img.nii.gz (or ct.nii.gz)", ct is not None),
                               (CASE_LABEL_NAME, (folder / CASE_LABEL_NAME).is_file()),
                               ("report.json (or type.json)", report_path is not None)) if not ok]
    if missing:
        raise ReviewError(f"{folder} is not a synthetic case folder: {', '.join(missing)} missing "
                          "(expected img.nii.gz, label.nii.gz, report.json as written by `pasta synth generate`, "
                          "or type.json for a `pasta data pasta-gen-30k` case; ct.nii.gz from `pasta synth lesion` "
                          "is accepted for the CT).")
    try:
        report = json.loads(report_path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReviewError(f"cannot read {report_path} ({exc}); regenerate the case or remove its folder.") from None
    if not isinstance(report, dict):
        raise ReviewError(f"{report_path} is not a report object; regenerate the case or remove its folder.")
    if "lesion_type" in report:
        lesion_type = LesionType.parse(report["lesion_type"])
    elif (from_path := _folder_lesion_type(folder)) is not None:
        lesion_type = from_path
    else:
        raise ReviewError(f"{report_path} has no 'lesion_type' and {folder} is not a PASTA-Gen-30K "
                          "<Organ>/<Kind>/<n> folder; add \"lesion_type\" (e.g. \"lung_tumor\") to the report.")
    try:
        value = int(report.get("label_value", int(lesion_type)))
    except (TypeError, ValueError):
        raise ReviewError(f"{report_path}: label_value {report.get('label_value')!r} is not a label value "
                          "(11-25); fix or remove it.") from None
    return SourceCase("synthetic", ct, folder / CASE_LABEL_NAME, lesion_type, report, (value,))


def find_synthetic_cases(roots: Iterable[str | os.PathLike]) -> list[SourceCase]:
    """Every case folder under ``roots`` (or a root itself): one holding label.nii.gz and report.json or
    type.json (`pasta synth generate` output, a `pasta data pasta-gen-30k` subset). Hidden folders,
    such as generate's unfinished ``.partial`` cases and the subset's ``.hf`` download area, are skipped."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ReviewError(f"--synthetic {root} is not a folder; give the output folder of `pasta synth generate` "
                              "or `pasta data pasta-gen-30k`.")
        folders = {p.parent for n in SYNTHETIC_REPORT_NAMES for p in root.rglob(n)}
        for folder in sorted(folders):
            if any(part.startswith(".") for part in folder.relative_to(root).parts):
                continue
            if not (folder / CASE_LABEL_NAME).is_file() and not (folder / CASE_REPORT_NAME).is_file():
                continue  # a stray type.json is not a case; a report.json without label is named below
            found.append(synthetic_case(folder))
    return found


def read_real_cases_csv(path: str | os.PathLike) -> list[SourceCase]:
    """CSV with columns image, mask, lesion_type[, report][, lesion_values "1;2"]; paths relative to the CSV."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReviewError(f"cannot read the real-case CSV {path} ({exc}); give a UTF-8 CSV file with columns "
                          "image, mask, lesion_type (optional report, lesion_values).") from None
    missing = {"image", "mask", "lesion_type"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise ReviewError(f"{path} needs a header with columns image, mask, lesion_type "
                          f"(optional report, lesion_values); missing: {', '.join(sorted(missing)) or 'all rows'}.")
    base = path.parent
    cases = []
    for line, row in enumerate(rows, 2):
        try:
            values = [int(v) for v in (row.get("lesion_values") or "").replace(",", ";").split(";") if v.strip()]
        except ValueError:
            raise ReviewError(f"{path} line {line}: lesion_values {row.get('lesion_values')!r} must be whole "
                              "numbers separated by ';' (e.g. 1;2).") from None
        report = (base / row["report"]) if row.get("report") else None
        cases.append(real_case(base / row["image"], base / row["mask"], row["lesion_type"], report, values or None))
    return cases
