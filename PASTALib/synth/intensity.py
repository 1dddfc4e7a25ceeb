"""Lesion intensities: target HU from the local parenchyma, correlated texture, scanner noise kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import expit

from PASTALib.labels import Phase
from PASTALib.report.attributes import Density, Heterogeneity
from PASTALib.synth.profiles import MAX_ISO_CONTRAST_HU, MIN_CONTRAST_HU, HURange, TypeProfile

#: Minimum parenchyma voxels for a measured reference; fewer falls back to the profile nominal.
_MIN_VOXELS = 30


@dataclass(frozen=True)
class ParenchymaStats:
    """Robust statistics of organ voxels in a shell around the lesion."""

    mean_hu: float  # median (robust to vessels and partial volume)
    std_hu: float  # 1.4826 x MAD
    voxels: int
    measured: bool  # False when the nominal value of the profile was used


def parenchyma_stats(
    ct: np.ndarray, organ: np.ndarray, lesion_sdf: np.ndarray, window: tuple[float, float],
    nominal_hu: float, shell_mm: float = 2.0,
) -> ParenchymaStats:
    """Reference HU of the parenchyma around the lesion: organ voxels of the crop farther than
    ``shell_mm`` from the lesion and inside the HU ``window`` (the crop bounds the shell)."""
    shell = organ & (lesion_sdf > shell_mm) & (ct >= window[0]) & (ct <= window[1])
    if np.count_nonzero(shell) < _MIN_VOXELS:  # e.g. a lesion filling a small organ: use the whole organ part
        shell = organ & (ct >= window[0]) & (ct <= window[1])
    values = ct[shell]
    if values.size < _MIN_VOXELS:
        return ParenchymaStats(float(nominal_hu), 15.0, int(values.size), False)
    median = float(np.median(values))
    mad = float(1.4826 * np.median(np.abs(values - median)))
    return ParenchymaStats(median, mad, int(values.size), True)


def wall_stats(
    ct: np.ndarray, organ: np.ndarray, organ_sdf: np.ndarray, lesion_sdf: np.ndarray, normal: tuple[float, float],
    depth_mm: tuple[float, float] = (0.5, 4.0),
) -> ParenchymaStats:
    """Reference HU of a hollow organ's NORMAL WALL: organ voxels 0.5-4 mm inside its surface, away from
    the lesion, within ``normal`` (the normal-wall range of the phase) widened by 30 HU. The organ mask
    holds the lumen (gas, fluid, faeces, food), which is no reference for a wall tumour."""
    lo, hi = normal[0] - 30.0, normal[1] + 30.0
    shell = organ & (organ_sdf <= -depth_mm[0]) & (organ_sdf >= -depth_mm[1]) & (lesion_sdf > 2.0) & (ct >= lo) & (ct <= hi)
    values = ct[shell]
    if values.size < _MIN_VOXELS:
        return ParenchymaStats(float(np.mean(normal)), 15.0, int(values.size), False)
    median = float(np.median(values))
    return ParenchymaStats(median, float(1.4826 * np.median(np.abs(values - median))), int(values.size), True)


def scanner_noise(ct: np.ndarray, window: tuple[float, float] = (-150.0, 250.0)) -> float:
    """Scanner noise std (HU) on the NATIVE grid around the lesion.

    Local 3x3x3 std of soft-tissue voxels; the 30th percentile picks flat regions (fat, muscle,
    parenchyma) over edges (gas, vessels, bowel content). Measured on the input voxels, not the
    1 mm crop, whose interpolation smooths the noise away.
    """
    values = ct.astype(np.float32)
    mean = ndimage.uniform_filter(values, size=3)
    var = ndimage.uniform_filter(values * values, size=3) - mean * mean
    sel = (values >= window[0]) & (values <= window[1])
    if np.count_nonzero(sel) < _MIN_VOXELS:
        return 10.0
    local = np.sqrt(np.maximum(var[sel], 0.0))
    # The 27-voxel sample std underestimates sigma slightly: sqrt(27/26).
    return float(np.clip(np.percentile(local, 30) * np.sqrt(27.0 / 26.0), 2.0, 80.0))


def _lag1(values: np.ndarray, mask: np.ndarray | None) -> list[float]:
    """Per axis, lag-1 autocorrelation of the first difference along that axis (voxels in ``mask``).

    Differencing removes smooth anatomy; for separable smoothing the statistic along an axis depends
    only on that axis' sigma (white noise: -0.5, rising with correlation).
    """
    out = []
    for axis in range(values.ndim):
        a = np.moveaxis(values, axis, 0)
        d = a[1:] - a[:-1]
        x, y = d[1:], d[:-1]
        if mask is not None:
            m = np.moveaxis(mask, axis, 0)
            both = m[2:] & m[1:-1] & m[:-2]
            x, y = x[both], y[both]
        out.append(float(np.mean(x * y) / max(float(np.mean(x * x)), 1e-6)) if x.size >= _MIN_VOXELS else float("nan"))
    return out


def native_noise(ct: np.ndarray, std: float, rng: np.random.Generator, window: tuple[float, float] = (-150.0, 250.0)) -> np.ndarray:
    """Noise like the scanner's on the NATIVE grid of ``ct`` (a box around the lesion), scaled to ``std``.

    CT noise is correlated (reconstruction kernel, slice thickness); white noise of the right std looks
    like salt-and-pepper speckle beside it. White noise is Gaussian-filtered per axis so that the lag-1
    autocorrelation of its high-pass matches the CT's in flat soft tissue (local std in the lowest 30 %,
    as in ``scanner_noise``: edges would read as correlation); sigma per axis by bisection (for separable
    smoothing the statistic along an axis depends only on that axis' sigma).
    """
    # The statistic from a central cube of at most 48 voxels a side (plenty of pairs; cost bounded).
    centre = tuple(slice(max(0, (n - 48) // 2), max(0, (n - 48) // 2) + 48) for n in ct.shape)
    values = ct[centre].astype(np.float32)
    tissue = (values >= window[0]) & (values <= window[1])
    mean = ndimage.uniform_filter(values, size=3)
    local = ndimage.uniform_filter(values * values, size=3) - mean * mean
    if np.count_nonzero(tissue) >= _MIN_VOXELS:
        tissue &= local <= np.percentile(local[tissue], 30)
    target = np.nan_to_num(np.asarray(_lag1(values, tissue)), nan=-0.5)
    probe = np.random.default_rng(0).standard_normal(4096)
    sigma = np.zeros(ct.ndim)
    for axis, goal in enumerate(target):  # bisection on a 1-D probe: the statistic rises monotonically with sigma
        lo, hi = 0.0, 2.0
        for _ in range(10):
            mid = 0.5 * (lo + hi)
            smooth = ndimage.gaussian_filter1d(probe, mid, mode="wrap") if mid > 0 else probe
            lo, hi = (mid, hi) if _lag1(smooth, None)[0] < goal else (lo, mid)
        sigma[axis] = lo
    field = rng.standard_normal(ct.shape, dtype=np.float32)
    field = ndimage.gaussian_filter(field, sigma, mode="reflect", truncate=3.0)
    field /= np.float32(max(float(field.std()), 1e-6))
    return field * np.float32(std)


def _draw(rng: np.random.Generator, ranges: tuple[HURange, ...]) -> HURange:
    weights = np.array([r.weight for r in ranges], float)
    return ranges[int(rng.choice(len(ranges), p=weights / weights.sum()))]


def target_hu(prof: TypeProfile, density: Density, phase: Phase, reference_hu: float, rng: np.random.Generator) -> float:
    """Lesion mean HU: sampled from the profile, then forced to agree with the density wording.

    Absolute ranges (cysts, stones, lytic bone) may contradict an unusual parenchyma (e.g. a fatty
    pancreas at -5 HU); the clamp keeps the report's density true for this image.
    """
    hu_range = _draw(rng, prof.hu[phase][density])
    u = float(rng.random())
    value = hu_range.lo + u * (hu_range.hi - hu_range.lo)
    target = reference_hu + value if hu_range.relative else value
    diff = _wording(target - reference_hu, density, prof.min_contrast_hu)
    if prof.hu_limits is not None:  # the cited absolute band (cysts: -10..20 HU) ...
        diff = float(np.clip(reference_hu + diff, *prof.hu_limits)) - reference_hu
    # ... but the report's density wording must stay true for this image.
    return float(reference_hu + _wording(diff, density, MIN_CONTRAST_HU))


def _wording(diff: float, density: Density, contrast: float) -> float:
    """``diff`` (lesion - reference HU) moved to agree with the density wording at ``contrast`` HU."""
    if density is Density.HYPO:
        return min(diff, -contrast)
    if density is Density.HYPER:
        return max(diff, contrast)
    return float(np.clip(diff, -MAX_ISO_CONTRAST_HU, MAX_ISO_CONTRAST_HU))


def correlated_noise(shape: tuple[int, ...], corr_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise with correlation length ``corr_mm`` (1 mm grid)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    field = ndimage.gaussian_filter(white, sigma=corr_mm, mode="reflect", truncate=3.0)
    field -= field.mean()
    std = float(field.std())
    return field / np.float32(std if std > 0 else 1.0)


def texture(
    shape: tuple[int, ...], prof: TypeProfile, heterogeneity: Heterogeneity, lesion_sdf: np.ndarray,
    min_radius_mm: float, malignant: bool, rng: np.random.Generator,
) -> tuple[np.ndarray | None, dict[str, float]]:
    """Additive HU texture inside the lesion (None when homogeneous) and its sampled parameters.

    Heterogeneous: correlated noise plus, for large malignant masses, a hypodense necrotic core.
    The rng draws are always made so a homogeneous twin shares every other random choice.
    """
    std = float(rng.uniform(*prof.texture_std_hu))
    corr = float(rng.uniform(*prof.texture_corr_mm))
    necrosis_depth = float(rng.uniform(15.0, 40.0))
    necrosis_frac = float(rng.uniform(0.3, 0.55))
    if heterogeneity is Heterogeneity.HOMOGENEOUS:
        return None, {}
    field = correlated_noise(shape, corr, rng) * np.float32(std)
    params = {"texture_std_hu": std, "texture_corr_mm": corr}
    if prof.necrosis and malignant and min_radius_mm >= 10.0:
        # Necrosis sits deep inside: soft step at a depth of necrosis_frac x the smallest radius.
        depth = -lesion_sdf - np.float32(necrosis_frac * min_radius_mm)
        field -= np.float32(necrosis_depth) * expit(depth / np.float32(1.5)).astype(np.float32)
        params["necrosis_hu"] = necrosis_depth
    return field.astype(np.float32), params


def compose_delta(
    ct: np.ndarray, alpha: np.ndarray, target: float, tex: np.ndarray | None, noise_hu: float,
    rng: np.random.Generator, tissue_sigma_mm: float = 1.5,
) -> np.ndarray:
    """HU change to add to the CT so the lesion reads ``target`` + texture + the scanner's own noise.

    new = (1 - a) * ct + a * (target + texture + residual), residual = ct - smooth(ct): the original
    fine-grain noise survives inside the lesion while anatomy is replaced. Where the residual is
    not noise (gas, edges beyond 2.5 noise std) it is replaced by synthetic noise of the measured
    std. Returns new - ct (zero where alpha is zero).
    """
    smooth = ndimage.gaussian_filter(ct, sigma=tissue_sigma_mm, truncate=3.0)
    raw = ct - smooth
    limit = np.float32(2.5 * noise_hu)
    synthetic = rng.standard_normal(ct.shape, dtype=np.float32) * np.float32(noise_hu)
    residual = np.where((ct > -300.0) & (np.abs(raw) <= limit), raw, synthetic)
    lesion = np.float32(target) + residual
    if tex is not None:
        lesion += tex
    return (alpha * (lesion - ct)).astype(np.float32)
