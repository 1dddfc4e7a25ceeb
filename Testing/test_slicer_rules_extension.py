"""ExtensionsIndex: the extension's description (ExtensionsIndex/PASTA.json) is valid against the
index's JSON schema and passes the checks of its scripts/check_description_files.py that can run
offline: known category, name not starting with "Slicer", the top-level CMakeLists project() named
like the description file, icon/screenshot URLs set, LF line endings; plus a LICENSE file, the
PyTorch dependency and the supported Slicer range in the extension metadata.

Rules: Testing/slicer_rules/extensions_index_schema.json (schema + check rules with commit/file/line,
made by extract.py from Slicer/ExtensionsIndex).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
INDEX = json.loads((ROOT / "Testing" / "slicer_rules" / "extensions_index_schema.json").read_text())
DESCRIPTION = ROOT / "ExtensionsIndex" / "PASTA.json"


def description_errors(name: str, description: dict, raw: bytes, cmake: str) -> list[str]:
    """What the ExtensionsIndex checks would report for description file ``name``.json."""
    checks = INDEX["checks"]
    errors = [f"schema ({INDEX['file']}): {e.message}"
              for e in jsonschema.Draft7Validator(INDEX["schema"]).iter_errors(description)]
    if description.get("$schema") != INDEX["schema"]["$id"]:
        errors.append(f"$schema is not the current schema {INDEX['schema']['$id']}")
    if description.get("category") not in checks["categories"]["values"]:
        errors.append(f"category {description.get('category')!r} unknown ({checks['file']}:{checks['categories']['line']})")
    if name.lower().startswith("slicer"):
        errors.append(f"extension name {name!r} starts with 'Slicer' ({checks['file']}:"
                      f"{checks['name_not_starting_with_slicer']['line']})")
    if b"\r" in raw:
        errors.append("non-LF line endings")
    projects = re.findall(checks["cmake_project_pattern"]["regex"], cmake, re.IGNORECASE | re.MULTILINE)
    if not projects or projects[0].strip("\"'") != name:
        errors.append(f"CMakeLists.txt project {projects[:1]} does not match description file name {name!r}")
    for variable in checks["cmake_required"]["variables"]:
        if not re.search(rf'set\s*\({variable}\s*"https://[^"]+"', cmake):
            errors.append(f"CMakeLists.txt lacks {variable}")
    depends = re.search(r'set\(EXTENSION_DEPENDS\s+"([^"]*)"', cmake)
    if "PyTorch" not in description.get("build_dependencies", []) or not depends or "PyTorch" not in depends.group(1).split():
        errors.append("PyTorch must be a build dependency (description) and in EXTENSION_DEPENDS (CMakeLists.txt)")
    return errors


def _current():
    raw = DESCRIPTION.read_bytes()
    return DESCRIPTION.stem, json.loads(raw), raw, (ROOT / "CMakeLists.txt").read_text()


def test_index_rules_have_provenance():
    assert INDEX["file"].startswith("schemas/") and len(INDEX["commit"]) == 40
    assert set(INDEX["schema"]["required"]) == {"$schema", "category", "scm_url"}
    assert "Segmentation" in INDEX["checks"]["categories"]["values"]


def test_description_is_ready_to_submit():
    name, description, raw, cmake = _current()
    assert description_errors(name, description, raw, cmake) == []
    assert description["scm_url"].startswith("https://github.com/")
    assert (ROOT / "LICENSE").read_text().startswith("\n                                 Apache License")
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    # the supported range, enforced when the extension is configured
    assert 'set(EXTENSION_MINIMUM_SLICER_VERSION "5.10")' in cmake
    assert "if(Slicer_VERSION VERSION_LESS EXTENSION_MINIMUM_SLICER_VERSION)" in cmake


def test_description_check_refuses_broken_copies():
    name, description, raw, cmake = _current()
    missing = copy.deepcopy(description)
    del missing["scm_url"]
    assert any("'scm_url' is a required property" in e for e in description_errors(name, missing, raw, cmake))
    extra = dict(description, homepage="https://example.org")
    assert any("Additional properties" in e for e in description_errors(name, extra, raw, cmake))
    assert any("category 'Tumours' unknown" in e
               for e in description_errors(name, dict(description, category="Tumours"), raw, cmake))
    assert any("starts with 'Slicer'" in e for e in description_errors("SlicerPASTA", description, raw, cmake))
    assert any("does not match" in e
               for e in description_errors(name, description, raw, cmake.replace("project(PASTA)", "project(SlicerPASTA)")))
    no_torch = cmake.replace('set(EXTENSION_DEPENDS "PyTorch")', 'set(EXTENSION_DEPENDS "NA")')
    assert any("PyTorch must be" in e for e in description_errors(name, description, raw, no_torch))
    assert any("non-LF" in e for e in description_errors(name, description, raw.replace(b"\n", b"\r\n"), cmake))
