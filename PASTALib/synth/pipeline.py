"""synthesize_lesion: one lesion into one CT, built in a local 1 mm crop and pasted back."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.anatomy.health import check_impression
from PASTALib.anatomy.phase import estimate_phase
from PASTALib.errors import (
    InputImageError,
    LesionFitError,
    SpecificationError,
)
from PASTALib.geometry import image_to_array, local_grid, resample_to_grid, xyz_view
from PASTALib.labels import Phase
from PASTALib.report.attributes import Shape
from PASTALib.report.measure import build_report
from PASTALib.report.wording import StructuredReport
from PASTALib.synth import intensity, placement
from PASTALib.synth import shape as shp
from PASTALib.synth.body import ShapeDraws, shape_draws, shape_half_extent, shape_in_crop
from PASTALib.synth.paste import input_box, paste_lesion
from PASTALib.synth.wall import LUMEN_MIN_MM, WallPlan, inside_sdf, wall_in_crop, wall_sites
from PASTALib.synth.spec import (
    STREAM_INTENSITY,
    STREAM_LOCATION,
    STREAM_REFINER,
    LesionSpec,
    stream,
)

#: refiner(ct_crop, organ_crop, lesion_alpha_crop, rng) -> refined ct_crop (1 mm canonical crop, HU).
Refiner = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]

_AIR_HU = -500.0  # invasion may grow into any tissue denser than this (not gas, not aerated lung)


@dataclass
class SynthesisResult:
    """Edited CT and labels on the input grid, the measured report and the resolved spec."""

    ct: sitk.Image
    labels: sitk.Image
    report: StructuredReport
    spec: LesionSpec  # every attribute filled, centre = the lesion's placement centre
    changed_box: tuple[tuple[int, int], ...]  # input-grid index range (x, y, z) that may differ
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def _check_grids(ct: sitk.Image, labels: sitk.Image) -> None:
    same = (
        ct.GetSize() == labels.GetSize()
        and np.allclose(ct.GetSpacing(), labels.GetSpacing(), atol=1e-4)
        and np.allclose(ct.GetOrigin(), labels.GetOrigin(), atol=1e-3)
        and np.allclose(ct.GetDirection(), labels.GetDirection(), atol=1e-4)
    )
    if not same:
        raise InputImageError(
            "The organ label map is not on the CT's grid (size/spacing/origin/direction differ). "
            "Resample it onto the CT with nearest-neighbour interpolation first."
        )
    if ct.GetDimension() != 3 or ct.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("The CT must be a 3D single-component image.")


def _resolve_phase(spec: LesionSpec, phase: Phase | None, ct: sitk.Image, organ_labels: sitk.Image) -> Phase:
    if phase is not None:
        phase = Phase(phase)
        if spec.enhancement is not None and spec.enhancement is not phase:
            raise SpecificationError(
                f"The CT is {phase.value}; a lesion cannot be rendered as {spec.enhancement.value} on it. "
                f"Allowed value for this CT: {phase.value!r}."
            )
        return phase
    if spec.enhancement is not None:
        return spec.enhancement
    estimate = estimate_phase(ct, labels=organ_labels)
    return estimate[0] if estimate is not None else spec.lesion_type.default_phase



#: Context (mm) around the shape box: the parenchyma reference is measured there.
_CONTEXT_MM = 10.0
_WALL_CONTEXT_MM = 4.0  # a wall lesion's crop already holds the normal wall of the reference



def _alpha(sdf: np.ndarray, margin_w: float, ct_c: np.ndarray, hollow: bool) -> np.ndarray:
    """Soft lesion mask; in hollow organs the mucosal surface against gas is sharp whatever the margin
    (an ill-defined blend into gas would leave a dark rim): a 0.7 mm edge where the crop holds gas."""
    alpha = shp.soft_mask(sdf, margin_w)
    if hollow and margin_w > 1.0:
        gas = ct_c < _AIR_HU
        if gas.any():
            alpha = np.where(gas, shp.soft_mask(sdf, 0.7), alpha)
    return alpha


def _reference(
    prof: Any, phase: Phase, ct_c: np.ndarray, organ_c: np.ndarray, organ_sdf: np.ndarray | None, sdf: np.ndarray,
) -> tuple[intensity.ParenchymaStats, float]:
    """Statistics of the reference tissue around the lesion and the reference HU the density is relative to."""
    if prof.reference_clamp is None:
        stats = intensity.parenchyma_stats(ct_c, organ_c, sdf, prof.parenchyma_window, prof.nominal_parenchyma_hu[phase])
        return stats, stats.mean_hu
    # GI tract: the mask holds the lumen; the reference is the normal wall (its outer few mm), clamped
    # to the normal-wall range of the phase (docs/radiology-hu.md).
    stats = intensity.wall_stats(ct_c, organ_c, organ_sdf, sdf, prof.reference_clamp[phase])
    return stats, float(np.clip(stats.mean_hu, *prof.reference_clamp[phase]))



@dataclass
class _Crop:
    """One placement attempt: the 1 mm crop and the lesion's SDF and soft mask in it."""

    centre_lps: np.ndarray
    grid: Any
    ct_c: np.ndarray
    organ_c: np.ndarray
    sdf: np.ndarray
    alpha: np.ndarray
    organ_sdf: np.ndarray | None
    wall_mm: float
    outside_fraction: float


