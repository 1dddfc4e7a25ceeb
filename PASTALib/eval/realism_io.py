"""Inputs of ``pasta evaluate realism``: the real lesions (a CSV), the synthetic ones (a PASTA-Gen
folder), and loading one lesion as a cropped CT + mask, resampled to a target spacing.

Real CSV: columns ``mask`` (required) and ``ct`` (optional for ``--shape-only``), optional ``label``
(the mask value of the lesion; default: every non-zero voxel) and ``id``. Relative paths are
relative to the CSV's folder. Synthetic folder: what ``pasta synth generate`` / ``pasta data
pasta-gen-30k`` write (``manifest.csv`` rows with status ok; without a manifest, every
``**/label.nii.gz``); the lesion is every voxel with a lesion value (11-25) in ``label.nii.gz``.
Several components: the largest is the lesion (shape and texture alike).
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PASTALib.eval.tasks import EvaluationError
from PASTALib.io.manifest import read_manifest
from PASTALib.labels import LesionType
from PASTALib.layout import CASE_IMAGE_NAME, CASE_LABEL_NAME, CASE_META_NAME, FOLDER_TYPES, TEMPLATE_INDEX_NAME

#: Voxels of context kept around the lesion's bounding box (PyRadiomics' padDistance is 5).
CROP_MARGIN = 6


@dataclass(frozen=True)
class LesionCase:
    """One lesion: where its mask (and CT) lie and which mask values are the lesion."""

    case_id: str
    source: str  # "real" or "synthetic"
    mask: Path
    ct: Path | None
    values: tuple[int, ...] | None  # None: every non-zero voxel
    lesion_type: str = ""
    #: slice spacing (mm) of the CT the lesion was synthesized into (its template); None: unknown or real
    source_slice_mm: float | None = None


def _resolve(base: Path, value: str) -> Path:
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else base / path


def read_real_csv(path: str | os.PathLike, *, shape_only: bool) -> list[LesionCase]:
    """Rows of the real-lesion CSV; every file is checked to exist before any work starts."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path} not found; pass a CSV with columns ct,mask[,label] (one real lesion per row)")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    columns = {c.strip().lower() for c in (rows[0].keys() if rows else [])}
    if "mask" not in columns:
        raise EvaluationError(f"{path} has no 'mask' column (has: {', '.join(sorted(columns)) or 'nothing'}); "
                              "use columns ct,mask[,label]")
    if not shape_only and "ct" not in columns:
        raise EvaluationError(f"{path} has no 'ct' column: texture features need the CT; add it or pass --shape-only")
    cases = []
    for n, raw in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        mask = _resolve(path.parent, row["mask"])
        ct = _resolve(path.parent, row["ct"]) if row.get("ct") else None
        for file, what in ((mask, "mask"), (None if shape_only else ct, "ct")):
            if what == "ct" and not shape_only and ct is None:
                raise EvaluationError(f"{path} line {n}: empty ct; fill it in or pass --shape-only")
            if file is not None and not file.exists():
                raise EvaluationError(f"{path} line {n}: {what} file {file} not found; fix the path")
        label = row.get("label", "")
        if label and not label.isdigit():
            raise EvaluationError(f"{path} line {n}: label {label!r} is not a non-negative integer mask value")
        cases.append(LesionCase(row.get("id") or f"real-{n - 1:04d}", "real", mask, ct,
                                (int(label),) if label else None))
    if not cases:
        raise EvaluationError(f"{path} lists no lesions; add one row per real lesion (ct,mask[,label])")
    return cases


