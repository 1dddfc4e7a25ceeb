"""PASTA's Python requirements inside 3D Slicer (as data) and how they are checked and installed.

Pure Python: stdlib + ``packaging`` (Slicer bundles it); no Slicer, Qt or torch at import time,
so pytest, the CLI checks and the module panels read the same table. Slicer-only code (the
PyTorch extension, ``slicer.packaging.pip_ensure``, dialogs) is imported inside the functions
that need it.

How the install works (like SlicerNNUnet, KitwareMedical/SlicerNNUnet InstallLogic.py):

1. torch only through the PyTorch extension's ``PyTorchUtilsLogic.installTorch`` (light-the-torch
   picks the CUDA build for the driver). A cancelled torch install stops everything: nothing
   else is installed, so no other package's resolver can pull an unpinned torch from PyPI.
2. Everything else with ``slicer.packaging.pip_ensure`` on Slicer >= 5.12 (its own progress and
   restart dialogs), or on 5.10 with ``pip`` in a ``PythonSlicer`` subprocess (jobs.BatchJob:
   progress, cancel, the GUI stays live). Both with a constraints file that pins every package
   Slicer bundles to the installed version, so pip never downgrades or replaces them.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: Oldest Slicer the modules run on: 5.8 has Python 3.9 and no segment terminology API (5.10).
MINIMUM_SLICER = (5, 10)

#: The Slicer lines this table was checked against (the tags the tests read).
SUPPORTED_SLICER_LINES = ((5, 10), (5, 12))

#: Distributions each Slicer release ships in its Python (pip name -> version), read from
#: SuperBuild/External_python-*.cmake at the tag. Installing PASTA must leave every one as it
#: is (constraints file). 5.10.0 has SimpleITK built into the application, not as a pip
#: distribution, so importlib.metadata does not see it there.
BUNDLED: dict[tuple[int, int], dict[str, str]] = {
    (5, 10): {  # Slicer v5.10.0
        "numpy": "2.0.2",  # External_python-numpy.cmake:43
        "scipy": "1.13.1",  # External_python-scipy.cmake:40
        "pydicom": "2.4.4",  # External_python-dicom-requirements.cmake:44
        "pillow": "11.2.1",  # External_python-dicom-requirements.cmake:61
        "six": "1.17.0",
        "retrying": "1.3.4",
        "dicomweb-client": "0.60.0",
        "packaging": "25.0",  # External_python-pythonqt-requirements.cmake:35
        "pyparsing": "3.2.3",
        "requests": "2.32.3",  # External_python-requests-requirements.cmake:56
        "certifi": "2025.4.26",
        "idna": "3.10",
        "charset-normalizer": "3.4.2",
        "urllib3": "2.4.0",
        "chardet": "5.2.0",  # External_python-extension-manager-requirements.cmake
        "couchdb": "1.2",
        "gitdb": "4.0.12",
        "smmap": "5.0.2",
        "GitPython": "3.1.44",
        "cryptography": "45.0.3",  # External_python-extension-manager-ssl-requirements.cmake
        "PyJWT": "2.10.1",
        "wrapt": "1.17.2",
        "Deprecated": "1.2.18",
        "pycparser": "2.22",
        "cffi": "1.17.1",
        "PyNaCl": "1.5.0",
        "python-dateutil": "2.9.0.post0",
        "typing-extensions": "4.14.0",
        "PyGithub": "2.6.1",
        "pip": "25.1.1",
        "setuptools": "80.9.0",
        "wheel": "0.45.1",
    },
    (5, 12): {  # Slicer v5.12.3
        "numpy": "2.4.6",  # External_python-numpy.cmake:44
        "scipy": "1.17.1",  # External_python-scipy.cmake:44
        "SimpleITK": "2.5.5",  # External_python-SimpleITK.cmake:35
        "pydicom": "3.0.2",  # External_python-dicom-requirements.cmake:45
        "pillow": "12.2.0",  # External_python-dicom-requirements.cmake:62
        "six": "1.17.0",
        "retrying": "1.4.2",
        "dicomweb-client": "0.61.0",
        "dcmqi": "0.4.0",  # External_python-dicom-requirements.cmake:85
        "highdicom": "0.27.0",  # External_python-dicom-requirements.cmake:94
        "pyjpegls": "1.5.1",  # External_python-dicom-requirements.cmake:106
        "typing-extensions": "4.15.0",
        "packaging": "26.2",  # External_python-pythonqt-requirements.cmake:35
        "pyparsing": "3.3.2",
        "requests": "2.34.2",  # External_python-requests-requirements.cmake:62
        "certifi": "2026.5.20",
        "idna": "3.16",
        "charset-normalizer": "3.4.7",
        "urllib3": "2.7.0",
        "chardet": "7.4.3",
        "couchdb": "1.2",
        "gitdb": "4.0.12",
        "smmap": "5.0.3",
        "GitPython": "3.1.50",
        "cryptography": "48.0.0",
        "PyJWT": "2.13.0",
        "wrapt": "2.2.1",
        "Deprecated": "1.3.1",
        "pycparser": "3.0",
        "cffi": "2.0.0",
        "PyNaCl": "1.6.2",
        "python-dateutil": "2.9.0.post0",
        "PyGithub": "2.9.1",
        "pip": "26.1.1",
        "setuptools": "82.0.1",
        "wheel": "0.47.0",
    },
}

#: Import names that Slicer provides without a pip distribution (built into the application).
BUILT_IN_MODULES = frozenset({"slicer", "vtk", "qt", "ctk", "SimpleITK", "mrml", "vtkITK"})

#: Modules of other Slicer extensions PASTA uses (module -> extension; EXTENSION_DEPENDS).
EXTENSION_MODULES = {"PyTorchUtils": "PyTorch"}


@dataclass(frozen=True)
class PythonRequirement:
    """One package PASTA installs into Slicer's Python.

    ``specifier``: accepted versions (lower bound = the version the test suite runs, pinned in
    pyproject.toml). ``by_slicer``: another specifier for a Slicer line whose bundled packages
    rule the newest version out (highdicom on 5.10, whose pydicom is 2.4). ``slicer_lines``: the
    lines that need it (None: all).
    """

    distribution: str
    module: str
    specifier: str
    used_by: str
    by_slicer: Mapping[tuple[int, int], str] = field(default_factory=dict)
    slicer_lines: tuple[tuple[int, int], ...] | None = None

    def specifier_for(self, line: tuple[int, int] | None = None) -> str:
        return self.by_slicer.get(tuple(line), self.specifier) if line is not None else self.specifier

    def requirement(self, line: tuple[int, int] | None = None) -> str:
        return f"{self.distribution}{self.specifier_for(line)}"


#: torch first: it is installed on its own, through the PyTorch extension.
TORCH = PythonRequirement("torch", "torch", ">=2.13,<3", "PASTA model (segment, fine-tune) in the CLI subprocess")

#: Everything else a panel feature (or the CLI jobs the panels start) imports, beyond what Slicer
#: bundles. Testing/test_slicer_runtime.py checks this table against pyproject.toml, against the
#: import closure of the panels' code and against Slicer's bundled versions.
REQUIREMENTS: tuple[PythonRequirement, ...] = (
    TORCH,
    PythonRequirement("monai", "monai", ">=1.6.1,<1.7", "network and sliding-window inference"),
    PythonRequirement("nibabel", "nibabel", ">=5.4.2,<6", "NIfTI reading (PASTALib.io)"),
    PythonRequirement("slicerio", "slicerio", ">=1.4.0,<2", ".seg.nrrd reading/writing (PASTALib.io)"),
    PythonRequirement("jsonschema", "jsonschema", ">=4.20,<5", "report validation (save/export reports)"),
    PythonRequirement("tqdm", "tqdm", ">=4.66,<5", "progress of the CLI jobs"),
    PythonRequirement("pandas", "pandas", ">=3.1.1,<4", "fine-tuning tables (pasta finetune)"),
    PythonRequirement("matplotlib", "matplotlib", ">=3.8,<4", "training curves (fine-tune)"),
    PythonRequirement("scikit-learn", "sklearn", ">=1.9.1,<2", "fine-tuning cross-validation metrics"),
    # Slicer 5.12 bundles highdicom 0.27 (the check passes, nothing is installed); 5.10 bundles
    # pydicom 2.4.4 and no highdicom: 0.22.0 is the last highdicom for pydicom 2 (0.23 needs
    # pydicom >= 3.0.1, which would replace Slicer's pydicom).
    PythonRequirement("highdicom", "highdicom", ">=0.27,<0.29", "DICOM SEG + SR export",
                      by_slicer={(5, 10): "==0.22.0"}),
    PythonRequirement("pillow-jpls", "pillow_jpls", ">=1.0,<2", "JPEG-LS codec of highdicom 0.22",
                      slicer_lines=((5, 10),)),
)

#: Imported only by CLI commands that no panel runs, so not installed by the panels (say why:
#: pingouin needs numpy >= 2.2.2 and scipy >= 1.15, which would replace Slicer 5.10's).
CLI_ONLY: dict[str, str] = {
    "pingouin": "pasta review analyze",
    "krippendorff": "pasta review analyze",
    "threadpoolctl": "comes with scikit-learn",
    "tensorboard": "optional TensorBoard logging of training",
    "totalsegmentator": "installed by the TotalSegmentator extension, not by PASTA",
}


def requirements_for(line: tuple[int, int] | None = None) -> list[PythonRequirement]:
    """The requirements on one supported Slicer line (None: outside Slicer, as on the newest line)."""
    line = tuple(line) if line is not None else SUPPORTED_SLICER_LINES[-1]
    return [r for r in REQUIREMENTS if r.slicer_lines is None or line in r.slicer_lines]


def slicer_line(major: int, minor: int) -> tuple[int, int]:
    """The supported line whose bundled packages apply to Slicer ``major.minor`` (5.11 dev -> 5.10)."""
    version = (int(major), int(minor))
    lines = [line for line in SUPPORTED_SLICER_LINES if line <= version]
    return lines[-1] if lines else SUPPORTED_SLICER_LINES[0]


def unsupported_slicer_message(major: int, minor: int) -> str | None:
    """Why this Slicer cannot run PASTA, or None when it can (5.10 and later)."""
    if (int(major), int(minor)) >= MINIMUM_SLICER:
        return None
    return (f"PASTA needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later; this is Slicer "
            f"{major}.{minor} (Python {sys.version_info[0]}.{sys.version_info[1]}). Older Slicer has Python 3.9 "
            "and no segment terminology API. Download the current stable release from "
            "https://download.slicer.org and install the PASTA extension there.")


# -- checking ------------------------------------------------------------------------------------


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class RequirementStatus:
    requirement: PythonRequirement
    specifier: str  # accepted versions on this Slicer line
    installed: str | None  # installed version, or None when missing

    @property
    def wanted(self) -> str:
        """pip requirement string, e.g. ``monai>=1.6.1,<1.7``."""
        return f"{self.requirement.distribution}{self.specifier}"

    @property
    def ok(self) -> bool:
        """Installed in an accepted version (presence alone is not enough)."""
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version

        if self.installed is None:
            return False
        try:
            return Version(self.installed) in SpecifierSet(self.specifier, prereleases=True)
        except InvalidVersion:
            return False

    @property
    def problem(self) -> str:
        if self.installed is None:
            return f"{self.wanted} (missing)"
        return f"{self.wanted} (installed {self.installed})"


@dataclass
class DependencyReport:
    statuses: list[RequirementStatus] = field(default_factory=list)

    @property
    def missing(self) -> list[RequirementStatus]:
        """Requirements that are absent or in a version outside the accepted range."""
        return [s for s in self.statuses if not s.ok]

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def torch_missing(self) -> bool:
        return any(s.requirement.distribution == "torch" for s in self.missing)

    @property
    def message(self) -> str:
        if self.ok:
            found = ", ".join(f"{s.requirement.distribution} {s.installed}" for s in self.statuses)
            return f"All PASTA dependencies are installed ({found})."
        names = ", ".join(s.problem for s in self.missing)
        return (f"PASTA needs these Python packages: {names}. Click 'Install dependencies': torch comes "
                "through the PyTorch extension (CUDA build when a GPU is found), the rest from PyPI "
                "(see the README, 'Use in 3D Slicer', for sizes and offline installation).")


def check_dependencies(requirements: Iterable[PythonRequirement] | None = None,
                       line: tuple[int, int] | None = None) -> DependencyReport:
    """Installed version of each requirement against its accepted range on this Slicer ``line``
    (from :func:`slicer_line`); reads package metadata only, never imports the packages."""
    reqs = list(requirements) if requirements is not None else requirements_for(line)
    return DependencyReport([RequirementStatus(r, r.specifier_for(line), installed_version(r.distribution))
                             for r in reqs])


def install_plan(report: DependencyReport) -> tuple[str | None, list[str]]:
    """``(torch requirement or None, other pip requirements)``: torch goes alone, first."""
    torch = next((s.wanted for s in report.missing if s.requirement.distribution == "torch"), None)
    others = [s.wanted for s in report.missing if s.requirement.distribution != "torch"]
    return torch, others


def bundled_constraints(line: tuple[int, int], installed: Mapping[str, str | None] | None = None) -> list[str]:
    """pip constraints ``name==version`` for every distribution Slicer bundles, at the version
    installed now (``installed``: a snapshot, default read from this Python), so that no
    requirement, nor a requirement of one, downgrades or replaces it."""
    if installed is None:
        installed = versions_snapshot(BUNDLED[tuple(line)])
    return [f"{name}=={installed[name]}" for name in BUNDLED[tuple(line)] if installed.get(name)]


def write_constraints(path: str | os.PathLike, constraints: Sequence[str]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("# Packages Slicer bundles: keep them as they are (written by PASTA)\n")
        f.write("\n".join(constraints) + "\n")
    return os.fspath(path)


def pip_command(python: str, requirements: Sequence[str], constraints_file: str | None = None) -> list[str]:
    """``python -m pip install`` for the 5.10 path (run by jobs.BatchJob, not on the GUI thread).

    ``--progress-bar off``: one line per step, which the panel shows as status text.
    """
    command = [python, "-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check"]
    if constraints_file:
        command += ["-c", constraints_file]
    return command + list(requirements)


def pip_step(line: str) -> str | None:
    """A short status for a pip output line worth showing (Collecting/Downloading/Installing...)."""
    text = line.strip()
    for prefix in ("Collecting ", "Downloading ", "Installing collected packages", "Successfully installed",
                   "Requirement already satisfied", "ERROR", "error:"):
        if text.startswith(prefix):
            return text if len(text) < 160 else text[:157] + "..."
    return None


def versions_snapshot(names: Iterable[str]) -> dict[str, str | None]:
    return {name: installed_version(name) for name in names}


def updated_imported(before: Mapping[str, str | None], after: Mapping[str, str | None],
                     loaded_modules: Iterable[str], requirements: Iterable[PythonRequirement] = REQUIREMENTS) -> list[str]:
    """Packages whose version changed while an older version is already imported: Slicer must be
    restarted before they are used (the old code stays in memory)."""
    modules = {r.distribution: r.module for r in requirements}
    loaded = {m.split(".")[0] for m in loaded_modules}
    changed = []
    for name, new in after.items():
        old = before.get(name)
        if old is not None and new != old and modules.get(name, name) in loaded:
            changed.append(f"{name} {old} -> {new}")
    return changed


# -- in Slicer (imports slicer / the PyTorch extension inside) -------------------------------------


class InstallCancelled(RuntimeError):
    """The user declined an install step; nothing after it was installed."""


class PyTorchExtensionMissing(RuntimeError):
    """torch must come from the PyTorch extension, which is not installed."""


def pytorch_utils_logic():
    """``PyTorchUtils.PyTorchUtilsLogic()`` of the PyTorch extension, or PyTorchExtensionMissing."""
    try:
        import PyTorchUtils  # the PyTorch extension's module (EXTENSION_DEPENDS PyTorch)
    except ModuleNotFoundError:
        raise PyTorchExtensionMissing(
            "PASTA installs torch through the PyTorch extension (it picks the CUDA build for your GPU). "
            "Install 'PyTorch' from the Extensions Manager, restart Slicer, then click 'Install dependencies' "
            "again.") from None
    return PyTorchUtils.PyTorchUtilsLogic()


def install_torch(requirement: str) -> str:
    """Install torch through PyTorchUtils (asks the user first); returns the installed version.

    A cancelled install raises InstallCancelled: the caller must stop, never fall back to pip.
    """
    from packaging.requirements import Requirement

    logic = pytorch_utils_logic()
    torch = logic.installTorch(askConfirmation=True, torchVersionRequirement=str(Requirement(requirement).specifier))
    if torch is None:
        raise InstallCancelled("The PyTorch installation was cancelled; nothing else was installed. "
                               "Click 'Install dependencies' again when you are ready.")
    return str(getattr(torch, "__version__", installed_version("torch")))


def install_pytorch_extension() -> None:
    """Offer to install the PyTorch extension from the Extensions Manager (needs a restart)."""
    import slicer

    if not slicer.util.confirmOkCancelDisplay(
            "PASTA installs torch through the PyTorch extension, which is not installed. Install it now from "
            "the Extensions Manager? Slicer must restart before the installation can go on.",
            "PASTA - PyTorch extension"):
        raise InstallCancelled("The PyTorch extension is needed for torch; nothing was installed.")
    manager = slicer.app.extensionsManagerModel()
    if not manager.isExtensionInstalled("PyTorch") and not manager.installExtensionFromServer("PyTorch", False):
        raise PyTorchExtensionMissing(
            "Could not install the PyTorch extension from the Extensions Manager (offline?). Install it by "
            "hand (View > Extensions Manager), restart Slicer, then click 'Install dependencies' again.")


class DependencyInstaller:
    """The panels' 'Install dependencies' button: torch through PyTorchUtils, then the rest.

    ``on_status(text)`` gets each step, ``on_finished(ok, message, restart_needed)`` the end.
    Slicer >= 5.12: ``slicer.packaging.pip_ensure`` (its own confirmation, progress and restart
    dialogs). Slicer 5.10: ``pip`` in a PythonSlicer subprocess (jobs.BatchJob) polled from a
    QTimer, so the GUI stays live and :meth:`cancel` stops it.
    """

    def __init__(self, line: tuple[int, int], on_status, on_finished) -> None:
        self.line = tuple(line)
        self.on_status = on_status
        self.on_finished = on_finished
        self.job = None
        self._timer = None
        self._before: dict[str, str | None] = {}
        self._constraints_dir = None

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self) -> None:
        import slicer

        report = check_dependencies(line=self.line)
        torch_requirement, others = install_plan(report)
        self._before = versions_snapshot(r.distribution for r in REQUIREMENTS)
        try:
            if torch_requirement:
                try:
                    logic_available = pytorch_utils_logic() is not None
                except PyTorchExtensionMissing:
                    install_pytorch_extension()
                    self._finish(True, "The PyTorch extension is installed: restart Slicer, then click "
                                       "'Install dependencies' again to install torch and the rest.", restart=True)
                    return
                if logic_available:
                    self.on_status(f"Installing {torch_requirement} through the PyTorch extension "
                                   "(light-the-torch picks the CUDA build; about 1-3 GB, several minutes)...")
                    version = install_torch(torch_requirement)
                    self.on_status(f"torch {version} installed.")
            if not others:
                self._finish(True, "PASTA dependencies are installed.")
                return
            constraints = self._constraints_file()
            pip_ensure = getattr(getattr(slicer, "packaging", None), "pip_ensure", None)
            if pip_ensure is not None:  # Slicer >= 5.12
                self.on_status(f"Installing {', '.join(others)}...")
                try:
                    pip_ensure(others, constraints=constraints, requester="PASTA", prompt_install=True,
                               prompt_restart=True)
                except RuntimeError as exc:
                    if "declined" in str(exc):
                        raise InstallCancelled("Installation declined; nothing else was installed.") from None
                    raise
                self._finish(True, "PASTA dependencies are installed.", restart_prompted=True)
                return
            if not slicer.util.confirmOkCancelDisplay(
                    f"PASTA will install these Python packages into Slicer's Python:\n\n{chr(10).join(others)}"
                    "\n\nThe packages Slicer bundles are kept as they are. Continue?", "PASTA - Install Python packages"):
                raise InstallCancelled("Installation declined; nothing else was installed.")
            self._start_pip(others, constraints)
        except (InstallCancelled, PyTorchExtensionMissing) as exc:
            self._finish(False, str(exc))

    def _constraints_file(self) -> str:
        import tempfile

        self._constraints_dir = tempfile.mkdtemp(prefix="pasta_pip_")
        return write_constraints(os.path.join(self._constraints_dir, "slicer-bundled.txt"),
                                 bundled_constraints(self.line))

    def _start_pip(self, others: Sequence[str], constraints: str) -> None:
        import qt

        from .jobs import BatchJob, python_executable

        self.job = BatchJob(pip_command(python_executable(), others, constraints), on_line=self._on_pip_line).start()
        self.on_status(f"Installing {', '.join(others)} (pip in the background; Cancel stops it)...")
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._poll)
        self._timer.start()

    def _on_pip_line(self, line: str) -> None:
        step = pip_step(line)
        if step:
            self.on_status(step)

    def _poll(self) -> None:
        if self.job is None:
            return
        state = self.job.poll()
        if state == "running":
            return
        self._timer.stop()
        job, self.job = self.job, None
        if state == "finished":
            self._finish(True, "PASTA dependencies are installed.")
        elif state == "cancelled":
            self._finish(False, "Installation cancelled (packages already installed by pip stay installed).")
        else:
            tail = "\n".join(job.output_tail.splitlines()[-5:])
            self._finish(False, f"pip failed (exit code {job.returncode}):\n{tail}")

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self._poll()

    def _finish(self, ok: bool, message: str, restart: bool = False, restart_prompted: bool = False) -> None:
        import shutil

        if self._constraints_dir:
            shutil.rmtree(self._constraints_dir, ignore_errors=True)
            self._constraints_dir = None
        changed = [] if restart_prompted else updated_imported(
            self._before, versions_snapshot(r.distribution for r in REQUIREMENTS), sys.modules)
        if changed:
            restart = True
            message += " Restart Slicer before using PASTA: updated while loaded: " + ", ".join(changed) + "."
        self.on_finished(ok, message, restart)


def unload_packages(packages: Sequence[str], modules: dict | None = None) -> list[str]:
    """Forget ``packages`` and their submodules from ``sys.modules`` (the module widgets' Reload:
    Slicer's ScriptedLoadableModuleWidget.onReload re-executes only the module file, so helper
    packages would stay at their first-loaded code). The next import reads them from disk."""
    modules = sys.modules if modules is None else modules
    gone = [name for name in list(modules) if any(name == p or name.startswith(p + ".") for p in packages)]
    for name in gone:
        del modules[name]
    return sorted(gone)
