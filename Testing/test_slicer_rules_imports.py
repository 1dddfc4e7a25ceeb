"""Import closure in a clean Slicer: each module file and what its widget imports in setup()/enter()
loads with only the Python packages Slicer bundles at v5.10.0 / v5.12.3.

Rules: Testing/slicer_rules/bundled_packages.json (from Slicer's SuperBuild External_python-*.cmake,
made by Testing/slicer_rules/extract.py). Harness: Testing/slicer_rules/closure_harness.py (a fresh
``python -S`` whose path finder only sees those packages; stand-ins only for the app modules).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "Testing" / "slicer_rules"
HARNESS = RULES / "closure_harness.py"
TAGS = ("v5.10.0", "v5.12.3")
MODULE_FILES = ("PASTA/PASTA.py", "PASTASynth/PASTASynth.py")


def load_in_clean_slicer(tag: str, module_file: Path) -> dict:
    # No PYTHONPATH: the harness finds the project's packages only where Slicer would
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-S", str(HARNESS), tag, str(module_file)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = [line for line in run.stdout.splitlines() if line.startswith("CLOSURE-RESULT ")]
    assert lines, f"harness gave no result:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return json.loads(lines[-1].split(" ", 1)[1])


def test_bundled_package_rules_have_provenance():
    rules = json.loads((RULES / "bundled_packages.json").read_text())
    assert set(rules) == set(TAGS)
    for tag, packages in rules.items():
        for package in packages:
            assert package["tag"] == tag and package["file"].startswith("SuperBuild/External_") and package["line"] > 0
        names = {name for package in packages for name in package["import_names"]}
        assert {"numpy", "scipy", "SimpleITK", "pydicom", "PIL", "requests", "packaging"} <= names
        # Not bundled by any release: what the panels must not need before "Install dependencies".
        assert not names & {"torch", "monai", "nibabel", "slicerio", "pandas", "matplotlib", "jsonschema"}
    by_tag = {tag: {p["name"].lower(): p["version"] for p in packages} for tag, packages in rules.items()}
    assert by_tag["v5.10.0"]["pydicom"] == "2.4.4" and "highdicom" not in by_tag["v5.10.0"]
    assert by_tag["v5.12.3"]["pydicom"].startswith("3.") and by_tag["v5.12.3"]["highdicom"] == "0.27.0"


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("module_file", MODULE_FILES)
def test_module_loads_and_sets_up_with_bundled_packages_only(tag, module_file):
    result = load_in_clean_slicer(tag, ROOT / module_file)
    assert result["ok"], f"{module_file} does not load in a clean Slicer {tag}:\n{result['error']}"
    # The closure really was cut: the project's heavy dependencies were asked for and refused
    # (dependency probes), never imported.
    assert "PASTALib" in result["imported"]
    assert not set(result["imported"]) & {"torch", "monai", "nibabel", "slicerio", "pandas", "jsonschema",
                                          "matplotlib"}


def test_closure_fails_on_a_module_importing_a_non_bundled_package(tmp_path):
    """A broken copy of PASTA.py that imports nibabel at the top level must not load."""
    source = (ROOT / "PASTA" / "PASTA.py").read_text()
    broken = tmp_path / "PASTA" / "PASTA.py"
    broken.parent.mkdir()
    broken.write_text("import nibabel\n" + source)
    (broken.parent / "Resources").symlink_to(ROOT / "PASTA" / "Resources")
    result = load_in_clean_slicer("v5.12.3", broken)
    assert not result["ok"]
    assert "ModuleNotFoundError" in result["error"] and "nibabel" in result["error"]
    assert "nibabel" in result["blocked"]


def test_closure_fails_when_a_panel_import_reaches_slicerio(tmp_path):
    """A widget that imports a PASTALib module pulling slicerio at import time fails in setup()."""
    source = (ROOT / "PASTASynth" / "PASTASynth.py").read_text()
    marker = "    def setup(self) -> None:\n"
    assert marker in source
    broken = tmp_path / "PASTASynth" / "PASTASynth.py"
    broken.parent.mkdir()
    broken.write_text(source.replace(marker, marker + "        import slicerio  # noqa: F401\n", 1))
    result = load_in_clean_slicer("v5.10.0", broken)
    assert not result["ok"] and "slicerio" in result["error"] and "in setup" in result["error"]
