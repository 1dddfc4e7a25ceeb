"""Install PASTALib's Python requirements (the table: PASTALib.requirements) into 3D Slicer.

No Slicer, Qt or torch at import time (pytest runs the pure parts); the Slicer-only code (the
PyTorch extension, ``slicer.packaging.pip_ensure``, dialogs, QTimer) is imported inside the
functions that need it.

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

import os
import sys
from collections.abc import Iterable, Mapping, Sequence

# The table and the check live in PASTALib (shared with the CLI and the tests); re-exported here
# for the panels, which import only this module before the version gate.
from PASTALib.requirements import (  # noqa: F401
    BUILT_IN_MODULES,
    BUNDLED,
    CLI_ONLY,
    EXTENSION_MODULES,
    MINIMUM_SLICER,
    REQUIREMENTS,
    SUPPORTED_SLICER_LINES,
    TORCH,
    DependencyReport,
    PythonRequirement,
    RequirementStatus,
    check_dependencies,
    installed_version,
    private_site,
    requirements_for,
    slicer_line,
    unsupported_slicer_message,
)


def install_plan(report: DependencyReport) -> tuple[str | None, list[str], list[str]]:
    """``(torch requirement or None, pip requirements, private-site requirements)``: torch goes
    alone and first (PyTorch extension); private ones go into :func:`private_site` with
    ``--no-deps`` (exact pins whose own requirements Slicer bundles)."""
    torch = next((s.wanted for s in report.missing if s.requirement.distribution == "torch"), None)
    others = [s.wanted for s in report.missing if s.requirement.distribution != "torch" and not s.requirement.private]
    private = [s.wanted for s in report.missing if s.requirement.private]
    return torch, others, private


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


def pip_command(python: str, requirements: Sequence[str], constraints_file: str | None = None,
                target: str | None = None) -> list[str]:
    """``python -m pip install`` for the 5.10 path (run by jobs.BatchJob, not on the GUI thread);
    with ``target``: ``--no-deps --target`` into the private folder.

    ``--progress-bar off``: one line per step, which the panel shows as status text.
    """
    command = [python, "-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check"]
    if constraints_file:
        command += ["-c", constraints_file]
    if target:
        command += ["--no-deps", "--upgrade", "--target", target]
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

    def __init__(self, line: tuple[int, int], on_status, on_finished,
                 requirements: Sequence[PythonRequirement] | None = None) -> None:
        self.line = tuple(line)
        self.requirements = list(requirements) if requirements is not None else requirements_for(self.line)
        self.on_status = on_status
        self.on_finished = on_finished
        self.job = None
        self._timer = None
        self._before: dict[str, str | None] = {}
        self._constraints_dir = None
        self._pending: list[list[str]] = []

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self) -> None:
        import slicer

        report = check_dependencies(self.requirements, line=self.line)
        torch_requirement, others, private = install_plan(report)
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
                                   "(light-the-torch picks the CUDA build; 0.2 to several GB, minutes)...")
                    version = install_torch(torch_requirement)
                    self.on_status(f"torch {version} installed.")
            if not others and not private:
                self._finish(True, "PASTA dependencies are installed.")
                return
            constraints = self._constraints_file()
            pip_ensure = getattr(getattr(slicer, "packaging", None), "pip_ensure", None)
            if pip_ensure is not None and not private:  # Slicer >= 5.12
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
            listing = "\n".join(others + [f"{r} (into {private_site()}, for the DICOM export)" for r in private])
            if not slicer.util.confirmOkCancelDisplay(
                    f"PASTA will install these Python packages:\n\n{listing}"
                    "\n\nThe packages Slicer bundles are kept as they are. Continue?", "PASTA - Install Python packages"):
                raise InstallCancelled("Installation declined; nothing else was installed.")
            from .jobs import python_executable

            commands = [pip_command(python_executable(), others, constraints)] if others else []
            if private:
                commands.append(pip_command(python_executable(), private, target=private_site()))
            self._start_pip(commands)
        except (InstallCancelled, PyTorchExtensionMissing) as exc:
            self._finish(False, str(exc))

    def _constraints_file(self) -> str:
        import tempfile

        self._constraints_dir = tempfile.mkdtemp(prefix="pasta_pip_")
        return write_constraints(os.path.join(self._constraints_dir, "slicer-bundled.txt"),
                                 bundled_constraints(self.line))

    def _start_pip(self, commands: Sequence[Sequence[str]]) -> None:
        """Run the pip commands one after the other in the background (a QTimer polls)."""
        import qt

        self._pending = [list(c) for c in commands]
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self._poll)
        self._next_pip()
        self._timer.start()

    def _next_pip(self) -> None:
        from .jobs import BatchJob

        command = self._pending.pop(0)
        self.job = BatchJob(command, on_line=self._on_pip_line).start()
        packages = " ".join(c for c in command[4:] if not c.startswith("-") and "/" not in c and "\\" not in c)
        self.on_status(f"pip install {packages[:150]} (in the background; Cancel stops it)...")

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
        if state == "finished" and self._pending:
            self._next_pip()
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


def _translator():
    """Slicer's ``tr`` (5.4+), else the identity."""
    try:
        from slicer.i18n import tr
    except ImportError:
        return lambda text: text
    return tr


