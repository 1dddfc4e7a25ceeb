"""Load a scripted module file the way a clean Slicer does, with only Slicer's bundled packages.

Run as ``python -S closure_harness.py TAG MODULE_FILE`` (``-S``: no site-packages ``.pth`` hooks;
the venv's site-packages is appended by hand and guarded by the blocker below). It

1. puts a meta-path blocker first: a top-level import that is neither the standard library, a
   package bundled with Slicer at TAG (``bundled_packages.json``, from Slicer's SuperBuild), the
   extension's own packages, nor a Slicer app module, raises ModuleNotFoundError;
2. supplies stand-ins only for the Slicer app modules (slicer, qt, ctk, vtk, ...): permissive
   objects, plus the base classes scripted modules derive from and slicer.app's version;
3. imports the module file, builds its Widget, runs ``setup()`` and ``enter()`` (what Slicer does
   when the panel is shown) and prints one JSON line: ``{"ok", "error", "blocked", "imported"}``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import sysconfig
import traceback
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAG, MODULE_FILE = sys.argv[1], Path(sys.argv[2]).resolve()
MODULE_NAME = MODULE_FILE.stem
PROJECT_PACKAGES = {"PASTALib", "PASTASlicerLib", "PASTALogicLib", "PASTASynthLib", MODULE_NAME}
#: Modules the Slicer application itself provides (replaced by stand-ins here).
APP_MODULES = {"slicer", "qt", "ctk", "vtk", "mrml", "vtkSegmentationCore", "vtkITK", "vtkAddon",
               "vtkTeem", "MRMLCorePython", "PythonQt", "ctkqt"}

rules = json.loads((HERE / "bundled_packages.json").read_text())[TAG]
api = json.loads((HERE / "slicer_api.json").read_text())[TAG]
BUNDLED = {name for package in rules for name in package["import_names"]}
ALLOWED = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | BUNDLED | PROJECT_PACKAGES
blocked: list[str] = []


class Anything:
    """A permissive stand-in for any Slicer / Qt / VTK object: every attribute, call, item exists."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = Anything()
        object.__setattr__(self, name, value)
        return value

    def __call__(self, *args, **kwargs):
        return Anything()

    def __getitem__(self, key):
        return Anything()

    def __setitem__(self, key, value):
        pass

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __bool__(self):
        return False

    def __int__(self):
        return 0

    __index__ = __int__

    def __float__(self):
        return 0.0

    def __str__(self):
        return ""

    def __fspath__(self):
        return ""

    def __eq__(self, other):
        return other is self

    def __hash__(self):
        return id(self)

    def __lt__(self, other):
        return False

    __le__ = __gt__ = __ge__ = __lt__

    def __contains__(self, item):
        return False

    def __or__(self, other):
        return Anything()

    __ror__ = __and__ = __add__ = __radd__ = __sub__ = __mul__ = __rmul__ = __truediv__ = __or__

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _is_python_attribute(name: str) -> bool:
    """slicer.<name> that is a Python submodule or app attribute (not a wrapped C++ class)."""
    return name[:1].islower() and not re.match(r"(vtk|q[A-Z]|ctk)", name)


