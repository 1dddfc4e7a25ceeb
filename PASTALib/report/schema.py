"""report.schema.json: the JSON Schema (draft 2020-12) of a structured report, and validation against it."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from PASTALib.errors import SpecificationError

SCHEMA_VERSION = 1


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a structured report."""
    text = resources.files("PASTALib").joinpath("resources/report.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate_report(data: dict[str, Any]) -> None:
    """Raise SpecificationError when ``data`` does not follow report.schema.json."""
    import jsonschema  # not bundled with Slicer: only needed when a report is written or read

    try:
        jsonschema.Draft202012Validator(report_schema()).validate(data)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "report"
        raise SpecificationError(f"Invalid structured report at {where}: {exc.message}") from None
