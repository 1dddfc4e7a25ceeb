"""Training data for the refiner: CT + organ label cases, 1 mm crops sampled around organs.

Folder layout read by ``pasta refine train --data DIR`` (one sub-folder per case)::

    DIR/<case>/ct.nii.gz   + DIR/<case>/organs.nii.gz   # CT + organ labels on the CT grid
    DIR/<case>/img.nii.gz  + DIR/<case>/label.nii.gz    # PASTA-Gen layout (lesions 11-25 allowed)

Also accepted: ``image``/``ct``/``img`` and ``organs``/``label``/``labels``/``seg`` with .nii.gz,
.nii, .nrrd or .mha. Labels are PASTA values (organs 1-10; lesion values 11-25 count as their organ)
or TotalSegmentator ``total`` ids (``labels_kind``; ``auto`` detects it). A label map must be on its
CT's grid (a map on another grid is refused, not resampled). Crops are canonical (LPS, 1 mm) cubes resampled
straight from the input around a random voxel of a random organ; the condition is that organ's mask.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PASTALib.anatomy.health import MIN_HEALTHY_VOLUME_MM3
from PASTALib.anatomy.organs import label_locations
from PASTALib.errors import InputImageError
from PASTALib.geometry import Grid, array_to_image, image_to_array, resample_to_grid
from PASTALib.geometry.canonical import IDENTITY_DIRECTION
from PASTALib.labels import LesionType, Organ

CT_NAMES = ("ct", "img", "image")
LABEL_NAMES = ("organs", "label", "labels", "seg")
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
#: Organs smaller than this (mm^3) are not sampled (as the synthesizer's healthy-organ check).
_MAX_CENTRES = 20000


@dataclass
class Case:
    name: str
    ct: sitk.Image
    organs: np.ndarray  # PASTA organ values 1-10, (x, y, z), on the CT grid
    centres: dict[int, np.ndarray]  # organ value -> candidate voxel indices (N, 3)


def _find(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in SUFFIXES:
            p = folder / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def find_cases(root: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(name, ct path, label path) for every case folder under ``root`` (sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise InputImageError(f"Training data folder {root} does not exist.")
    cases = []
    for folder in sorted(p for p in [root, *root.iterdir()] if p.is_dir()):
        ct, lab = _find(folder, CT_NAMES), _find(folder, LABEL_NAMES)
        if ct is not None and lab is not None:
            cases.append((folder.name, ct, lab))
    if not cases:
        raise InputImageError(
            f"No training case in {root}: expected case folders holding ct.nii.gz + organs.nii.gz "
            "(or the PASTA-Gen layout img.nii.gz + label.nii.gz)."
        )
    return cases


def pasta_organ_array(labels: sitk.Image, ct: sitk.Image, labels_kind: str = "auto",
                      source: str = "label map") -> np.ndarray:
    """PASTA organ values (1-10) on the CT grid as (x, y, z) uint8; lesions count as their organ.
    The label map must be on the CT grid and fit ``labels_kind`` (``auto``: detected)."""
    from PASTALib.anatomy.labelmaps import check_label_grid, resolve_labels_kind

    labels_kind = resolve_labels_kind(labels, labels_kind, source=source)
    labels = check_label_grid(labels, ct, source=source)
    if labels_kind == "totalsegmentator":
        from PASTALib.anatomy import OrganMasks

        labels = OrganMasks.from_label_map(labels, reference=ct).pasta_label_map(include_lesions=False)
    arr = image_to_array(labels, contiguous=False).astype(np.int64)
    if arr.max() > max(LesionType):
        raise InputImageError(
            f"Label values up to {arr.max()} are not PASTA labels (organs 1-10, lesions 11-25); "
            "for TotalSegmentator label maps pass --labels-kind totalsegmentator."
        )
    lut = np.zeros(max(LesionType) + 1, np.uint8)
    for organ in Organ:
        lut[int(organ)] = int(organ)
    for lesion in LesionType:
        lut[int(lesion)] = int(lesion.organ)
    return lut[arr]


def load_case(name: str, ct: sitk.Image, labels: sitk.Image, labels_kind: str = "auto", seed: int = 0,
              source: str = "label map") -> Case:
    organs = pasta_organ_array(labels, ct, labels_kind, source)
    voxel_mm3 = float(np.prod(ct.GetSpacing()))
    min_voxels = math.ceil(MIN_HEALTHY_VOLUME_MM3 / voxel_mm3)  # smallest n with n * voxel >= the minimum volume
    if (min_voxels - 1) * voxel_mm3 >= MIN_HEALTHY_VOLUME_MM3:  # the division rounded up past an exact multiple
        min_voxels -= 1
    centres = label_locations(organs, max_per_label=_MAX_CENTRES, rng=np.random.default_rng(seed),
                              min_voxels=min_voxels)
    return Case(name, ct, organs, centres)


def load_cases(root: str | os.PathLike, labels_kind: str = "auto") -> list[Case]:
    from PASTALib.io import read_ct, read_label

    cases = []
    for name, ct_path, lab_path in find_cases(root):
        ct = read_ct(ct_path)
        case = load_case(name, ct, read_label(lab_path), labels_kind, source=str(lab_path))
        if case.centres:
            cases.append(case)
    if not cases:
        raise InputImageError(f"No case under {root} has an organ of at least {MIN_HEALTHY_VOLUME_MM3:.0f} mm^3 in its labels.")
    return cases


def crop_grid(centre_lps: np.ndarray, size: int) -> Grid:
    origin = np.asarray(centre_lps, float) - (size - 1) / 2.0
    return Grid((size,) * 3, (1.0,) * 3, tuple(float(v) for v in origin), IDENTITY_DIRECTION)


def crop(case: Case, centre_lps: np.ndarray, size: int, organ: int) -> tuple[np.ndarray, np.ndarray]:
    """(CT HU, organ mask) on a size^3 canonical 1 mm crop centred at ``centre_lps`` ((x, y, z) arrays)."""
    grid = crop_grid(centre_lps, size)
    ct = image_to_array(resample_to_grid(case.ct, grid, is_label=False), contiguous=False)
    lab_img = array_to_image(case.organs, case.ct)
    lab = image_to_array(resample_to_grid(lab_img, grid, is_label=True), contiguous=False)
    return np.ascontiguousarray(ct, np.float32), np.ascontiguousarray(lab == organ)


class CropSampler:
    """Random organ-centred crops. ``held_out`` cases (or, with one case, the top quarter of each
    organ along z) feed only the validation crops."""

    def __init__(self, cases: list[Case], size: int, rng: np.random.Generator, *, validation: bool = False) -> None:
        self.size = size
        self.rng = rng
        self.pools: list[tuple[Case, int, np.ndarray]] = []
        n_val = max(1, len(cases) // 5) if len(cases) > 1 else 0
        chosen = cases[len(cases) - n_val:] if validation and n_val else cases[: len(cases) - n_val] if n_val else cases
        for case in chosen:
            for organ, idx in case.centres.items():
                if n_val == 0:  # single case: split each organ along z
                    cut = np.quantile(idx[:, 2], 0.75)
                    idx = idx[idx[:, 2] >= cut] if validation else idx[idx[:, 2] < cut]
                if len(idx):
                    self.pools.append((case, organ, idx))
        if not self.pools:
            raise InputImageError("No organ voxels to sample crops from.")

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        case, organ, idx = self.pools[int(self.rng.integers(len(self.pools)))]
        voxel = idx[int(self.rng.integers(len(idx)))]
        direction = np.asarray(case.ct.GetDirection()).reshape(3, 3)
        centre = np.asarray(case.ct.GetOrigin()) + direction @ (voxel * np.asarray(case.ct.GetSpacing()))
        centre = centre + self.rng.uniform(-0.25, 0.25, 3) * self.size  # organ edges as well as interiors
        return crop(case, centre, self.size, organ)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        items = [self.sample() for _ in range(n)]
        return np.stack([i[0] for i in items])[:, None], np.stack([i[1] for i in items])[:, None].astype(np.float32)
