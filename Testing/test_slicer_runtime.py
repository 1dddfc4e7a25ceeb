"""The modules at run time in a real Slicer (5.10 / 5.12), checked here without the app:

* dependency install: no ``slicer.pydeps``; torch only through the PyTorch extension, and a
  cancelled torch install stops everything; the requirement table agrees with pyproject.toml,
  covers what the panels' code imports, and never downgrades or replaces a package Slicer
  bundles (its own pins, and the pins of what it pulls in);
* no frozen GUI: TotalSegmentator runs as a real ``PythonSlicer``-style subprocess
  (PASTASynthLib.totalsegmentator_job) with a stub segmenter, streams PROGRESS lines, and
  cancel leaves no partial output;
* a job that ends after the scene was closed adds nothing and raises nothing (real slicer-core
  scene); Windows subprocesses get CREATE_NO_WINDOW; Reload unloads the helper packages;
  Slicer < 5.10 is refused at module load.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from PASTASlicerLib import dependencies, jobs
from PASTASynthLib import totalsegmentator_job

REPO = Path(__file__).resolve().parents[1]
MODULE_FILES = {"PASTA": REPO / "PASTA" / "PASTA.py", "PASTASynth": REPO / "PASTASynth" / "PASTASynth.py"}
HELPER_FILES = sorted([*(REPO / "PASTA" / "PASTALogicLib").glob("*.py"), *(REPO / "PASTASynth" / "PASTASynthLib").glob("*.py"),
                       *(REPO / "PASTASlicerLib").glob("*.py")])

#: Slicer 5.10 and 5.12 both run Python 3.12: markers of dependencies are evaluated for it.
SLICER_PYTHON = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.10"}

#: highdicom 0.27.0 (the private copy on Slicer 5.10; this venv has 0.28.2): Requires-Dist of its
#: wheel on PyPI (highdicom-0.27.0-py3-none-any.whl, METADATA, extras left out).
HIGHDICOM_0_27_REQUIRES = ["numpy>=1.19", "pillow>=8.3", "pydicom>=3.0.1", "pyjpegls>=1.0.0", "typing-extensions>=4.0.0"]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


# -- dependency table ------------------------------------------------------------------------------


def test_no_slicer_pydeps_anywhere():
    """``slicer.pydeps`` exists in no Slicer (v5.10.0, v5.12.3: Base/Python/slicer has packaging.py
    from 5.12 on, no pydeps)."""
    for path in [*MODULE_FILES.values(), *HELPER_FILES]:
        names = {n.attr for n in ast.walk(_tree(path)) if isinstance(n, ast.Attribute)}
        assert "pydeps" not in names, f"{path.relative_to(REPO)} uses slicer.pydeps"


def test_torch_only_through_pytorchutils():
    """No pip call in the module code names torch; installTorch is called in one place."""
    torch_installers = []
    for path in [*MODULE_FILES.values(), *HELPER_FILES]:
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            if func.endswith(("pip_install", "pip_ensure")):
                literal = " ".join(ast.unparse(a) for a in node.args)
                assert "torch" not in literal, f"{path.name}: {ast.unparse(node)} installs torch with pip"
            if func.endswith("installTorch"):
                torch_installers.append(path.name)
    assert torch_installers == ["dependencies.py"]
    everything_missing = dependencies.check_dependencies([
        dependencies.PythonRequirement(r.distribution, r.module, "==0.0.0.dev0", r.used_by)
        for r in dependencies.REQUIREMENTS])
    torch, others, private = dependencies.install_plan(everything_missing)
    assert torch == "torch==0.0.0.dev0" and others and not any(o.startswith("torch") for o in others + private)


def _pyproject_pins() -> dict[str, Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in data["project"]["dependencies"]}


def test_requirements_agree_with_pyproject():
    """Each requirement is a pyproject dependency whose tested version the Slicer range accepts,
    and the range's lower bound is that tested version (never older than what the suite runs)."""
    pins = _pyproject_pins()
    for req in dependencies.requirements_for(None):
        pin = pins.get(canonicalize_name(req.distribution))
        assert pin is not None, f"{req.distribution} is installed in Slicer but not a pyproject dependency"
        pinned = [s.version for s in pin.specifier if s.operator in ("==", ">=")]
        assert pinned, f"pyproject pins no version of {req.distribution}"
        tested = Version(pinned[0])
        spec = SpecifierSet(req.specifier)
        assert tested in spec, f"{req.distribution}: the tested {tested} is outside {req.specifier}"
        lower = [Version(s.version) for s in spec if s.operator == ">="]
        assert lower, f"{req.distribution}{req.specifier}: no lower bound (presence is not a version check)"
        if req.distribution != "highdicom":  # highdicom: Slicer 5.12 bundles 0.27, accepted as is
            assert lower[0] >= Version(".".join(str(tested).split(".")[:2])), (req.distribution, lower, tested)


