"""Organ label maps checked against their CT and their kind before use.

A label map given by a user is checked, not trusted: its values must fit the declared kind
(PASTA 1-25 or TotalSegmentator ``total`` ids; ``auto`` detects it) and its voxel grid must be
the CT's. A map on another grid is an error unless resampling is asked for: a map covering
half the CT, resampled, silently gives half an organ.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from PASTALib.anatomy.organs import OrganMasks, resample_labels_to
from PASTALib.anatomy.totalseg_classes import TOTAL_CLASSES
from PASTALib.errors import InputImageError
from PASTALib.labels import LesionType

#: Values of ``--labels-kind``; ``auto`` is resolved by :func:`resolve_labels_kind`.
LABELS_KINDS = ("auto", "pasta", "totalsegmentator")

_PASTA_MAX = max(LesionType)  # organs 1-10, lesions 11-25
#: Tolerances of "the same grid": float32 NIfTI headers round origins and directions.
_SPACING_RTOL = 1e-3
_ORIGIN_TOL_VOXELS = 0.05
_DIRECTION_ATOL = 1e-3


def grid_differences(labels: sitk.Image, ct: sitk.Image) -> list[str]:
    """What differs between the voxel grids of ``labels`` and ``ct`` (empty: the same grid)."""
    out = []
    if labels.GetSize() != ct.GetSize():
        out.append(f"size {labels.GetSize()} vs the CT's {ct.GetSize()}")
    spacing, ct_spacing = np.asarray(labels.GetSpacing()), np.asarray(ct.GetSpacing())
    if not np.allclose(spacing, ct_spacing, rtol=_SPACING_RTOL, atol=0):
        out.append(f"spacing {tuple(np.round(spacing, 4).tolist())} vs {tuple(np.round(ct_spacing, 4).tolist())} mm")
    origin, ct_origin = np.asarray(labels.GetOrigin()), np.asarray(ct.GetOrigin())
    if np.abs(origin - ct_origin).max() > _ORIGIN_TOL_VOXELS * ct_spacing.min():
        out.append(f"origin {tuple(np.round(origin, 2).tolist())} vs {tuple(np.round(ct_origin, 2).tolist())} mm")
    if not np.allclose(labels.GetDirection(), ct.GetDirection(), atol=_DIRECTION_ATOL):
        out.append("direction (orientation) differs")
    return out


def check_label_grid(labels: sitk.Image, ct: sitk.Image, *, source: str = "label map",
                     resample: bool = False) -> sitk.Image:
    """``labels`` on the CT grid: the same grid within tolerance (header copied from the CT), or
    resampled (nearest neighbour) when ``resample``; otherwise InputImageError saying what differs."""
    differences = grid_differences(labels, ct)
    if not differences:
        labels = sitk.Image(labels)
        labels.CopyInformation(ct)  # within float rounding: make it exact so nothing resamples later
        return labels
    if not resample:
        raise InputImageError(
            f"The label map {source} is not on the CT's voxel grid: {'; '.join(differences)}. "
            "Use the label map computed on this CT, or pass --resample-labels to resample it onto the CT "
            "(nearest neighbour; parts of the CT it does not cover count as background)."
        )
    return resample_labels_to(labels, ct)


def _values(labels: sitk.Image) -> np.ndarray:
    return np.unique(sitk.GetArrayViewFromImage(labels))


def detect_labels_kind(labels: sitk.Image) -> str:
    """``totalsegmentator`` when a value exceeds PASTA's 25 (a TotalSegmentator map of any CT holds
    vertebrae, ribs or muscles, ids 26-117), else ``pasta``."""
    return "totalsegmentator" if int(_values(labels).max(initial=0)) > _PASTA_MAX else "pasta"


def resolve_labels_kind(labels: sitk.Image, kind: str = "auto", *, source: str = "label map") -> str:
    """The label map's kind: ``kind``, or the detected one for ``auto``. Raises InputImageError when
    the values do not fit the declared kind (e.g. a TotalSegmentator map declared ``pasta``). Ids that
    are not TotalSegmentator classes are allowed in a TotalSegmentator map: OrganMasks keeps them as
    unnamed neighbours (other tools add classes such as a body mask)."""
    if kind not in LABELS_KINDS:
        raise InputImageError(f"labels kind {kind!r} is not one of {', '.join(LABELS_KINDS)}.")
    values = [int(v) for v in _values(labels) if v]
    if kind == "auto":
        kind = detect_labels_kind(labels)
    if kind == "pasta":
        over = [v for v in values if v > _PASTA_MAX]
        if over:
            known = ", ".join(f"{v} {TOTAL_CLASSES[v]}" for v in values if v in TOTAL_CLASSES)
            raise InputImageError(
                f"The label map {source} has values {over[:6]}{' ...' if len(over) > 6 else ''} above 25, so it is not "
                f"a PASTA label map (organs 1-10, lesions 11-25)"
                + (f"; as TotalSegmentator 'total' ids they read {known[:200]}" if known else "")
                + ". Pass --labels-kind totalsegmentator (or auto) for a TotalSegmentator map."
            )
    return kind


def organ_masks_for_ct(labels: sitk.Image, ct: sitk.Image, kind: str = "auto", *, source: str = "label map",
                       resample: bool = False) -> OrganMasks:
    """OrganMasks on the CT grid from a user's label map, checked (kind, values, grid) first."""
    kind = resolve_labels_kind(labels, kind, source=source)
    labels = check_label_grid(labels, ct, source=source, resample=resample)
    if kind == "pasta":
        return OrganMasks.from_pasta_label_map(labels, reference=ct, source=source)
    return OrganMasks.from_label_map(labels, reference=ct, source=source)
