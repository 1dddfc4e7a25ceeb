"""Classification inputs: organ-box crops (plain-CT detection) and point-centred ROI crops.

Detection crop (docs/model.md "Plain-CT detection: organ box + margin, padded/resized to 128³"):

1. the organ's bounding box in LPS millimetres (voxel corners of the organ mask on the CT grid,
   so oblique CTs are covered), grown by ``margin_mm`` on every side;
2. that region resampled on a canonical LPS grid (identity direction, linear, −1024 HU outside the
   scan) at 1 mm - or coarser for organs so large that 1 mm would hold more than twice the output
   voxels per axis (bone, colon: keeps memory bounded, and the step 4 average still sees ≥ 2 input
   voxels per output voxel);
3. padded symmetrically with −1024 HU (air) to a cube, so the aspect ratio is kept;
4. resized to ``size``³: MONAI ``Resize`` with ``mode="area"`` when shrinking (an average over each
   output voxel's footprint, i.e. anti-aliased; MONAI's ``anti_aliasing=True`` Gaussian zero-pads
   at the border and would drag the −1024 padding towards 0 HU), trilinear when enlarging.

The array is in SimpleITK order ``(z, y, x)`` (I→S, A→P, R→L), as :func:`PASTALib.embed.crop.crop_at_point`
returns and the network is fed; :attr:`DetectionCrop.grid` is the LPS grid of the output voxels.
ROI crops are :func:`~PASTALib.embed.crop.crop_at_point` (1 mm, centred on an LPS point).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.anatomy import OrganMasks
from PASTALib.anatomy.totalseg_classes import Side, structure_organ
from PASTALib.errors import AnatomyError
from PASTALib.geometry import CT_OUTSIDE_HU, Grid, resample_to_grid
from PASTALib.geometry.canonical import IDENTITY_DIRECTION
from PASTALib.labels import Organ

LABELS_KINDS = ("totalsegmentator", "pasta", "auto")


def parse_organ(text: str | int) -> tuple[Organ, Side | None]:
    """A PASTA organ with optional side from a value (1-10), a PASTA / TotalSegmentator name or an
    alias: ``8``, ``kidney``, ``kidney_right``, ``right kidney``, ``Colon and rectum`` ...

    Raises AnatomyError listing the accepted names."""
    raw = str(text).strip()
    if raw.isdigit() and int(raw) in Organ._value2member_map_:
        return Organ(int(raw)), None
    organ, side, is_lesion = structure_organ(raw)
    if organ is None or is_lesion:
        allowed = ", ".join(o.name.lower() for o in Organ)
        raise AnatomyError(f"unknown organ {text!r}; use a PASTA organ value 1-10 or name ({allowed}), "
                           "optionally with a side for kidney / lung (kidney_left, right kidney)")
    return organ, side


def organ_label(organ: Organ, side: Side | None) -> str:
    return f"{organ.name.lower()}_{side}" if side else organ.name.lower()


def load_organ_masks(labels: sitk.Image, ct: sitk.Image, labels_kind: str, source: str = "label map") -> OrganMasks:
    """OrganMasks on the CT grid from a TotalSegmentator ``total`` or a PASTA (1-10 [+11-25]) label map
    (``auto``: detected); the map must be on the CT grid and fit its kind."""
    from PASTALib.anatomy.labelmaps import organ_masks_for_ct

    if labels_kind not in LABELS_KINDS:
        raise ValueError(f"labels_kind must be one of {LABELS_KINDS}, not {labels_kind!r}")
    return organ_masks_for_ct(labels, ct, labels_kind, source=source)


def organ_box_lps(masks: OrganMasks, organ: Organ, side: Side | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) LPS corners in mm of the organ's bounding box (outer voxel faces).

    Raises AnatomyError naming the organs that are present when ``organ`` is not."""
    mask = masks.organ_mask(organ, side)
    if not mask.any():
        present = ", ".join(organ_label(o, s) for o, s in masks.present_organs()) or "none"
        raise AnatomyError(
            f"organ {organ_label(organ, side)} not found in the organ segmentation {masks.source} "
            f"(present: {present}); run TotalSegmentator or give a label map that contains the organ"
        )
    idx = np.argwhere(mask)
    lo, hi = idx.min(0) - 0.5, idx.max(0) + 0.5
    image = masks.label_map
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(a), float(b), float(c)])
                        for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    return corners.min(0), corners.max(0)