def _bundled_violations(line, requirements) -> list[str]:
    """Each way installing ``requirements`` on Slicer ``line`` would change a bundled package:
    the requirement itself, or (recursively) a Requires-Dist of what it pulls in."""
    bundled = {canonicalize_name(k): Version(v) for k, v in dependencies.BUNDLED[line].items()}
    problems, seen = [], set()

    def visit(name: str, spec: SpecifierSet, via: str) -> None:
        key = canonicalize_name(name)
        if key in bundled:
            if bundled[key] not in spec:
                problems.append(f"{via} needs {name}{spec}; Slicer {line} bundles {bundled[key]}")
            return
        if key in seen:
            return
        seen.add(key)
        if key == "highdicom" and str(spec) == "==0.27.0":
            requires = HIGHDICOM_0_27_REQUIRES
        else:
            try:
                installed = Version(importlib.metadata.version(name))
            except importlib.metadata.PackageNotFoundError:
                return
            if installed not in spec:
                return
            requires = importlib.metadata.requires(name) or []
        for text in requires:
            dep = Requirement(text)
            if dep.marker is not None and not dep.marker.evaluate({**SLICER_PYTHON, "extra": ""}):
                continue
            visit(dep.name, dep.specifier, f"{via} -> {name}")

    private = {canonicalize_name(r.distribution) for r in requirements if r.private}
    for req in requirements:
        if req.private:
            # pip --no-deps --target: Slicer's site-packages is untouched; what the private copy
            # needs must come from Slicer's bundle or the private folder itself.
            saved = dict(bundled)
            bundled.update({p: Version(next(r.specifier for r in requirements if canonicalize_name(r.distribution) == p)
                                       .lstrip("=")) for p in private})
            bundled.pop(canonicalize_name(req.distribution))
            visit(req.distribution, SpecifierSet(req.specifier), "PASTA (private)")
            bundled.clear()
            bundled.update(saved)
        else:
            visit(req.distribution, SpecifierSet(req.specifier), "PASTA")
    return problems


@pytest.mark.parametrize("line", dependencies.SUPPORTED_SLICER_LINES)
def test_requirements_never_replace_bundled_packages(line):
    assert not _bundled_violations(line, dependencies.requirements_for(line))
    # the check bites: pingouin (CLI-only on purpose) needs numpy >= 2.2.2 and scipy >= 1.15
    if line == (5, 10):
        pingouin = dependencies.PythonRequirement("pingouin", "pingouin", "==0.7.0", "analysis")
        found = _bundled_violations(line, [pingouin])
        assert any("numpy" in p for p in found) and any("scipy" in p for p in found), found
    # highdicom into Slicer's own site-packages would replace 5.12's highdicom 0.27 and, through its
    # pydicom >= 3 requirement, 5.10's pydicom 2.4.4 (hence the private folder on 5.10)
    newest = dependencies.PythonRequirement("highdicom", "highdicom", "==0.27.0", "export")
    problems = _bundled_violations(line, [newest])
    assert bool(problems) == (line == (5, 10)) and all("bundles 2.4.4" in p for p in problems)
    pinned = dependencies.PythonRequirement("highdicom", "highdicom", "==0.28.2", "export")
    assert _bundled_violations(line, [pinned])


def test_bundled_constraints_pin_installed_versions(tmp_path):
    installed = {"numpy": "2.0.2", "pydicom": "2.4.4", "scipy": None}
    lines = dependencies.bundled_constraints((5, 10), installed)
    assert lines == ["numpy==2.0.2", "pydicom==2.4.4"]
    path = dependencies.write_constraints(tmp_path / "c.txt", lines)
    assert Path(path).read_text().splitlines()[1:] == lines
    live = dependencies.bundled_constraints((5, 12))  # from this Python's metadata
    assert f"numpy=={importlib.metadata.version('numpy')}" in live
    command = dependencies.pip_command("/py", ["monai>=1.6.1,<1.7"], path)
    assert command[:4] == ["/py", "-m", "pip", "install"] and command[command.index("-c") + 1] == path


