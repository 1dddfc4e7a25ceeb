"""PASTALib.report: one vocabulary with one key per attribute, read back from text, light to import,
and the only place outside docs/tests where the report wordings are spelled."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from PASTALib.errors import SpecificationError
from PASTALib.report import (
    ATTRIBUTES,
    StructuredReport,
    Surface,
    canonical_key,
    parse_report_text,
    report_attributes,
    report_schema,
    wordings,
)

ROOT = Path(__file__).resolve().parents[1]


def _report(**changes) -> StructuredReport:
    fields = dict(enhancement="Plain CT", location="Left kidney", size_zxy_mm=(15, 14, 16), shape="Round-like",
                  density="Hypodense", heterogeneity="Homogeneous", surface="Well-defined margin",
                  invasion="No close relationship with surrounding structures", lesion_type="kidney_tumor",
                  label_value=18, centre_mm=(1.0, 2.0, 3.0), volume_mm3=1500.0, mean_hu=20.0, organ_mean_hu=35.0)
    return StructuredReport(**{**fields, **changes})


def test_schema_enums_are_the_vocabulary():
    """report.schema.json lists exactly the enums' wordings, under the same keys, in the same order."""
    properties = report_schema()["properties"]
    for key in ATTRIBUTES:
        assert properties[key]["enum"] == list(wordings(key)), key
    assert "margin" not in properties and set(ATTRIBUTES) <= set(report_schema()["required"])


def test_margin_is_mapped_to_the_report_key_once():
    from PASTALib.synth import LesionSpec, allowed_values

    assert canonical_key("margin") == canonical_key(" Surface ") == "surface"
    assert wordings("margin") == wordings("surface") == tuple(m.value for m in Surface)
    # An old spec file's "margin" reads as the surface; the spec writes the report key back.
    spec = LesionSpec.from_dict({"lesion_type": "liver_tumor", "margin": "ill"})
    assert spec.surface is Surface.ILL_DEFINED
    assert spec.to_dict()["surface"] == "Ill-defined margin" and "margin" not in spec.to_dict()
    assert set(allowed_values("liver_tumor")) >= set(ATTRIBUTES)


def test_report_text_reads_back():
    for report in (_report(), _report(shape="Wall thickening", surface="Ill-defined margin")):
        values = parse_report_text(report.to_text())
        assert values == {"enhancement": report.enhancement, "location": report.location, "size": report.size_text,
                          **{key: getattr(report, key) for key in ATTRIBUTES}}
    with pytest.raises(SpecificationError, match="8 fields"):
        parse_report_text("Plain CT; Liver; Round-like mass")


def test_report_attributes_reads_our_keys_and_type_json_titles():
    ours = report_attributes(_report().to_dict())
    assert ours == {key: getattr(_report(), key) for key in ATTRIBUTES}
    pasta_gen = {"Shape": "Irregular mass", "Density": " Hyperdense ", "Surface": "", "Invasion": None}
    assert report_attributes(pasta_gen) == {"shape": "Irregular", "density": "Hyperdense"}
    assert report_attributes(None) == {}


def test_json_round_trip_validates():
    report = _report()
    assert StructuredReport.from_json(report.to_json()) == report
    bad = json.loads(report.to_json())
    bad["surface"] = "smooth"
    with pytest.raises(SpecificationError, match="surface"):
        StructuredReport.from_json(json.dumps(bad))


def test_package_imports_neither_torch_nor_simpleitk():
    """The Slicer panels import it at load time: only the standard library and numpy."""
    code = ("import sys; import PASTALib.report, PASTALib.report.measure; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'monai', 'SimpleITK', 'scipy', 'jsonschema', 'pandas', 'slicerio'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, value) of the string constants in a file, docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                  and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_the_vocabulary_is_spelled_only_in_the_report_package():
    """No library or module code outside PASTALib/report spells a report wording (tests, docs and the
    in-Slicer test scenarios excepted: they state expected values)."""
    spelled = {w for key in ATTRIBUTES for w in wordings(key)}
    files = [p for folder in ("PASTALib", "PASTA", "PASTASynth", "scripts", "benchmarks")
             for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 50
    offending = [f"{p.relative_to(ROOT)}:{line}: {value!r}" for p in files
                 if "report" not in p.relative_to(ROOT).parts[:2] and p.name != "scenarios.py"
                 for line, value in _string_literals(p) if value in spelled]
    assert not offending, "\n".join(offending)