@dataclass(frozen=True)
class DetectionCrop:
    """An organ-box crop: HU array (z, y, x) of ``size``³ and where it lies."""

    array: np.ndarray
    grid: Grid  # LPS grid of the output voxels (isotropic, identity direction)
    box_lo: np.ndarray  # organ bounding box, LPS mm
    box_hi: np.ndarray
    region_lo: np.ndarray  # box grown by the margin: the part of the cube holding image data
    region_hi: np.ndarray
    pad_before_xyz: tuple[int, int, int]  # −1024 HU voxels added per axis before the region (pre-resize)
    resample_spacing: float  # mm of the intermediate canonical grid


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    from monai.transforms import Resize

    mode = "area" if max(array.shape) > size else "trilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = Resize((size, size, size), mode=mode, **kwargs)(array[None])
    return np.asarray(out, dtype=np.float32)[0]


def detection_crop(ct: sitk.Image, masks: OrganMasks, organ: Organ, side: Side | None = None, *,
                   margin_mm: float = 10.0, size: int = 128, spacing_mm: float = 1.0) -> DetectionCrop:
    """Organ box + margin → canonical grid → −1024-padded cube → ``size``³ (see the module docstring)."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if margin_mm < 0:
        raise ValueError(f"margin must be ≥ 0 mm, got {margin_mm}")
    box_lo, box_hi = organ_box_lps(masks, organ, side)
    region_lo, region_hi = box_lo - margin_mm, box_hi + margin_mm
    extent = region_hi - region_lo
    spacing = max(float(spacing_mm), float(extent.max()) / (2 * size))
    n = np.maximum(1, np.ceil(extent / spacing - 1e-6)).astype(int)  # voxels per axis (x, y, z)
    centre = (region_lo + region_hi) / 2
    origin = centre - (n - 1) / 2 * spacing
    grid = Grid(tuple(int(v) for v in n), (spacing,) * 3, tuple(float(v) for v in origin), IDENTITY_DIRECTION)
    region = sitk.GetArrayFromImage(resample_to_grid(ct, grid, is_label=False, default_value=CT_OUTSIDE_HU))
    side_n = int(n.max())
    before = (side_n - n) // 2
    after = side_n - n - before
    pad = [(int(before[a]), int(after[a])) for a in (2, 1, 0)]  # array order (z, y, x)
    cube = np.pad(region, pad, mode="constant", constant_values=CT_OUTSIDE_HU)
    out = _resize(cube, size)
    # Output voxel j covers input voxels [j*f, (j+1)*f) with f = side_n / size (align_corners=False).
    factor = side_n / size
    cube_origin = origin - before * spacing
    out_origin = cube_origin + (factor - 1) / 2 * spacing
    out_grid = Grid((size,) * 3, (spacing * factor,) * 3, tuple(float(v) for v in out_origin), IDENTITY_DIRECTION)
    return DetectionCrop(out, out_grid, box_lo, box_hi, region_lo, region_hi,
                         tuple(int(v) for v in before), spacing)


# --- crop cache ------------------------------------------------------------------------------

def file_stamp(path: str | os.PathLike) -> list:
    """(absolute path, size, mtime_ns) of a file: a cache key that changes when the file does."""
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), int(st.st_size), int(st.st_mtime_ns)]


def cache_key(spec: Mapping[str, Any]) -> str:
    """Stable hex digest of a JSON-able crop description."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def save_crop(path: Path, array: np.ndarray, spec: Mapping[str, Any]) -> None:
    """Crop as int16 HU (rounded; −1024 stays exact) + its description, written atomically."""
    from PASTALib.io.outputs import atomic_output, verify_zip

    hu = np.clip(np.round(array), -32768, 32767).astype(np.int16)
    with atomic_output(path, verify_zip, suffix=".npz") as tmp:  # .npz is a zip: CRC-checked before the rename
        np.savez_compressed(tmp, hu=hu, spec=np.array(json.dumps(spec, sort_keys=True, default=str)))


def load_crop(path: Path) -> np.ndarray | None:
    """The cached int16 crop, or None when the file is missing or unreadable (then it is redone)."""
    try:
        with np.load(path) as data:
            return data["hu"]
    except (OSError, ValueError, KeyError, EOFError):
        return None


def cached(folder: Path | None, spec: Mapping[str, Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``folder/<key>.npz`` if present, else ``compute()`` (saved there when ``folder`` is given)."""
    if folder is None:
        return np.clip(np.round(compute()), -32768, 32767).astype(np.int16)
    path = folder / f"{cache_key(spec)}.npz"
    hu = load_crop(path) if path.is_file() else None
    if hu is None:
        save_crop(path, compute(), spec)
        hu = load_crop(path)
    return hu


def stack_crops(crops: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(c, np.int16) for c in crops])
