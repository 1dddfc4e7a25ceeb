"""Anatomy: organ masks, study type, contrast phase, healthy-organ check, lung mask.

Typical use::

    masks = OrganMasks.from_label_map(read_label("total.nii.gz"), reference=ct)  # TotalSegmentator ids
    check_healthy_organ(masks, Organ.KIDNEY, "left", impression="No renal lesion.")
    detect_phase(ct, masks).phase, detect_study_type(masks).study_type
"""

from PASTALib.anatomy.health import (
    MIN_HEALTHY_VOLUME_MM3,
    ORGAN_SYNONYMS,
    OrganHealth,
    assess_all_organs,
    assess_organ,
    check_healthy_organ,
    check_impression,
    impression_mentions,
)
from PASTALib.anatomy.lungmask import classical_lung_mask
from PASTALib.anatomy.organs import (
    PRESENCE_MIN_VOLUME_MM3,
    PRESENCE_MIN_VOXELS,
    OrganMasks,
    resample_labels_to,
    same_grid,
)
from PASTALib.anatomy.phase import ENHANCED_MIN_HU, PhaseResult, detect_phase, estimate_phase
from PASTALib.anatomy.study import StudyType, StudyTypeResult, detect_study_type
from PASTALib.anatomy.totalseg_classes import (
    ORGAN_STRUCTURES,
    TOTAL_CLASSES,
    Side,
    structure_organ,
    total_id,
)
from PASTALib.anatomy.totalsegmentator import (
    check_totalsegmentator_weights,
    run_totalsegmentator,
    totalsegmentator_weights_dir,
)

__all__ = [
    "ENHANCED_MIN_HU",
    "MIN_HEALTHY_VOLUME_MM3",
    "ORGAN_STRUCTURES",
    "ORGAN_SYNONYMS",
    "PRESENCE_MIN_VOLUME_MM3",
    "PRESENCE_MIN_VOXELS",
    "TOTAL_CLASSES",
    "OrganHealth",
    "OrganMasks",
    "PhaseResult",
    "Side",
    "StudyType",
    "StudyTypeResult",
    "assess_all_organs",
    "assess_organ",
    "check_healthy_organ",
    "check_impression",
    "check_totalsegmentator_weights",
    "classical_lung_mask",
    "detect_phase",
    "detect_study_type",
    "estimate_phase",
    "impression_mentions",
    "resample_labels_to",
    "run_totalsegmentator",
    "same_grid",
    "structure_organ",
    "total_id",
    "totalsegmentator_weights_dir",
]
