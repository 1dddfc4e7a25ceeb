"""TotalSegmentator v2 ``total`` classes and how they map to the ten PASTA organs.

We keep our own copy of the ``total`` id -> name table (TotalSegmentator's
``map_to_binary.class_map["total"]``, 117 classes) so that label maps made by
TotalSegmentator can be read without TotalSegmentator installed. A test checks it
against the JSON exported from TotalSegmentator.
"""

from __future__ import annotations

import re
from typing import Literal

from PASTALib.labels import LesionType, Organ

Side = Literal["left", "right"]

_VERTEBRAE = ["sacrum", "vertebrae_S1"] + [f"vertebrae_L{i}" for i in range(5, 0, -1)]
_VERTEBRAE += [f"vertebrae_T{i}" for i in range(12, 0, -1)] + [f"vertebrae_C{i}" for i in range(7, 0, -1)]

#: TotalSegmentator v2 task ``total``: label id -> class name.
TOTAL_CLASSES: dict[int, str] = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver",
    6: "stomach", 7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left",
    10: "lung_upper_lobe_left", 11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right",
    13: "lung_middle_lobe_right", 14: "lung_lower_lobe_right", 15: "esophagus", 16: "trachea",
    17: "thyroid_gland", 18: "small_bowel", 19: "duodenum", 20: "colon", 21: "urinary_bladder",
    22: "prostate", 23: "kidney_cyst_left", 24: "kidney_cyst_right",
    **{25 + i: name for i, name in enumerate(_VERTEBRAE)},  # 25 sacrum .. 50 vertebrae_C1
    51: "heart", 52: "aorta", 53: "pulmonary_vein", 54: "brachiocephalic_trunk",
    55: "subclavian_artery_right", 56: "subclavian_artery_left",
    57: "common_carotid_artery_right", 58: "common_carotid_artery_left",
    59: "brachiocephalic_vein_left", 60: "brachiocephalic_vein_right",
    61: "atrial_appendage_left", 62: "superior_vena_cava", 63: "inferior_vena_cava",
    64: "portal_vein_and_splenic_vein", 65: "iliac_artery_left", 66: "iliac_artery_right",
    67: "iliac_vena_left", 68: "iliac_vena_right", 69: "humerus_left", 70: "humerus_right",
    71: "scapula_left", 72: "scapula_right", 73: "clavicula_left", 74: "clavicula_right",
    75: "femur_left", 76: "femur_right", 77: "hip_left", 78: "hip_right", 79: "spinal_cord",
    80: "gluteus_maximus_left", 81: "gluteus_maximus_right", 82: "gluteus_medius_left",
    83: "gluteus_medius_right", 84: "gluteus_minimus_left", 85: "gluteus_minimus_right",
    86: "autochthon_left", 87: "autochthon_right", 88: "iliopsoas_left", 89: "iliopsoas_right",
    90: "brain", 91: "skull",
    **{92 + i: f"rib_left_{i + 1}" for i in range(12)},
    **{104 + i: f"rib_right_{i + 1}" for i in range(12)},
    116: "sternum", 117: "costal_cartilages",
}

#: Structures whose voxels make up each PASTA organ (TotalSegmentator ``total`` names).
ORGAN_STRUCTURES: dict[Organ, tuple[str, ...]] = {
    Organ.LUNG: (
        "lung_upper_lobe_left", "lung_lower_lobe_left",
        "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right",
    ),
    Organ.LIVER: ("liver",),
    Organ.GALLBLADDER: ("gallbladder",),
    Organ.PANCREAS: ("pancreas",),
    Organ.ESOPHAGUS: ("esophagus",),
    Organ.STOMACH: ("stomach",),
    Organ.COLON: ("colon",),  # `total` has no rectum class; user maps may add "rectum"
    # Kidney cysts lie inside the kidney, so they are part of its extent (incidental simple
    # cysts are common and do not make the kidney "unhealthy" for PASTA's purposes).
    Organ.KIDNEY: ("kidney_left", "kidney_right", "kidney_cyst_left", "kidney_cyst_right"),
    Organ.BLADDER: ("urinary_bladder",),
    Organ.BONE: tuple(_VERTEBRAE) + tuple(f"rib_{s}_{i}" for s in ("left", "right") for i in range(1, 13))
    + tuple(f"{b}_{s}" for b in ("hip", "femur", "humerus", "scapula", "clavicula") for s in ("left", "right"))
    + ("sternum", "skull"),
}

