"""Reading report values back: a report dict (ours or PASTA-Gen ``type.json``) or the one-line text.

A report.json is read with :meth:`PASTALib.report.wording.StructuredReport.from_json` (schema-validated)."""

from __future__ import annotations

from typing import Any, Mapping

from PASTALib.errors import SpecificationError
from PASTALib.report.attributes import ATTRIBUTES, MASS_SUFFIX, TITLES
from PASTALib.report.wording import TEXT_SEPARATOR

#: Fields of the one-line text (StructuredReport.to_text), in order.
TEXT_FIELDS = ("enhancement", "location", "size", *ATTRIBUTES)


def strip_mass(shape: str) -> str:
    """The shape wording of its sentence form ("Round-like mass" -> "Round-like")."""
    return shape[: -len(MASS_SUFFIX)] if shape.endswith(MASS_SUFFIX) else shape


def report_attributes(report: Mapping[str, Any] | None) -> dict[str, str]:
    """The five attribute wordings of a report, as given (surrounding spaces trimmed, not validated).

    Reads our report.json keys (``shape``...) and PASTA-Gen ``type.json`` titles (``Shape``...); the
    shape's sentence form "<shape> mass" becomes the shape. Missing or empty attributes are left out."""
    if not report:
        return {}
    out = {}
    for key in ATTRIBUTES:
        value = report.get(key, report.get(TITLES[key]))
        if value is None or not str(value).strip():
            continue
        text = str(value).strip()
        out[key] = strip_mass(text) if key == "shape" else text
    return out


def parse_report_text(text: str) -> dict[str, str]:
    """The one-line report ("Enhanced CT; Liver; 30×25×28mm; Irregular mass; ...") -> field -> wording.

    Raises SpecificationError when the line does not have the eight fields of StructuredReport.to_text."""
    parts = [p.strip() for p in text.strip().split(TEXT_SEPARATOR.strip())]
    if len(parts) != len(TEXT_FIELDS):
        raise SpecificationError(
            f"A report line has {len(TEXT_FIELDS)} fields separated by ';' ({', '.join(TEXT_FIELDS)}); "
            f"got {len(parts)} in {text!r}. Write it as StructuredReport.to_text does."
        )
    out = dict(zip(TEXT_FIELDS, parts))
    out["shape"] = strip_mass(out["shape"])
    return out

