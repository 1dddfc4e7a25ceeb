"""Wall thickening of hollow organs: the band around a preserved lumen, the plan drawn from the shape stream,
lumen sites, and the band built in a crop (shape fields on a local 1 mm crop, as in ``shape``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from PASTALib.geometry.arrays import distance_to_mask
from PASTALib.synth import placement
from PASTALib.synth import shape as shp
from PASTALib.synth.shape import Coords
from PASTALib.synth.spec import LesionSpec

#: A wall lesion keeps a lumen of radius >= max(LUMEN_MIN_MM, LUMEN_FRACTION x the local organ radius):
#: tumours narrow the lumen but (short of complete obstruction, which is not modelled) leave it open.
LUMEN_MIN_MM = 2.5
LUMEN_FRACTION = 0.4


def wall_limit(thickness: float | np.ndarray, local_radius: float | np.ndarray) -> float | np.ndarray:
    """Largest wall thickness (mm) that keeps the lumen open where the organ's local radius is ``local_radius``."""
    return np.minimum(thickness, local_radius - np.maximum(LUMEN_MIN_MM, LUMEN_FRACTION * np.asarray(local_radius)))


def organ_axis(organ: np.ndarray, coords: Coords, radius: float) -> np.ndarray:
    """Unit direction of the organ's local long axis: first principal axis of its voxels within ``radius`` mm."""
    step = 2  # every 2nd voxel: the covariance of a 1 mm crop needs no more
    sub = organ[::step, ::step, ::step]
    idx = np.argwhere(sub)
    if len(idx) < 10:
        return np.array([0.0, 0.0, 1.0])
    pts = np.stack([coords[a].ravel()[idx[:, a] * step] for a in range(3)], axis=1).astype(float)
    pts = pts[np.einsum("ij,ij->i", pts, pts) <= radius * radius]
    if len(pts) < 10:
        return np.array([0.0, 0.0, 1.0])
    _, vectors = np.linalg.eigh(np.cov(pts.T))
    return vectors[:, -1]


def annulus_patch(organ: np.ndarray, coords: Coords, length: float, reach: float) -> np.ndarray:
    """Circumferential patch, centred on a lumen point: squared normalised distance along the organ's
    local axis (< 1 inside ``length``), +inf farther than ``reach`` mm from the axis (another loop)."""
    axis = organ_axis(organ, coords, max(reach, 0.5 * length))
    s = coords[0] * np.float32(axis[0]) + coords[1] * np.float32(axis[1]) + coords[2] * np.float32(axis[2])
    r2 = sum((coords[a] - s * np.float32(axis[a])) ** 2 for a in range(3))
    u2 = (s * np.float32(2.0 / max(length, 1.0))) ** 2
    u2[r2 > np.float32(reach * reach)] = np.inf
    return u2


def ellipsoid_patch(coords: Coords, radii: Sequence[float], normal: Sequence[float] | None = None) -> np.ndarray:
    """Eccentric patch, centred on a wall point: squared normalised ellipsoid radius (< 1 inside).

    With the wall's inward ``normal`` the offset along it is ignored: the patch bounds the lesion
    along the wall only, so the thickness is not tapered across the wall."""
    r = np.asarray(radii, np.float32)
    if normal is None:
        return (coords[0] / r[0]) ** 2 + (coords[1] / r[1]) ** 2 + (coords[2] / r[2]) ** 2
    n = np.asarray(normal, float)
    n = (n / max(float(np.linalg.norm(n)), 1e-6)).astype(np.float32)
    along = coords[0] * n[0] + coords[1] * n[1] + coords[2] * n[2]
    return sum(((coords[a] - along * n[a]) / r[a]) ** 2 for a in range(3))


