"""Lesion intensities: target HU from the local parenchyma, correlated texture, scanner noise kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import expit

from PASTALib.labels import Phase
from PASTALib.synth.attributes import Density, Heterogeneity
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
    diff = target - reference_hu
    if density is Density.HYPO:
        diff = min(diff, -MIN_CONTRAST_HU)
    elif density is Density.HYPER:
        diff = max(diff, MIN_CONTRAST_HU)
    else:
        diff = float(np.clip(diff, -MAX_ISO_CONTRAST_HU, MAX_ISO_CONTRAST_HU))
    return float(reference_hu + diff)


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
