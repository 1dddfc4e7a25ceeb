"""PASTA-Gen-30K label values: organs 1-10, lesions 11-25 (see docs/labels-and-reports.md)."""

from __future__ import annotations

from enum import Enum, IntEnum


class Organ(IntEnum):
    """The ten PASTA organs with their label values."""

    LUNG = 1
    LIVER = 2
    GALLBLADDER = 3
    PANCREAS = 4
    ESOPHAGUS = 5
    STOMACH = 6
    COLON = 7  # colon & rectum
    KIDNEY = 8
    BLADDER = 9
    BONE = 10

    @property
    def display_name(self) -> str:
        return _ORGAN_NAMES[self]

    @property
    def is_hollow(self) -> bool:
        """Hollow organs are the only ones where wall thickening is a valid shape."""
        return self in HOLLOW_ORGANS

    @property
    def is_paired(self) -> bool:
        """Paired organs get a side (left/right) in the report location."""
        return self in (Organ.LUNG, Organ.KIDNEY)


_ORGAN_NAMES = {
    Organ.LUNG: "Lung",
    Organ.LIVER: "Liver",
    Organ.GALLBLADDER: "Gallbladder",
    Organ.PANCREAS: "Pancreas",
    Organ.ESOPHAGUS: "Esophagus",
    Organ.STOMACH: "Stomach",
    Organ.COLON: "Colon and rectum",
    Organ.KIDNEY: "Kidney",
    Organ.BLADDER: "Bladder",
    Organ.BONE: "Bone",
}

HOLLOW_ORGANS = frozenset(
    {Organ.ESOPHAGUS, Organ.STOMACH, Organ.COLON, Organ.BLADDER, Organ.GALLBLADDER}
)


class Phase(str, Enum):
    """Contrast phase of a CT; the value is the report's exact wording."""

    PLAIN = "Plain CT"
    ENHANCED = "Enhanced CT"


class LesionType(IntEnum):
    """The 15 PASTA-Gen lesion types with their label values."""

    LUNG_TUMOR = 11
    LIVER_TUMOR = 12
    GALLBLADDER_CANCER = 13
    PANCREAS_TUMOR = 14
    ESOPHAGEAL_CANCER = 15
    GASTRIC_CANCER = 16
    COLORECTAL_CANCER = 17
    KIDNEY_TUMOR = 18
    BLADDER_CANCER = 19
    BONE_METASTASIS = 20
    LIVER_CYST = 21
    GALLSTONE = 22
    PANCREAS_CYST = 23
    KIDNEY_CYST = 24
    KIDNEY_STONE = 25

    @property
    def organ(self) -> Organ:
        return _LESION_ORGAN[self]

    @property
    def display_name(self) -> str:
        return self.name.replace("_", " ").capitalize()

    @property
    def slug(self) -> str:
        """Command-line / file-name form, e.g. ``kidney_cyst``."""
        return self.name.lower()

    @property
    def is_malignant(self) -> bool:
        """Only malignant types may invade neighbouring structures."""
        return self in MALIGNANT_TYPES

    @property
    def template_phases(self) -> frozenset[Phase]:
        """Phases of the template CTs this type is synthesized on (docs/labels-and-reports.md)."""
        if self in (LesionType.LUNG_TUMOR, LesionType.KIDNEY_STONE):
            return frozenset({Phase.PLAIN})
        if self in (LesionType.LIVER_CYST, LesionType.GALLSTONE):
            return frozenset({Phase.PLAIN, Phase.ENHANCED})
        return frozenset({Phase.ENHANCED})

    @property
    def default_phase(self) -> Phase:
        """The phase assumed when a CT's phase is unknown: enhanced unless all its templates are plain."""
        return Phase.ENHANCED if Phase.ENHANCED in self.template_phases else Phase.PLAIN

    @classmethod
    def parse(cls, value: "str | int | LesionType") -> "LesionType":
        """Accept a label value, an enum name or a slug; error lists valid values."""
        from PASTALib.errors import SpecificationError

        if isinstance(value, LesionType):
            return value
        try:
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                return cls(int(value))
            return cls[str(value).strip().upper().replace(" ", "_").replace("-", "_")]
        except (KeyError, ValueError):
            allowed = ", ".join(t.slug for t in cls)
            raise SpecificationError(
                f"Unknown lesion type {value!r}. Use one of: {allowed} (or label values 11-25)."
            ) from None


_LESION_ORGAN = {
    LesionType.LUNG_TUMOR: Organ.LUNG,
    LesionType.LIVER_TUMOR: Organ.LIVER,
    LesionType.GALLBLADDER_CANCER: Organ.GALLBLADDER,
    LesionType.PANCREAS_TUMOR: Organ.PANCREAS,
    LesionType.ESOPHAGEAL_CANCER: Organ.ESOPHAGUS,
    LesionType.GASTRIC_CANCER: Organ.STOMACH,
    LesionType.COLORECTAL_CANCER: Organ.COLON,
    LesionType.KIDNEY_TUMOR: Organ.KIDNEY,
    LesionType.BLADDER_CANCER: Organ.BLADDER,
    LesionType.BONE_METASTASIS: Organ.BONE,
    LesionType.LIVER_CYST: Organ.LIVER,
    LesionType.GALLSTONE: Organ.GALLBLADDER,
    LesionType.PANCREAS_CYST: Organ.PANCREAS,
    LesionType.KIDNEY_CYST: Organ.KIDNEY,
    LesionType.KIDNEY_STONE: Organ.KIDNEY,
}

MALIGNANT_TYPES = frozenset(
    {
        LesionType.LUNG_TUMOR,
        LesionType.LIVER_TUMOR,
        LesionType.GALLBLADDER_CANCER,
        LesionType.PANCREAS_TUMOR,
        LesionType.ESOPHAGEAL_CANCER,
        LesionType.GASTRIC_CANCER,
        LesionType.COLORECTAL_CANCER,
        LesionType.KIDNEY_TUMOR,
        LesionType.BLADDER_CANCER,
        LesionType.BONE_METASTASIS,
    }
)


def label_name(value: int) -> str:
    """Human name of any PASTA label value (0 background, 1-10 organs, 11-25 lesions)."""
    if value == 0:
        return "Background"
    if value in Organ._value2member_map_:
        return Organ(value).display_name
    if value in LesionType._value2member_map_:
        return LesionType(value).display_name
    raise ValueError(f"{value} is not a PASTA label value (0-25)")