@functools.lru_cache(maxsize=1)
def _third_party_imports_of_panels() -> dict[str, set[str]]:
    """Top-level names imported anywhere (module level or inside functions) by the code the panels
    run: the module files, their helper packages, and the PASTALib modules they reach, including
    the CLI commands the panels start (segment, finetune, synth generate, the TotalSegmentator job)."""
    roots = {"PASTALib": REPO / "PASTALib", "PASTASynthLib": REPO / "PASTASynth" / "PASTASynthLib",
             "PASTASlicerLib": REPO / "PASTASlicerLib",
             "PASTALogicLib": REPO / "PASTA" / "PASTALogicLib"}

    def path_of(module: str) -> Path | None:
        parts = module.split(".")
        if parts[0] not in roots:
            return None
        base = roots[parts[0]].joinpath(*parts[1:])
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
        return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None

    external: dict[str, set[str]] = {}
    stack = [("PASTA", MODULE_FILES["PASTA"]), ("PASTASynth", MODULE_FILES["PASTASynth"]),
             ("PASTALib.cli.segment", None), ("PASTALib.cli.finetune", None), ("PASTALib.cli.synth", None),
             ("PASTASynthLib.totalsegmentator_job", None)]
    seen = set()
    while stack:
        module, path = stack.pop()
        path = path or path_of(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top in roots:
                    parts = name.split(".")
                    for k in range(1, len(parts) + 1):
                        stack.append((".".join(parts[:k]), None))
                elif top not in sys.stdlib_module_names:
                    external.setdefault(top, set()).add(module)
    return external


#: Import name -> pip distribution for what Slicer bundles (import names differ for pillow).
BUNDLED_IMPORTS = {"PIL": "pillow", "dateutil": "python-dateutil"}


@pytest.mark.parametrize("line", dependencies.SUPPORTED_SLICER_LINES)
def test_requirements_cover_what_the_panels_import(line):
    installed = {r.module for r in dependencies.requirements_for(line)}
    bundled = {canonicalize_name(n) for n in dependencies.BUNDLED[line]}
    provided = (installed | dependencies.BUILT_IN_MODULES | set(dependencies.CLI_ONLY)
                | set(dependencies.EXTENSION_MODULES))
    uncovered = {}
    for top, users in _third_party_imports_of_panels().items():
        if top in provided or canonicalize_name(BUNDLED_IMPORTS.get(top, top)) in bundled:
            continue
        uncovered[top] = sorted(users)
    assert not uncovered, f"imported by panel code but neither bundled by Slicer {line} nor installed: {uncovered}"


def test_panel_import_scan_sees_function_level_imports():
    found = _third_party_imports_of_panels()
    # imported inside functions only: the scan must still see them
    assert "highdicom" in found and "pandas" in found and "torch" in found
    assert "pingouin" in found and "pingouin" in dependencies.CLI_ONLY


def test_dependency_status_checks_versions_not_presence():
    numpy = importlib.metadata.version("numpy")
    old = dependencies.PythonRequirement("numpy", "numpy", f">{numpy}", "test")
    status = dependencies.check_dependencies([old]).statuses[0]
    assert status.installed == numpy and not status.ok and f"installed {numpy}" in status.problem
    assert dependencies.updated_imported({"numpy": "1.0"}, {"numpy": numpy}, ["numpy.linalg"]) == [f"numpy 1.0 -> {numpy}"]
    assert dependencies.updated_imported({"numpy": "1.0"}, {"numpy": numpy}, ["json"]) == []
    assert dependencies.updated_imported({"monai": None}, {"monai": "1.6.1"}, ["monai"]) == []  # new: no restart


# -- the install flow with Slicer's API replaced by recording stubs ------------------------------------


class _Recorder:
    def __init__(self):
        self.calls = []


@pytest.fixture
def fake_slicer(monkeypatch):
    """``slicer`` / ``PyTorchUtils`` / ``qt`` stand-ins with the call signatures of Slicer v5.12.3
    (slicer.packaging.pip_ensure, slicer.util.confirmOkCancelDisplay) and SlicerPyTorch
    (PyTorchUtilsLogic.installTorch returns None when the user cancels)."""
    import types

    rec = _Recorder()
    slicer = types.ModuleType("slicer")
    slicer.util = types.SimpleNamespace(confirmOkCancelDisplay=lambda *a, **k: rec.calls.append(("confirm", a)) or True)

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        rec.calls.append(("pip_ensure", list(requirements), Path(constraints).read_text()))

    slicer.packaging = types.SimpleNamespace(pip_ensure=pip_ensure)
    torch_logic = types.SimpleNamespace(result=None)

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            rec.calls.append(("installTorch", torchVersionRequirement))
            return torch_logic.result

    pytorch_utils = types.ModuleType("PyTorchUtils")
    pytorch_utils.PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorch_utils)
    rec.slicer, rec.torch_logic = slicer, torch_logic
    return rec


