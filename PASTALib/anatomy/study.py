"""Study type (body region covered by the scan) from the structures present."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from PASTALib.anatomy.organs import OrganMasks
from PASTALib.labels import Organ

#: Both upper lobes together reach this volume only when the scan covers the upper chest;
#: an abdominal scan shows at most the tip of the lingula (a few tens of ml).
UPPER_LOBES_MIN_ML = 200.0
#: Total lung volume of a scan covering the whole chest (used when lobes are not labelled,
#: e.g. the classical lung mask); lung bases in an abdominal scan stay far below it.
WHOLE_LUNGS_MIN_ML = 1500.0

_MID_THORAX_VERTEBRAE = tuple(f"vertebrae_T{i}" for i in range(1, 9))  # T1..T8


class StudyType(str, Enum):
    """Body region covered by a CT."""

    THORAX = "thorax"
    ABDOMEN_PELVIS = "abdomen-pelvis"
    THORAX_ABDOMEN_PELVIS = "thorax-abdomen-pelvis"
    PARTIAL = "partial"  # none of the above is fully covered (e.g. upper abdomen only)


@dataclass(frozen=True)
class StudyTypeResult:
    study_type: StudyType
    decided_by: tuple[str, ...]  # structures (or rules) that fired
    explanation: str


def detect_study_type(masks: OrganMasks) -> StudyTypeResult:
    """Classify the scan's coverage from the structures present (above the noise thresholds).

    Rules:

    * thorax covered: ``vertebrae_T1`` present, or both upper lung lobes present with
      >= 200 ml together, or (no lobes labelled) both lungs together >= 1500 ml;
    * abdomen-pelvis covered: ``vertebrae_L5`` or ``urinary_bladder`` present;
    * mid-thorax reached: any of ``vertebrae_T1`` .. ``vertebrae_T8`` present.

    thorax + abdomen-pelvis -> THORAX_ABDOMEN_PELVIS; abdomen-pelvis + mid-thorax ->
    THORAX_ABDOMEN_PELVIS (the scan runs from T8 or higher down to the pelvis);
    abdomen-pelvis -> ABDOMEN_PELVIS; thorax -> THORAX; otherwise PARTIAL (e.g. an upper
    abdomen T11-T12, or a lower-chest/upper-abdomen T8-L3 scan without lung apices or pelvis).
    Lung bases alone (an abdominal scan) never make a thorax.
    """
    thorax: list[str] = []
    if masks.is_present("vertebrae_T1"):
        thorax.append("vertebrae_T1")
    lobes = ("lung_upper_lobe_left", "lung_upper_lobe_right")
    upper_ml = sum(masks.structure_volume_mm3(n) for n in lobes) / 1000
    if all(masks.is_present(n) for n in lobes) and upper_ml >= UPPER_LOBES_MIN_ML:
        thorax += list(lobes)
    has_lobes = any(masks.is_present(n) for n in ("lung_lower_lobe_left", "lung_lower_lobe_right", *lobes))
    lungs_ml = masks.organ_volume_mm3(Organ.LUNG) / 1000
    if not has_lobes and lungs_ml >= WHOLE_LUNGS_MIN_ML and all(
        masks.organ_volume_mm3(Organ.LUNG, s) > 0 for s in ("left", "right")
    ):
        thorax.append(f"lungs {lungs_ml:.0f} ml")
    abdomen = [n for n in ("vertebrae_L5", "urinary_bladder") if masks.is_present(n)]
    mid_thorax = [n for n in _MID_THORAX_VERTEBRAE if masks.is_present(n)]

    if thorax and abdomen:
        kind, why = StudyType.THORAX_ABDOMEN_PELVIS, thorax + abdomen
    elif abdomen and mid_thorax:
        kind, why = StudyType.THORAX_ABDOMEN_PELVIS, abdomen + mid_thorax[-1:]
    elif abdomen:
        kind, why = StudyType.ABDOMEN_PELVIS, abdomen
    elif thorax:
        kind, why = StudyType.THORAX, thorax
    else:
        kind, why = StudyType.PARTIAL, []
    if why:
        explanation = f"{kind.value}: decided by {', '.join(why)}"
    else:
        explanation = (
            "partial coverage: no vertebra T1, no pair of upper lung lobes, no L5 and no urinary bladder "
            "found, so the scan covers neither the whole thorax nor the pelvis"
        )
    return StudyTypeResult(kind, tuple(why), explanation)
