"""Where a lesion goes: organ mask on the input grid, fit test, centre sampling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PASTALib.anatomy.health import MIN_HEALTHY_VOLUME_MM3
from PASTALib.errors import AnatomyError, LesionFitError
from PASTALib.labels import Organ
from PASTALib.geometry.arrays import distance_to_mask

#: Smallest organ volume the synthesizer accepts (docs/labels-and-reports.md, healthy-organ check).
#: Placement runs on the organ's bounding box subsampled to about this spacing (speed, not accuracy:
#: the lesion itself is built at 1 mm and clipped to the exact organ).
_PLACEMENT_SPACING_MM = 2.0


@dataclass(frozen=True)
class OrganRegion:
    """One organ (optionally one side) on the input grid, cropped to its bounding box."""

    organ: Organ
    side: str | None
    lo: np.ndarray  # bbox start index (x, y, z) on the input grid
    mask: np.ndarray  # bool, bbox-sized
    spacing: np.ndarray  # input spacing
    direction: np.ndarray  # 3x3
    origin: np.ndarray
    volume_mm3: float

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """Input-grid voxel index (x, y, z; may be fractional) -> LPS mm."""
        return self.origin + self.direction @ (np.asarray(index, float) * self.spacing)

    def lps_to_index(self, point: Sequence[float]) -> np.ndarray:
        return self.direction.T @ (np.asarray(point, float) - self.origin) / self.spacing

    def index_radii(self, radii_xyz: Sequence[float]) -> np.ndarray:
        """Canonical (LPS) radii expressed along the input index axes (axis permutation/flip safe)."""
        weights = np.abs(self.direction)  # column a: LPS components of index axis a
        return weights.T @ np.asarray(radii_xyz, float)


def midline_x(labels_xyz: np.ndarray, image: sitk.Image) -> float:
    """World x (LPS) of the patient midline: the bone centroid, else the image centre."""
    step = 4
    bone = np.argwhere(labels_xyz[::step, ::step, ::step] == int(Organ.BONE)) * step
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing, origin = np.asarray(image.GetSpacing()), np.asarray(image.GetOrigin())
    if len(bone) > 50:
        centre = bone.mean(axis=0)
    else:
        centre = (np.asarray(image.GetSize()) - 1) / 2.0
    return float((origin + direction @ (centre * spacing))[0])


def organ_region(labels_xyz: np.ndarray, image: sitk.Image, organ: Organ, side: str | None, midline: float | None) -> OrganRegion:
    """The organ's voxels (one side if asked) in their bounding box; AnatomyError if missing/too small."""
    spacing = np.asarray(image.GetSpacing(), float)
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), float)
    voxel_mm3 = float(np.prod(spacing))
    full = labels_xyz == int(organ)
    spans = []
    for axis in range(3):
        hit = np.flatnonzero(full.any(axis=tuple(a for a in range(3) if a != axis)))
        spans.append(hit)
    name = organ.display_name.lower()
    if any(h.size == 0 for h in spans):
        raise AnatomyError(
            f"The {name} (label {int(organ)}) is not in the organ label map, so this lesion type cannot be placed. "
            "Segment the organ first (e.g. TotalSegmentator) or pick another lesion type."
        )
    lo = np.array([h[0] for h in spans])
    hi = np.array([h[-1] for h in spans]) + 1
    mask = full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy()
    if side is not None and midline is not None:
        idx = [np.arange(lo[a], hi[a]) * spacing[a] for a in range(3)]
        x = origin[0] + direction[0, 0] * idx[0][:, None, None] + direction[0, 1] * idx[1][None, :, None] + direction[0, 2] * idx[2][None, None, :]
        mask &= (x > midline) if side == "left" else (x <= midline)  # LPS: +x is patient left
        name = f"{side} {name}"
    volume = float(np.count_nonzero(mask)) * voxel_mm3
    if volume <= MIN_HEALTHY_VOLUME_MM3:
        raise AnatomyError(
            f"The {name} is too small for lesion synthesis: {volume:.0f} mm³ (needs > {MIN_HEALTHY_VOLUME_MM3:.0f} mm³). "
            "It may be cut off by the scan or missing; pick another organ or scan."
        )
    return OrganRegion(organ, side, lo, mask, spacing, direction, origin, volume)