def _run_installer(missing, line=(5, 12)):
    finished = []
    reqs = [dependencies.PythonRequirement(d, d, "==0.0.0.dev0", "test") for d in missing]
    installer = dependencies.DependencyInstaller(line, lambda text: None, lambda *a: finished.append(a), reqs)
    installer.start()
    return installer, finished


def test_cancelled_torch_install_stops_everything(fake_slicer):
    fake_slicer.torch_logic.result = None  # the user pressed Cancel in PyTorchUtils' dialog
    _, finished = _run_installer(["torch", "monai", "pandas"])
    assert [c[0] for c in fake_slicer.calls] == ["installTorch"]  # no pip afterwards, no unpinned torch
    assert fake_slicer.calls[0][1] == "==0.0.0.dev0"
    (ok, message, restart), = finished
    assert not ok and "cancelled" in message and not restart


def test_torch_then_the_rest_with_bundled_constraints(fake_slicer):
    import types

    fake_slicer.torch_logic.result = types.SimpleNamespace(__version__="2.13.0")
    _, finished = _run_installer(["torch", "monai", "pandas"])
    assert [c[0] for c in fake_slicer.calls] == ["installTorch", "pip_ensure"]
    _, requirements, constraints = fake_slicer.calls[1]
    assert requirements == ["monai==0.0.0.dev0", "pandas==0.0.0.dev0"]
    assert f"numpy=={importlib.metadata.version('numpy')}" in constraints.splitlines()
    assert finished[0][0] is True


def test_missing_pytorch_extension_is_offered_not_bypassed(fake_slicer, monkeypatch):
    monkeypatch.delitem(sys.modules, "PyTorchUtils")
    monkeypatch.setattr(sys, "path", [p for p in sys.path])  # PyTorchUtils is nowhere on it
    fake_slicer.slicer.util.confirmOkCancelDisplay = lambda *a, **k: False  # "install the extension?" -> No
    _, finished = _run_installer(["torch", "monai"])
    assert not any(c[0] in ("pip_ensure", "installTorch") for c in fake_slicer.calls)
    assert finished and finished[0][0] is False and "PyTorch extension" in finished[0][1]


def test_slicer_510_pip_runs_in_a_cancellable_subprocess(fake_slicer, monkeypatch, tmp_path):
    """No pip_ensure (Slicer 5.10): pip runs through jobs.BatchJob; Cancel stops it."""
    import types

    del fake_slicer.slicer.packaging
    timers = []

    class QTimer:
        def setInterval(self, ms): pass
        def connect(self, signal, slot): timers.append(slot)
        def start(self): pass
        def stop(self): pass

    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QTimer=QTimer))
    script = "import time\nprint('Collecting monai', flush=True)\ntime.sleep(60)\n"
    monkeypatch.setattr(dependencies, "pip_command", lambda python, reqs, constraints: [sys.executable, "-c", script])
    statuses = []
    installer, finished = _run_installer(["monai"], line=(5, 10))
    installer.on_status = statuses.append
    assert installer.running and not finished
    deadline = time.monotonic() + 60
    while "Collecting monai" not in statuses and time.monotonic() < deadline:
        timers[0]()
        time.sleep(0.05)
    assert "Collecting monai" in statuses
    started = time.monotonic()
    installer.cancel()
    assert time.monotonic() - started < 10 and not installer.running
    (ok, message, _), = finished
    assert not ok and "cancelled" in message


# -- subprocesses: Windows console, TotalSegmentator job ------------------------------------------------


