"""Structured-report cards: one editable card per lesion, validated against PASTALib's report schema.

A card holds the lesion's schema-valid report (the dict ``pasta segment`` writes to reports.json)
and offers its 8 attributes as fields: enumerated attributes (enhancement, location, shape,
density, heterogeneity, surface, invasion) take one of the schema's exact wordings (the widget
shows a combo box), the size is free text "Z×X×Y mm" (three whole millimetres). Every edit is
checked before it is applied (an invalid value raises ``ReportEditError`` naming the allowed
values and leaves the card unchanged), and the one-line text and ``size`` string are
regenerated from the edited values. Measurements (volume, mean HU, centre) are never edited.

No Qt, Slicer or torch import: the widget and the tests use the same model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PASTALib.errors import SpecificationError
from PASTALib.io.files import write_json_atomic
from PASTALib.report.attributes import TITLES

#: The 8 report attributes in report order: (key in the report dict, label shown on the card).
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("enhancement", "Enhancement status"),
    ("location", "Location"),
    ("size", "Size"),
    *TITLES.items(),  # the five classified attributes (PASTALib.report)
)
ATTRIBUTE_LABELS = dict(ATTRIBUTES)
#: Format tag of the JSON document stored on the scene (report text node).
CARDS_FORMAT = "pasta-report-cards/1"

_SIZE = re.compile(r"^\s*(\d+)\s*[×xX*]\s*(\d+)\s*[×xX*]\s*(\d+)\s*(mm)?\s*$")


class ReportEditError(SpecificationError):
    """A report card edit is not allowed (value outside the schema); the message lists the allowed values."""


def report_schema() -> dict[str, Any]:
    from PASTALib.report.schema import report_schema as schema

    return schema()


def field_choices(key: str) -> tuple[str, ...]:
    """The schema's allowed wordings of an enumerated attribute; () for free-text fields (size)."""
    if key not in ATTRIBUTE_LABELS:
        raise KeyError(f"unknown report attribute {key!r}; known: {', '.join(ATTRIBUTE_LABELS)}")
    return tuple(report_schema()["properties"].get(key, {}).get("enum", ()))


def parse_size(text: str) -> tuple[int, int, int]:
    """``"25×25×37mm"`` / ``"25 x 25 x 37 mm"`` -> (25, 25, 37) = craniocaudal, right-left, anterior-posterior."""
    match = _SIZE.match(str(text))
    if not match:
        raise ReportEditError(
            f"Size {text!r} is not valid: write three whole-millimetre extents Z×X×Y "
            "(craniocaudal × right-left × anterior-posterior), e.g. 25×25×37 mm")
    return tuple(int(match[i]) for i in (1, 2, 3))  # type: ignore[return-value]


