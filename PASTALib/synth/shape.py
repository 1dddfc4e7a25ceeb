"""Lesion shapes as signed-distance fields (mm, negative inside) on a LOCAL 1 mm crop.

All functions take open-mesh coordinates in mm relative to the lesion centre (``coords``: three
arrays broadcasting to the crop shape) so no whole-volume array is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.special import erf

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def crop_coords(shape: Sequence[int], center_index: Sequence[float], spacing: float = 1.0) -> Coords:
    """Open-mesh mm coordinates of a crop relative to ``center_index`` (continuous voxel index)."""
    axes = [(np.arange(n, dtype=np.float32) - np.float32(c)) * np.float32(spacing) for n, c in zip(shape, center_index)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def signed_distance(mask: np.ndarray, spacing: float | Sequence[float] = 1.0) -> np.ndarray:
    """Signed Euclidean distance to the mask boundary in mm: negative inside, positive outside."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    if mask.all():
        return np.full(mask.shape, -np.inf, np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    # Half a voxel offset puts the zero level on the voxel faces, not the boundary voxel centres.
    half = 0.5 * float(np.min(spacing))
    return np.where(mask, half - inside, outside - half).astype(np.float32)


def _gradient_normalised(field: np.ndarray) -> np.ndarray:
    """First-order SDF from an implicit field: F / |grad F| (exact for planes, good near the surface)."""
    grads = np.gradient(field)
    norm = np.sqrt(sum(g * g for g in grads))
    return (field / np.maximum(norm, 1e-3)).astype(np.float32)


def _random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def lobulation(unit: Coords, rng: np.random.Generator, amplitude: float, terms: int = 6) -> np.ndarray:
    """Band-limited radial displacement on the sphere (orders 2-4 plane-wave sum), std ~ ``amplitude``.

    Low angular orders only: it looks like lobulation, not noise, and cannot pinch the body off.
    """
    dirs = _random_directions(rng, terms)
    orders = rng.integers(2, 5, size=terms)
    phases = rng.uniform(0, 2 * np.pi, size=terms)
    weights = rng.uniform(0.5, 1.0, size=terms)
    field = np.zeros(np.broadcast_shapes(*(u.shape for u in unit)), np.float32)
    for d, k, ph, w in zip(dirs, orders, phases, weights):
        proj = unit[0] * d[0] + unit[1] * d[1] + unit[2] * d[2]
        field += np.float32(w) * np.cos(np.float32(k * np.pi) * proj + np.float32(ph))
    # Std of a sum of cosines with random phase: sqrt(sum w^2 / 2).
    return field * np.float32(amplitude / np.sqrt(np.sum(weights**2) / 2.0))


def _capsule_distance(q: Coords, a: np.ndarray, b: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Distance to a tapered capsule from a (radius r0) to b (radius r1), in q units."""
    ab = b - a
    length2 = float(ab @ ab)
    t = ((q[0] - a[0]) * ab[0] + (q[1] - a[1]) * ab[1] + (q[2] - a[2]) * ab[2]) / np.float32(length2)
    t = np.clip(t, 0.0, 1.0)
    dx, dy, dz = q[0] - (a[0] + t * ab[0]), q[1] - (a[1] + t * ab[1]), q[2] - (a[2] + t * ab[2])
    return np.sqrt(dx * dx + dy * dy + dz * dz) - (r0 + (r1 - r0) * t)


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: a fillet of size ``k`` where spicules join the body."""
    k = np.float32(k)
    h = np.clip(np.float32(0.5) + np.float32(0.5) * (b - a) / k, np.float32(0.0), np.float32(1.0))
    return b + (a - b) * h - k * h * (np.float32(1.0) - h)


def mass_field(coords: Coords, radii: Sequence[float], rng: np.random.Generator, lobulation_amp: float, spicules: int) -> np.ndarray:
    """Implicit field (negative inside) of a lobulated ellipsoid with optional spicules.

    Built in the unit-sphere space q = p / radii, so scaling ``radii`` scales the whole shape
    (the size correction relies on that). ``rng`` is consumed in a fixed order.
    """
    r = np.asarray(radii, np.float32)
    q = (coords[0] / r[0], coords[1] / r[1], coords[2] / r[2])
    rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    safe = np.maximum(rho, 1e-6)
    unit = (q[0] / safe, q[1] / safe, q[2] / safe)
    body = rho - 1.0 - lobulation(unit, rng, lobulation_amp)
    # Always draw the spicule parameters (a fixed number) so the stream does not depend on the count.
    dirs = _random_directions(rng, 8)
    lengths = rng.uniform(0.35, 0.8, size=8)
    widths = rng.uniform(0.06, 0.12, size=8)
    for i in range(spicules):
        a = (dirs[i] * 0.7).astype(np.float32)
        b = (dirs[i] * (1.0 + lengths[i])).astype(np.float32)
        body = _smooth_min(body, _capsule_distance(q, a, b, float(widths[i]), 0.015), 0.08)
    return body


def stones_field(coords: Coords, radii: Sequence[float], rng: np.random.Generator, count: int) -> np.ndarray:
    """Implicit field of a small cluster of ellipsoidal stones fitting the ``radii`` ellipsoid.

    The first stone is the largest; satellites (smaller, faceted by lobulation) sit against it.
    """
    r = np.asarray(radii, np.float32)
    q = (coords[0] / r[0], coords[1] / r[1], coords[2] / r[2])
    offsets = _random_directions(rng, 4)
    scales = rng.uniform(0.35, 0.6, size=4)
    main = 1.0 if count == 1 else 0.7
    # Main stone off-centre, away from the first satellite, so the cluster spans the extent.
    shift = -offsets[1] * (1.0 - main) if count > 1 else np.zeros(3)

    def ball(centre: np.ndarray, radius: float) -> np.ndarray:
        return np.sqrt((q[0] - centre[0]) ** 2 + (q[1] - centre[1]) ** 2 + (q[2] - centre[2]) ** 2) - radius

    field = ball(shift, main)
    for i in range(1, min(count, 4)):
        s = float(scales[i] * main)
        field = np.minimum(field, ball(shift + offsets[i] * (main + 0.6 * s), s))
    return field


def wall_field(organ_sdf: np.ndarray, coords: Coords, radii: Sequence[float], thickness: float, outward: float) -> np.ndarray:
    """Wall thickening: the band ``-thickness <= organ_sdf <= outward`` within an ellipsoidal patch.

    The organ mask of a hollow organ includes its lumen, so inward thickening narrows the lumen
    (as tumours do) and stays in the organ; ``outward`` > 0 only with invasion (serosal spread).
    """
    band = np.abs(organ_sdf - (outward - thickness) / 2.0) - (thickness + outward) / 2.0
    r = np.asarray(radii, np.float32)
    patch = np.sqrt((coords[0] / r[0]) ** 2 + (coords[1] / r[1]) ** 2 + (coords[2] / r[2]) ** 2) - 1.0
    patch_mm = patch * np.float32(r.min())  # roughly mm near the patch edge
    return np.maximum(band, patch_mm).astype(np.float32)


def to_sdf(field: np.ndarray) -> np.ndarray:
    """Normalise an implicit field to a first-order signed distance in mm (1 mm crop)."""
    return _gradient_normalised(field)


def extents_mm(mask: np.ndarray, spacing: float = 1.0) -> np.ndarray:
    """Extent (mm) of a boolean mask along each axis: occupied index span x spacing."""
    out = np.zeros(3)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        out[axis] = (hit[-1] - hit[0] + 1) * spacing if hit.size else 0.0
    return out


def soft_mask(sdf: np.ndarray, width: float) -> np.ndarray:
    """Soft lesion mask 0..1 from the SDF: 0.5 at the surface, erf transition of ``width`` mm.

    Exactly 0 beyond 2.5 widths (+0.5 mm) so untouched voxels stay bit-identical after paste-back.
    """
    alpha = 0.5 * (1.0 - erf(sdf / np.float32(width)))
    cut = 2.5 * width + 0.5
    alpha[sdf > cut] = 0.0
    alpha[sdf < -cut] = 1.0
    return alpha.astype(np.float32)
