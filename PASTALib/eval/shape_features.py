"""Size-free 3D shape features of a lesion mask, and acquisition matching of masks.

The definitions are IBSI's / PyRadiomics' ``shape`` class (mesh volume and surface from
marching cubes, principal-axis elongation and flatness from the physical voxel coordinates), so
numbers compare with published radiomics. They are computed here rather than through PyRadiomics
because PyRadiomics has no solidity/convexity (convex hull) and needs a build step and a
SimpleITK image per mask; thousands of LIDC contours and synthetic masks are scored in one run.

Arrays are ``(z, y, x)``; spacings are ``(z, y, x)`` in mm (NumPy order), named ``spacing_zyx``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Features that do not change when the lesion is scaled: what a realism test compares.
SIZE_FREE = ("sphericity", "elongation", "flatness", "solidity", "convexity", "max_diameter_ratio")
#: Size features, reported beside them (not used by the size-free two-sample test).
SIZE = ("volume_mm3", "equivalent_diameter_mm", "max_diameter_mm")


def _mesh(mask: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    from skimage.measure import marching_cubes

    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, spacing=tuple(float(s) for s in spacing_zyx))
    return verts, faces


def _mesh_volume_area(verts: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    area = 0.5 * float(np.linalg.norm(cross, axis=1).sum())
    volume = abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum())) / 6.0
    return volume, area


def _principal_axes(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Eigenvalues of the covariance of the physical voxel coordinates, largest first."""
    points = np.argwhere(mask) * np.asarray(spacing_zyx, float)
    if len(points) < 4:
        return np.zeros(3)
    return np.sort(np.linalg.eigvalsh(np.cov(points, rowvar=False)))[::-1]


def shape_features(mask: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """Shape features of the largest connected component of ``mask`` (bool, ``(z, y, x)``).

    sphericity = pi^(1/3) (6V)^(2/3) / A; elongation = sqrt(l2/l1), flatness = sqrt(l3/l1) of the
    principal-axis variances; solidity = V / V_hull; convexity = A_hull / A; max_diameter_ratio =
    largest vertex distance / equivalent-sphere diameter. Raises ValueError for an empty mask.
    """
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    mask = np.asarray(mask, bool)
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError("empty mask: no shape features")
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    verts, faces = _mesh(mask, spacing_zyx)
    volume, area = _mesh_volume_area(verts, faces)
    hull = ConvexHull(verts)
    eig = _principal_axes(mask, spacing_zyx)
    major = max(float(eig[0]), 1e-12)
    max_diameter = float(pdist(verts[hull.vertices]).max())
    d_eq = float((6.0 * volume / np.pi) ** (1.0 / 3.0))
    return {
        "sphericity": float(np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area),
        "elongation": float(np.sqrt(max(eig[1], 0.0) / major)),
        "flatness": float(np.sqrt(max(eig[2], 0.0) / major)),
        "solidity": float(volume / hull.volume),
        "convexity": float(hull.area / area),
        "max_diameter_ratio": max_diameter / d_eq,
        "volume_mm3": volume,
        "equivalent_diameter_mm": d_eq,
        "max_diameter_mm": max_diameter,
    }


def reader_outline(mask: np.ndarray, radius_px: int = 1) -> np.ndarray:
    """Each axial slice of ``mask`` (bool, ``(z, y, x)``) as a reader's drawn outline fills it.

    Readers contour a lesion slice by slice (LIDC-IDRI: a closed chain of pixels traced around the
    nodule, filled as the polygon's interior by pylidc). A traced outline bridges notches narrower than
    its own bend, which a mask rasterised from a 3D shape keeps: per slice, a closing with a disk of
    ``radius_px`` pixels, then holes filled. Whether a set of real masks is drawn that way is measured
    by :func:`outline_gain` (PASTALib.eval.realism decides from it). ``radius_px=0``: unchanged.
    """
    mask = np.asarray(mask, bool)
    if radius_px <= 0:
        return mask
    y, x = np.mgrid[-radius_px:radius_px + 1, -radius_px:radius_px + 1]
    disk = (x * x + y * y <= radius_px * radius_px + 0.5)[None]  # in-plane only: slices are drawn one by one
    pad = ((0, 0), (radius_px + 1,) * 2, (radius_px + 1,) * 2)
    closed = ndimage.binary_closing(np.pad(mask, pad), disk)
    in_plane = ndimage.generate_binary_structure(2, 1)[None]  # holes filled per slice, as a filled polygon
    filled = ndimage.binary_fill_holes(closed, in_plane)
    return filled[:, radius_px + 1:-radius_px - 1, radius_px + 1:-radius_px - 1]


def outline_gain(mask: np.ndarray, radius_px: int = 1) -> float:
    """Pixels :func:`reader_outline` adds per boundary pixel: 0 for masks already drawn as closed outlines
    (LIDC-IDRI contours >= 10 mm: 0.000), > 0 for masks with pixel-scale notches (synthetic masks at LIDC
    spacings: ~0.03)."""
    mask = np.asarray(mask, bool)
    in_plane = ndimage.generate_binary_structure(2, 1)[None]
    boundary = int((mask & ~ndimage.binary_erosion(mask, in_plane)).sum())
    return float(reader_outline(mask, radius_px).sum() - mask.sum()) / max(boundary, 1)


def resample_mask(mask: np.ndarray, spacing_zyx: Sequence[float], target_spacing_zyx: Sequence[float]) -> np.ndarray:
    """Resample a mask to another voxel spacing (linear interpolation of the mask, threshold 0.5),
    so that a synthetic mask made at 1 mm shows the staircase of the scan it is compared with."""
    zoom = np.asarray(spacing_zyx, float) / np.asarray(target_spacing_zyx, float)
    return ndimage.zoom(np.asarray(mask, np.float32), zoom, order=1, mode="constant", cval=0.0) >= 0.5