#: Names other label maps use for PASTA organs (user maps, the classical lung mask, PASTA maps).
_ALIASES: dict[str, tuple[Organ, Side | None]] = {
    "lung": (Organ.LUNG, None), "lungs": (Organ.LUNG, None),
    "lung_left": (Organ.LUNG, "left"), "left_lung": (Organ.LUNG, "left"),
    "lung_right": (Organ.LUNG, "right"), "right_lung": (Organ.LUNG, "right"),
    "kidney": (Organ.KIDNEY, None), "kidneys": (Organ.KIDNEY, None),
    "left_kidney": (Organ.KIDNEY, "left"), "right_kidney": (Organ.KIDNEY, "right"),
    "gall_bladder": (Organ.GALLBLADDER, None), "oesophagus": (Organ.ESOPHAGUS, None),
    "rectum": (Organ.COLON, None), "colon_and_rectum": (Organ.COLON, None),
    "colorectum": (Organ.COLON, None), "sigmoid": (Organ.COLON, None),
    "bladder": (Organ.BLADDER, None), "bone": (Organ.BONE, None), "bones": (Organ.BONE, None),
    "skeleton": (Organ.BONE, None),
}

#: Name prefix of PASTA lesion labels (values 11-25) in :class:`OrganMasks` name tables.
LESION_PREFIX = "lesion:"


def normalize_name(name: str) -> str:
    """Lower-case, spaces and hyphens to underscores: "Kidney Left" -> "kidney_left"."""
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def _side_from_name(name: str) -> Side | None:
    parts = name.split("_")
    if "left" in parts:
        return "left"
    if "right" in parts:
        return "right"
    return None


_STRUCTURE_ORGAN: dict[str, tuple[Organ, Side | None]] = {
    normalize_name(s): (organ, _side_from_name(s) if organ.is_paired else None)
    for organ, structures in ORGAN_STRUCTURES.items()
    for s in structures
}


def pasta_lesion_name(lesion: LesionType) -> str:
    """Structure name used for a PASTA lesion label, e.g. ``lesion:kidney_tumor``."""
    return LESION_PREFIX + lesion.slug


def structure_organ(name: str) -> tuple[Organ | None, Side | None, bool]:
    """(organ, side, is_lesion) of a structure name; organ None for non-PASTA structures.

    Accepts TotalSegmentator ``total`` names, common aliases (``rectum``, ``left_lung``,
    ``bone``...), PASTA organ display names ("Colon and rectum") and ``lesion:<slug>``.
    """
    key = normalize_name(name)
    if key.startswith(LESION_PREFIX):
        lesion = LesionType.parse(key[len(LESION_PREFIX):])
        return lesion.organ, None, True
    if key in _STRUCTURE_ORGAN:
        organ, side = _STRUCTURE_ORGAN[key]
        return organ, side, False
    if key in _ALIASES:
        organ, side = _ALIASES[key]
        return organ, side, False
    for organ in Organ:
        if key == normalize_name(organ.display_name):
            return organ, None, False
    return None, None, False


def total_id(name: str) -> int:
    """TotalSegmentator ``total`` id of a class name (KeyError if unknown)."""
    key = normalize_name(name)
    for label, class_name in TOTAL_CLASSES.items():
        if normalize_name(class_name) == key:
            return label
    raise KeyError(f"{name!r} is not a TotalSegmentator 'total' class")