def normalized_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report validated and with its derived fields (``size``, ``text``) regenerated."""
    from PASTALib.report.wording import StructuredReport

    return StructuredReport.from_json(json.dumps(dict(report))).to_dict()


@dataclass(frozen=True)
class CardField:
    """One attribute of a card as the widget shows it."""

    key: str
    label: str
    value: str
    choices: tuple[str, ...] = ()  # () = free text (validated on edit)

    @property
    def is_choice(self) -> bool:
        return bool(self.choices)


@dataclass
class ReportCard:
    """The structured report of one lesion instance, editable attribute by attribute."""

    index: int  # lesion index from lesions.json (1 = largest)
    report: dict[str, Any]
    segment_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # lesions.json entry (confidences, diameter)
    edited: list[str] = field(default_factory=list)  # attribute keys changed by the user

    def __post_init__(self) -> None:
        self.report = normalized_report(self.report)

    @property
    def lesion_name(self) -> str:
        from PASTALib.labels import LesionType

        return LesionType.parse(self.report["lesion_type"]).display_name

    @property
    def title(self) -> str:
        return f"Lesion {self.index}: {self.lesion_name}"

    @property
    def text(self) -> str:
        return str(self.report["text"])

    def value(self, key: str) -> str:
        if key not in ATTRIBUTE_LABELS:
            raise KeyError(f"unknown report attribute {key!r}; known: {', '.join(ATTRIBUTE_LABELS)}")
        return str(self.report["size"] if key == "size" else self.report[key])

    def fields(self) -> list[CardField]:
        return [CardField(key, label, self.value(key), field_choices(key)) for key, label in ATTRIBUTES]

    def confidence(self, key: str) -> float | None:
        """The model's confidence in an attribute (lesions.json), None when unknown."""
        value = (self.details.get("confidence") or {}).get(key)
        return float(value) if value is not None else None

    def set(self, key: str, value: str) -> str:
        """Edit one attribute; returns the stored wording. Raises ReportEditError (card unchanged)."""
        label = ATTRIBUTE_LABELS.get(key)
        if label is None:
            raise ReportEditError(f"{key!r} is not an editable report attribute; editable: {', '.join(ATTRIBUTE_LABELS)}")
        new = dict(self.report)
        if key == "size":
            new["size_zxy_mm"] = list(parse_size(value))
            new.pop("size", None)
        else:
            choices = field_choices(key)
            exact = {c.casefold(): c for c in choices}
            wording = exact.get(str(value).strip().casefold())
            if wording is None:
                raise ReportEditError(
                    f"{value!r} is not a valid {label} for lesion {self.index}. "
                    f"Allowed values: {', '.join(choices)}")
            new[key] = wording
        try:
            new = normalized_report(new)
        except SpecificationError as exc:  # e.g. a size the schema refuses
            raise ReportEditError(f"Lesion {self.index}: {exc}") from None
        if new != self.report:
            self.report = new
            if key not in self.edited:
                self.edited.append(key)
        return self.value(key)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "segment_id": self.segment_id, "edited": list(self.edited),
                "details": self.details, "report": self.report}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportCard:
        return cls(int(data["index"]), dict(data["report"]), str(data.get("segment_id", "")),
                   dict(data.get("details") or {}), list(data.get("edited") or []))


@dataclass
class ReportCards:
    """All cards of one segmentation, in lesion order; serialises to the scene's report node."""

    cards: list[ReportCard] = field(default_factory=list)
    source: str = ""  # the `pasta segment` output folder the cards came from

    def __iter__(self):
        return iter(self.cards)

    def __len__(self) -> int:
        return len(self.cards)

    def card(self, index: int) -> ReportCard:
        for c in self.cards:
            if c.index == index:
                return c
        raise KeyError(f"no report card for lesion {index}; lesions: {[c.index for c in self.cards]}")

    def reports(self) -> list[dict[str, Any]]:
        """The (edited) reports in reports.json's format: one schema-valid dict per lesion."""
        return [dict(c.report) for c in self.cards]

    def to_json(self) -> str:
        return json.dumps({"format": CARDS_FORMAT, "source": self.source,
                           "cards": [c.to_dict() for c in self.cards]}, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ReportCards:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != CARDS_FORMAT:
            raise ReportEditError(f"not a PASTA report-card document (expected format {CARDS_FORMAT!r})")
        return cls([ReportCard.from_dict(c) for c in data.get("cards", [])], str(data.get("source", "")))

    @classmethod
    def from_outputs(cls, reports: Sequence[Mapping[str, Any]], lesions: Sequence[Mapping[str, Any]],
                     segment_ids: Iterable[str] = (), source: str = "") -> ReportCards:
        """Cards from reports.json + lesions.json (one entry each per lesion, same order)."""
        ids = list(segment_ids) or [""] * len(lesions)
        return cls([ReportCard(int(les["index"]), dict(rep), sid, dict(les))
                    for rep, les, sid in zip(reports, lesions, ids)], source)

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write the (edited) reports as JSON like reports.json: every report validated first, atomic."""
        from PASTALib.report.schema import validate_report

        reports = self.reports()
        for r in reports:
            validate_report(r)
        return write_json_atomic(path, reports)


