"""Report attribute vocabularies: each enum value is the structured report's exact wording."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from PASTALib.errors import SpecificationError


class Shape(str, Enum):
    ROUND = "Round-like"
    IRREGULAR = "Irregular"
    WALL_THICKENING = "Wall thickening"
    PUNCTATE = "Punctate, nodular"


class Density(str, Enum):
    HYPO = "Hypodense"
    ISO = "Isodense"
    HYPER = "Hyperdense"


class Heterogeneity(str, Enum):
    HOMOGENEOUS = "Homogeneous"
    HETEROGENEOUS = "Heterogeneous"


class Surface(str, Enum):
    WELL_DEFINED = "Well-defined margin"
    ILL_DEFINED = "Ill-defined margin"


class Invasion(str, Enum):
    NONE = "No close relationship with surrounding structures"
    ADJACENT = "Close relationship with adjacent structures"

    @classmethod
    def of(cls, invades: bool) -> "Invasion":
        return cls.ADJACENT if invades else cls.NONE


# Short forms a user may type on the command line or a slider label (matched case-insensitively).
_ALIASES: dict[str, str] = {
    "round": "Round-like", "round-like": "Round-like", "roundlike": "Round-like",
    "irregular": "Irregular", "wall": "Wall thickening", "wall-thickening": "Wall thickening",
    "wall_thickening": "Wall thickening", "punctate": "Punctate, nodular", "nodular": "Punctate, nodular",
    "hypo": "Hypodense", "iso": "Isodense", "hyper": "Hyperdense",
    "homogeneous": "Homogeneous", "heterogeneous": "Heterogeneous",
    "well": "Well-defined margin", "well-defined": "Well-defined margin", "well_defined": "Well-defined margin",
    "ill": "Ill-defined margin", "ill-defined": "Ill-defined margin", "ill_defined": "Ill-defined margin",
}

E = TypeVar("E", bound=Enum)


def parse_attribute(enum: type[E], value: "str | E", what: str) -> E:
    """Parse an attribute from its exact wording, enum name or a short alias.

    Raises SpecificationError listing the allowed wordings.
    """
    if isinstance(value, enum):
        return value
    text = str(value).strip()
    candidates = {member.value.lower(): member for member in enum}
    candidates.update({member.name.lower(): member for member in enum})
    key = text.lower()
    if key in candidates:
        return candidates[key]
    alias = _ALIASES.get(key)
    if alias is not None and alias.lower() in candidates:
        return candidates[alias.lower()]
    allowed = ", ".join(repr(member.value) for member in enum)
    raise SpecificationError(f"Unknown {what} {value!r}. Allowed values: {allowed}.")