def _crop_attempt(
    ct: sitk.Image, organ_labels: sitk.Image, region: placement.OrganRegion, midline: float | None, resolved: LesionSpec,
    draws: ShapeDraws, plan: WallPlan | None, centre_index: np.ndarray, site: tuple[np.ndarray, float],
    timings: dict[str, float],
) -> _Crop:
    """Resample a 1 mm crop around ``centre_index`` and build the lesion's SDF and soft mask in it."""
    t = time.perf_counter()
    organ, prof = resolved.lesion_type.organ, resolved.profile
    centre_lps = region.index_to_lps(centre_index)
    site_radius = site[1]
    # Annular: the band lies within ~ the organ radius of the axis (+ the 2 mm placement grid's error).
    reach = 1.2 * site_radius + 4.0 if plan is not None and plan.circumferential else None
    shape_half = shape_half_extent(resolved, draws.lob, draws.margin_w, reach or 0.0)
    context = _CONTEXT_MM
    if plan is not None:  # the lumen rule looks this far inward; the crop already holds normal wall
        shape_half, context = np.maximum(shape_half, plan.thickness + LUMEN_MIN_MM + 2.0), _WALL_CONTEXT_MM
    grid = local_grid(centre_lps, 2.0 * (shape_half + context))
    ct_c = image_to_array(resample_to_grid(ct, grid, is_label=False), contiguous=False)
    lab_c = image_to_array(resample_to_grid(organ_labels, grid, is_label=True), contiguous=False)
    organ_c = lab_c == int(organ)
    if region.side is not None and midline is not None:
        x = grid.origin[0] + np.arange(grid.size[0]) * grid.spacing[0]
        organ_c &= ((x > midline) if region.side == "left" else (x <= midline))[:, None, None]
    allowed_c = (organ_c | (ct_c > _AIR_HU)) if resolved.invasion else organ_c
    timings["crop"] = time.perf_counter() - t
    t = time.perf_counter()
    organ_sdf = None
    if plan is not None:  # the band needs the outside too (its serosal margin)
        organ_sdf = shp.signed_distance(organ_c)
    elif prof.reference_clamp is not None:  # only the normal-wall shell inside the organ
        organ_sdf = inside_sdf(organ_c)
    wall_mm = 0.0
    if plan is not None:
        normal = region.index_to_lps(site[0]) - centre_lps  # eccentric: wall point -> lumen site
        sdf, wall_mm = wall_in_crop(resolved, plan, organ_c, allowed_c, organ_sdf, reach, normal, site[1])
    else:
        sdf = shape_in_crop(
            resolved, grid.size, shape_half, organ_c, allowed_c, lob=draws.lob, n_spicules=draws.n_spicules,
            stone_count=draws.stone_count, shape_seed=draws.shape_seed, anisotropy=draws.anisotropy, orders=draws.orders,
        )
    alpha = _alpha(sdf, draws.margin_w, ct_c, organ.is_hollow)
    inside = alpha > 0.5
    outside_fraction = float(np.count_nonzero(inside & ~organ_c) / max(1, np.count_nonzero(inside)))
    timings["shape"] = time.perf_counter() - t
    return _Crop(centre_lps, grid, ct_c, organ_c, sdf, alpha, organ_sdf, wall_mm, outside_fraction)