def test_windows_subprocesses_have_no_console_window():
    nt = jobs.popen_platform_kwargs("nt")
    assert nt["creationflags"] & 0x08000000, "CREATE_NO_WINDOW (like slicer.util.launchConsoleProcess)"
    assert nt["creationflags"] & 0x00000200, "CREATE_NEW_PROCESS_GROUP (cancel kills the tree)"
    assert jobs.popen_platform_kwargs("posix") == {"start_new_session": True}
    # every subprocess the helper packages start goes through those flags
    for path in HELPER_FILES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("subprocess.Popen", "subprocess.run"):
                source = ast.unparse(node)
                if "scenarios" in path.name:
                    continue  # test scenarios, never in the GUI
                assert "popen_platform_kwargs()" in source or "creationflags=CREATE_NO_WINDOW" in source, \
                    f"{path.name}: {source[:120]}"


def _stub_totalsegmentator(tmp_path: Path, labels: Path, sleep: float = 0.0) -> dict:
    """A ``totalsegmentator`` package whose python_api returns real TotalSegmentator labels of the
    example CT, plus a weights folder that passes PASTALib's weights check; returns the env."""
    package = tmp_path / "stub" / "totalsegmentator"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "python_api.py").write_text(textwrap.dedent(f"""
        import shutil, time
        def totalsegmentator(input, output, ml=True, fast=False, roi_subset=None, device="cpu", quiet=False):
            print("stub segmenter running", flush=True)
            time.sleep({sleep})
            shutil.copyfile({str(labels)!r}, output)
    """))
    weights = tmp_path / "weights" / "Dataset297_TotalSegmentator_total_3mm_1559subj" / "fold_0"
    weights.mkdir(parents=True)
    (weights / "checkpoint_final.pth").write_bytes(b"stub")
    env = jobs.pastalib_env(packages=("PASTASynthLib",))  # what BatchJob gives `-m PASTASynthLib.x`
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "stub"), env["PYTHONPATH"]])
    env["TOTALSEG_WEIGHTS_PATH"] = str(tmp_path / "weights")
    return env


def test_totalsegmentator_job_streams_progress_and_writes_labels(ts_data, tmp_path):
    import SimpleITK as sitk

    env = _stub_totalsegmentator(tmp_path, ts_data / "example_seg.nii.gz")
    out = tmp_path / "out" / "organs.nii.gz"
    out.parent.mkdir()
    command = totalsegmentator_job.command(ts_data / "example_ct_sm.nii.gz", out, fast=True, device="cpu",
                                           python=sys.executable)
    assert command[1:3] == ["-m", "PASTASynthLib.totalsegmentator_job"]
    seen, lines = [], []
    job = jobs.BatchJob(command, env=env, on_progress=lambda f, m: seen.append((f, m)), on_line=lines.append).start()
    assert job.wait(timeout=180) == "finished", job.output_tail
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 4
    assert "stub segmenter running" in lines
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(ts_data / "example_seg.nii.gz")))
    assert (written == expected).all() and written.max() > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["organs.nii.gz"]


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM to the process group")
def test_totalsegmentator_job_cancel_leaves_no_partial_output(ts_data, tmp_path):
    env = _stub_totalsegmentator(tmp_path, ts_data / "example_seg.nii.gz", sleep=120)
    out = tmp_path / "out" / "organs.nii.gz"
    out.parent.mkdir()
    lines = []
    job = jobs.BatchJob(totalsegmentator_job.command(ts_data / "example_ct_sm.nii.gz", out, device="cpu",
                                                     python=sys.executable), env=env, on_line=lines.append).start()
    deadline = time.monotonic() + 120
    while "stub segmenter running" not in lines and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert "stub segmenter running" in lines, job.output_tail
    started = time.monotonic()
    job.cancel()
    assert job.state == "cancelled" and time.monotonic() - started < 10
    assert list(out.parent.iterdir()) == []  # no label map, no partial file