class StandInModule(types.ModuleType):
    """An app module: known attributes are real, anything else is an :class:`Anything`."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        # slicer.<lowercase> are Python submodules / app attributes: only those of this Slicer.
        if self.__name__ == "slicer" and _is_python_attribute(name) and name not in api["app_attributes"]:
            raise AttributeError(f"module 'slicer' has no attribute '{name}' in Slicer {TAG}")
        value = Anything()
        setattr(self, name, value)
        return value


class ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else Anything()

    def resourcePath(self, filename):
        return str(MODULE_FILE.parent / "Resources" / filename)


class ScriptedLoadableModuleWidget(ScriptedLoadableModule):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.layout = Anything()
        self.developerMode = False

    def setup(self):
        pass

    def enter(self):
        pass

    def exit(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        pass

    def getParameterNode(self):
        return Anything()


class ScriptedLoadableModuleTest:
    pass


class VTKObservationMixin:
    def __init__(self):
        pass

    def addObserver(self, *args, **kwargs):
        pass

    def removeObserver(self, *args, **kwargs):
        pass

    def removeObservers(self, *args, **kwargs):
        pass

    def hasObserver(self, *args, **kwargs):
        return False


def parameterNodeWrapper(cls):
    """The decorated dataclass becomes a fresh parameter node: each field holds its default (node
    references None, as when nothing is selected yet); it is truthy, so that the widget's
    "if self._parameterNode:" branches run too."""
    import typing

    annotations = dict(getattr(cls, "__annotations__", {}))

    def initial(name):
        if name in cls.__dict__:
            return cls.__dict__[name]
        kind = typing.get_origin(annotations[name]) and typing.get_args(annotations[name])[0]
        kind = kind or annotations[name]
        if isinstance(kind, type) and not issubclass(kind, Anything):
            return kind()  # str(), int(), pathlib.Path() ...: the wrapper's defaults
        return None  # an MRML node type (a stand-in): no node selected

    def __init__(self, *args, **kwargs):
        for name in annotations:
            object.__setattr__(self, name, initial(name))

    return type(cls.__name__, (Anything,), {"__annotations__": annotations, "__init__": __init__,
                                             "__bool__": lambda self: True})


def _version() -> tuple[int, int]:
    major, minor = TAG.lstrip("v").split(".")[:2]
    return int(major), int(minor)


def _fill(module: types.ModuleType) -> None:
    name = module.__name__
    if name == "slicer":
        app = Anything()
        object.__setattr__(app, "majorVersion", _version()[0])
        object.__setattr__(app, "minorVersion", _version()[1])
        object.__setattr__(app, "applicationVersion", f"{TAG.lstrip('v')}")
        module.app = app
    elif name == "slicer.ScriptedLoadableModule":
        for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest):
            setattr(module, cls.__name__, cls)
    elif name == "slicer.util":
        module.VTKObservationMixin = VTKObservationMixin
    elif name == "slicer.parameterNodeWrapper":
        module.parameterNodeWrapper = parameterNodeWrapper
    elif name == "slicer.i18n":
        module.tr = lambda text: text
        module.translate = lambda context, text: text


class StandInLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return StandInModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []  # a package: submodules (slicer.util, vtk.util.numpy_support) resolve
        _fill(module)
        parent, _, child = module.__name__.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


class SlicerOnly(importlib.abc.MetaPathFinder):
    """Stand-ins for the app modules; the path finder only for packages Slicer bundles.

    It replaces the interpreter's PathFinder, so a package Slicer does not ship is simply absent:
    ``import torch`` raises ModuleNotFoundError and ``importlib.util.find_spec("torch")`` is None,
    as in a clean Slicer.
    """

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in APP_MODULES:
            if top == "slicer" and fullname.count(".") == 1:
                sub = fullname.split(".")[1]
                if _is_python_attribute(sub) and sub not in api["app_attributes"]:
                    blocked.append(fullname)
                    return None
            return importlib.machinery.ModuleSpec(fullname, StandInLoader(), is_package=True)
        if top not in ALLOWED and not top.startswith("_sysconfigdata"):
            blocked.append(fullname)
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, path, target)


def installed_packages(repo: Path) -> dict[str, Path]:
    """The packages the extension installs into lib/Slicer-X.Y/qt-scripted-modules, read from its
    CMakeLists.txt files: PASTALib, each ``add_subdirectory`` built ``WITH_SUBDIR`` (a shared
    library such as PASTASlicerLib, installed as its folder) and each module's helper packages."""
    top = re.sub(r"#[^\n]*", "", (repo / "CMakeLists.txt").read_text(encoding="utf-8"))
    packages = {name: repo / name for name in re.findall(r"NAME\s+(\w+)\s*\n", top) if (repo / name / "__init__.py").is_file()}
    for folder in re.findall(r"add_subdirectory\((\w+)\)", top):
        cmake = re.sub(r"#[^\n]*", "", (repo / folder / "CMakeLists.txt").read_text(encoding="utf-8"))
        if "WITH_SUBDIR" in cmake:
            packages[folder] = repo / folder
        else:
            packages.update({p.name: p for p in (repo / folder).iterdir() if (p / "__init__.py").is_file()})
    return packages


def qt_scripted_modules(repo: Path) -> Path:
    """A folder laid out like an installed extension's qt-scripted-modules (links to the sources)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="closure-")) / "qt-scripted-modules"
    folder.mkdir()
    for name, source in installed_packages(repo).items():
        (folder / name).symlink_to(source, target_is_directory=True)
    return folder


def main() -> int:
    # -S skips site.py, which is also what points sys.prefix at a virtual environment: take the
    # environment's site-packages from its pyvenv.cfg folder (else the interpreter's own).
    venv = Path(sys.executable).parent.parent
    if (venv / "pyvenv.cfg").is_file():
        sys.path.append(str(venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"))
    else:
        sys.path.append(sysconfig.get_paths()["purelib"])
    sys.meta_path[:] = [f for f in sys.meta_path if f is not importlib.machinery.PathFinder]
    sys.meta_path.insert(0, SlicerOnly())
    # Slicer puts the extension's qt-scripted-modules folder on sys.path: the modules, their
    # helper packages, PASTASlicerLib and PASTALib all sit there side by side.
    installed = qt_scripted_modules(HERE.parents[1])
    sys.path.insert(0, str(installed))
    preloaded = set(sys.modules)
    result = {"ok": False, "error": None, "blocked": blocked, "imported": []}
    try:
        spec = importlib.util.spec_from_file_location(MODULE_NAME, MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module
        spec.loader.exec_module(module)
        getattr(module, MODULE_NAME)(Anything())
        widget = getattr(module, f"{MODULE_NAME}Widget")(Anything())
        widget.setup()
        widget.enter()
        result["ok"] = True
    except BaseException as error:  # noqa: BLE001 - reported to the test, which fails on it
        result["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-6)}"
    result["imported"] = sorted({n.partition(".")[0] for n in set(sys.modules) - preloaded})
    print("CLOSURE-RESULT " + json.dumps(result))
    sys.stdout.flush()
    import shutil

    shutil.rmtree(installed.parent, ignore_errors=True)  # the links only, never their targets
    os._exit(0)  # no interpreter teardown: stand-ins need not survive atexit hooks


if __name__ == "__main__":
    main()
