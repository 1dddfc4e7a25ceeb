"""Lesion shapes as signed-distance fields (mm, negative inside) on a LOCAL 1 mm crop.

All functions take open-mesh coordinates in mm relative to the lesion centre (``coords``: three
arrays broadcasting to the crop shape) so no whole-volume array is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import erf

from PASTALib.geometry.arrays import distance_to_mask

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
    spacing_xyz = np.broadcast_to(np.asarray(spacing, float), (3,))
    # Half a voxel offset puts the zero level on the voxel faces, not the boundary voxel centres.
    half = np.float32(0.5 * float(np.min(spacing_xyz)))
    out = distance_to_mask(mask, spacing_xyz)  # outside voxels: distance to the nearest mask voxel
    out -= half
    inside = distance_to_mask(~mask, spacing_xyz)  # inside voxels: distance to the nearest background voxel
    np.subtract(half, inside, out=out, where=mask)
    return out


def _gradient_normalised(field: np.ndarray) -> np.ndarray:
    """First-order SDF from an implicit field: F / |grad F| (exact for planes, good near the surface)."""
    grads = np.gradient(field)
    norm = np.sqrt(sum(g * g for g in grads))
    return (field / np.maximum(norm, 1e-3)).astype(np.float32)


def _random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _lobulation_params(rng: np.random.Generator, terms: int, order_range: tuple[int, int] = (2, 4)
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    dirs = _random_directions(rng, terms)
    orders = rng.integers(order_range[0], order_range[1] + 1, size=terms)
    phases = rng.uniform(0, 2 * np.pi, size=terms)
    weights = rng.uniform(0.5, 1.0, size=terms)
    return dirs, orders, phases, weights


def _lobulation_scale(amplitude: float, weights: np.ndarray) -> np.float32:
    # Std of a sum of cosines with random phase: sqrt(sum w^2 / 2).
    return np.float32(amplitude / np.sqrt(np.sum(weights**2) / 2.0))


def lobulation(unit: Coords, rng: np.random.Generator, amplitude: float, terms: int = 6) -> np.ndarray:
    """Band-limited radial displacement on the sphere (orders 2-4 plane-wave sum), std ~ ``amplitude``.

    Low angular orders only: it looks like lobulation, not noise, and cannot pinch the body off.
    (``mass_field`` evaluates the same sum without building the unit-vector arrays.)
    """
    dirs, orders, phases, weights = _lobulation_params(rng, terms)
    field = np.zeros(np.broadcast_shapes(*(u.shape for u in unit)), np.float32)
    for d, k, ph, w in zip(dirs.astype(np.float32), orders, phases, weights):
        proj = unit[0] * d[0] + unit[1] * d[1] + unit[2] * d[2]
        field += np.float32(w) * np.cos(np.float32(k * np.pi) * proj + np.float32(ph))
    return field * _lobulation_scale(amplitude, weights)


#: Orientation of mass lesions (see ``oriented_radii``): rotation angle up to 90 degrees about a
#: random axis, principal axis ratio kept >= this (no needles or discs), principal radius <= this
#: factor x the largest requested half-extent.
_MIN_AXIS_RATIO = 0.35
_MAX_RADIUS_GAIN = 1.6


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix (Rodrigues) about a unit ``axis``."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def oriented_radii(half_extents: Sequence[float], axis: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotation ``R`` and principal radii ``a`` of an ellipsoid whose AXIS-ALIGNED half-extents are ``half_extents``.

    The ellipsoid {p : |diag(1/a) R^T p| <= 1} has half-extent sqrt(sum_j R_ij^2 a_j^2) along axis i,
    so a^2 solves the linear system (R o R) a^2 = e^2: requested sizes keep meaning extents along
    canonical x/y/z while the lesion is elongated along an oblique direction (its principal axes are
    more unequal than its extents). A rotation is only feasible for an anisotropic request (a
    sphere's extents are the same in any orientation); the angle is reduced (1, 3/4, ..., 0 x
    ``angle``) until the principal radii are positive, within ``_MIN_AXIS_RATIO`` of each other
    and at most ``_MAX_RADIUS_GAIN`` x the largest half-extent. Deterministic.
    """
    e = np.asarray(half_extents, float)
    for fraction in (1.0, 0.75, 0.5, 0.25):
        rot = _rotation(axis, fraction * angle)
        try:
            a2 = np.linalg.solve(rot * rot, e * e)
        except np.linalg.LinAlgError:
            continue
        if np.all(a2 > 0) and a2.min() >= _MIN_AXIS_RATIO**2 * a2.max() and a2.max() <= (_MAX_RADIUS_GAIN * e.max()) ** 2:
            return rot, np.sqrt(a2)
    return np.eye(3), e