class DependencyPanelMixin:
    """The *Install dependencies* row both module panels show (``self.ui.dependencyLabel``,
    ``self.ui.installDependenciesButton``; the widget sets ``self._installer = None`` in ``__init__``).
    Slicer is imported on use, so this module stays importable outside the app."""

    @staticmethod
    def slicerLine():
        import slicer

        return slicer_line(slicer.app.majorVersion, slicer.app.minorVersion)

    def updateDependencyStatus(self) -> None:
        report = check_dependencies(line=self.slicerLine())
        self.ui.dependencyLabel.text = report.message
        self.ui.installDependenciesButton.visible = not report.ok

    def onInstallDependencies(self) -> None:
        """torch through the PyTorch extension, then the rest (pip_ensure on 5.12+, a cancellable
        pip subprocess on 5.10); the button is Cancel while pip runs in the background."""
        import slicer

        _ = _translator()
        if self._installer is not None and self._installer.running:
            self._installer.cancel()
            return
        self._installer = DependencyInstaller(self.slicerLine(), self.onDependencyStatus,
                                              self.onDependenciesInstalled)
        self.ui.installDependenciesButton.text = _("Cancel installation")
        self._installFinished = False
        with slicer.util.tryWithErrorDisplay(_("Failed to install PASTA dependencies."), waitCursor=True):
            self._installer.start()
        if not self._installer.running:
            self.ui.installDependenciesButton.text = _("Install dependencies")
            if not self._installFinished:  # it raised (error shown): show what is installed now
                self.updateDependencyStatus()

    def onDependencyStatus(self, text: str) -> None:
        import slicer

        self.ui.dependencyLabel.text = text
        slicer.app.processEvents()  # show the step before a blocking PyTorchUtils / pip_ensure call

    def onDependenciesInstalled(self, ok: bool, message: str, restartNeeded: bool) -> None:
        import slicer

        _ = _translator()
        self._installFinished = True
        self.ui.installDependenciesButton.text = _("Install dependencies")
        self.updateDependencyStatus()
        self.ui.dependencyLabel.text = message + "\n" + self.ui.dependencyLabel.text
        if not ok:
            slicer.util.warningDisplay(message, windowTitle=_("PASTA dependencies"))
        elif restartNeeded and slicer.util.confirmYesNoDisplay(
                message + "\n\n" + _("Restart Slicer now?"), windowTitle=_("PASTA dependencies")):
            slicer.util.restart()


def unload_packages(packages: Sequence[str], modules: dict | None = None) -> list[str]:
    """Forget ``packages`` and their submodules from ``sys.modules`` (the module widgets' Reload:
    Slicer's ScriptedLoadableModuleWidget.onReload re-executes only the module file, so helper
    packages would stay at their first-loaded code). The next import reads them from disk."""
    modules = sys.modules if modules is None else modules
    gone = [name for name in list(modules) if any(name == p or name.startswith(p + ".") for p in packages)]
    for name in gone:
        del modules[name]
    return sorted(gone)
