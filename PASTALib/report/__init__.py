"""The structured report: attribute vocabularies, wording, schema, parsing and measurement.

The neutral home of the report vocabulary: synth, model, infer, train, review, dicom and the Slicer
modules import it from here. Importing this package loads only the standard library and numpy
(never torch, SimpleITK or jsonschema), so the Slicer panels may import it at module load.
:mod:`PASTALib.report.measure` (SimpleITK at call time) is imported on its own.
"""

from PASTALib.report.attributes import (
    ATTRIBUTES,
    KEY_ALIASES,
    TITLES,
    Density,
    Heterogeneity,
    Invasion,
    Shape,
    Surface,
    canonical_key,
    parse_attribute,
    wordings,
)
from PASTALib.report.parsing import parse_report_text, report_attributes, strip_mass
from PASTALib.report.schema import SCHEMA_VERSION, report_schema, validate_report
from PASTALib.report.wording import StructuredReport, location_text

__all__ = [
    "ATTRIBUTES",
    "KEY_ALIASES",
    "SCHEMA_VERSION",
    "TITLES",
    "Density",
    "Heterogeneity",
    "Invasion",
    "Shape",
    "StructuredReport",
    "Surface",
    "canonical_key",
    "location_text",
    "parse_attribute",
    "parse_report_text",
    "report_attributes",
    "report_schema",
    "strip_mass",
    "validate_report",
    "wordings",
]
