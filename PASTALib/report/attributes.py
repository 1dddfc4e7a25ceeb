"""The five report attribute vocabularies: each enum value is the structured report's exact wording.

One canonical key per attribute, the report schema's (``surface``, not ``margin``): older specs,
tables and the CLI's ``--margin`` name the same attribute ``margin``; :func:`canonical_key` maps it.
Imports nothing but the standard library and PASTALib.errors (the Slicer panels load it at import time).
"""

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


#: Report key -> its vocabulary, in report (and model logit group) order.
ATTRIBUTES: dict[str, type[Enum]] = {
    "shape": Shape, "density": Density, "heterogeneity": Heterogeneity, "surface": Surface, "invasion": Invasion,
}
#: Panel / type.json title of each attribute ("Shape", ...).
TITLES: dict[str, str] = {key: key.capitalize() for key in ATTRIBUTES}
#: Other names of an attribute key (spec files, classification tables, ``--margin``).
KEY_ALIASES: dict[str, str] = {"margin": "surface"}
#: Sentence form of the shape: masses are reported as "<shape> mass", the other wordings stand alone.
MASS_SUFFIX = " mass"


def canonical_key(key: str) -> str:
    """The report key of an attribute name (``margin`` -> ``surface``; case-insensitive)."""
    lowered = key.strip().lower()
    return KEY_ALIASES.get(lowered, lowered)


def wordings(key: str) -> tuple[str, ...]:
    """The exact report wordings of an attribute, in declaration (logit) order."""
    return tuple(member.value for member in ATTRIBUTES[canonical_key(key)])


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
