"""The structured report of one lesion (8 attributes, exact wording) and its one-line text."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from PASTALib.labels import Organ
from PASTALib.report.attributes import MASS_SUFFIX, Shape
from PASTALib.report.schema import SCHEMA_VERSION, validate_report

#: Separator of the one-line report text; :func:`PASTALib.report.parsing.parse_report_text` reads it back.
TEXT_SEPARATOR = "; "


def location_text(organ: Organ, side: str | None) -> str:
    """Organ display name, with the side for paired organs ("Right kidney")."""
    if organ.is_paired and side:
        return f"{side.capitalize()} {organ.display_name.lower()}"
    return organ.display_name


@dataclass(frozen=True)
class StructuredReport:
    """The PASTA structured report of one lesion plus the measurements behind it."""

    enhancement: str
    location: str
    size_zxy_mm: tuple[int, int, int]  # craniocaudal, right-left, anterior-posterior
    shape: str
    density: str
    heterogeneity: str
    surface: str
    invasion: str
    lesion_type: str
    label_value: int
    centre_mm: tuple[float, float, float]  # LPS centroid of the lesion label
    volume_mm3: float
    mean_hu: float
    organ_mean_hu: float
    seed: int | None = None

    @property
    def size_text(self) -> str:
        return "×".join(str(v) for v in self.size_zxy_mm) + "mm"

    @property
    def shape_text(self) -> str:
        # Masses are reported as "<shape> mass"; the other two wordings stand alone.
        return f"{self.shape}{MASS_SUFFIX}" if self.shape in (Shape.ROUND.value, Shape.IRREGULAR.value) else self.shape

    def to_text(self) -> str:
        """One-line form: "Enhanced CT; Right kidney; 25×25×37mm; Round-like mass; ..."."""
        return TEXT_SEPARATOR.join(
            [self.enhancement, self.location, self.size_text, self.shape_text, self.density,
             self.heterogeneity, self.surface, self.invasion]
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["size_zxy_mm"] = list(self.size_zxy_mm)
        out["centre_mm"] = [round(float(v), 2) for v in self.centre_mm]
        out["size"] = self.size_text
        out["text"] = self.to_text()
        out["schema_version"] = SCHEMA_VERSION
        return out

    def to_json(self, indent: int | None = 2) -> str:
        data = self.to_dict()
        validate_report(data)
        return json.dumps(data, indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "StructuredReport":
        data = json.loads(text)
        validate_report(data)
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["size_zxy_mm"] = tuple(fields["size_zxy_mm"])
        fields["centre_mm"] = tuple(fields["centre_mm"])
        return cls(**fields)