def synthesize_lesion(
    ct: sitk.Image, organ_labels: sitk.Image, spec: LesionSpec, *, phase: Phase | None = None,
    impression: str | None = None, refiner: Refiner | None = None,
) -> SynthesisResult:
    """Insert one lesion described by ``spec`` into ``ct``.

    ``organ_labels``: PASTA organ label map (values 1-10) on the CT's grid. Returns the edited CT
    (input grid and pixel type; voxels outside the lesion's soft margin bit-identical), the label
    map (organs + this lesion's value 11-25) and the report measured from them.
    Raises SpecificationError, AnatomyError, LesionFitError or InputImageError with the fix.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    spec = LesionSpec.from_dict(spec) if isinstance(spec, dict) else spec
    spec.validate()
    _check_grids(ct, organ_labels)
    organ = spec.lesion_type.organ
    check_impression(impression, organ, spec.side)
    ct_xyz = xyz_view(ct)
    lab_xyz = xyz_view(organ_labels)

    midline = placement.midline_x(lab_xyz, ct) if organ.is_paired else None
    region = placement.organ_region(lab_xyz, ct, organ, spec.side, midline)
    phase = _resolve_phase(spec, phase, ct, organ_labels)
    resolved = spec.resolve(phase)
    prof = resolved.profile
    timings["checks"] = time.perf_counter() - t0

    draws, plan = shape_draws(spec.seed, resolved)
    requested_thickness = plan.thickness if plan is not None else None

    # Location.
    t = time.perf_counter()
    resolved, centres, sites, site_radii, plan = _place(spec, resolved, region, ct_xyz, plan)
    timings["placement"] = time.perf_counter() - t

    best, site = _best_crop(ct, organ_labels, region, midline, resolved, draws, plan, centres, sites, site_radii, timings)
    grid, ct_c, organ_c, sdf, alpha = best.grid, best.ct_c, best.organ_c, best.sdf, best.alpha

    # Intensity in the crop.
    t = time.perf_counter()
    stats, reference_hu = _reference(prof, phase, ct_c, organ_c, best.organ_sdf, sdf)
    box = input_box(ct, grid)
    noise = intensity.scanner_noise(ct_xyz[tuple(slice(a, b) for a, b in box)])
    rng_int = stream(spec.seed, STREAM_INTENSITY)
    target = intensity.target_hu(prof, resolved.density, phase, reference_hu, rng_int)
    radii = np.asarray(resolved.size_mm) / 2.0
    tex, tex_params = intensity.texture(
        ct_c.shape, prof, resolved.heterogeneity, sdf, float(radii.min()), resolved.lesion_type.is_malignant, rng_int
    )
    delta, values = _lesion_delta(ct_c, organ_c, alpha, target, tex, noise, rng_int, organ.is_hollow, refiner, spec.seed)
    timings["intensity"] = time.perf_counter() - t

    # Paste back onto the input grid, only inside the crop's input-grid bounding box.
    t = time.perf_counter()
    out_ct, out_labels = paste_lesion(ct, organ_labels, grid, box, alpha, delta, int(resolved.lesion_type),
        organ_mask=None if resolved.invasion else region, hollow=organ.is_hollow, values=values,
    )
    timings["paste"] = time.perf_counter() - t

    t = time.perf_counter()
    side = _lesion_side(out_labels, box, int(resolved.lesion_type), region, midline if organ.is_paired else None)
    report = build_report(
        ct=out_ct, labels=out_labels, lesion_type=resolved.lesion_type, phase=phase, side=side,
        shape=resolved.shape, density=resolved.density, heterogeneity=resolved.heterogeneity,
        surface=resolved.surface, invades=bool(resolved.invasion), organ_reference_hu=reference_hu, seed=spec.seed, box=box,
    )
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    # The reported centre is the placement site (a wall lesion's lumen site): re-running the spec gives this lesion.
    resolved = replace(resolved, center_mm=tuple(float(v) for v in region.index_to_lps(site)), side=side or resolved.side)
    details = {
        "target_hu": target, "parenchyma_hu": stats.mean_hu, "reference_hu": reference_hu,
        "parenchyma_measured": stats.measured, "noise_hu": noise, "margin_width_mm": draws.margin_w, "lobulation": draws.lob, "spicules": draws.n_spicules,
        "outside_fraction": best.outside_fraction, "crop_size": tuple(grid.size), **tex_params,
        "refined": refiner is not None,  # False: no refinement DDPM was given (PASTALib.refine.load_refiner)
    }
    _add_shape_details(details, resolved, draws, plan, best.wall_mm, requested_thickness)
    return SynthesisResult(out_ct, out_labels, report, resolved, box, timings, details)


def _lesion_delta(
    ct_c: np.ndarray, organ_c: np.ndarray, alpha: np.ndarray, target: float, tex: np.ndarray | None, noise: float,
    rng_int: np.random.Generator, hollow: bool, refiner: Refiner | None, seed: int,
) -> tuple[np.ndarray, tuple[np.ndarray, float, np.random.Generator] | None]:
    """The crop's HU change and, for hollow organs without a refiner, the lesion values to blend on the input grid."""
    values = None
    if refiner is None and hollow:
        # Hollow organs: what the lesion replaces is lumen content (faeces, food, gas), whose texture
        # must not show through; blend lesion VALUES on the input grid and add the scanner's noise there.
        delta = np.full(ct_c.shape, target, np.float32) if tex is None else np.float32(target) + tex
        values = (delta, noise, rng_int)
    else:
        delta = intensity.compose_delta(ct_c, alpha, target, tex, noise, rng_int)
    if refiner is not None:
        refined = np.asarray(refiner(ct_c + delta, organ_c, alpha, stream(seed, STREAM_REFINER)), np.float32)
        delta = np.where(alpha > 0, refined - ct_c, 0.0).astype(np.float32)
    return delta, values


