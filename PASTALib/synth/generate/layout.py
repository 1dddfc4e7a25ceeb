"""The generated dataset on disk (PASTA-Gen-30K layout; its folder names: PASTALib.layout): case files,
completeness checks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.labels import LesionType
from PASTALib.layout import CASE_FILES, CASE_IMAGE_NAME, CASE_LABEL_NAME, CASE_REPORT_NAME, CASE_TOTAL_NAME, DATASET_FOLDERS

PARTIAL_DIR = ".partial"


@dataclass(frozen=True)
class CaseJob:
    """One case to make: lesion type and its index within the type."""

    lesion_type: LesionType
    index: int

    @property
    def case_id(self) -> str:
        return f"{self.lesion_type.slug}-{self.index:05d}"

    @property
    def rel_dir(self) -> str:
        organ, kind = DATASET_FOLDERS[self.lesion_type]
        return f"{organ}/{kind}/{self.index:05d}"


def ok_row(job: CaseJob, meta: dict[str, Any]) -> dict[str, Any]:
    """Manifest fields of a finished case from its case.json metadata (report included)."""
    rel = job.rel_dir
    return {
        "status": "ok", "template": meta["template"], "seed": meta["seed"], "attempt": meta.get("attempt", 0),
        "phase": meta["phase"], "case_dir": rel, "img": f"{rel}/{CASE_IMAGE_NAME}", "label": f"{rel}/{CASE_LABEL_NAME}",
        "total": f"{rel}/{CASE_TOTAL_NAME}", "report_json": f"{rel}/{CASE_REPORT_NAME}",
        "report_text": meta.get("report_text") or meta.get("report", {}).get("text", ""), "error": "",
    }


def case_complete(case_dir: Path) -> bool:
    """Whether every file of a finished case is there and plausible (non-empty; the JSON files parse;
    a .nii.gz starts with the gzip magic): resume must not count a case whose files were deleted."""
    try:
        for name in CASE_FILES:
            path = case_dir / name
            if not path.is_file() or path.stat().st_size == 0:
                return False
            if name.endswith(".json"):
                json.loads(path.read_text(encoding="utf-8"))
                continue
            with open(path, "rb") as stream:
                if stream.read(2) != b"\x1f\x8b":
                    return False
    except (OSError, ValueError):
        return False
    return True


def verify_case(case_dir: str | os.PathLike) -> dict[str, Any]:
    """Check one output case (files, grids, label values, report schema); returns its report dict."""
    from PASTALib.io import read_image, read_label
    from PASTALib.report.schema import validate_report

    case_dir = Path(case_dir)
    missing = [f for f in CASE_FILES if not (case_dir / f).exists()]
    if missing:
        raise AssertionError(f"{case_dir}: missing {missing}")
    report = json.loads((case_dir / CASE_REPORT_NAME).read_text(encoding="utf-8"))
    validate_report(report)
    img = read_image(case_dir / CASE_IMAGE_NAME)
    lab = read_label(case_dir / CASE_LABEL_NAME)
    if img.GetSize() != lab.GetSize() or not np.allclose(img.GetSpacing(), (1, 1, 1)):
        raise AssertionError(f"{case_dir}: img/label grids differ or are not 1 mm")
    values = set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist())
    if not values <= set(range(11)) | {int(report["label_value"])} or int(report["label_value"]) not in values:
        raise AssertionError(f"{case_dir}: label values {sorted(values)} (lesion {report['label_value']})")
    return report