def test_totalsegmentator_job_refuses_missing_weights(ts_data, tmp_path):
    env = _stub_totalsegmentator(tmp_path, ts_data / "example_seg.nii.gz")
    env["TOTALSEG_WEIGHTS_PATH"] = str(tmp_path / "no-weights")
    out = tmp_path / "organs.nii.gz"
    proc = subprocess.run(totalsegmentator_job.command(ts_data / "example_ct_sm.nii.gz", out, python=sys.executable),
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and "error: TotalSegmentator weights" in proc.stderr and not out.exists()


# -- scene closed while a job ran ----------------------------------------------------------------------


def test_finish_after_scene_close_adds_nothing_and_does_not_raise(ctx, ts_data):
    from PASTASynthLib.logic import SynthesisLogic

    logic = SynthesisLogic(context=ctx)
    labels = ts_data / "example_seg.nii.gz"
    ct = logic.load_ct(ts_data / "example_ct_sm.nii.gz", "ct")
    segmentation = logic.import_totalsegmentator_labels(labels, ct)  # control: CT in the scene
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert "liver" in names and segmentation.GetScene() is ctx.scene
    ctx.scene.Clear(0)  # File > Close scene while TotalSegmentator ran
    assert not jobs.nodes_in_scene(ctx.scene, ct)
    before = ctx.scene.GetNumberOfNodes()
    assert logic.import_totalsegmentator_labels(labels, ct) is None
    assert ctx.scene.GetNumberOfNodes() == before
    other = logic.load_ct(ts_data / "example_ct_sm.nii.gz", "ct2")
    ctx.scene.RemoveNode(other)  # the CT deleted by hand
    assert logic.import_totalsegmentator_labels(labels, other) is None
    assert not jobs.nodes_in_scene(None, other) and not jobs.nodes_in_scene(ctx.scene, None)


def _method(module: str, cls: str, name: str) -> ast.FunctionDef:
    tree = _tree(MODULE_FILES[module])
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_widgets_cancel_jobs_on_scene_close_and_guard_finish_handlers():
    for module, cancel in (("PASTA", "self.cancelJob()"), ("PASTASynth", "self.cancelJobs()")):
        close = ast.unparse(_method(module, f"{module}Widget", "onSceneStartClose"))
        assert cancel in close and close.index(cancel) < close.index("self.setParameterNode(None)")
    segment = ast.unparse(_method("PASTA", "PASTAWidget", "onSegmentFinished"))
    assert segment.index("nodes_in_scene(") < segment.index("self._parameterNode.outputSegmentation")
    assert "self._parameterNode is None" in segment
    finetune = ast.unparse(_method("PASTA", "PASTAWidget", "onFineTuneFinished"))
    assert "self._parameterNode is not None" in finetune
    totalseg = ast.unparse(_method("PASTASynth", "PASTASynthWidget", "onTotalSegmentatorTimer"))
    assert "import_totalsegmentator_labels" in totalseg and "self._parameterNode is None" in totalseg
    run = ast.unparse(_method("PASTASynth", "PASTASynthWidget", "onRunTotalSegmentator"))
    assert "totalsegmentator_job.command(" in run and "BatchJob(" in run
    assert "totalsegmentator_segmentation" not in MODULE_FILES["PASTASynth"].read_text()  # never in-process


def test_phase_detection_is_on_demand():
    update = ast.unparse(_method("PASTASynth", "PASTASynthWidget", "updateEnhancement"))
    assert "detect=True" not in update and "currentNode()" not in update  # selector changes read no CT
    detect = ast.unparse(_method("PASTASynth", "PASTASynthWidget", "onDetectPhase"))
    assert "detect=True" in detect
    setup = ast.unparse(_method("PASTASynth", "PASTASynthWidget", "setup"))
    assert "self.ui.detectPhaseButton.connect('clicked(bool)', self.onDetectPhase)" in setup


# -- Reload and the version gate ------------------------------------------------------------------------


def test_reload_unloads_the_helper_packages():
    import PASTASlicerLib.jobs as first

    modules = {"PASTASlicerLib": 1, "PASTASlicerLib.jobs": 2, "PASTALogicLib.logic": 3, "PASTASlicerLibX": 4, "json": 5}
    assert dependencies.unload_packages(("PASTASlicerLib", "PASTALogicLib"), modules) == [
        "PASTALogicLib.logic", "PASTASlicerLib", "PASTASlicerLib.jobs"]
    assert modules == {"PASTASlicerLibX": 4, "json": 5}
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "PASTASlicerLib"}
    try:
        dependencies.unload_packages(("PASTASlicerLib",))
        import PASTASlicerLib.jobs as second

        assert second is not first  # read again from disk
    finally:
        sys.modules.update(saved)
    for module in MODULE_FILES:
        reload = ast.unparse(_method(module, f"{module}Widget", "onReload"))
        assert reload.index("dependencies.unload_packages(") < reload.index("ScriptedLoadableModuleWidget.onReload(self)")
        own = {"PASTA": "PASTALogicLib", "PASTASynth": "PASTASynthLib"}[module]
        assert f"unload_packages(('{own}', 'PASTASlicerLib'))" in reload


