"""BASELINE ONLY (not part of PASTALib): the SyntheticTumors recipe of Hu et al., CVPR 2023,
"Label-Free Liver Tumor Segmentation" (github.com/MrGiovanni/SyntheticTumors, TumorGenerated/utils.py),
re-implemented from the paper and the public code so the benchmarks can time and compare it.

The recipe works on WHOLE volumes (the organ's bounding box, plus a 160-voxel padded geometry
canvas), in voxel units at the training spacing:

1. texture: uniform noise over the whole box -> Gaussian filter (sigma_a 3-15) -> rescale to
   [0.04, 0.25] -> Bernoulli sample -> Gaussian filter (sigma_b 3-8) -> scale so the mean above
   0.12 is 0.5-0.55, clip to [0, 1]   (``get_texture``; the training code precomputes a bank of
   420x300x320 textures once and cuts a random box from them per lesion),
2. location: a random organ voxel of a random axial slice between 30 % and 70 % of the organ's
   z-extent, in the slice's 5x5-eroded organ mask (``random_select``),
3. shape: ellipsoid with radii drawn around 4 / 8 / 16 / 32 voxels (tiny/small/medium/large;
   tiny and small come 3-10 / 3-10 at a time, medium 2-5, large 1-3), elastically deformed three
   times (3x3 control grid, sigma 0.5-1 tiny ... 1-2 large, nearest-neighbour; ``elasticdeform``
   ``deform_random_grid``), pasted into the padded canvas, then intersected with the organ,
4. blend: geo blurred with a Gaussian (sigma 1-2); volume - texture * blur * difference
   (difference 65-145 HU: a hypo-attenuating liver tumour) inside the organ.

``elasticdeform`` is replaced by the same operation written with scipy (random displacement on a
3x3 grid, cubic-spline upsampled, nearest-neighbour warp), so no extra dependency is needed.
``sign``/``difference`` are parameters only so the lung benchmark can also show an adapted variant
(hyper-attenuating); the defaults are the published values.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RADIUS = {"tiny": 4, "small": 8, "medium": 16, "large": 32}
COUNT = {"tiny": (3, 10), "small": (3, 10), "medium": (2, 5), "large": (1, 3)}
DEFORM_SIGMA = {"tiny": (0.5, 1.0), "small": (1.0, 2.0), "medium": (1.0, 2.0), "large": (1.0, 2.0)}
ENLARGE = 160


def generate_prob_function(shape, rng):
    sigma = rng.uniform(3, 15)
    a = ndimage.gaussian_filter(rng.uniform(0, 1, size=shape), sigma=sigma)
    scale, base = rng.uniform(0.19, 0.21), rng.uniform(0.04, 0.06)
    return scale * (a - a.min()) / (a.max() - a.min()) + base


def get_texture(shape, rng):
    """Whole-box texture in [0, 1] (uniform noise -> blur -> Bernoulli -> blur -> scale)."""
    a = generate_prob_function(shape, rng)
    b = (a > rng.uniform(0, 1, size=shape)).astype(float)
    sigma_b = rng.uniform(3, 5) if rng.uniform() < 0.7 else rng.uniform(5, 8)
    b2 = ndimage.gaussian_filter(b, sigma_b)
    u0 = rng.uniform(0.5, 0.55)
    above = b2 > 0.12
    beta = u0 / (np.sum(b2 * above) / max(1, above.sum()))
    return np.clip(beta * b2, 0, 1)


def get_ellipsoid(x, y, z):
    sh = (4 * x, 4 * y, 4 * z)
    grid = np.ogrid[tuple(slice(0, s) for s in sh)]
    com = np.array([2 * x, 2 * y, 2 * z])
    radii = np.array([x, y, z], float)
    dst = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, com, radii))
    return (dst <= 1.0).astype(np.int8)


def deform_random_grid(x, sigma, points, axis, rng):
    """elasticdeform.deform_random_grid(order=0) on two axes: 3x3 control-point displacements."""
    shape = [x.shape[a] for a in axis]
    coords = list(np.meshgrid(*[np.arange(s, dtype=float) for s in x.shape], indexing="ij"))
    for a in axis:
        disp = rng.normal(0, sigma, size=(points, points))
        full = ndimage.zoom(disp, [s / points for s in shape], order=3)[: shape[0], : shape[1]]
        expand = [slice(None) if i in axis else None for i in range(3)]
        coords[a] = coords[a] + full[tuple(expand)]
    return ndimage.map_coordinates(x, coords, order=0, mode="constant").astype(x.dtype)


def random_select(mask, rng):
    z_idx = np.where(np.any(mask, axis=(0, 1)))[0]
    z_start, z_end = z_idx[0], z_idx[-1]
    z = int(round(rng.uniform(0.3, 0.7) * (z_end - z_start))) + z_start
    sl = ndimage.binary_erosion(mask[..., z], structure=np.ones((5, 5)), iterations=1)
    coords = np.argwhere(sl)
    if len(coords) == 0:
        coords = np.argwhere(mask[..., z])
    xy = coords[rng.integers(len(coords))].tolist()
    return [xy[0], xy[1], z]


def get_fixed_geo(mask, tumor_type, rng):
    geo_mask = np.zeros(tuple(s + ENLARGE for s in mask.shape), np.int8)
    r0 = RADIUS[tumor_type]
    for _ in range(int(rng.integers(COUNT[tumor_type][0], COUNT[tumor_type][1] + 1))):
        x, y, z = (int(rng.integers(int(0.75 * r0), int(1.25 * r0) + 1)) for _ in range(3))
        sigma = rng.uniform(*DEFORM_SIGMA[tumor_type])
        geo = get_ellipsoid(x, y, z)
        for axes in ((0, 1), (1, 2), (0, 2)):
            geo = deform_random_grid(geo, sigma, 3, axes, rng)
        p = random_select(mask, rng)
        c = [p[i] + ENLARGE // 2 for i in range(3)]
        lo = [c[i] - geo.shape[i] // 2 for i in range(3)]
        sl = tuple(slice(max(0, lo[i]), min(geo_mask.shape[i], lo[i] + geo.shape[i])) for i in range(3))
        gsl = tuple(slice(s.start - lo[i], s.stop - lo[i]) for i, s in enumerate(sl))
        geo_mask[sl] += geo[gsl]
    h = ENLARGE // 2
    geo_mask = geo_mask[h:-h, h:-h, h:-h]
    return (geo_mask * mask) >= 1


def get_tumor(volume, mask, tumor_type, texture, rng, sign=-1.0, difference=(65.0, 145.0)):
    geo = get_fixed_geo(mask, tumor_type, rng)
    sigma = rng.uniform(1, 2)
    diff = rng.uniform(*difference)
    geo_blur = ndimage.gaussian_filter(geo * 1.0, sigma)
    abnormal = (volume + sign * texture * geo_blur * diff) * mask
    return volume * (1 - mask) + abnormal, geo


def synthesize_tumor(volume, organ_mask, tumor_type, rng, texture=None, sign=-1.0, difference=(65.0, 145.0)):
    """One SyntheticTumors call on a whole (1 mm) volume: returns (new volume float, tumour mask).

    ``texture`` None: generated for the organ box now (the ``get_texture`` cost is included);
    otherwise a precomputed bank texture from which a random box is cut (the training pipeline).
    """
    idx = [np.where(np.any(organ_mask, axis=tuple(j for j in range(3) if j != i)))[0] for i in range(3)]
    lo = [max(0, a[0] + 1) for a in idx]
    hi = [min(organ_mask.shape[i], idx[i][-1] - 1) for i in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    vol = volume[box].astype(np.float64)
    mask = organ_mask[box].astype(np.float64)
    if texture is None:
        tex = get_texture(vol.shape, rng)
    else:
        start = [int(rng.integers(0, max(1, texture.shape[i] - vol.shape[i] - 1))) for i in range(3)]
        tex = texture[tuple(slice(s, s + n) for s, n in zip(start, vol.shape))]
        if tex.shape != vol.shape:  # bank smaller than the organ box: tile
            tex = np.resize(tex, vol.shape)
    new, geo = get_tumor(vol, mask, tumor_type, tex, rng, sign, difference)
    out = volume.astype(np.float64, copy=True)
    out[box] = new
    tumour = np.zeros(organ_mask.shape, bool)
    tumour[box] = geo
    return out, tumour


def size_class(diameter_mm: float, spacing_mm: float = 1.0) -> str:
    """Nearest SyntheticTumors size class for a lesion diameter (radius in voxels)."""
    r = diameter_mm / 2.0 / spacing_mm
    return min(RADIUS, key=lambda k: abs(np.log(RADIUS[k] / max(r, 0.5))))
