"""DICOM codes of the PASTA report vocabulary: SNOMED CT / DCM where one exists, else private ``99PASTA``."""

from __future__ import annotations

from enum import Enum
from typing import Any

from PASTALib.labels import LesionType, Organ, Phase
from PASTALib.report.attributes import ATTRIBUTES, TITLES, Density, Heterogeneity, Invasion, Shape, Surface

PASTA_CODING_SCHEME = "99PASTA"

#: Report wordings without a standard SCT/DCM code -> their private ``99PASTA`` Code Value (≤ 16
#: characters); keyed by the vocabulary itself, so the Code Meaning is the report wording.
_PRIVATE_VALUE_CODES: dict[Enum, str] = {
    Phase.PLAIN: "PLAIN-CT", Phase.ENHANCED: "ENHANCED-CT",
    Shape.WALL_THICKENING: "WALL-THICKENING", Shape.PUNCTATE: "PUNCTATE-NODULAR",
    Density.HYPO: "DENSITY-HYPO", Density.ISO: "DENSITY-ISO", Density.HYPER: "DENSITY-HYPER",
    Heterogeneity.HETEROGENEOUS: "HETEROGENEOUS",
    Invasion.NONE: "INVASION-NONE", Invasion.ADJACENT: "INVASION-ADJ",
}

#: The private ``99PASTA`` vocabulary: Code Value (≤ 16 characters) → Code Meaning. Only concepts
#: without a standard SCT/DCM code are here; :func:`attribute_code` maps the report wording.
PASTA_CODES: dict[str, str] = {
    "ENHANCEMENT": "Enhancement status", "HETEROGENEITY": TITLES["heterogeneity"],
    "INVASION": "Relationship with surrounding structures",
    **{code: member.value for member, code in _PRIVATE_VALUE_CODES.items()},
    "EXTENT-CC": "Craniocaudal extent (Z)", "EXTENT-RL": "Right-left extent (X)",
    "EXTENT-AP": "Anterior-posterior extent (Y)",
    "LESION-TYPE": "PASTA lesion type", "TYPE-CERTAINTY": "Lesion type certainty",
    **{f"LESION-{int(t)}": t.display_name for t in LesionType},
}


def pasta_code(value: str):
    """The private ``99PASTA`` code with this Code Value (a KeyError for any other value)."""
    from pydicom.sr.coding import Code

    return Code(value, PASTA_CODING_SCHEME, PASTA_CODES[value])