def _fit_map(region: OrganRegion, radii_xyz: Sequence[float]) -> tuple[np.ndarray, int]:
    """Normalised inscribed distance (1.0 = the ellipsoid just fits) on a subsampled bbox, and the stride."""
    stride = np.maximum(1, np.round(_PLACEMENT_SPACING_MM / region.spacing)).astype(int)
    sub = region.mask[:: stride[0], :: stride[1], :: stride[2]]
    padded = np.pad(sub, 1)  # the image border counts as outside the organ
    sampling = region.spacing * stride / np.maximum(region.index_radii(radii_xyz), 1e-3)
    # Distance of each organ voxel to the nearest non-organ voxel (ITK Maurer: exact, ~3x faster than scipy).
    dist = distance_to_mask(~padded, sampling)[1:-1, 1:-1, 1:-1]
    return np.maximum(dist, np.float32(0.0)), stride  # 0 outside the organ


def _format_size(size: Sequence[float]) -> str:
    return "×".join(f"{s:.0f}" for s in size) + " mm (x×y×z)"


def sample_centre(
    region: OrganRegion, size_xyz: Sequence[float], rng: np.random.Generator, *, invasion: bool,
    size_given: bool, min_size: float,
) -> tuple[np.ndarray, tuple[float, float, float], list[np.ndarray]]:
    """Sample a centre index (input grid) where a mass fits; may shrink a sampled size (wall: ``sample_wall_sites``).

    Returns the centre index, the (possibly shrunk) size and a few alternative centres (used to
    retry invasion when the first one barely leaves the organ).
    """
    size = np.asarray(size_xyz, float)
    name = region.organ.display_name.lower()
    dist, stride = _fit_map(region, size / 2.0)
    best = float(dist.max())
    if invasion:
        # Centre inside but close to the boundary: 25-70% of the lesion pokes out.
        candidates = np.argwhere((dist >= 0.3) & (dist <= 0.75))
    else:
        candidates = np.argwhere(dist >= 1.0)
    if candidates.size == 0:
        largest = size * best * 0.95
        if not size_given and best > 0 and (largest >= min_size).all():
            # A sampled size shrinks to what fits; normalised distances scale by the same factor.
            size, scale = largest, best * 0.95
            candidates = np.argwhere((dist >= 0.3 * scale) & (dist <= 0.75 * scale)) if invasion else np.argwhere(dist >= scale)
        else:
            raise LesionFitError(
                f"A {_format_size(size)} lesion does not fit in the {name}: the largest size that fits "
                f"with this aspect is {_format_size(largest)} (2 × the largest inscribed radius). "
                "Request a smaller size or another organ."
            )
    order = rng.permutation(len(candidates))[:8]
    picks = [region.lo + candidates[i] * stride for i in order]
    return picks[0], tuple(float(s) for s in size), picks[1:]


