"""Parameter-node binding: every ``SlicerParameterName`` widget in the .ui files has a GUI connector
for its parameter's annotated type, by the rules of Slicer's parameterNodeWrapper/guiConnectors.py
at v5.10.0 and v5.12.3 (Testing/slicer_rules/gui_connectors.json, made by extract.py).

Slicer walks its connectors in registration order and takes the first whose ``canRepresent``
accepts ``type(widget)`` (exact class) and the unannotated type; ``create`` then still refuses a
QComboBox bound to a plain str/int without ``Choice(...)`` and a slider bound to an unbounded number.
Anything else raises RuntimeError when the widget calls ``connectGui``.
"""

from __future__ import annotations

import ast
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONNECTORS = json.loads((ROOT / "Testing" / "slicer_rules" / "gui_connectors.json").read_text())
MODULES = {"PASTA": ROOT / "PASTA", "PASTASynth": ROOT / "PASTASynth"}
PATH_TYPES = {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}


def bound_widgets(ui_text: str) -> list[tuple[str, str, str]]:
    """(widget class, widget name, parameter name) of every widget with a SlicerParameterName."""
    root = ET.fromstring(ui_text)
    out = []
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out.append((widget.get("class"), widget.get("name"), prop.findtext("string")))
    return out


def _name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", ast.unparse(node))


