"""Shape-stream draws and the signed distance field of a mass or punctate lesion body (1 mm grid)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from PASTALib.errors import SpecificationError
from PASTALib.labels import Phase
from PASTALib.report.attributes import Shape, Surface
from PASTALib.synth import shape as shp
from PASTALib.synth.profiles import LOBULATION, MARGIN_WIDTH_MM, SPICULES
from PASTALib.synth.spec import STREAM_SHAPE, LesionSpec, stream
from PASTALib.synth.wall import WallPlan


#: Clip of the isotropic volume correction (an oblique, lobulated body holds less than its box).
_VOLUME_GAIN = (0.8, 1.35)


def _matches_volume(spec: LesionSpec) -> bool:
    """Masses of a type with an irregularity model are sized by volume, the others by extents."""
    return spec.profile.irregularity is not None and spec.shape in (Shape.ROUND, Shape.IRREGULAR)


def shape_half_extent(spec: LesionSpec, lob: float, margin_w: float, wall_reach: float = 0.0) -> np.ndarray:
    """Half size (mm) of the box the shape can occupy: lesion reach + lobulation/spicules + margin tail."""
    radii = np.asarray(spec.size_mm) / 2.0
    if spec.shape is Shape.WALL_THICKENING:
        # Annular: half the length along the (not yet known) organ axis, the organ radius across it.
        extent = np.full(3, max(float(radii.max()), wall_reach)) if wall_reach > 0 else radii
        return extent + 2.5 * margin_w + 2.0
    gain = _VOLUME_GAIN[1] if _matches_volume(spec) else 1.15  # the size correction's largest growth
    reach = gain * (1.0 + 3.0 * lob)
    if spec.shape is Shape.IRREGULAR:
        reach = max(reach, gain * 1.85)  # spicules reach 1.8 radii
    return radii * reach + 2.5 * margin_w + 2.0


@dataclass(frozen=True)
class ShapeDraws:
    """Shape-stream draws every lesion makes (in this order)."""

    lob: float
    n_spicules: int
    margin_w: float
    stone_count: int
    shape_seed: int
    anisotropy: float = 1.0  # exponent of the principal radii's ratios (irregularity model)
    orders: tuple[int, int] = (2, 4)  # lobulation orders


def shape_draws(seed: int, resolved: LesionSpec) -> tuple[ShapeDraws, WallPlan | None]:
    """The shape stream's draws of a resolved spec: drawn first and always in the same order (stable
    across attributes). Masses of a type with an irregularity model get lobulation, spicules and
    anisotropy from one continuous level (profiles.Irregularity); the others from the per-attribute ranges."""
    prof = resolved.profile
    rng_shape = stream(seed, STREAM_SHAPE)
    model = prof.irregularity if resolved.shape in (Shape.ROUND, Shape.IRREGULAR) else None
    anisotropy = 1.0
    if model is not None:
        ill = resolved.surface is Surface.ILL_DEFINED
        u = model.level(rng_shape, resolved.shape, ill, float(np.prod(resolved.size_mm)) ** (1.0 / 3.0))
        lob, n_spicules, anisotropy = model.lobulation_amp(u), model.spicule_count(u), model.anisotropy_at(u, ill)
    else:
        lob = float(rng_shape.uniform(*LOBULATION[resolved.shape]))
        lo_s, hi_s = SPICULES[resolved.shape]
        n_spicules = int(rng_shape.integers(lo_s, hi_s + 1))
    w_lo, w_hi = MARGIN_WIDTH_MM[resolved.surface]
    margin_w = float(w_lo + rng_shape.random() * (w_hi - w_lo))
    thickness = float(rng_shape.uniform(*prof.wall_thickness_mm))
    outward = float(rng_shape.uniform(3.0, 8.0))
    stone_count = int(rng_shape.integers(prof.stones[0], prof.stones[1] + 1))
    shape_seed = int(rng_shape.integers(2**62))
    circumferential, position = bool(rng_shape.random() < prof.circumferential), float(rng_shape.random())
    plan = WallPlan(thickness, outward, circumferential, position) if resolved.shape is Shape.WALL_THICKENING else None
    orders = model.lobe_orders(resolved.surface is Surface.ILL_DEFINED) if model is not None else (2, 4)
    return ShapeDraws(lob, n_spicules, margin_w, stone_count, shape_seed, anisotropy, orders), plan


def _build_sdf(
    spec: LesionSpec, coords: shp.Coords, organ_c: np.ndarray, allowed_c: np.ndarray, lob: float, n_spicules: int,
    stone_count: int, shape_seed: int, anisotropy: float = 1.0, orders: tuple[int, int] = (2, 4),
) -> np.ndarray:
    """Lesion SDF (mm) on ``coords``, clipped to the organ (or to tissue when invading)."""
    radii = np.asarray(spec.size_mm, float) / 2.0
    def field_of(r: np.ndarray, spicules: int) -> np.ndarray:
        rng = np.random.default_rng(shape_seed)  # same random shape for both passes
        if spec.shape is Shape.PUNCTATE:
            return shp.stones_field(coords, r, rng, stone_count)
        return shp.mass_field(coords, r, rng, lob, spicules, anisotropy=anisotropy, orders=orders)

    # One size-correction pass on the body (without spicules, as a radiologist measures): lobulation
    # and the oblique orientation change its size. Masses with an irregularity model keep the requested
    # VOLUME (equivalent diameter = geometric mean of size_mm; the extents follow the shape, as in
    # real nodules); the others are rescaled per axis so they span the requested extents.
    body = field_of(radii, 0) < 0
    if _matches_volume(spec):
        count = np.count_nonzero(body)  # 1 mm voxels
        if count:
            radii = radii * float(np.clip((np.pi / 6.0 * np.prod(spec.size_mm) / count) ** (1.0 / 3.0), *_VOLUME_GAIN))
    else:
        measured = shp.extents_mm(body)
        if np.all(measured > 0):
            radii = radii * np.clip(np.asarray(spec.size_mm) / measured, 0.8, 1.15)
    sdf = shp.to_sdf(field_of(radii, n_spicules))
    # Clip: intersection with the allowed region's SDF (skipped when the lesion is well inside).
    if np.any((sdf < 3.0) & ~allowed_c):
        sdf = np.maximum(sdf, shp.signed_distance(allowed_c))
    return sdf



def lesion_shape(spec: LesionSpec, phase: Phase = Phase.PLAIN) -> np.ndarray:
    """The boolean 1 mm mask (canonical x, y, z) of a mass or punctate lesion exactly as
    :func:`synthesize_lesion` shapes it for this spec and seed, without a CT (no organ clipping):
    for measuring the shape model. Wall thickening needs its organ and raises SpecificationError."""
    resolved = spec.resolve(phase)
    if resolved.shape is Shape.WALL_THICKENING:
        raise SpecificationError("a wall-thickening lesion is shaped by its organ; use synthesize_lesion with a CT")
    draws, _ = shape_draws(spec.seed, resolved)
    half = shape_half_extent(resolved, draws.lob, 0.0)
    size = 2 * np.ceil(half).astype(int) + 1
    coords = shp.crop_coords(size, (size - 1) / 2.0)
    region = np.ones(tuple(size), bool)
    return _build_sdf(resolved, coords, region, region, lob=draws.lob, n_spicules=draws.n_spicules,
                      stone_count=draws.stone_count, shape_seed=draws.shape_seed, anisotropy=draws.anisotropy,
                      orders=draws.orders) < 0

def shape_in_crop(
    spec: LesionSpec, grid_size: tuple[int, int, int], half_mm: np.ndarray, organ_c: np.ndarray, allowed_c: np.ndarray,
    **kwargs: Any,
) -> np.ndarray:
    """SDF on the whole crop, computed only in the centred shape box (+1000 mm elsewhere: outside)."""
    size = np.asarray(grid_size)
    centre = (size - 1) // 2
    lo = np.maximum(0, centre - np.ceil(half_mm).astype(int))
    hi = np.minimum(size, centre + np.ceil(half_mm).astype(int) + 1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    coords = shp.crop_coords(hi - lo, centre - lo)
    sdf = np.full(organ_c.shape, 1000.0, np.float32)
    sdf[box] = _build_sdf(spec, coords, organ_c[box], allowed_c[box], **kwargs)
    return sdf