def test_old_slicer_is_refused_at_module_load():
    message = dependencies.unsupported_slicer_message(5, 8)
    assert message and "5.10 or later" in message and "Slicer 5.8" in message
    assert all(dependencies.unsupported_slicer_message(*v) is None for v in ((5, 10), (5, 11), (5, 12), (6, 0)))
    assert dependencies.slicer_line(5, 11) == (5, 10) and dependencies.slicer_line(5, 13) == (5, 12)
    assert dependencies.slicer_line(6, 1) == (5, 12)
    for module, path in MODULE_FILES.items():
        body = _tree(path).body
        gate = next(i for i, n in enumerate(body) if isinstance(n, ast.If)
                    and "unsupported_slicer_message(slicer.app.majorVersion, slicer.app.minorVersion)" in ast.unparse(n.test))
        assert isinstance(body[gate].body[0], ast.Raise)
        helpers = [i for i, n in enumerate(body) if isinstance(n, ast.ImportFrom)
                   and (n.module or "").split(".")[0] in ("PASTALogicLib", "PASTASynthLib", "PASTASlicerLib", "PASTALib")
                   and ast.unparse(n) != "from PASTASlicerLib import dependencies"]
        assert helpers and gate < min(helpers), f"{module}.py imports helpers before the version gate"
    # Slicer 5.8 runs Python 3.9: what runs before the gate must parse there
    for path in (*MODULE_FILES.values(), REPO / "PASTASlicerLib" / "dependencies.py",
                 REPO / "PASTASlicerLib" / "__init__.py"):
        ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))


# -- Slicer 5.10: the DICOM export in a subprocess with a private pydicom 3 -----------------------------


def test_private_requirements_are_checked_in_the_private_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTA_PRIVATE_SITE", str(tmp_path))
    report = dependencies.check_dependencies(line=(5, 10))
    torch, others, private = dependencies.install_plan(report)
    assert private == ["pydicom==3.0.2", "highdicom==0.27.0", "pyjpegls==1.5.1"]  # not seen in site-packages
    assert not any(o.startswith(("pydicom", "highdicom")) for o in others)
    info = tmp_path / "highdicom-0.27.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: highdicom\nVersion: 0.27.0\n")
    assert dependencies.installed_version("highdicom", str(tmp_path)) == "0.27.0"
    assert "highdicom==0.27.0" not in dependencies.install_plan(dependencies.check_dependencies(line=(5, 10)))[2]
    command = dependencies.pip_command("/py", private, target=str(tmp_path))
    assert command[command.index("--target") + 1] == str(tmp_path) and "--no-deps" in command
    assert dependencies.check_dependencies(line=(5, 12)).ok  # 5.12: bundled highdicom 0.27 accepted


@pytest.fixture(scope="module")
def dicom_export_inputs(ts_data, tmp_path_factory):
    """The export job's inputs for the real contrast DICOM series: its organ labels plus one liver
    lesion (an ellipsoid), as the PASTA panel writes them; and the lesion volume in mm³."""
    return _dicom_export_inputs(ts_data, tmp_path_factory.mktemp("dicom_inputs"))