def parameter_types(module_source: str) -> dict[str, dict]:
    """Field -> {"type": unannotated type as the connector table names it, "annotations": [...]}."""
    tree = ast.parse(module_source)
    enums = {c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
             and any(_name(b) in ("Enum", "IntEnum", "StrEnum") for b in c.bases)}
    wrapper = next(c for c in tree.body if isinstance(c, ast.ClassDef)
                   and any(_name(d) == "parameterNodeWrapper" for d in c.decorator_list))

    def classify(annotation: ast.AST) -> dict:
        if isinstance(annotation, ast.Subscript) and _name(annotation.value) == "Annotated":
            base, *extra = annotation.slice.elts
            info = classify(base)
            info["annotations"] += [_name(e.func) if isinstance(e, ast.Call) else _name(e) for e in extra]
            return info
        if isinstance(annotation, ast.Subscript) and _name(annotation.value) in ("Optional", "Union"):
            members = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
            kinds = {classify(m)["type"] for m in members if _name(m) != "None"}
            return {"type": "MRMLNode" if kinds == {"MRMLNode"} else f"Union{sorted(kinds)}", "annotations": []}
        if isinstance(annotation, ast.BinOp):  # X | Y
            return classify(ast.Subscript(value=ast.Name("Union"), slice=ast.Tuple([annotation.left, annotation.right])))
        name = _name(annotation)
        if name.startswith(("vtkMRML", "slicer.vtkMRML")):
            return {"type": "MRMLNode", "annotations": []}
        if name in PATH_TYPES:
            return {"type": f"pathlib.{name}", "annotations": []}
        if name in enums:
            return {"type": "enum.Enum", "annotations": []}
        return {"type": name, "annotations": []}

    return {stmt.target.id: classify(stmt.annotation) for stmt in wrapper.body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


def binding_errors(ui_text: str, module_source: str, tag: str) -> list[str]:
    """Every binding Slicer's connectors at ``tag`` would refuse, with the rule's file:line."""
    params = parameter_types(module_source)
    errors = []
    for widget_class, widget_name, parameter in bound_widgets(ui_text):
        if parameter not in params:
            errors.append(f"{widget_name}: SlicerParameterName '{parameter}' is not a parameter")
            continue
        info = params[parameter]
        rule = next((r for r in CONNECTORS[tag] if widget_class in r["widgets"] and info["type"] in r["types"]), None)
        if rule is None:
            errors.append(f"{widget_name} ({widget_class}) -> {parameter}: {info['type']}: no connector in "
                          f"{CONNECTORS[tag][0]['file']} at {tag} accepts it")
            continue
        for need in rule["requires"]:
            if widget_class not in need["widgets"]:
                continue
            if need["annotation"] == "Choice" and "Choice" not in info["annotations"]:
                errors.append(f"{widget_name} ({widget_class}) -> {parameter}: {rule['connector']} "
                              f"({rule['file']}:{rule['line']}) requires Annotated[..., Choice(...)]")
            if need["annotation"] == "bounded" and not ("WithinRange" in info["annotations"]
                                                        or {"Minimum", "Maximum"} <= set(info["annotations"])):
                errors.append(f"{widget_name} ({widget_class}) -> {parameter}: {rule['connector']} "
                              f"({rule['file']}:{need['line']}) requires WithinRange or Minimum+Maximum")
    return errors


def test_connector_rules_have_provenance():
    for tag in ("v5.10.0", "v5.12.3"):
        rules = {r["connector"]: r for r in CONNECTORS[tag]}
        path = rules["ctkPathLineEditToPathConnector"]
        assert path["widgets"] == ["ctkPathLineEdit"] and "str" not in path["types"] and "pathlib.Path" in path["types"]
        combo = rules["QComboBoxToStringableConnector"]
        assert "str" in combo["types"] and combo["requires"][0]["annotation"] == "Choice"
        assert rules["qMRMLNodeComboBoxToNodeConnector"]["types"] == ["MRMLNode"]
        for rule in CONNECTORS[tag]:
            assert rule["tag"] == tag and rule["file"].endswith("guiConnectors.py") and rule["line"] > 0


@pytest.mark.parametrize("tag", ["v5.10.0", "v5.12.3"])
@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_ui_binding_has_a_connector(module, tag):
    folder = MODULES[module]
    ui_text = (folder / "Resources" / "UI" / f"{module}.ui").read_text()
    assert bound_widgets(ui_text), "no SlicerParameterName found: the .ui parser is broken"
    assert binding_errors(ui_text, (folder / f"{module}.py").read_text(), tag) == []


def test_binding_check_refuses_broken_copies():
    """A ctkPathLineEdit bound to a str, a QComboBox bound to a bare str, an unbounded slider."""
    source = (ROOT / "PASTA" / "PASTA.py").read_text()
    ui_text = (ROOT / "PASTA" / "Resources" / "UI" / "PASTA.ui").read_text()
    params = parameter_types(source)
    assert params["checkpointPath"]["type"].startswith("pathlib.")
    broken = source.replace("    checkpointPath: pathlib.Path", "    checkpointPath: str", 1)
    assert broken != source
    errors = binding_errors(ui_text, broken, "v5.12.3")
    assert any("checkpointPath: str: no connector" in e for e in errors), errors

    synth = (ROOT / "PASTASynth" / "PASTASynth.py").read_text()
    synth_ui = (ROOT / "PASTASynth" / "Resources" / "UI" / "PASTASynth.ui").read_text()
    no_choice = synth.replace("    shape: Annotated[str, Choice(", "    shape: Annotated[str, Default(", 1)
    assert no_choice != synth
    assert any("shape" in e and "requires Annotated[..., Choice(...)]" in e
               for e in binding_errors(synth_ui, no_choice, "v5.10.0"))
    unbounded = synth.replace("    sizeX: Annotated[float, WithinRange(2.0, 150.0)]", "    sizeX: float", 1)
    assert unbounded != synth
    assert any("sizeX" in e and "requires WithinRange" in e for e in binding_errors(synth_ui, unbounded, "v5.12.3"))
    unknown = synth_ui.replace("<string>seed</string>", "<string>seedValue</string>", 1)
    assert any("'seedValue' is not a parameter" in e for e in binding_errors(unknown, synth, "v5.12.3"))


def test_combo_choices_are_the_library_vocabularies():
    """PASTASynthParameterNode has one Choice(...) field per report attribute, named by its report key,
    listing the PASTALib.report vocabulary with the first wording as the default."""
    from PASTALib.report import attributes

    tree = ast.parse((ROOT / "PASTASynth" / "PASTASynth.py").read_text())
    # The module builds the lists from the vocabulary: evaluate them with only that in scope.
    scope = {"list": list, **{name: getattr(attributes, name) for name in dir(attributes) if not name.startswith("_")}}
    choices = {}
    for stmt in ast.walk(tree):
        if isinstance(stmt, ast.AnnAssign) and "Choice(" in ast.unparse(stmt.annotation):
            call = next(n for n in ast.walk(stmt.annotation) if isinstance(n, ast.Call) and _name(n.func) == "Choice")
            choices[stmt.target.id] = (eval(ast.unparse(call.args[0]), scope), eval(ast.unparse(stmt.value), scope))
    assert set(attributes.ATTRIBUTES) <= set(choices)
    for field, enum in attributes.ATTRIBUTES.items():
        values, default = choices[field]
        assert values == [member.value for member in enum], field
        assert default == values[0], field
