"""Organ masks on the CT grid: one structure label map plus its id -> name table.

Arrays are in ITK index order (x, y, z), like everywhere in PASTALib. World
coordinates are LPS millimetres, so +x points to the patient's left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from PASTALib.anatomy.totalseg_classes import (
    TOTAL_CLASSES,
    Side,
    normalize_name,
    pasta_lesion_name,
    structure_organ,
)
from PASTALib.errors import AnatomyError
from PASTALib.geometry.arrays import array_to_image, xyz_view
from PASTALib.labels import LesionType, Organ
from PASTALib.report.wording import location_text

#: A structure counts as present only above both thresholds: segmentation models leave
#: specks of a few voxels of classes that are not in the scan.
PRESENCE_MIN_VOXELS = 20
PRESENCE_MIN_VOLUME_MM3 = 100.0

#: Structures whose x-centroid gives the body midline (most reliable first).
_MIDLINE_STRUCTURES = ("vertebrae_", "sacrum", "spinal_cord", "sternum", "trachea", "esophagus")


def same_grid(a: sitk.Image, b: sitk.Image, tol_mm: float = 1e-2) -> bool:
    """True when both images have the same voxel grid (size, spacing, origin, direction)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )


def resample_labels_to(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of ``labels`` onto ``reference``'s grid.

    Raises AnatomyError when the two images do not overlap in world space (a label map
    made for another scan, or one with a wrong affine).
    """
    if same_grid(labels, reference):
        return labels
    out = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    if not xyz_view(out).any() and xyz_view(labels).any():
        raise AnatomyError(
            "The label map does not overlap the CT in world coordinates: it was made for another scan "
            "or its header (origin/direction) is wrong. Provide the label map computed on this CT."
        )
    return out


def label_locations(labels: np.ndarray, *, max_per_label: int, rng: np.random.Generator,
                    min_voxels: int = 0) -> dict[int, np.ndarray]:
    """Voxel indices (rows of ``np.argwhere``) of each non-zero label with at least ``min_voxels`` voxels;
    labels with more than ``max_per_label`` keep a random subset in index order (nnU-Net also keeps a random
    subset of class locations: it bounds memory and sampling cost). ``rng`` is drawn from in label order."""
    locations = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        idx = np.argwhere(labels == value)
        if len(idx) < min_voxels:
            continue
        if len(idx) > max_per_label:
            idx = idx[np.sort(rng.choice(len(idx), max_per_label, replace=False))]
        locations[int(value)] = idx
    return locations


def world_x_mm(image: sitk.Image, indices_xyz: np.ndarray) -> np.ndarray:
    """LPS x (mm) of voxel indices (N x 3, x,y,z order); +x is the patient's left."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    row = d[0] * np.asarray(image.GetSpacing())
    return image.GetOrigin()[0] + indices_xyz @ row


@dataclass(frozen=True, eq=False)
class OrganMasks:
    """Structure label map (integer ids on the CT grid) with ``names`` for its ids.

    Names are TotalSegmentator ``total`` class names, aliases such as ``lung_left`` or
    ``bone``, or ``lesion:<slug>`` for PASTA lesion labels; see
    :func:`~PASTALib.anatomy.totalseg_classes.structure_organ`. Ids without a name are
    kept as unnamed neighbours ("label_<id>").
    """

    label_map: sitk.Image
    names: Mapping[int, str]
    source: str = "label map"
    _array: np.ndarray = field(init=False, repr=False)
    _counts: np.ndarray = field(init=False, repr=False)
    _organs: dict[int, tuple[Organ | None, Side | None, bool]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.label_map.GetDimension() != 3 or self.label_map.GetNumberOfComponentsPerPixel() != 1:
            raise AnatomyError("The organ label map must be a 3D scalar image.")
        array = np.asarray(xyz_view(self.label_map))
        if array.dtype.kind == "f":
            if not np.array_equal(array, np.round(array)):
                raise AnatomyError("The organ label map has non-integer values; pass an integer label image.")
        if array.size and array.min() < 0:
            raise AnatomyError("The organ label map has negative values; it is not a label map.")
        array = array.astype(np.uint16, copy=False)
        array.flags.writeable = False
        counts = np.bincount(array.ravel())
        names = {int(k): str(v) for k, v in self.names.items()}
        for label in np.nonzero(counts)[0]:
            names.setdefault(int(label), f"label_{int(label)}")
        names.pop(0, None)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "_array", array)
        object.__setattr__(self, "_counts", counts)
        object.__setattr__(self, "_organs", {k: structure_organ(v) for k, v in names.items()})

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_label_map(
        cls,
        labels: sitk.Image,
        names: Mapping[int, str] | None = None,
        *,
        reference: sitk.Image | None = None,
        source: str = "label map",
    ) -> "OrganMasks":
        """Masks from any integer label map; ``names`` None means TotalSegmentator ``total`` ids.

        ``reference`` (the CT) puts the labels on the CT grid (nearest neighbour).
        """
        if reference is not None:
            labels = resample_labels_to(labels, reference)
        return cls(labels, dict(TOTAL_CLASSES if names is None else names), source)

    @classmethod
    def from_pasta_label_map(
        cls, labels: sitk.Image, *, reference: sitk.Image | None = None, source: str = "PASTA label map"
    ) -> "OrganMasks":
        """Masks from a PASTA label map: organs 1-10, optional lesions 11-25.

        Lesion voxels count as part of their organ's extent; the healthy-organ check
        rejects organs that already hold a lesion.
        """
        values = np.unique(xyz_view(labels))
        bad = [int(v) for v in values if v < 0 or v > max(LesionType)]
        if bad:
            raise AnatomyError(
                f"Values {bad[:5]} are not PASTA labels (organs 1-10, lesions 11-25). "
                "For a TotalSegmentator label map use OrganMasks.from_label_map (pasta anatomy organs --labels)."
            )
        names: dict[int, str] = {int(o): normalize_name(o.name) for o in Organ}
        names[int(Organ.BLADDER)] = "urinary_bladder"
        names[int(Organ.COLON)] = "colon_and_rectum"
        names.update({int(t): pasta_lesion_name(t) for t in LesionType})
        return cls.from_label_map(labels, names, reference=reference, source=source)

    # ----------------------------------------------------------------- geometry
    @property
    def array(self) -> np.ndarray:
        """Structure ids, (x, y, z), read-only."""
        return self._array

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.label_map.GetSpacing()))

    # ----------------------------------------------------------------- structures
    def voxel_count(self, name: str) -> int:
        """Voxels of the structure called ``name`` (0 if absent or unknown)."""
        key = normalize_name(name)
        return int(sum(self._counts[k] for k, v in self.names.items() if normalize_name(v) == key and k < len(self._counts)))

    def structure_volume_mm3(self, name: str) -> float:
        return self.voxel_count(name) * self.voxel_volume_mm3

    def is_present(self, name: str) -> bool:
        """Structure present above the noise thresholds (voxels and mm³)."""
        n = self.voxel_count(name)
        return n >= PRESENCE_MIN_VOXELS and n * self.voxel_volume_mm3 >= PRESENCE_MIN_VOLUME_MM3

    def present_structures(self) -> dict[str, float]:
        """Name -> volume (mm³) of every structure present above the noise thresholds."""
        return {
            name: self.structure_volume_mm3(name)
            for label, name in sorted(self.names.items())
            if label < len(self._counts) and self.is_present(name)
        }

    def structure_ids(self, organ: Organ, side: Side | None = None, *, include_lesions: bool = True) -> list[int]:
        """Label ids belonging to ``organ`` (and ``side``; unsided ids are included too)."""
        organ = Organ(organ)
        ids = []
        for label, (o, s, is_lesion) in self._organs.items():
            if o != organ or (is_lesion and not include_lesions):
                continue
            if side is not None and s is not None and s != side:
                continue
            ids.append(label)
        return sorted(ids)

    # ----------------------------------------------------------------- organs
    def organ_mask(self, organ: Organ, side: Side | None = None, *, include_lesions: bool = True) -> np.ndarray:
        """Boolean (x, y, z) mask of a PASTA organ, optionally one side of a paired organ.

        Structures without a side (a PASTA "kidney" label, a user's "lung") are split at
        the body midline (:meth:`midline_x_mm`).
        """
        organ = Organ(organ)
        if side is not None and side not in ("left", "right"):
            raise ValueError(f"side must be 'left', 'right' or None, not {side!r}")
        ids = self.structure_ids(organ, side, include_lesions=include_lesions)
        mask = np.isin(self._array, ids) if ids else np.zeros(self._array.shape, bool)
        if side is None or not mask.any():
            return mask
        unsided = [k for k in ids if self._organs[k][1] is None]
        if unsided:
            split = np.isin(self._array, unsided)
            idx = np.argwhere(split)
            on_left = world_x_mm(self.label_map, idx) > self.midline_x_mm()
            wrong = idx[on_left != (side == "left")]
            mask[tuple(wrong.T)] = False
        return mask

    def organ_volume_mm3(self, organ: Organ, side: Side | None = None) -> float:
        """Volume of the organ (with its lesions), optionally one side."""
        if side is None:
            ids = self.structure_ids(organ)
            return float(sum(self._counts[k] for k in ids if k < len(self._counts))) * self.voxel_volume_mm3
        return float(self.organ_mask(organ, side).sum()) * self.voxel_volume_mm3

    def lesion_voxels(self, organ: Organ, side: Side | None = None) -> dict[str, int]:
        """PASTA lesion labels (name -> voxels) inside ``organ`` in this map."""
        lesion_ids = [k for k in self.structure_ids(organ) if self._organs[k][2]]
        if not lesion_ids:
            return {}
        organ_region = self.organ_mask(organ, side)
        out = {}
        for k in lesion_ids:
            n = int(np.count_nonzero(organ_region & (self._array == k)))
            if n:
                out[self.names[k]] = n
        return out

    def present_organs(self) -> list[tuple[Organ, Side | None]]:
        """(organ, side) pairs present; paired organs are listed per side."""
        out: list[tuple[Organ, Side | None]] = []
        for organ in Organ:
            if organ.is_paired:
                out += [(organ, s) for s in ("right", "left") if self._organ_present(organ, s)]
            elif self._organ_present(organ, None):
                out.append((organ, None))
        return out

    def _organ_present(self, organ: Organ, side: Side | None) -> bool:
        n = self.organ_volume_mm3(organ, side) / self.voxel_volume_mm3
        return n >= PRESENCE_MIN_VOXELS and n * self.voxel_volume_mm3 >= PRESENCE_MIN_VOLUME_MM3

    def other_structures(self, organ: Organ, side: Side | None = None) -> np.ndarray:
        """Label map (x, y, z) of everything except ``organ`` (the neighbours), ids kept."""
        out = self._array.copy()
        out[self.organ_mask(organ, side)] = 0
        return out

    # ----------------------------------------------------------------- sides
    def midline_x_mm(self) -> float:
        """LPS x of the body midline: centroid of the spine (else bone, else all labels, else centre)."""
        for prefixes in (_MIDLINE_STRUCTURES, None):
            if prefixes is None:
                ids = self.structure_ids(Organ.BONE) or [k for k in self.names if k < len(self._counts)]
            else:
                ids = [k for k, v in self.names.items() if normalize_name(v).startswith(prefixes)]
            ids = [k for k in ids if k < len(self._counts) and self._counts[k] > 0]
            if ids:
                idx = np.argwhere(np.isin(self._array, ids))
                return float(world_x_mm(self.label_map, idx).mean())
        centre = (np.asarray(self.label_map.GetSize(), float) - 1) / 2
        return float(self.label_map.TransformContinuousIndexToPhysicalPoint(centre.tolist())[0])

    def side_of(self, organ: Organ, point_mm: tuple[float, float, float]) -> Side | None:
        """Side ("left"/"right") of an LPS point for a paired organ; None for unpaired organs.

        The structure under the point decides (e.g. ``kidney_left``); otherwise the point's x
        relative to the midline (+x is the patient's left in LPS).
        """
        organ = Organ(organ)
        if not organ.is_paired:
            return None
        index = self.label_map.TransformPhysicalPointToIndex([float(c) for c in point_mm])
        if all(0 <= i < n for i, n in zip(index, self.label_map.GetSize())):
            label = int(self._array[tuple(index)])
            info = self._organs.get(label)
            if info and info[0] == organ and info[1] is not None:
                return info[1]
        return "left" if point_mm[0] > self.midline_x_mm() else "right"

    def location_name(self, organ: Organ, point_mm: tuple[float, float, float] | None = None,
                      side: Side | None = None) -> str:
        """Report location: "Right kidney", "Left lung", "Liver"."""
        organ = Organ(organ)
        if organ.is_paired and not side and point_mm is not None:
            side = self.side_of(organ, point_mm)
        return location_text(organ, side)

    # ----------------------------------------------------------------- export
    def pasta_label_map(self, *, include_lesions: bool = True) -> sitk.Image:
        """uint8 label map on the same grid: PASTA organ values 1-10 (lesions 11-25 kept if asked)."""
        lut = np.zeros(max(int(self._array.max()), max(self.names, default=0)) + 1, np.uint8)
        for label, (organ, _side, is_lesion) in self._organs.items():
            if organ is None:
                continue
            if is_lesion:
                name = self.names[label][len("lesion:"):]
                lut[label] = int(LesionType.parse(name)) if include_lesions else int(organ)
            else:
                lut[label] = int(organ)
        return array_to_image(lut[self._array], self.label_map)
