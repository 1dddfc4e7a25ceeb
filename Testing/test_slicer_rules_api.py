"""Slicer API: every slicer.*, slicer.util.*, ctk.*, qMRML*/vtkMRML*/vtkSlicer* call of the modules
exists, with that number of arguments, in Slicer 5.10.0 and 5.12.3.

Manifest: Testing/slicer_rules/slicer_api.json, parsed by extract.py from the headers (public
methods, vtk Set/Get/Boolean macros, Q_PROPERTY, enums) of the classes the modules name (and their
Slicer/CTK bases) and from Base/Python/slicer/{util,i18n,packaging}.py, at both tags. The test
AST-scans the module code. What it checks:

* ``slicer.util.f(...)`` / ``slicer.packaging.f`` / ``slicer.i18n.f``: the function exists and
  accepts those positional and keyword arguments;
* ``slicer.X`` / ``ctk.X``: the class, app attribute (slicer.app, slicer.mrmlScene...) or module
  (``slicer.modules.<name>``) exists; ``slicer.vtkX.CONSTANT`` exists;
* ``obj.Method(...)`` with a VTK-style name (``Get``/``Set``/... capitalised) on any non-module
  receiver: if a Slicer class in the manifest declares it, one overload takes that many arguments;
  otherwise it must be a method of VTK / SimpleITK (checked on the installed packages).

A call inside ``try: ... except (AttributeError, ImportError)`` or under ``if hasattr(...)`` needs
to exist in only one of the releases (the code handles its absence).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = json.loads((ROOT / "Testing" / "slicer_rules" / "slicer_api.json").read_text())
TAGS = ("v5.10.0", "v5.12.3")
CODE = sorted([ROOT / "PASTA" / "PASTA.py", ROOT / "PASTASynth" / "PASTASynth.py",
               *(ROOT / "PASTA" / "PASTALogicLib").glob("*.py"), *(ROOT / "PASTASynth" / "PASTASynthLib").glob("*.py"),
               *(ROOT / "PASTASlicerLib").glob("*.py")])
SLICER_MODULES = {"slicer", "ctk", "vtk", "qt"}
VTK_STYLE = ("Get", "Set", "Add", "Remove", "Create", "Import", "Export", "Load", "Save", "Jump", "Has",
             "Is", "Copy", "Deep", "Insert", "Auto", "Write", "Read")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _guarded(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                caught = ast.unparse(handler.type) if handler.type is not None else "Exception"
                if any(e in caught for e in ("AttributeError", "ImportError", "Exception")):
                    return True
        if isinstance(node, ast.If) and "hasattr(" in ast.unparse(node.test):
            return True
    return False


def _class_chain(tag: str, name: str):
    classes = API[tag]["classes"]
    while name in classes:
        yield name, classes[name]
        name = classes[name]["base"]


def _member(tag: str, cls: str, attr: str):
    base = cls
    for name, entry in _class_chain(tag, cls):
        for key in ("methods", "constants", "properties"):
            if attr in entry[key]:
                return name, key, entry[key][attr]
        base = entry["base"]
    if base.startswith("Q") and _qt_has(base, attr):
        return base, "qt", None
    return None


def _qt_has(qt_class: str, attr: str) -> bool:
    """Members of Qt's own classes (the chain of a Slicer class ends in one, e.g. qSlicerCoreApplication ->
    QApplication) are Qt's API, not Slicer's: like VTK (_fallback_has) they are checked on the installed
    Qt binding (PySide6; Slicer's PythonQt exposes the same Qt method names)."""
    from PySide6 import QtCore, QtGui, QtWidgets

    return any(hasattr(getattr(m, qt_class, None), attr) for m in (QtWidgets, QtGui, QtCore)
               if getattr(m, qt_class, None) is not None)


def _arity_ok(overloads, count: int) -> bool:
    return any(low <= count <= high for low, high, *_ in overloads)


def _python_ok(tag, module, function, call) -> str | None:
    entry = API[tag]["python"].get(module, {}).get("functions", {}).get(function)
    if entry is None:
        return f"slicer.{module}.{function} does not exist"
    if call is None or any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    count = len(call.args)
    if count < entry["min"] - len([k for k in call.keywords if k.arg in (entry["keywords"] or [])]) or (
            entry["max"] is not None and count > entry["max"]):
        return f"slicer.{module}.{function} takes {entry['min']}..{entry['max']} positional arguments, called with {count}"
    if entry["keywords"] is not None:
        unknown = [k.arg for k in call.keywords if k.arg not in entry["keywords"]]
        if unknown:
            return f"slicer.{module}.{function} has no keyword argument(s) {unknown}"
    return None


def _fallback_has(method: str) -> bool:
    """VTK and SimpleITK methods are not Slicer's API: existence is checked on the installed packages."""
    import SimpleITK as sitk
    import vtk

    candidates = [sitk, sitk.Image, vtk.vtkObject, vtk.vtkImageData, vtk.vtkMatrix4x4, vtk.vtkTransform,
                  vtk.vtkPoints, vtk.vtkPolyData, vtk.vtkStringArray, vtk.vtkDataArray, vtk.vtkPointData,
                  vtk.vtkCollection, vtk.vtkIntArray]
    return any(hasattr(c, method) for c in candidates)


def api_errors(source: str, filename: str, tags=TAGS, checked: list | None = None) -> list[str]:
    """Calls of Slicer's API in ``source`` that do not exist (with that arity) at every tag.

    ``checked`` (optional) collects what was checked, to show the scan is not empty."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    modules = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    errors = []

    def check(node, describe, problem_at_tag):
        if checked is not None:
            checked.append(describe)
        problems = {tag: problem_at_tag(tag) for tag in tags}
        missing = [tag for tag, p in problems.items() if p]
        if missing and (len(missing) == len(tags) or not _guarded(node, parents)):
            errors.append(f"{filename}:{node.lineno}: {describe}: " +
                          "; ".join(f"{tag}: {problems[tag]}" for tag in missing))

    # from slicer.util import X / from slicer import vtkMRMLX
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("slicer", "slicer.util", "slicer.i18n",
                                                                 "slicer.packaging"):
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                check(node, dotted, lambda tag, d=dotted: _attribute_problem(tag, d, None))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
            continue  # only the longest dotted chain
        call = parents.get(node) if isinstance(parents.get(node), ast.Call) and parents[node].func is node else None
        dotted = _dotted(node)
        if dotted and dotted.split(".")[0] in ("slicer", "ctk"):
            check(node, dotted, lambda tag, d=dotted, c=call: _attribute_problem(tag, d, c))
            continue
        method = node.attr
        receiver = _dotted(node.value)
        if call is None or not method[:1].isupper() or not method.startswith(VTK_STYLE):
            continue
        if receiver and receiver.split(".")[0] in modules:
            continue  # a module function (sitk.ReadImage, tempfile...), not a Slicer object's method
        if any(isinstance(a, ast.Starred) for a in call.args):
            continue
        count = len(call.args)

        def method_problem(tag, method=method, count=count):
            declared = [(cls, m[method]) for cls, entry in API[tag]["classes"].items()
                        for m in [entry["methods"]] if method in m]
            if declared:
                if any(_arity_ok(overloads, count) for _, overloads in declared):
                    return None
                shapes = sorted({f"{cls}.{method}({lo}..{hi} args, {API[tag]['classes'][cls]['file']}:{line})"
                                 for cls, overloads in declared for lo, hi, line in overloads})
                return f"called with {count} argument(s); declared: {', '.join(shapes)}"
            return None if _fallback_has(method) else f"no Slicer/VTK/SimpleITK class has {method}()"

        check(node, f"{ast.unparse(node)}(...)", method_problem)
    return errors


def _attribute_problem(tag: str, dotted: str, call) -> str | None:
    api = API[tag]
    parts = dotted.split(".")
    if parts[0] == "ctk":
        if len(parts) > 1 and parts[1] not in api["classes"]:
            return f"CTK (commit {api['ctk_commit'][:10]}) has no class {parts[1]} used by the modules"
        return None
    if len(parts) == 1:
        return None
    head = parts[1]
    if head in ("util", "i18n", "packaging"):
        if head not in api["app_attributes"]:
            return f"slicer.{head} does not exist"
        if len(parts) >= 3:
            return _python_ok(tag, head, parts[2], call if len(parts) == 3 else None)
        return None
    if head.startswith(("vtk", "qMRML", "qSlicer")):
        if head not in api["classes"]:
            return f"no class {head}"
        if len(parts) >= 3 and _member(tag, head, parts[2]) is None:
            return f"{head} has no member {parts[2]}"
        return None
    if head not in api["app_attributes"]:
        return f"slicer.{head} does not exist"
    if head == "modules" and len(parts) >= 3 and parts[2] not in api["modules"]["names"]:
        return f"no Slicer module '{parts[2]}' (Modules/Loadable, Modules/Scripted)"
    owner = {"mrmlScene": "vtkMRMLScene", "app": "qSlicerApplication"}.get(head)
    if owner and len(parts) >= 3:
        found = _member(tag, owner, parts[2])
        if found is None:
            return f"{owner} has no member {parts[2]}"
        cls, kind, value = found
        if kind == "methods" and call is not None and len(parts) == 3 and not _arity_ok(value, len(call.args)):
            return f"{cls}.{parts[2]} does not take {len(call.args)} argument(s)"
    return None


def test_manifest_has_provenance():
    for tag in TAGS:
        api = API[tag]
        assert len(api["ctk_commit"]) == 40
        volumes = api["classes"]["vtkSlicerVolumesLogic"]
        assert volumes["file"].endswith("vtkSlicerVolumesLogic.h") and volumes["rev"] == tag
        # the public overloads of AddArchetypeVolume: 2, 3 or 4 arguments (5 only in 5.13+)
        assert sorted((lo, hi) for lo, hi, _ in volumes["methods"]["AddArchetypeVolume"]) == [(2, 2), (3, 3), (4, 4)]
        assert api["python"]["util"]["file"] == "Base/Python/slicer/util.py"
        assert "volumes" in api["modules"]["names"] and "segmentations" in api["modules"]["names"]
    assert "packaging" not in API["v5.10.0"]["app_attributes"] and "packaging" in API["v5.12.3"]["app_attributes"]


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_code_calls_only_api_of_slicer_5_10_and_5_12(path):
    assert api_errors(path.read_text(), str(path.relative_to(ROOT))) == []


def test_scan_covers_the_slicer_calls():
    checked = []
    for path in CODE:
        api_errors(path.read_text(), path.name, checked=checked)
    assert len(checked) > 150
    for call in ("slicer.util.tryWithErrorDisplay", "slicer.mrmlScene.GetFirstNodeByClass",
                 "ctx.volumes_logic.AddArchetypeVolume(...)", "slicer.vtkSlicerVolumesLogic",
                 "slicer.modules.volumes.logic"):
        assert call in checked, call


def test_api_check_refuses_broken_copies():
    mrml = (ROOT / "PASTASlicerLib" / "mrml.py").read_text()
    old = "ctx.volumes_logic.AddArchetypeVolume(path, name, options, None)"
    assert old in mrml
    five = mrml.replace(old, "ctx.volumes_logic.AddArchetypeVolume(path, name, options, None, messages)")
    errors = api_errors(five, "mrml.py")
    assert any("AddArchetypeVolume" in e and "called with 5 argument(s)" in e and "v5.12.3" in e for e in errors), errors

    assert any("slicer.pydeps does not exist" in e for e in api_errors("import slicer\nslicer.pydeps.pip_ensure(['x'])\n", "x.py"))
    # slicer.packaging is 5.12+: unguarded it fails for 5.10, guarded by hasattr it is accepted
    unguarded = "import slicer\nslicer.packaging.pip_ensure(['x'])\n"
    assert any("v5.10.0" in e and "v5.12.3" not in e for e in api_errors(unguarded, "x.py"))
    guarded = "import slicer\nif hasattr(slicer, 'packaging'):\n    slicer.packaging.pip_ensure(['x'])\n"
    assert api_errors(guarded, "x.py") == []
    assert any("has no keyword" in e for e in api_errors("import slicer\nslicer.util.loadUI('x.ui', bogus=1)\n", "x.py"))
    assert any("no module 'nosuchmodule'" in e.lower() or "no slicer module 'nosuchmodule'" in e.lower()
               for e in api_errors("import slicer\nslicer.modules.nosuchmodule.logic()\n", "x.py"))
    assert any("GetFirstNodeByClass does not take 2" in e
               for e in api_errors("import slicer\nslicer.mrmlScene.GetFirstNodeByClass('a', 'b')\n", "x.py"))