def coding_scheme_identification() -> Any:
    """Coding Scheme Identification Sequence item declaring ``99PASTA`` (PS3.3 C.12.1)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = PASTA_CODING_SCHEME
    item.CodingSchemeName = "PASTA structured report vocabulary"
    item.CodingSchemeVersion = "1"
    item.CodingSchemeResponsibleOrganization = "SlicerPASTA"
    return item


def _declare_pasta_scheme(ds: Any) -> None:
    from pydicom.sequence import Sequence

    existing = list(ds.get("CodingSchemeIdentificationSequence", []))
    if not any(i.get("CodingSchemeDesignator") == PASTA_CODING_SCHEME for i in existing):
        ds.CodingSchemeIdentificationSequence = Sequence([*existing, coding_scheme_identification()])


def _organ_code(organ: Organ):
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    table = {
        Organ.LUNG: codes.SCT.Lung, Organ.LIVER: codes.SCT.Liver, Organ.GALLBLADDER: codes.SCT.Gallbladder,
        Organ.PANCREAS: codes.SCT.Pancreas, Organ.ESOPHAGUS: codes.SCT.Esophagus, Organ.STOMACH: codes.SCT.Stomach,
        Organ.COLON: codes.SCT.LargeIntestine, Organ.KIDNEY: codes.SCT.Kidney,
        Organ.BLADDER: Code("89837001", "SCT", "Urinary bladder"), Organ.BONE: codes.SCT.Bone,
    }
    return table[Organ(organ)]


def _lesion_code(lesion: LesionType, uncertain: bool = False):
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    if uncertain:
        return codes.SCT.Lesion  # the organ it sits in has no such lesion type: say only "lesion"
    lesion = LesionType(lesion)
    if lesion in (LesionType.LIVER_CYST, LesionType.PANCREAS_CYST, LesionType.KIDNEY_CYST):
        return codes.SCT.Cyst
    if lesion in (LesionType.GALLSTONE, LesionType.KIDNEY_STONE):
        return Code("56381008", "SCT", "Calculus")
    if lesion is LesionType.BONE_METASTASIS:
        return codes.SCT.Metastasis
    return codes.SCT.Neoplasm


#: Recommended display colour (sRGB) per segmented property type code value: the
#: ``recommendedDisplayRGBValue`` of 3D Slicer's terminology (SegmentationCategoryTypeModifier-
#: SlicerGeneralAnatomy / -DICOM-Master). SCT 14742008 "Large intestine" takes Slicer's "Colon".
#: Neoplasm, Metastasis and Lesion have no colour there: they take the entry of the same category
#: that has one ("Mass"); Calculus has no entry at all: a stone-like pale yellow of PASTA's own.
SEGMENT_RGB: dict[str, tuple[int, int, int]] = {
    "39607008": (197, 165, 145),  # Lung
    "10200004": (221, 130, 101),  # Liver
    "28231008": (139, 150, 98),  # Gallbladder
    "15776009": (249, 180, 111),  # Pancreas
    "32849002": (211, 171, 143),  # Esophagus
    "69695003": (216, 132, 105),  # Stomach
    "14742008": (204, 168, 143),  # Large intestine (Slicer: Colon)
    "64033007": (185, 102, 83),  # Kidney
    "89837001": (222, 154, 132),  # Urinary bladder
    "272673000": (241, 214, 145),  # Bone
    "367643001": (205, 205, 100),  # Cyst
    "4147007": (144, 238, 144),  # Mass
    "108369006": (144, 238, 144),  # Neoplasm → Mass
    "128462008": (144, 238, 144),  # Metastasis → Mass
    "52988006": (144, 238, 144),  # Lesion (type uncertain) → Mass
    "56381008": (255, 250, 160),  # Calculus (no terminology entry)
}


def _display_colour(code: Any):
    import highdicom as hd

    return hd.color.CIELabColor.from_rgb(*SEGMENT_RGB[str(code.value)])


def _laterality(location: str):
    from pydicom.sr.codedict import codes

    low = location.lower()
    return codes.SCT.Right if low.startswith("right ") else codes.SCT.Left if low.startswith("left ") else None


ATTRIBUTE_KEYS = ("enhancement", "shape", "density", "heterogeneity", "surface", "invasion")


def attribute_name_code(key: str):
    """Concept name of a report attribute in the SR (standard where one exists)."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    return {
        "enhancement": pasta_code("ENHANCEMENT"), "shape": codes.SCT.Shape,
        "density": Code("111035", "DCM", "Lesion Density"), "heterogeneity": pasta_code("HETEROGENEITY"),
        "surface": Code("111037", "DCM", "Margins"), "invasion": pasta_code("INVASION"),
    }[key]


def _attribute_value_codes() -> dict[str, dict[str, Any]]:
    """Report key -> exact wording -> SR value code: standard SCT/DCM codes where they exist, else 99PASTA."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    standard = {Shape.ROUND: Code("42700002", "SCT", "Round"), Shape.IRREGULAR: codes.SCT.Irregular,
                Heterogeneity.HOMOGENEOUS: codes.DCM.Homogeneous, Surface.WELL_DEFINED: codes.SCT.WellDefined,
                Surface.ILL_DEFINED: codes.SCT.PoorlyDefined}
    vocabularies: dict[str, type[Enum]] = {"enhancement": Phase, **ATTRIBUTES}
    # Every wording gets a code: a new wording without one fails here, not in a written SR.
    return {key: {m.value: standard[m] if m in standard else pasta_code(_PRIVATE_VALUE_CODES[m]) for m in enum}
            for key, enum in vocabularies.items()}


def attribute_code(key: str, wording: str):
    """The SR value code of a report attribute's exact wording (one code per value)."""
    from PASTALib.dicom.export import DicomExportError  # the package's one export error; export imports this module

    try:
        return _attribute_value_codes()[key][wording]
    except KeyError:
        raise DicomExportError(f"report attribute {key}={wording!r} has no DICOM code; fix the report wording") from None


def attribute_wording(key: str, code: Any) -> str:
    """The report wording of an SR value code (the inverse of :func:`attribute_code`)."""
    for wording, c in _attribute_value_codes()[key].items():
        if (c.value, c.scheme_designator) == (str(code.value), str(code.scheme_designator)):
            return wording
    raise KeyError(f"{key}: no report wording for {code}")
