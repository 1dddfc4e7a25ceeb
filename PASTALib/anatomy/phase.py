"""Contrast phase (plain vs enhanced CT) from the HU of the aorta and the IVC, else of the kidney or liver."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PASTALib.anatomy.organs import OrganMasks, same_grid
from PASTALib.anatomy.totalseg_classes import normalize_name
from PASTALib.errors import AnatomyError
from PASTALib.geometry.arrays import xyz_view
from PASTALib.labels import Organ, Phase

#: Unenhanced blood is 30-60 HU; any contrast phase brings the aorta or IVC above this.
ENHANCED_MIN_HU = 80.0
PHASE_VESSELS = ("aorta", "inferior_vena_cava")
#: Below this many voxels after erosion, fall back to the uneroded mask (thin or tiny vessel).
_MIN_ERODED_VOXELS = 20
#: Without vessel masks: a median HU above this makes the organ (PASTA label value) enhanced,
#: the first organ with enough voxels deciding.
ORGAN_ENHANCED_MIN_HU = ((Organ.KIDNEY, 100.0), (Organ.LIVER, 85.0))
ORGAN_PHASE_EXPLANATION = "median kidney / liver HU in the organ labels (enhanced above 100 / 85 HU)"
_ORGAN_MIN_VOXELS = 500  # sampled voxels (every 2nd in x and y)


@dataclass(frozen=True)
class PhaseResult:
    phase: Phase
    mean_hu: float  # mean of the per-vessel means
    vessel_hu: dict[str, float] = field(default_factory=dict)
    vessel_voxels: dict[str, int] = field(default_factory=dict)

    @property
    def explanation(self) -> str:
        parts = ", ".join(f"{k} {v:.0f} HU" for k, v in self.vessel_hu.items())
        op = ">=" if self.phase is Phase.ENHANCED else "<"
        return f"{self.phase.value}: vessel mean {self.mean_hu:.0f} HU {op} {ENHANCED_MIN_HU:.0f} HU ({parts})"


def detect_phase(ct: sitk.Image, masks: OrganMasks) -> PhaseResult:
    """Plain vs enhanced CT from the mean HU inside the eroded aorta and IVC masks.

    Masks are eroded by one voxel (6-neighbourhood) so partial-volume voxels at the vessel
    wall do not pull the mean towards fat. Each present vessel gives a mean; their average
    < 80 HU -> Phase.PLAIN, else Phase.ENHANCED. Raises AnatomyError when neither vessel is
    segmented.
    """
    if not same_grid(ct, masks.label_map):
        masks = OrganMasks.from_label_map(masks.label_map, masks.names, reference=ct, source=masks.source)
    hu = xyz_view(ct)
    vessel_hu: dict[str, float] = {}
    voxels: dict[str, int] = {}
    for name in PHASE_VESSELS:
        if not masks.is_present(name):
            continue
        ids = [k for k, v in masks.names.items() if normalize_name(v) == name]
        mask = np.isin(masks.array, ids)
        eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
        if np.count_nonzero(eroded) >= _MIN_ERODED_VOXELS:
            mask = eroded
        vessel_hu[name] = float(hu[mask].mean())
        voxels[name] = int(np.count_nonzero(mask))
    if not vessel_hu:
        raise AnatomyError(
            "The contrast phase cannot be detected: neither the aorta nor the inferior vena cava is in the "
            "organ segmentation. Pass the phase explicitly (plain or enhanced)."
        )
    mean = float(np.mean(list(vessel_hu.values())))
    phase = Phase.PLAIN if mean < ENHANCED_MIN_HU else Phase.ENHANCED
    return PhaseResult(phase, mean, vessel_hu, voxels)


def _organ_phase(ct: sitk.Image, labels: sitk.Image) -> Phase | None:
    """Median kidney, else liver, HU in a PASTA organ label map on ``ct``'s grid; None if neither is big enough."""
    step = (2, 2, 1)
    lab = xyz_view(labels)[:: step[0], :: step[1], :: step[2]]
    hu = xyz_view(ct)[:: step[0], :: step[1], :: step[2]]
    for organ, threshold in ORGAN_ENHANCED_MIN_HU:
        values = hu[lab == int(organ)]
        if values.size > _ORGAN_MIN_VOXELS:
            return Phase.ENHANCED if float(np.median(values)) > threshold else Phase.PLAIN
    return None


def estimate_phase(
    ct: sitk.Image, *, masks: OrganMasks | None = None, labels: sitk.Image | None = None
) -> tuple[Phase, str] | None:
    """The contrast phase and why: aorta/IVC HU in ``masks`` (:func:`detect_phase`), else kidney/liver
    HU in the PASTA organ label map ``labels``; None when neither decides (the caller's default applies,
    e.g. ``LesionType.default_phase``)."""
    if masks is not None:
        try:
            result = detect_phase(ct, masks)
            return result.phase, result.explanation
        except AnatomyError:
            pass
    if labels is not None:
        phase = _organ_phase(ct, labels)
        if phase is not None:
            return phase, ORGAN_PHASE_EXPLANATION
    return None
