"""Wall thickening of hollow organs: the plan drawn from the shape stream, lumen sites, the band in a crop."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from PASTALib.synth import placement
from PASTALib.synth import shape as shp
from PASTALib.synth.spec import LesionSpec


@dataclass(frozen=True)
class WallPlan:
    """Wall-thickening parameters drawn before placement (shape stream)."""

    thickness: float  # requested largest thickness (mm); the lumen rule may cap it at a site
    outward: float  # serosal spread with invasion (mm)
    circumferential: bool  # annular (tubes only: organ radius <= ANNULAR_MAX_RADIUS_MM) or an eccentric plaque
    position: float  # eccentric: where around the lumen (uniform 0..1 over the nearest wall voxels)

    def need_mm(self, minimum: float) -> float:
        """Organ radius (mm) a site needs so a ``minimum``-mm wall leaves the lumen open (``shp.wall_limit``)."""
        return max(minimum + shp.LUMEN_MIN_MM, minimum / (1.0 - shp.LUMEN_FRACTION)) + 0.5


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
        patch = shp.annulus_patch(organ_c, coords, float(max(spec.size_mm)), reach + outward)
    else:
        patch = shp.ellipsoid_patch(coords, np.asarray(spec.size_mm, float) / 2.0, normal)
    sdf, largest = shp.wall_field(organ_sdf, patch, plan.thickness, outward, None if reach is not None else site_radius)
    if spec.invasion and np.any((sdf < 3.0) & ~allowed_c):
        sdf = np.maximum(sdf, shp.signed_distance(allowed_c))
    return sdf, largest


def inside_sdf(organ: np.ndarray) -> np.ndarray:
    """Signed distance to the organ surface INSIDE the organ (as ``shp.signed_distance``), +inf outside: one
    distance transform instead of two where only the inside matters (the normal-wall reference shell)."""
    out = np.full(organ.shape, np.inf, np.float32)
    if organ.any() and not organ.all():
        inside = shp.distance_to_mask(~organ, (1.0, 1.0, 1.0))
        out[organ] = np.float32(0.5) - inside[organ]
    elif organ.all():
        out[:] = -np.inf
    return out