def _lesion_side(
    out_labels: sitk.Image, box: tuple[tuple[int, int], ...], lesion_value: int, region: placement.OrganRegion,
    midline: float | None,
) -> str | None:
    """Side of the pasted lesion's centroid (paired organs, ``midline`` given), else None; raises if it is empty."""
    out_lab_xyz = xyz_view(out_labels)
    lesion_idx = np.argwhere(out_lab_xyz[box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]] == lesion_value)
    if lesion_idx.size == 0:
        raise LesionFitError("The lesion is smaller than one voxel of this CT; request a larger size.")
    if midline is None:
        return None
    centroid = region.index_to_lps(lesion_idx.mean(axis=0) + np.array([b[0] for b in box]))
    return "left" if centroid[0] > midline else "right"


def _place(
    spec: LesionSpec, resolved: LesionSpec, region: placement.OrganRegion, ct_xyz: np.ndarray, plan: WallPlan | None,
) -> tuple[LesionSpec, list, list, list[float], WallPlan | None]:
    """Candidate centres (input-grid indices), their placement sites and wall-site radii, from the location stream."""
    rng_loc = stream(spec.seed, STREAM_LOCATION)
    site_radii: list[float] = []
    if plan is not None:
        centres, sites, site_radii, plan = wall_sites(spec, resolved, region, ct_xyz, plan, rng_loc)
    elif spec.center_mm is not None:
        centres = [placement.check_centre(region, spec.center_mm, resolved.size_mm, invasion=bool(resolved.invasion), wall=plan is not None)]
    else:
        first, size, others = placement.sample_centre(
            region, resolved.size_mm, rng_loc, invasion=bool(resolved.invasion),
            size_given=spec.size_mm is not None, min_size=resolved.profile.size_range_mm[0],
        )
        resolved = replace(resolved, size_mm=size)
        centres = [first, *others]
    if plan is None:
        sites = centres
    return resolved, centres, sites, site_radii, plan