class _Quadric:
    """q = A p (A = diag(1/a) R^T) on an open mesh p without building q: every linear form q.v is a
    sum of three 1-D arrays and |q|^2 a sum of three 2-D arrays, so each costs one full-size pass."""

    def __init__(self, coords: Coords, transform: np.ndarray):
        self.coords = coords
        self.a = transform
        self.shape = np.broadcast_shapes(*(c.shape for c in coords))

    def linear(self, v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """q . v (float32, full size)."""
        w = (self.a.T @ np.asarray(v, float)).astype(np.float32)
        c = self.coords
        out = np.empty(self.shape, np.float32) if out is None else out
        np.add(c[0] * w[0] + c[1] * w[1], c[2] * w[2], out=out)
        return out

    def norm2(self) -> np.ndarray:
        """|q|^2 (float32, full size)."""
        m = (self.a.T @ self.a).astype(np.float32)
        c = self.coords
        two = np.float32(2.0)
        xy = c[0] * c[0] * m[0, 0] + c[1] * c[1] * m[1, 1] + two * m[0, 1] * c[0] * c[1]
        xz = c[2] * c[2] * m[2, 2] + two * m[0, 2] * c[0] * c[2]
        out = np.empty(self.shape, np.float32)
        np.add(xy, xz, out=out)
        out += two * m[1, 2] * c[1] * c[2]
        return out


def _smooth_min_into(body: np.ndarray, other: np.ndarray, k: float, work: np.ndarray) -> None:
    """``body`` <- polynomial smooth minimum of (body, other) with fillet ``k``; ``other`` is overwritten."""
    k = np.float32(k)
    np.subtract(other, body, out=work)  # diff = b - a
    h = work * np.float32(0.5 / k)
    h += np.float32(0.5)
    np.clip(h, np.float32(0.0), np.float32(1.0), out=h)
    # min = b - h * (diff + k (1 - h))
    work += k
    work -= k * h
    work *= h
    np.subtract(other, work, out=body)


def mass_field(coords: Coords, radii: Sequence[float], rng: np.random.Generator, lobulation_amp: float, spicules: int,
               *, anisotropy: float = 1.0, orders: tuple[int, int] = (2, 4)) -> np.ndarray:
    """Implicit field (negative inside) of a lobulated, obliquely oriented ellipsoid with optional spicules.

    ``radii`` are the HALF-EXTENTS along canonical x/y/z: the ellipsoid is rotated by a random
    orientation and its principal radii solved so its axis-aligned extents stay ``2 x radii``
    (``oriented_radii``). Built in the unit-sphere space q = diag(1/a) R^T p, so scaling ``radii``
    scales the whole shape (the size correction relies on that). ``anisotropy`` raises the solved
    principal radii's ratios to this power at the same volume (< 1 rounder, > 1 more elongated and
    flat); ``orders``: the lobulation's range of angular orders. ``rng`` is consumed in a fixed order: lobulation, spicules, then orientation (draws before the orientation are unchanged).
    float32 throughout, without building q or the unit vectors (see ``_Quadric``).
    """
    dirs_l, lobe_orders, phases, weights = _lobulation_params(rng, 6, orders)
    # Always draw the spicule parameters (a fixed number) so the stream does not depend on the count.
    dirs = _random_directions(rng, 8)
    lengths = rng.uniform(0.35, 0.8, size=8)
    widths = rng.uniform(0.06, 0.12, size=8)
    axis = _random_directions(rng, 1)[0]
    angle = float(rng.uniform(0.0, 0.5 * np.pi))
    rot, principal = oriented_radii(radii, axis, angle)
    if anisotropy != 1.0:
        mean = float(np.exp(np.mean(np.log(principal))))
        principal = mean * (principal / mean) ** anisotropy
    quad = _Quadric(coords, (rot / principal[None, :]).T)  # A = diag(1/a) R^T

    rho2 = quad.norm2()
    rho = np.sqrt(rho2)
    inv = np.maximum(rho, np.float32(1e-6))
    np.divide(np.float32(1.0), inv, out=inv)
    # Lobulation: sum_k w_k cos(k pi (q.d_k)/|q| + phase_k), q.d_k a linear form of p.
    lob = np.zeros(quad.shape, np.float32)
    work = np.empty(quad.shape, np.float32)
    for d, k, ph, w in zip(dirs_l, lobe_orders, phases, weights):
        quad.linear(d * (k * np.pi), out=work)
        work *= inv
        work += np.float32(ph)
        np.cos(work, out=work)
        work *= np.float32(w)
        lob += work
    lob *= _lobulation_scale(lobulation_amp, weights)
    body = rho  # rho - 1 - lobulation, in place
    body -= np.float32(1.0)
    body -= lob
    del inv
    # Spicules: tapered capsules along d from 0.7 to 1 + length (unit-sphere space). The nearest
    # axis point is s d with s = clip(q.d, 0.7, 1 + length); distance^2 = |q|^2 + s (s - 2 q.d).
    cap = lob  # reuse buffers
    for i in range(spicules):
        qd = quad.linear(dirs[i], out=work)
        top = float(1.0 + lengths[i])
        s = np.clip(qd, np.float32(0.7), np.float32(top))
        qd *= np.float32(-2.0)
        qd += s
        qd *= s
        qd += rho2
        np.maximum(qd, np.float32(0.0), out=qd)
        np.sqrt(qd, out=cap)
        # radius r0 + (r1 - r0) t, t = (s - 0.7) / (top - 0.7)
        r0, r1 = float(widths[i]), 0.015
        slope = (r1 - r0) / (top - 0.7)
        s *= np.float32(slope)
        s += np.float32(r0 - 0.7 * slope)
        cap -= s
        _smooth_min_into(body, cap, 0.08, work)
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
    cut = 2.5 * width + 0.5
    alpha = np.zeros(sdf.shape, np.float32)
    alpha[sdf < -cut] = 1.0
    # erf only in the transition band (most of a crop is far outside or deep inside): same values.
    band = np.abs(sdf) <= cut
    values = sdf[band]
    alpha[band] = 0.5 * (1.0 - erf(values / np.float32(width)))
    return alpha
