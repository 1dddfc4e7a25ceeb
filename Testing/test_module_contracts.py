"""Contracts between the Slicer module files that cannot run here (they need Slicer's Qt):

* every ``self.ui.X`` used in a module .py is an objectName in its .ui;
* each .ui loads offscreen with PySide6's QUiLoader; Slicer/CTK classes unknown to plain Qt
  may only fall back to their base class if declared in <customwidgets>, and every named
  widget must be in the loaded tree (so broken XML or a misspelled class fails);
* every ``SlicerParameterName`` in a .ui is a field of the module's parameterNodeWrapper;
* every file named in the CMakeLists SCRIPTS / RESOURCES exists;
* module metadata (title, categories, contributors, helpText) is set (parsed with ``ast``);
* module files import nothing from PASTALib at top level (PASTALib pulls torch lazily).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ["PASTA", "PASTASynth"]
#: Widget classes of a module file built from their own .ui (class name = .ui name in Resources/UI).
PANELS = {"PASTA": [], "PASTASynth": ["ReaderStudyPanel"]}


def module_py(module: str) -> Path:
    return REPO / module / f"{module}.py"


def ui_path(module: str, name: str | None = None) -> Path:
    return REPO / module / "Resources" / "UI" / f"{name or module}.ui"


def ui_object_names(path: Path) -> dict[str, str]:
    """objectName -> class for every widget in a .ui file."""
    root = ET.parse(path).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def ui_attributes_used(path: Path, only: str | None = None, skip: Sequence[str] = ()) -> set[str]:
    """``self.ui.X`` names used in a module file: in class ``only``, or everywhere but the classes in ``skip``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = [n for n in tree.body if not (isinstance(n, ast.ClassDef) and n.name in skip)
             and (only is None or (isinstance(n, ast.ClassDef) and n.name == only))]
    used = set()
    for node in (n for root in roots for n in ast.walk(root)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            used.add(node.attr)
    return used


@pytest.mark.parametrize("module", MODULES)
def test_ui_attributes_exist(module):
    names = ui_object_names(ui_path(module))
    used = ui_attributes_used(module_py(module), skip=PANELS[module])
    assert used, f"{module}.py uses no self.ui widgets?"
    missing = sorted(used - set(names))
    assert not missing, f"{module}.py uses self.ui.{missing} not defined in {ui_path(module).name}"
    for panel in PANELS[module]:
        used = ui_attributes_used(module_py(module), only=panel)
        assert used, f"{panel} uses no self.ui widgets?"
        missing = sorted(used - set(ui_object_names(ui_path(module, panel))))
        assert not missing, f"{panel} uses self.ui.{missing} not defined in {panel}.ui"
        # each widget lives in one .ui: the panel's are not left in the module's
        assert not used & set(names), f"{sorted(used & set(names))} are in both {module}.ui and {panel}.ui"


def _parameter_fields(module: str) -> set[str]:
    tree = ast.parse(module_py(module).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_names_match_parameter_node(module):
    fields = _parameter_fields(module)
    root = ET.parse(ui_path(module)).getroot()
    bound = {p.findtext("string") for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound, "no widget is bound to the parameter node"
    assert bound <= fields, f"SlicerParameterName without a parameter: {sorted(bound - fields)}"


@pytest.mark.parametrize("module", MODULES)
def test_ui_mrml_widgets_receive_scene(module):
    root = ET.parse(ui_path(module)).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == module
    mrml = {w.get("name") for w in root.iter("widget")
            if w.get("class") in ("qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget", "qMRMLSegmentSelectorWidget")}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml <= connected, f"MRML widgets without setMRMLScene connection: {sorted(mrml - connected)}"


# QUiLoader runs in a subprocess: a QApplication must not leak into other tests.
_LOADER = r"""
import json, re, sys
from PySide6 import QtCore, QtWidgets, QtUiTools
messages = []
QtCore.qInstallMessageHandler(lambda mode, ctx, text: messages.append(text))
app = QtWidgets.QApplication([])
out = {}
for path in sys.argv[1:]:
    f = QtCore.QFile(path)
    ok = f.open(QtCore.QIODevice.ReadOnly)
    loader = QtUiTools.QUiLoader()
    del messages[:]
    try:
        widget = loader.load(f) if ok else None
    except RuntimeError as exc:
        widget, error = None, str(exc)
    else:
        error = loader.errorString()
    names = sorted({o.objectName() for o in widget.findChildren(QtCore.QObject)} | {widget.objectName()}) if widget else []
    out[path] = {"loaded": widget is not None, "error": error, "names": names, "messages": list(messages)}
print(json.dumps(out))
"""

_EXPECTED_MESSAGE = re.compile(
    r"QFormBuilder was unable to create a custom widget of the class '(?P<cls>\w+)'"
    r"|QObject::connect|No such signal QWidget::mrmlSceneChanged"
    r"|The set-type property \w+ could not be read"
    r"|The enumeration-type property \w+ could not be read"
    r"|property \w+ is not declared|Property \w+ is not of type|could not be read")


def _load_with_quiloader(paths: list[Path]) -> dict:
    import json

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-c", _LOADER, *map(str, paths)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_loaded(path: Path, result: dict) -> None:
    assert result["loaded"], f"{path.name} did not load: {result['error']}"
    root = ET.parse(path).getroot()
    declared = {c.findtext("class"): c for c in root.iter("customwidget")}
    for name, custom in declared.items():
        assert re.match(r"^(q(MRML|Slicer)|ctk)\w+$", name), f"{name} is not a Slicer/CTK widget"
        assert custom.findtext("header") == f"{name}.h", f"{name}: header should be {name}.h"
    for text in result["messages"]:
        match = _EXPECTED_MESSAGE.search(text)
        assert match, f"{path.name}: unexpected Qt message: {text}"
        if match["cls"]:
            assert match["cls"] in declared, f"{path.name}: unknown widget class {match['cls']} (typo?)"
    missing = set(ui_object_names(path)) - set(result["names"])
    assert not missing, f"{path.name}: widgets missing from the loaded tree: {sorted(missing)}"


def test_ui_files_load_with_quiloader(tmp_path):
    paths = [ui_path(m) for m in MODULES] + [ui_path(m, p) for m in MODULES for p in PANELS[m]]
    broken = tmp_path / "broken.ui"
    broken.write_text(ui_path("PASTA").read_text(encoding="utf-8").replace("</widget>", "", 1), encoding="utf-8")
    typo = tmp_path / "typo.ui"
    typo.write_text(ui_path("PASTA").read_text(encoding="utf-8").replace('class="QPushButton"', 'class="QPushButon"', 1),
                    encoding="utf-8")
    results = _load_with_quiloader(paths + [broken, typo])
    for path in paths:
        _check_loaded(path, results[str(path)])
    # The check must fail on broken XML and on a misspelled class.
    for bad in (broken, typo):
        with pytest.raises(AssertionError):
            _check_loaded(bad, results[str(bad)])


def _cmake_listed_files(cmake: Path) -> list[Path]:
    text = re.sub(r"#[^\n]*", "", cmake.read_text(encoding="utf-8"))
    variables = {"MODULE_NAME": None}
    m = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text)
    if m:
        variables["MODULE_NAME"] = m.group(1)
    files = []
    for block in re.findall(r"set\((MODULE_PYTHON_(?:SCRIPTS|RESOURCES))\s+([^)]*)\)", text):
        for item in block[1].split():
            files.append(cmake.parent / item.replace("${MODULE_NAME}", variables["MODULE_NAME"]))
    return files


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_existing_files(module):
    cmake = REPO / module / "CMakeLists.txt"
    text = cmake.read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    files = _cmake_listed_files(cmake)
    assert module_py(module) in files and ui_path(module) in files
    assert {ui_path(module, p) for p in PANELS[module]} <= set(files)
    assert REPO / module / "Resources" / "Icons" / f"{module}.png" in files
    missing = [str(f.relative_to(REPO)) for f in files if not f.is_file()]
    assert not missing, f"{cmake.relative_to(REPO)} lists missing files: {missing}"
    # Every Python file of the module's helper packages is installed.
    on_disk = {p for p in (REPO / module).rglob("*.py") if "__pycache__" not in p.parts}
    unlisted = sorted(str(p.relative_to(REPO)) for p in on_disk - set(files))
    assert not unlisted, f"{cmake.relative_to(REPO)} does not install {unlisted}"


def test_shared_slicer_library_is_installed_as_a_package():
    """PASTASlicerLib is built like Slicer's DICOMLib (WITH_SUBDIR: its own folder in
    qt-scripted-modules), before the modules that import it, and installs every file it has."""
    cmake = REPO / "PASTASlicerLib" / "CMakeLists.txt"
    text = re.sub(r"#[^\n]*", "", cmake.read_text(encoding="utf-8"))
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_SUBDIR" in text and "NAME ${MODULE_NAME}" in text
    assert "WITH_GENERIC_TESTS" not in text  # a library, not a module
    files = set(_cmake_listed_files(cmake))
    on_disk = {p for p in (REPO / "PASTASlicerLib").glob("*.py")}
    assert files == on_disk, f"{cmake.relative_to(REPO)} lists {sorted(map(str, files ^ on_disk))} wrongly"
    top = re.sub(r"#[^\n]*", "", (REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert top.index("add_subdirectory(PASTASlicerLib)") < top.index("add_subdirectory(PASTA)")
    assert top.index("add_subdirectory(PASTASlicerLib)") < top.index("add_subdirectory(PASTASynth)")


def _imported_packages(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add((node.module or "").split(".")[0])
    return names


def test_modules_share_only_the_slicer_library():
    """Neither module imports the other's helper package: what both need is in PASTASlicerLib
    (or PASTALib), which imports neither."""
    assert "PASTASynthLib" not in _imported_packages(REPO / "PASTA")
    assert "PASTALogicLib" not in _imported_packages(REPO / "PASTASynth")
    shared = _imported_packages(REPO / "PASTASlicerLib")
    assert not shared & {"PASTASynthLib", "PASTALogicLib", "PASTA", "PASTASynth"}, shared
    assert {"PASTASlicerLib"} <= _imported_packages(REPO / "PASTA") & _imported_packages(REPO / "PASTASynth")


def test_top_level_cmake_is_an_extension():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in ("cmake_minimum_required(", "project(PASTA)", "EXTENSION_HOMEPAGE",
                   'EXTENSION_CATEGORY "Segmentation"', "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                   "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", 'EXTENSION_DEPENDS "PyTorch"',
                   "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(PASTA)", "add_subdirectory(PASTASynth)", "NAME PASTALib",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in text, f"top-level CMakeLists.txt lacks {needle}"
    assert (REPO / "PASTALib" / "__init__.py").is_file()
    assert (REPO / "Resources" / "Icons" / "SlicerPASTA.png").is_file()


def _literal_strings(node: ast.AST) -> list[str]:
    """String constants in an expression, looking through _()/translate() calls."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata(module):
    tree = ast.parse(module_py(module).read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for suffix, base in (("", "ScriptedLoadableModule"), ("Widget", "ScriptedLoadableModuleWidget"),
                         ("Logic", "ScriptedLoadableModuleLogic"), ("Test", "ScriptedLoadableModuleTest")):
        cls = classes.get(module + suffix)
        assert cls is not None, f"{module}.py lacks class {module + suffix}"
        assert base in {getattr(b, "id", None) for b in cls.bases}, f"{module + suffix} must derive {base}"
    assert "VTKObservationMixin" in {getattr(b, "id", None) for b in classes[module + "Widget"].bases}
    assigned = {}
    for node in ast.walk(classes[module]):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            target = node.targets[0]
            if isinstance(target.value, ast.Attribute) and target.value.attr == "parent":
                assigned[target.attr] = _literal_strings(node.value)
    for key in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert assigned.get(key) and all(s.strip() for s in assigned[key]), f"{module}: parent.{key} empty"
    assert "PASTA" in assigned["categories"]
    run_test = next(n for n in classes[module + "Test"].body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    assert run_test is not None
    source = ast.unparse(classes[module + "Test"])
    assert "scenarios.run_all(" in source, "runTest must run the same scenarios as pytest"
    assert f"loadUI(self.resourcePath('UI/{module}.ui'))" in ast.unparse(classes[module + "Widget"])


@pytest.mark.parametrize("module", MODULES)
def test_module_top_level_imports_are_light(module):
    tree = ast.parse(module_py(module).read_text(encoding="utf-8"))
    top = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            top.append(node.module or "")
        elif isinstance(node, ast.Try):
            top += [a.name if isinstance(s, ast.Import) else s.module
                    for s in node.body if isinstance(s, (ast.Import, ast.ImportFrom)) for a in s.names]
    # The report vocabulary is standard-library only (test_report checks it): the parameter node lists it.
    light = {"PASTALib.report.attributes"}
    heavy = [m for m in top if m not in light
             and m.split(".")[0] in {"PASTALib", "torch", "monai", "SimpleITK", "nibabel", "scipy"}]
    assert not heavy, f"{module}.py imports {heavy} at top level"
    for required in ("slicer", "qt", "ctk", "vtk"):
        assert required in top, f"{module}.py should import {required} like a Slicer module"


def test_helper_packages_import_without_torch():
    """The module helper packages (and what they import) never import torch."""
    code = ("import sys; sys.path[:0] = [%r, %r, %r];"
            "import PASTASynthLib.logic, PASTASynthLib.scenarios, PASTASlicerLib.dependencies, PASTASlicerLib.jobs, "
            "PASTALogicLib.logic, PASTALogicLib.scenarios;"
            # the widget checks for the weights when the panel opens: that must not load torch either
            "from PASTALib.errors import MissingWeightsError\n"
            "try: PASTALogicLib.logic.resolve_checkpoint('/nonexistent/PASTA_final.pth', False, None)\n"
            "except MissingWeightsError: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'; assert 'qt' not in sys.modules")
    code = code % (str(REPO), str(REPO / "PASTA"), str(REPO / "PASTASynth"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_dependency_check_message():
    from PASTASlicerLib import dependencies

    report = dependencies.check_dependencies()
    assert report.ok, report.message  # the test venv has every dependency
    absent = dependencies.PythonRequirement("surely-not-a-package-xyz", "xyz", "==1", "test")
    missing = dependencies.check_dependencies([absent, dependencies.TORCH])
    assert not missing.ok and "surely-not-a-package-xyz==1 (missing)" in missing.message
    torch, others, private = dependencies.install_plan(missing)
    assert torch is None and others == ["surely-not-a-package-xyz==1"] and private == []