def _best_crop(
    ct: sitk.Image, organ_labels: sitk.Image, region: placement.OrganRegion, midline: float | None, resolved: LesionSpec,
    draws: ShapeDraws, plan: WallPlan | None, centres: list, sites: list, site_radii: list[float],
    timings: dict[str, float],
) -> tuple[_Crop, Any]:
    """Build in a canonical 1 mm crop; for invasion retry a few centres until the lesion leaves the organ.

    Raises LesionFitError when even the best attempt holds no lesion.
    """
    best: _Crop | None = None
    for attempt, centre_index in enumerate(centres[:6]):
        site_radius = site_radii[attempt] if site_radii else 0.0
        crop = _crop_attempt(ct, organ_labels, region, midline, resolved, draws, plan, centre_index,
                             (sites[attempt], site_radius), timings)
        if best is None or crop.outside_fraction > best.outside_fraction or not best.alpha.any():
            best, site = crop, sites[attempt]
        if (not resolved.invasion or crop.outside_fraction >= 0.1) and np.any(crop.alpha > 0.5):
            break
    assert best is not None
    if not np.any(best.alpha > 0.5):
        raise LesionFitError(
            f"The {resolved.shape.value.lower()} lesion is empty at this centre (no {resolved.lesion_type.organ.display_name.lower()} wall "
            "within the requested size). Move the centre or enlarge the lesion."
        )
    return best, site


def _add_shape_details(
    details: dict[str, Any], resolved: LesionSpec, draws: ShapeDraws, plan: WallPlan | None, wall_mm: float,
    requested_thickness: float | None,
) -> None:
    """Wall-thickening and punctate entries of SynthesisResult.details."""
    if plan is not None:
        details["wall_thickness_mm"] = wall_mm  # largest, after the lumen rule (requested: thickness)
        details["wall_requested_mm"] = requested_thickness
        details["circumferential"] = plan.circumferential
    if resolved.shape is Shape.PUNCTATE:
        details["stones"] = draws.stone_count


def synthesize_lesion_in_masks(
    ct: sitk.Image, masks: Any, spec: LesionSpec, *, phase: Phase | None = None, impression: str | None = None,
    refiner: Refiner | None = None,
) -> SynthesisResult:
    """Adapter for ``PASTALib.anatomy.OrganMasks`` (e.g. TotalSegmentator labels).

    Runs the anatomy healthy-organ check (volume, existing lesions, impression with negations)
    and its vessel-based phase detection (falling back to the organ-HU estimate), then the core.
    """
    from PASTALib.anatomy import check_healthy_organ

    spec = LesionSpec.from_dict(spec) if isinstance(spec, dict) else spec
    spec.validate()
    check_healthy_organ(masks, spec.lesion_type.organ, spec.side, impression)
    if phase is None and spec.enhancement is None:
        vessels = estimate_phase(ct, masks=masks)
        phase = vessels[0] if vessels is not None else None  # no aorta/IVC: the core estimates from organ HU
    labels = masks.pasta_label_map(include_lesions=False)
    return synthesize_lesion(ct, labels, spec, phase=phase, refiner=refiner)