def check_centre(region: OrganRegion, centre_lps: Sequence[float], size_xyz: Sequence[float], *, invasion: bool, wall: bool) -> np.ndarray:
    """Index of a user-given centre; LesionFitError if it is outside the organ or the lesion cannot fit there."""
    index = region.lps_to_index(centre_lps)
    local = np.round(index).astype(int) - region.lo
    name = region.organ.display_name.lower() if region.side is None else f"{region.side} {region.organ.display_name.lower()}"
    inside = bool(np.all(local >= 0) and np.all(local < region.mask.shape) and region.mask[tuple(local)])
    if not inside:
        voxels = np.argwhere(region.mask)
        nearest = voxels[np.argmin(np.sum(((voxels - local) * region.spacing) ** 2, axis=1))]
        hint = region.index_to_lps(nearest + region.lo)
        raise LesionFitError(
            f"The centre {tuple(round(float(c), 1) for c in centre_lps)} mm (LPS) is outside the {name}. "
            f"The nearest {name} voxel is at {tuple(round(float(c), 1) for c in hint)} mm."
        )
    if not (invasion or wall):
        dist, stride = _fit_map(region, np.asarray(size_xyz, float) / 2.0)
        here = np.clip(local // stride, 0, np.asarray(dist.shape) - 1)
        fit = float(dist[tuple(here)])
        # Allow a little clipping by the organ boundary (a subcapsular lesion), not a half-cut one.
        if fit < 0.8:
            largest = np.asarray(size_xyz, float) * fit
            raise LesionFitError(
                f"A {_format_size(size_xyz)} lesion does not fit in the {name} at this centre: the largest size "
                f"that fits here is {_format_size(largest)}. Move the centre deeper into the organ, "
                "request a smaller size, or ask for invasion."
            )
    return index


#: Lumen voxels a wall site prefers: gas or fluid (< this HU), so the narrowed lumen stays visible.
_VISIBLE_LUMEN_HU = 20.0


def _depth_map(region: OrganRegion) -> tuple[np.ndarray, np.ndarray]:
    """Depth (mm from the organ surface, 0 outside) on the subsampled bbox, and the stride."""
    stride = np.maximum(1, np.round(_PLACEMENT_SPACING_MM / region.spacing)).astype(int)
    sub = region.mask[:: stride[0], :: stride[1], :: stride[2]]
    dist = distance_to_mask(~np.pad(sub, 1), region.spacing * stride)[1:-1, 1:-1, 1:-1]
    return np.maximum(dist, np.float32(0.0)), stride


def _ridge(depth: np.ndarray, stride_mm: float) -> np.ndarray:
    """Medial ridge of the organ: voxels (nearly) as deep as their neighbours, i.e. the lumen's centre line."""
    return (depth > 0) & (depth >= ndimage.maximum_filter(depth, size=3) - np.float32(0.5 * stride_mm))


def sample_wall_sites(
    region: OrganRegion, ct_xyz: np.ndarray | None, need_mm: float, rng: np.random.Generator,
) -> list[tuple[np.ndarray, float]]:
    """Up to 8 lumen-centre sites (input-grid index, organ radius mm) for wall thickening.

    A site is a point of the organ's medial ridge whose radius is at least ``need_mm`` (room for the
    minimum tumour wall plus an open lumen); sites whose lumen holds gas or fluid are preferred when
    ``ct_xyz`` (input-grid HU) is given. LesionFitError when the organ is too narrow everywhere.
    """
    depth, stride = _depth_map(region)
    ridge = _ridge(depth, float(np.min(region.spacing * stride))) & (depth >= need_mm)
    candidates = np.argwhere(ridge)
    if candidates.size == 0:
        raise LesionFitError(
            f"The {region.organ.display_name.lower()} is too narrow for wall thickening: its widest radius is "
            f"{float(depth.max()):.0f} mm, and a tumour wall of the type's minimum thickness around an open lumen "
            f"needs {need_mm:.0f} mm. Pick another scan (a distended organ) or another shape."
        )
    index = region.lo + candidates * stride
    if ct_xyz is not None:
        visible = ct_xyz[tuple(index.T)] < _VISIBLE_LUMEN_HU
        if visible.any():
            candidates, index = candidates[visible], index[visible]
    order = rng.permutation(len(candidates))[:8]
    return [(index[i], float(depth[tuple(candidates[i])])) for i in order]


def snap_wall_site(region: OrganRegion, index: np.ndarray, need_mm: float) -> tuple[np.ndarray, float]:
    """The lumen-centre site for a user-given point on a hollow organ, and its radius (mm): the nearest
    ridge point at least ``need_mm`` deep, searched within the organ's largest radius + 5 mm (a click on
    the wall moves to the lumen centre beside it; a site returned by ``sample_wall_sites`` maps to
    itself), else the deepest ridge point there."""
    depth, stride = _depth_map(region)
    search_mm = float(depth.max()) + 5.0
    local = (np.asarray(index, float) - region.lo) / stride
    candidates = np.argwhere(_ridge(depth, float(np.min(region.spacing * stride))))
    offsets = (candidates - local) * stride * region.spacing
    dist2 = np.einsum("ij,ij->i", offsets, offsets)
    near = dist2 <= search_mm**2
    if not near.any():
        here = tuple(np.clip(np.round(local).astype(int), 0, np.asarray(depth.shape) - 1))
        return np.asarray(index, float), float(depth[here])
    deep = near & (depth[tuple(candidates.T)] >= need_mm)
    if deep.any():
        best = candidates[deep][np.argmin(dist2[deep])]
    else:
        best = candidates[near][np.argmax(depth[tuple(candidates[near].T)])]
    return region.lo + best * stride, float(depth[tuple(best)])


def wall_point(region: OrganRegion, index: np.ndarray, radius_mm: float, u: float) -> np.ndarray:
    """A point on the organ wall next to a lumen site (input-grid index): one of the boundary voxels
    closest to it (within 3 mm of the closest), picked by ``u`` in [0, 1) (a draw of the shape
    stream, so a given site always gives the same point), so an eccentric lesion can sit anywhere
    around the lumen."""
    local = np.round((np.asarray(index, float) - region.lo)).astype(int)
    half = np.ceil((radius_mm + 6.0) / region.spacing).astype(int)
    lo = np.maximum(local - half, 0)
    hi = np.minimum(local + half + 1, region.mask.shape)
    block = region.mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    boundary = np.argwhere(block & ~ndimage.binary_erosion(block, border_value=1))
    if len(boundary) == 0:
        return np.asarray(index, float)
    dist = np.linalg.norm((boundary + lo - local) * region.spacing, axis=1)
    near = boundary[dist <= dist.min() + 3.0]
    return region.lo + lo + near[min(int(u * len(near)), len(near) - 1)]