def _local_radius(depth: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Organ radius at each voxel: the depth of the nearest point of the organ's medial ridge (the lumen's
    centre line). Unlike a neighbourhood maximum it stays small in a narrow neck next to a wide part.
    scipy's feature transform (nearest ridge voxel) on the patch's bounding box only."""
    out = np.zeros(depth.shape, np.float32)
    if not where.any():  # ``where`` may include voxels outside the organ (serosal spread with invasion)
        return out
    lo = np.argwhere(where).min(axis=0)
    hi = np.argwhere(where).max(axis=0) + 1
    lo, hi = np.maximum(lo - 3, 0), np.minimum(hi + 3, depth.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    d = np.maximum(depth[box], np.float32(0.0))
    ridge = (d > 0) & (d >= ndimage.maximum_filter(d, size=3) - np.float32(0.5))
    if not ridge.any():
        return out
    nearest = ndimage.distance_transform_edt(~ridge, return_distances=False, return_indices=True)
    out[box] = d[tuple(nearest)]
    return out


def wall_field(
    organ_sdf: np.ndarray, patch_u2: np.ndarray, thickness: float, outward: float, radius: float | None = None,
) -> tuple[np.ndarray, float]:
    """Wall thickening of a hollow organ around a preserved lumen; returns (field, largest thickness mm).

    The organ mask holds wall + lumen, so the tumour is the band ``0 <= depth <= limit`` measured
    inward from the serosa (from ``-outward`` with invasion): it replaces the normal wall and narrows
    the lumen. ``limit`` is ``thickness`` over the patch (``patch_u2`` < 1; flat top, short shoulders
    tapering to zero at its edge) capped by ``wall_limit`` of the local organ radius (depth of the
    nearest medial-ridge point, ``_local_radius``), so the lumen stays open and connected. ``radius`` (mm) replaces the local radius
    for a patch on one side of a wide lumen whose centre line lies outside the crop (eccentric lesions).
    """
    depth = -organ_sdf  # mm, positive inside the organ
    local_radius = _local_radius(depth, patch_u2 < 1.0) if radius is None else np.float32(radius)
    taper = np.clip(np.float32(1.3) * (np.float32(1.0) - patch_u2), 0.0, 1.0)
    limit = wall_limit(np.float32(thickness) * taper, local_radius).astype(np.float32)
    field = np.maximum(depth - limit, -(depth + np.float32(outward)))
    field[limit <= 0] = np.float32(1000.0)
    largest = float(limit[field < 0].max()) if np.any(field < 0) else 0.0
    return field, largest


@dataclass(frozen=True)
class WallPlan:
    """Wall-thickening parameters drawn before placement (shape stream)."""

    thickness: float  # requested largest thickness (mm); the lumen rule may cap it at a site
    outward: float  # serosal spread with invasion (mm)
    circumferential: bool  # annular (tubes only: organ radius <= ANNULAR_MAX_RADIUS_MM) or an eccentric plaque
    position: float  # eccentric: where around the lumen (uniform 0..1 over the nearest wall voxels)

    def need_mm(self, minimum: float) -> float:
        """Organ radius (mm) a site needs so a ``minimum``-mm wall leaves the lumen open (``wall_limit``)."""
        return max(minimum + LUMEN_MIN_MM, minimum / (1.0 - LUMEN_FRACTION)) + 0.5


#: Circumferential thickening only where the organ is a tube (colon, oesophagus, gastric antrum), not a sac.
ANNULAR_MAX_RADIUS_MM = 25.0


def wall_sites(
    spec: LesionSpec, resolved: LesionSpec, region: placement.OrganRegion, ct_xyz: np.ndarray, plan: WallPlan,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray], list[float], WallPlan]:
    """Crop centres and lumen sites (input-grid indices), the organ radius at each site, and the plan
    (annular only in tubes). A given centre snaps to the lumen site beside it; the site is what the
    resolved spec reports, so re-running it gives the same lesion."""
    need = plan.need_mm(resolved.profile.wall_thickness_mm[0])
    if spec.center_mm is not None:
        given = placement.check_centre(region, spec.center_mm, resolved.size_mm, invasion=bool(resolved.invasion), wall=True)
        found = [placement.snap_wall_site(region, given, need)]
    else:
        found = placement.sample_wall_sites(region, ct_xyz, need, rng)
    sites, radii = [c for c, _ in found], [r for _, r in found]
    if plan.circumferential and radii[0] > ANNULAR_MAX_RADIUS_MM:
        plan = replace(plan, circumferential=False)
    centres = sites
    if not plan.circumferential:  # eccentric: the crop centres on a wall point beside each lumen site
        centres = [placement.wall_point(region, c, r, plan.position) for c, r in zip(sites, radii)]
    return centres, sites, radii, plan


def wall_in_crop(
    spec: LesionSpec, plan: WallPlan, organ_c: np.ndarray, allowed_c: np.ndarray, organ_sdf: np.ndarray,
    reach: float | None, normal: np.ndarray | None = None, site_radius: float | None = None,
) -> tuple[np.ndarray, float]:
    """Wall-thickening SDF on the whole crop and its largest thickness (mm).

    ``reach`` given: annular, the crop is centred on the lumen; None: eccentric, centred on the wall
    point, ``normal`` (LPS) pointing from it to the lumen site, whose radius ``site_radius`` caps the
    thickness there (the lumen's centre line may lie outside the crop).
    """
    coords = shp.crop_coords(organ_c.shape, (np.asarray(organ_c.shape) - 1) // 2)
    outward = plan.outward if spec.invasion else 0.0
    if reach is not None:
        patch = annulus_patch(organ_c, coords, float(max(spec.size_mm)), reach + outward)
    else:
        patch = ellipsoid_patch(coords, np.asarray(spec.size_mm, float) / 2.0, normal)
    sdf, largest = wall_field(organ_sdf, patch, plan.thickness, outward, None if reach is not None else site_radius)
    if spec.invasion and np.any((sdf < 3.0) & ~allowed_c):
        sdf = np.maximum(sdf, shp.signed_distance(allowed_c))
    return sdf, largest


def inside_sdf(organ: np.ndarray) -> np.ndarray:
    """Signed distance to the organ surface INSIDE the organ (as ``shp.signed_distance``), +inf outside: one
    distance transform instead of two where only the inside matters (the normal-wall reference shell)."""
    out = np.full(organ.shape, np.inf, np.float32)
    if organ.any() and not organ.all():
        inside = distance_to_mask(~organ, (1.0, 1.0, 1.0))
        out[organ] = np.float32(0.5) - inside[organ]
    elif organ.all():
        out[:] = -np.inf
    return out