def read_synthetic_dir(folder: str | os.PathLike, *, types: Sequence[str] | None = None) -> list[LesionCase]:
    """Cases of a PASTA-Gen folder, optionally only some lesion types (slugs or label values)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder; pass a PASTA-Gen folder (pasta synth generate --out)")
    wanted = {LesionType.parse(t).slug for t in types} if types else None
    rows = [r for r in read_manifest(folder) if r.get("status") == "ok"]
    slices = template_slice_spacings(folder)
    if rows:  # the manifest names each case's template
        entries = [(r["case_id"], r.get("lesion_type", ""), folder / r["label"], folder / r["img"], r.get("template"))
                   for r in rows]
    else:
        entries = [(str(p.parent.relative_to(folder)), "", p, p.parent / CASE_IMAGE_NAME,
                    _case_template(p.parent) if slices else None)
                   for p in sorted(folder.rglob(CASE_LABEL_NAME)) if ".partial" not in p.parts]
    lesion_values = tuple(int(t) for t in LesionType)
    cases = []
    for case_id, slug, label, img, template in entries:
        if not slug:
            slug = _type_from_path(label.parent.relative_to(folder))
        if wanted is not None and slug not in wanted:
            continue
        values = (int(LesionType.parse(slug)),) if slug else lesion_values
        cases.append(LesionCase(case_id, "synthetic", label, img if img.is_file() else None, values, slug,
                                slices.get(str(template))))
    if not cases:
        which = f" of type {', '.join(sorted(wanted))}" if wanted else ""
        raise EvaluationError(f"no synthetic cases{which} in {folder}; generate some with `pasta synth generate` "
                              "or download them with `pasta data pasta-gen-30k`")
    return cases


def template_slice_spacings(folder: Path) -> dict[str, float]:
    """Slice spacing (mm) of each template CT of a ``pasta synth generate`` folder (its templates.index.json; the
    CT's header only). Empty when the folder has no index (a downloaded PASTA-Gen set) or a CT is gone."""
    try:
        index = json.loads((folder / TEMPLATE_INDEX_NAME).read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    for name, entry in (index.items() if isinstance(index, dict) else ()):
        template = entry.get("template") if isinstance(entry, dict) else None
        if not isinstance(template, dict) or not template.get("ct"):
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(template["ct"]))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        out[name] = float(reader.GetSpacing()[2])
    return out


def _case_template(case_folder: Path) -> str | None:
    """The template a case was synthesized into, from its case.json (a folder without a manifest)."""
    try:
        meta = json.loads((case_folder / CASE_META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return str(meta.get("template")) if isinstance(meta, dict) else None


def _type_from_path(rel: Path) -> str:
    """``Lung/Tumor/00012`` → ``lung_tumor`` via the PASTA-Gen folder names; "" when unknown."""
    lesion_type = FOLDER_TYPES.get(tuple(rel.parts[:2]))
    return lesion_type.slug if lesion_type is not None else ""


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _crop_box(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    low = np.maximum(idx.min(0) - CROP_MARGIN, 0)
    high = np.minimum(idx.max(0) + CROP_MARGIN + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _read_mask(path: Path) -> sitk.Image:
    """A mask file; unlike a CT a single slice is accepted (a small nodule contoured on one slice is a
    real lesion). DICOM series folders must hold at least two slices."""
    from PASTALib.io import read_image

    return read_image(path, allow_single_slice=not path.is_dir())


def load_lesion(case: LesionCase, *, with_ct: bool) -> tuple[sitk.Image, sitk.Image | None]:
    """The lesion as a uint8 mask image (largest component) cropped to its box + margin, and the CT
    cropped to the same box (None unless ``with_ct``). Raises EvaluationError for an empty mask."""
    from PASTALib.io import read_image

    mask_image = _read_mask(case.mask)
    array = sitk.GetArrayViewFromImage(mask_image)
    mask = np.isin(array, case.values) if case.values is not None else array != 0
    if not mask.any():
        which = f"value {list(case.values)}" if case.values and len(case.values) < 3 else "lesion voxels"
        raise EvaluationError(f"{case.mask} ({case.case_id}) has no {which}; fix the label column or the mask")
    mask = largest_component(mask)
    box = _crop_box(mask)
    start = [int(s.start) for s in box[::-1]]  # (x, y, z) index of the crop
    out = sitk.GetImageFromArray(np.ascontiguousarray(mask[box]).astype(np.uint8))
    out.SetSpacing(mask_image.GetSpacing())
    out.SetDirection(mask_image.GetDirection())
    out.SetOrigin(mask_image.TransformIndexToPhysicalPoint(start))
    if not with_ct:
        return out, None
    if case.ct is None:
        raise EvaluationError(f"{case.case_id}: no CT for texture features; add it or pass --shape-only")
    ct = sitk.Cast(read_image(case.ct), sitk.sitkFloat32)
    ct_crop = sitk.Resample(ct, out, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    return out, ct_crop


def match_spacing(mask: sitk.Image, ct: sitk.Image | None, spacing_xyz: Sequence[float]
                  ) -> tuple[sitk.Image, sitk.Image | None]:
    """Resample a cropped lesion to ``spacing_xyz`` (mask: linear then >= 0.5, as
    :func:`PASTALib.eval.shape_features.resample_mask`; CT: linear) over the same physical box."""
    old_spacing, old_size = np.asarray(mask.GetSpacing()), np.asarray(mask.GetSize())
    spacing = np.asarray(spacing_xyz, float)
    size = np.maximum(np.round(old_size * old_spacing / spacing), 1).astype(int)
    # Keep the box centre: the new grid starts half a new voxel inside the old box's edge.
    corner = np.asarray(mask.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    origin = corner + direction @ (spacing / 2)
    reference = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    reference.SetSpacing(tuple(spacing))
    reference.SetDirection(mask.GetDirection())
    reference.SetOrigin(tuple(origin))
    soft = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    new_mask = sitk.Cast(soft >= 0.5, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(new_mask).any():  # smaller than a voxel of the target grid
        new_mask = sitk.Cast(soft >= float(sitk.GetArrayViewFromImage(soft).max()), sitk.sitkUInt8)
    new_ct = None if ct is None else sitk.Resample(ct, reference, sitk.Transform(), sitk.sitkLinear, -1024.0)
    return new_mask, new_ct
