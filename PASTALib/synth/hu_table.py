"""The HU / wall-thickness table of docs/radiology-hu.md, rendered from the synthesis profiles.

``PROFILES`` (PASTALib.synth.profiles) is the one source of truth: the synthesizer samples from it,
this module renders it, and Testing/test_synth_hollow.py checks that the document holds exactly
this rendering and that lesions measured back from real CTs fall inside it.
"""

from __future__ import annotations

from PASTALib.labels import LesionType, Phase
from PASTALib.report.attributes import Density, Shape
from PASTALib.synth.profiles import MIN_CONTRAST_HU, PROFILES, HURange, TypeProfile

BEGIN = "<!-- BEGIN GENERATED: PASTALib.synth.hu_table.markdown() -->"
END = "<!-- END GENERATED -->"


def _fmt(r: HURange) -> str:
    text = f"{r.lo:+.0f}..{r.hi:+.0f}" if r.relative else f"{r.lo:.0f}..{r.hi:.0f}"
    return text + (" rel." if r.relative else " HU") + (f" (w {r.weight:g})" if r.weight != 1.0 else "")


def lesion_hu_bounds(prof: TypeProfile, phase: Phase, density: Density, reference_hu: float) -> tuple[float, float]:
    """Cited lesion mean HU range for one density on a CT whose reference (parenchyma/wall) is ``reference_hu``.

    The union of the profile's ranges, widened where the density wording forces a minimum contrast
    (the synthesizer moves a lesion that would read as the wrong density) and narrowed by ``hu_limits``.
    """
    ranges = prof.hu[phase][density]
    lo = min(reference_hu + r.lo if r.relative else r.lo for r in ranges)
    hi = max(reference_hu + r.hi if r.relative else r.hi for r in ranges)
    if density is Density.HYPO:
        lo, hi = min(lo, reference_hu - max(prof.min_contrast_hu, MIN_CONTRAST_HU)), min(hi, reference_hu - MIN_CONTRAST_HU)
    elif density is Density.HYPER:
        lo, hi = max(lo, reference_hu + MIN_CONTRAST_HU), max(hi, reference_hu + prof.min_contrast_hu)
    if prof.hu_limits is not None:
        lo, hi = max(lo, prof.hu_limits[0]), min(hi, prof.hu_limits[1])
    return lo, hi


def _reference(prof: TypeProfile, phase: Phase) -> str:
    if prof.reference_clamp is not None:
        lo, hi = prof.reference_clamp[phase]
        return f"normal wall {lo:.0f}..{hi:.0f}"
    where = "lumen (bile/urine)" if prof.lesion_type.organ.is_hollow else "organ"
    return f"{where} {prof.nominal_parenchyma_hu[phase]:.0f} (nominal)"


def markdown() -> str:
    """One row per lesion type and phase: reference, lesion HU per density, wall thickness, cyst limits."""
    lines = [
        BEGIN,
        "| type | phase | reference HU | hypodense | isodense | hyperdense | tumour wall mm | annular P |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in LesionType:
        prof = PROFILES[kind]
        wall = Shape.WALL_THICKENING in prof.allowed("shape")
        for phase in (Phase.PLAIN, Phase.ENHANCED):
            cells = []
            for density in Density:
                ranges = prof.hu[phase].get(density, ())
                cell = ", ".join(_fmt(r) for r in ranges) or "—"
                if ranges and prof.hu_limits is not None:
                    cell += f"; within {prof.hu_limits[0]:.0f}..{prof.hu_limits[1]:.0f} HU, >= {prof.min_contrast_hu:.0f} below organ"
                cells.append(cell)
            thick = f"{prof.wall_thickness_mm[0]:.0f}..{prof.wall_thickness_mm[1]:.0f}" if wall else "—"
            annular = f"{prof.circumferential:.1f}" if wall else "—"
            lines.append(f"| {kind.slug} | {phase.value} | {_reference(prof, phase)} | {' | '.join(cells)} | {thick} | {annular} |")
    lines.append(END)
    return "\n".join(lines)
