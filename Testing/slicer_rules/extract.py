"""Extract 3D Slicer's rules (at release tags) into the JSON files the rule tests read.

How the committed JSON was made (run once, by hand; tests never run this or touch the network)::

    # bare clones (the session used the `fetch` tool's mirrors; `git clone --bare` works too)
    git clone --bare https://github.com/Slicer/Slicer            slicer.git
    git clone --bare https://github.com/commontk/CTK             ctk.git
    git clone --bare https://github.com/Slicer/ExtensionsIndex   ei.git
    PYTHONPATH=. python Testing/slicer_rules/extract.py --slicer slicer.git --ctk ctk.git --ei ei.git

Every rule keeps where it came from: ``{"tag"/"commit", "file", "line"}``. Files written next to
this script:

* ``bundled_packages.json`` - the Python packages a clean Slicer ships (SuperBuild
  ``External_python-*.cmake`` requirement pins, plus SimpleITK built by ``External_SimpleITK.cmake``),
  with the import names each distribution provides.
* ``gui_connectors.json`` - ``parameterNodeWrapper/guiConnectors.py``: which widget class binds
  which parameter type (``canRepresent``), in registration order, and what ``create`` still demands
  (a ``Choice`` annotation, a bounded range).
* ``slicer_api.json`` - methods (with arity), enum constants and Qt properties of the Slicer / CTK
  C++ classes the modules use (and their Slicer/CTK base classes), parsed from the headers; the
  functions of ``slicer.util`` / ``slicer.packaging`` / ``slicer.i18n`` with their signatures; the
  Slicer modules (``slicer.modules.<name>``) and app attributes that exist.
* ``extensions_index_schema.json`` - the ExtensionsIndex JSON schema of an extension description.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TAGS = ("v5.10.0", "v5.12.3")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: The module code the API manifest is cut to (classes referenced there + their bases).
MODULE_CODE = ["PASTA", "PASTASynth", "PASTASlicerLib"]
#: Classes reached through return values rather than by name in the code.
EXTRA_CLASSES = ["vtkMRMLScene", "vtkMRMLNode", "vtkMRMLStorableNode", "vtkMRMLDisplayableNode",
                 "vtkMRMLSegmentationDisplayNode", "vtkMRMLVolumeArchetypeStorageNode",
                 "vtkMRMLSubjectHierarchyNode", "vtkSegment", "vtkSegmentation",
                 "vtkMRMLMarkupsNode", "vtkMRMLTableNode", "vtkMRMLVolumeDisplayNode",
                 "vtkMRMLScalarVolumeDisplayNode", "vtkMRMLColorTableNode", "vtkMRMLStorageNode",
                 "vtkMRMLSelectionNode", "vtkMRMLSliceCompositeNode", "vtkMRMLLayoutNode",
                 "qSlicerCoreApplication", "qSlicerApplication", "vtkSlicerApplicationLogic",
                 "vtkMRMLApplicationLogic", "vtkMRMLAbstractLogic", "vtkMRMLTransformableNode",
                 "vtkMRMLLabelMapVolumeNode", "vtkMRMLMarkupsFiducialDisplayNode", "vtkMRMLColorLogic",
                 "vtkSlicerColorLogic"]
#: Runtime attributes of the ``slicer`` module set by the application: (needle, pathspec) giving
#: the line that sets it (provenance only; the name must be found at each tag).
APP_ATTRIBUTES = {
    "app": ('setattr(slicer, "app"', ("Base/Python/slicer/slicerqt.py", "Base/Python/slicerqt.py")),
    "mrmlScene": ('setattr(slicer, "mrmlScene"', ("Base/Python/slicer/slicerqt.py", "Base/Python/slicerqt.py")),
    "modules": ("modules", "Base/Python/slicer/__init__.py"),
    "dicomDatabase": ("slicer.dicomDatabase = ", "Modules/Scripted/DICOM/DICOM.py"),
    "util": ("def ", "Base/Python/slicer/util.py"),
    "i18n": ("def ", "Base/Python/slicer/i18n.py"),
    "packaging": ("def ", "Base/Python/slicer/packaging.py"),
    "parameterNodeWrapper": ("import", "Base/Python/slicer/parameterNodeWrapper/__init__.py"),
    "ScriptedLoadableModule": ("class ScriptedLoadableModule", "Base/Python/slicer/ScriptedLoadableModule.py"),
}


def git(gitdir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={gitdir}", *args], check=True, capture_output=True,
                          text=True).stdout


def show(gitdir: str, rev: str, path: str) -> str | None:
    try:
        return git(gitdir, "show", f"{rev}:{path}")
    except subprocess.CalledProcessError:
        return None


# ---------------------------------------------------------------------------------------
# Bundled Python packages
# ---------------------------------------------------------------------------------------

_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\\]+)")


def _import_names(dist: str) -> list[str]:
    """Top-level import names of a distribution, from the installed metadata when available."""
    mapping = metadata.packages_distributions()
    names = sorted(mod for mod, dists in mapping.items()
                   if any(d.lower().replace("_", "-") == dist.lower().replace("_", "-") for d in dists)
                   and not mod.startswith("_") and mod.isidentifier())
    if names:
        return names
    known = {"pillow": ["PIL"], "python-dateutil": ["dateutil"], "pyjwt": ["jwt"], "pynacl": ["nacl"],
             "gitpython": ["git"], "pygithub": ["github"], "pyjpegls": ["jpeg_ls"], "dicomweb-client": ["dicomweb_client"],
             "charset-normalizer": ["charset_normalizer"], "simpleitk": ["SimpleITK"],
             "typing-extensions": ["typing_extensions"], "deprecated": ["deprecated"]}
    return known.get(dist.lower().replace("_", "-"), [dist.replace("-", "_")])


def bundled_packages(slicer_git: str) -> dict:
    out = {}
    for tag in TAGS:
        files = [f for f in git(slicer_git, "ls-tree", "--name-only", tag, "SuperBuild/").split()
                 if Path(f).name.startswith("External_python-")]
        packages = []
        for path in sorted(files):
            for lineno, line in enumerate(show(slicer_git, tag, path).splitlines(), 1):
                match = _PIN.match(line)
                if match:
                    name, version = match.groups()
                    packages.append({"name": name, "version": version, "import_names": _import_names(name),
                                     "tag": tag, "file": path, "line": lineno})
        # SimpleITK built from source (WRAP_PYTHON) when there is no External_python-SimpleITK pin.
        if not any(p["name"].lower() == "simpleitk" for p in packages):
            path = "SuperBuild/External_SimpleITK.cmake"
            text = show(slicer_git, tag, path) or ""
            line = next((i for i, l in enumerate(text.splitlines(), 1) if "WRAP_PYTHON" in l), None)
            if line:
                packages.append({"name": "SimpleITK", "version": "built-in", "import_names": ["SimpleITK"],
                                 "tag": tag, "file": path, "line": line})
        out[tag] = packages
    return out


# ---------------------------------------------------------------------------------------
# GUI connectors
# ---------------------------------------------------------------------------------------

GUI_CONNECTORS = "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py"


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ast.unparse(node)


def _names(node: ast.AST) -> list[str]:
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_dotted(e) for e in node.elts]
    return [_dotted(node)]


def _can_represent(expr: ast.AST, rule: dict) -> None:
    """Fill widgets / types from the canRepresent boolean expression (and-ed comparisons)."""
    if isinstance(expr, ast.BoolOp):
        for value in expr.values:
            _can_represent(value, rule)
        return
    if isinstance(expr, ast.Compare) and len(expr.ops) == 1:
        left, right = ast.unparse(expr.left), expr.comparators[0]
        if left == "type(widget)":
            rule["widgets"] = [n.split(".")[-1] for n in _names(right)]
        elif left == "unannotatedType(datatype)":
            rule["types"] = [n.split(".")[-1] if not n.startswith("pathlib.") else n for n in _names(right)]
        return
    if isinstance(expr, ast.Call):
        text = ast.unparse(expr)
        if text == "issubclass(unannotatedType(datatype), enum.Enum)":
            rule["types"] = ["enum.Enum"]
        elif text == "isNodeOrUnionOfNodes(datatype)":
            rule["types"] = ["MRMLNode"]


def gui_connectors(slicer_git: str) -> dict:
    out = {}
    for tag in TAGS:
        source = show(slicer_git, tag, GUI_CONNECTORS)
        tree = ast.parse(source)
        rules = []
        for cls in tree.body:
            if not (isinstance(cls, ast.ClassDef)
                    and any(_dotted(d) == "parameterNodeGuiConnector" for d in cls.decorator_list)):
                continue
            rule = {"connector": cls.name, "tag": tag, "file": GUI_CONNECTORS, "line": cls.lineno,
                    "widgets": [], "types": [], "requires": []}
            methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
            can = methods.get("canRepresent")
            for node in ast.walk(can):
                if isinstance(node, ast.Return) and node.value is not None and not isinstance(node.value, ast.Constant):
                    _can_represent(node.value, rule)
            if "pack.isParameterPack" in ast.unparse(can):
                rule["types"] = ["parameterPack"]
            # What create()/__init__ still refuse: a missing Choice annotation, an unbounded range.
            body = ast.unparse(cls)
            if "requires the Choice annotation" in body:
                rule["requires"].append({"annotation": "Choice", "widgets": rule["widgets"]})
            for node in ast.walk(cls):
                if isinstance(node, ast.If) and "not isBounded" in ast.unparse(node.test):
                    test = ast.unparse(node.test)
                    widgets = [w for w in re.findall(r"(?:qt|ctk|slicer)\.(\w+)", test)]
                    rule["requires"].append({"annotation": "bounded", "widgets": widgets, "line": node.lineno})
            rules.append(rule)
        out[tag] = rules
    return out


# ---------------------------------------------------------------------------------------
# C++ / Python API manifest
# ---------------------------------------------------------------------------------------

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_CLASS = re.compile(r"\bclass\s+(?:\w+_EXPORT\s+)?(\w+)\s*(?:final\s*)?:\s*public\s+([\w:]+)")
_METHOD = re.compile(r"\b([A-Za-z_]\w*)\s*\(([^;{}()]*(?:\([^()]*\)[^;{}()]*)*)\)\s*(?:const\s*)?(?:override\s*)?(?:VTK_\w+\s*)?(?:=\s*0\s*)?[;{:]")
_MACRO = re.compile(r"\b(vtk(?:Set|Get|Boolean)\w*Macro|vtkMRMLCopy\w*)\s*\(\s*(\w+)")
_PROPERTY = re.compile(r"Q_PROPERTY\s*\(\s*[\w:<>\s\*]+?\s+(\w+)\s+READ\s+(\w+)(?:\s+WRITE\s+(\w+))?")
_ENUM = re.compile(r"\benum\s*(?:class\s+)?(\w*)\s*(?::\s*\w+\s*)?\{([^}]*)\}", re.S)
_ACCESS = re.compile(r"^\s*(public|protected|private|signals|Q_SIGNALS)\b\s*(?:slots|Q_SLOTS)?\s*:(?!:)", re.M)
_NOT_METHODS = {"if", "for", "while", "switch", "return", "sizeof", "defined", "Q_OBJECT", "QVTK_OBJECT",
                "vtkTypeMacro", "Q_PROPERTY", "Q_DECLARE_PRIVATE", "Q_DISABLE_COPY", "Q_ENUMS", "Q_ENUM",
                "Q_DECLARE_PUBLIC", "Q_FLAGS", "Q_SLOTS", "Q_SIGNALS", "vtkMRMLNodeNewMacro",
                "VTK_MRML_EXPORT", "operator", "static_cast", "dynamic_cast", "const_cast", "reinterpret_cast"}


def _arity(args: str) -> tuple[int, int]:
    args = args.strip()
    if not args or args == "void":
        return 0, 0
    depth, parts, current = 0, [], ""
    for char in args:
        if char in "<(":
            depth += 1
        elif char in ">)":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    required = sum(1 for p in parts if "=" not in p)
    return required, len(parts)


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _parse_header(text: str) -> dict:
    """Methods (name -> [[min, max, line]]), Qt properties, enum constants of the class in a header."""
    # Keep line numbers: blank the comments out instead of removing them.
    code = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    methods: dict[str, list] = {}
    # Access sections: only public declarations are callable from Python.
    labels = [(m.start(), m.group(1)) for m in _ACCESS.finditer(code)]

    def public(index: int) -> bool:
        before = [access for start, access in labels if start < index]
        return not before or before[-1] in ("public", "signals", "Q_SIGNALS")

    def add(name: str, low: int, high: int, index: int) -> None:
        if not public(index):
            return
        entry = [low, high, _line_of(code, index)]
        if entry[:2] not in [e[:2] for e in methods.setdefault(name, [])]:
            methods[name].append(entry)

    for m in _METHOD.finditer(code):
        name = m.group(1)
        if name in _NOT_METHODS or name.isupper():
            continue
        add(name, *_arity(m.group(2)), m.start(1))
    for m in _MACRO.finditer(code):
        macro, name = m.groups()
        if macro.startswith("vtkBoolean"):
            add(f"{name}On", 0, 0, m.start())
            add(f"{name}Off", 0, 0, m.start())
        elif macro.startswith("vtkSet"):
            vector = re.search(r"Vector(\d)", macro)
            add(f"Set{name}", 1, int(vector.group(1)) if vector else 1, m.start())
        elif macro.startswith("vtkGet"):
            add(f"Get{name}", 0, 1 if "Vector" in macro else 0, m.start())
    properties = {}
    for m in _PROPERTY.finditer(code):
        properties[m.group(1)] = _line_of(code, m.start())
        add(m.group(2), 0, 0, m.start())
        if m.group(3):
            add(m.group(3), 1, 1, m.start())
    constants = {}
    for m in _ENUM.finditer(code):
        for item in m.group(2).split(","):
            name = item.split("=")[0].strip()
            if name.isidentifier():
                constants[name] = _line_of(code, m.start())
    return {"methods": methods, "properties": properties, "constants": constants}


def _referenced_classes() -> set[str]:
    pattern = re.compile(r"\b((?:vtkMRML|vtkSlicer|qMRML|qSlicer|vtkSegment|vtkOrientedImage|ctk)\w+)")
    names = set(EXTRA_CLASSES)
    for folder in MODULE_CODE:
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".ui"):
                names.update(pattern.findall(path.read_text()))
    return names


def _python_functions(source: str) -> dict:
    functions = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            entry = {"line": node.lineno}
            if isinstance(node, ast.FunctionDef):
                a = node.args
                positional = [x.arg for x in a.posonlyargs + a.args]
                entry.update(min=len(positional) - len(a.defaults), max=None if a.vararg else len(positional),
                             keywords=None if a.kwarg else positional + [x.arg for x in a.kwonlyargs],
                             required_keywords=[x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is None])
            else:
                init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
                if init is not None:
                    a = init.args
                    positional = [x.arg for x in a.posonlyargs + a.args][1:]
                    entry.update(min=len(positional) - len(a.defaults), max=None if a.vararg else len(positional),
                                 keywords=None if a.kwarg else positional + [x.arg for x in a.kwonlyargs],
                                 required_keywords=[])
                else:
                    entry.update(min=0, max=0, keywords=[], required_keywords=[])
            functions[node.name] = entry
    return functions


def _code_identifiers() -> set[str]:
    names = set()
    for folder in MODULE_CODE:
        for path in (REPO / folder).rglob("*.py"):
            names.update(re.findall(r"\b\w+\b", path.read_text()))
    return names


def _prune(entry: dict, used: set[str]) -> dict:
    """Keep only the members the module code names (keeps the manifest small)."""
    for key in ("methods", "properties", "constants"):
        entry[key] = {k: v for k, v in entry[key].items() if k in used}
    return entry


def slicer_api(slicer_git: str, ctk_git: str) -> dict:
    wanted = _referenced_classes()
    used = _code_identifiers()
    out = {}
    for tag in TAGS:
        ctk_commit = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*"([0-9a-f]{40})"',
                               show(slicer_git, tag, "SuperBuild/External_CTK.cmake")).group(1)
        headers = {}
        for repo, rev, label in ((slicer_git, tag, "Slicer"), (ctk_git, ctk_commit, "CTK")):
            for path in git(repo, "ls-tree", "-r", "--name-only", rev).split():
                if path.endswith(".h") and "/Testing/" not in path:
                    headers.setdefault(Path(path).stem, (repo, rev, label, path))
        classes, queue = {}, sorted(wanted)
        while queue:
            name = queue.pop()
            if name in classes or name not in headers:
                continue
            repo, rev, label, path = headers[name]
            text = show(repo, rev, path)
            match = next((m for m in _CLASS.finditer(_COMMENT.sub("", text)) if m.group(1) == name), None)
            base = match.group(2).split("::")[-1] if match else None
            entry = _prune({"repo": label, "rev": rev, "file": path, "base": base, **_parse_header(text)}, used)
            classes[name] = entry
            if base:
                queue.append(base)
        python = {}
        for module in ("util", "i18n", "packaging"):
            path = f"Base/Python/slicer/{module}.py"
            source = show(slicer_git, tag, path)
            if source is not None:
                functions = {k: v for k, v in _python_functions(source).items() if k in used}
                python[module] = {"file": path, "functions": functions}
        modules = sorted({p.split("/")[2].lower() for p in git(slicer_git, "ls-tree", "-d", "--name-only", tag,
                                                               "Modules/Loadable/", "Modules/Scripted/").split()
                          if p.count("/") == 2})
        app_attributes = {}
        for attribute, (needle, paths) in APP_ATTRIBUTES.items():
            for path in (paths,) if isinstance(paths, str) else paths:  # slicerqt.py moved in 5.12
                text = show(slicer_git, tag, path)
                line = next((i for i, l in enumerate((text or "").splitlines(), 1) if needle in l), None)
                if line is not None:
                    app_attributes[attribute] = {"file": path, "line": line}
                    break
        out[tag] = {"ctk_commit": ctk_commit, "classes": classes, "python": python,
                    "modules": {"file": "Modules/Loadable/, Modules/Scripted/", "names": modules},
                    "app_attributes": app_attributes}
    return out


# ---------------------------------------------------------------------------------------
# ExtensionsIndex schema
# ---------------------------------------------------------------------------------------


def extensions_index_schema(ei_git: str) -> dict:
    """The newest catalog-entry schema, plus the rules scripts/check_description_files.py adds."""
    rev = git(ei_git, "rev-parse", "HEAD").strip()
    candidates = [p for p in git(ei_git, "ls-tree", "-r", "--name-only", rev).split()
                  if p.startswith("schemas/") and p.endswith(".json")]
    path = max(candidates, key=lambda p: [int(x) for x in re.findall(r"v(\d+)\.(\d+)\.(\d+)", p)[0]])
    script_path = "scripts/check_description_files.py"
    script = show(ei_git, rev, script_path)
    lines = script.splitlines()
    # The script uses Python 3.12 f-string syntax: cut the list literal out rather than parse it all.
    start = script.index("ACCEPTED_EXTENSION_CATEGORIES = [")
    literal = script[script.index("[", start):script.index("]", start) + 1]
    categories_line = script.count("\n", 0, start) + 1

    def line_of(needle: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if needle in line)

    return {
        "commit": rev, "file": path, "line": 1, "schema": json.loads(show(ei_git, rev, path)),
        "checks": {
            "file": script_path,
            "categories": {"line": categories_line, "values": ast.literal_eval(literal)},
            "name_not_starting_with_slicer": {"line": line_of('extension_name.lower().startswith("slicer")')},
            "cmake_project_pattern": {"line": line_of("project_pattern = r"),
                                      "regex": r"project\s*\(\s*([^\s\)\n\r]+)"},
            "lf_line_endings": {"line": line_of("non-LF line endings")},
            "cmake_required": {"line": line_of("No EXTENSION_ICONURL found"),
                               "variables": ["EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"]},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slicer", required=True, help="bare git dir of Slicer/Slicer")
    parser.add_argument("--ctk", required=True, help="bare git dir of commontk/CTK")
    parser.add_argument("--ei", required=True, help="bare git dir of Slicer/ExtensionsIndex")
    args = parser.parse_args(argv)
    outputs = {
        "bundled_packages.json": bundled_packages(args.slicer),
        "gui_connectors.json": gui_connectors(args.slicer),
        "slicer_api.json": slicer_api(args.slicer, args.ctk),
        "extensions_index_schema.json": extensions_index_schema(args.ei),
    }
    for name, data in outputs.items():
        (HERE / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