def _dicom_export_inputs(ts_data, work):
    import numpy as np
    import SimpleITK as sitk

    from PASTALib.anatomy import OrganMasks
    from PASTALib.io import read_ct, read_label
    from PASTALogicLib import dicom_export_job

    ct = read_ct(ts_data / "example_ct_dicom")
    organs = OrganMasks.from_label_map(read_label(ts_data / "example_seg_dicom.nii.gz"), reference=ct).pasta_label_map()
    a = sitk.GetArrayFromImage(organs)
    c = np.argwhere(a == 2).mean(0).astype(int)
    zz, yy, xx = np.indices(a.shape)
    lesion = (((zz - c[0]) / 5) ** 2 + ((yy - c[1]) / 15) ** 2 + ((xx - c[2]) / 15) ** 2 <= 1) & (a == 2)
    a[lesion] = 12
    labels, instances = sitk.GetImageFromArray(a), sitk.GetImageFromArray(lesion.astype(np.uint16))
    labels.CopyInformation(ct)
    instances.CopyInformation(ct)
    volume = float(lesion.sum() * np.prod(ct.GetSpacing()))
    report = {"enhancement": "Enhanced CT", "location": "Liver", "size_zxy_mm": [20, 30, 30], "shape": "Round-like",
              "density": "Hypodense", "heterogeneity": "Homogeneous", "surface": "Well-defined margin",
              "invasion": "No close relationship with surrounding structures", "lesion_type": "liver_tumor",
              "label_value": 12, "centre_mm": [0.0, 0.0, 0.0], "volume_mm3": volume, "mean_hu": 40.0,
              "organ_mean_hu": 60.0}
    lesions = [{"index": 1, "report": report, "details": {"longest_diameter_mm": 30.0}}]
    return dicom_export_job.write_inputs(work, labels, instances, lesions, ts_data / "example_ct_dicom"), volume


def test_dicom_export_job_writes_seg_and_sr(dicom_export_inputs, tmp_path):
    """The 5.10 export path end to end: a real subprocess on the real DICOM series, read back."""
    import highdicom as hd

    from PASTALogicLib import dicom_export_job

    inputs, volume = dicom_export_inputs
    lines = []
    job = jobs.BatchJob(dicom_export_job.command(inputs, tmp_path / "out", python=sys.executable),
                        env=dicom_export_job.environment(None), on_line=lines.append).start()
    assert job.wait(timeout=300) == "finished", job.output_tail
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT "):])
    seg = hd.seg.segread(result["dicom_seg"])
    assert any(s.SegmentLabel.startswith("Lesion 1") for s in seg.SegmentSequence)
    (group,) = hd.sr.srread(result["dicom_sr"]).content.get_volumetric_roi_measurement_groups()
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert values["Volume"] == pytest.approx(volume) and values["Craniocaudal extent (Z)"] == 20


def test_dicom_export_job_uses_the_private_folder_first(dicom_export_inputs, tmp_path):
    """A pydicom 2 found first (as Slicer 5.10's would be without the private folder) is refused with
    the fix, and nothing is written: proves the private folder leads PYTHONPATH."""
    from PASTALogicLib import dicom_export_job

    fake = tmp_path / "site" / "pydicom"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '2.4.4'\n")
    inputs, _ = dicom_export_inputs
    proc = subprocess.run(dicom_export_job.command(inputs, tmp_path / "out", python=sys.executable),
                          env=dicom_export_job.environment(str(tmp_path / "site")), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "needs pydicom 3 (found 2.4.4" in proc.stderr, proc.stderr[-1500:]
    assert not (tmp_path / "out").exists()


def test_widget_exports_dicom_in_a_subprocess_on_slicer_510():
    export = ast.unparse(_method("PASTA", "PASTAWidget", "onExportDicom"))
    assert "self.slicerLine() < (5, 12)" in export and "self.exportDicomInSubprocess(" in export
    sub = ast.unparse(_method("PASTA", "PASTAWidget", "exportDicomInSubprocess"))
    assert "dicom_export_job.environment(dependencies.private_site())" in sub and "BatchJob(" in sub


def test_bundled_table_equals_what_slicer_source_pins():
    """The panels' table of Slicer's bundled packages (PASTALib.requirements.BUNDLED, used in Slicer where the
    rule data is not shipped) equals the versions Testing/slicer_rules/extract.py took from Slicer's SuperBuild
    at each tag; SimpleITK at 5.10 is built into Slicer (BUILT_IN_MODULES), not a pip package."""
    import re

    from PASTALib.requirements import BUILT_IN_MODULES, BUNDLED

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    source = json.loads((Path(__file__).with_name("slicer_rules") / "bundled_packages.json").read_text())
    for tag, line in (("v5.10.0", (5, 10)), ("v5.12.3", (5, 12))):
        pinned = {norm(e["name"]): e["version"] for e in source[tag]}
        ours = {norm(k): v for k, v in BUNDLED[line].items()}
        built_in = {norm(m) for m in BUILT_IN_MODULES}
        assert {k: v for k, v in pinned.items() if not (k in built_in and k not in ours)} == ours, tag
