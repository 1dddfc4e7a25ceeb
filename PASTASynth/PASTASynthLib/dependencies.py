"""Check PASTALib's heavy Python dependencies and plan their installation.

Pure Python (no Slicer, no Qt, nothing heavy imported): the module widgets call
:func:`check_dependencies` on entry and, on the user's click, install the
:func:`install_plan` in order -- torch first and pinned, so that no other package's
resolver pulls an unpinned multi-GB CUDA torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field

#: (import name, pip requirement). Pins mirror pyproject.toml; torch stays first.
REQUIREMENTS: tuple[tuple[str, str], ...] = (
    ("torch", "torch==2.13.0"),
    ("monai", "monai==1.6.1"),
    ("SimpleITK", "SimpleITK>=2.3"),
    ("nibabel", "nibabel>=5.0"),
    ("scipy", "scipy>=1.10"),
    ("jsonschema", "jsonschema>=4.20"),
    ("slicerio", "slicerio>=1.4"),
)

TORCH_REQUIREMENT = dict(REQUIREMENTS)["torch"]


@dataclass
class DependencyReport:
    missing: list[tuple[str, str]] = field(default_factory=list)
    installed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def message(self) -> str:
        if self.ok:
            found = ", ".join(f"{k} {v}" for k, v in self.installed.items())
            return f"All PASTA dependencies are installed ({found})."
        names = ", ".join(req for _, req in self.missing)
        return (
            f"PASTA needs these Python packages, which are not installed: {names}. "
            "Click 'Install dependencies' (downloads several hundred MB, torch first) or run "
            "in Slicer's Python console: slicer.util.pip_install('<package>')."
        )


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def check_dependencies(requirements=REQUIREMENTS) -> DependencyReport:
    """Which requirements are importable; never imports the packages themselves."""
    report = DependencyReport()
    for module_name, requirement in requirements:
        if importlib.util.find_spec(module_name) is None:
            report.missing.append((module_name, requirement))
        else:
            report.installed[module_name] = _version(module_name)
    return report


def install_plan(report: DependencyReport) -> list[str]:
    """pip requirement strings in install order: torch (pinned) first, then the rest."""
    reqs = [req for _, req in report.missing]
    torch_first = [r for r in reqs if r.startswith("torch")]
    return torch_first + [r for r in reqs if not r.startswith("torch")]


def install_in_slicer(report: DependencyReport | None = None) -> None:
    """Install the missing packages into Slicer's Python (call from the GUI only).

    torch goes first and pinned: through the SlicerPyTorch extension's ``PyTorchUtils``
    when installed (it picks the wheel matching the GPU/CUDA), else ``pip_install``. The
    rest through ``slicer.pydeps.pip_ensure`` (Slicer >= 5.11) or ``slicer.util.pip_install``.
    """
    import slicer  # only inside Slicer

    plan = install_plan(report or check_dependencies())
    torch_reqs = [r for r in plan if r.startswith("torch")]
    others = [r for r in plan if not r.startswith("torch")]
    if torch_reqs:
        try:
            import PyTorchUtils

            PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=True, torchVersionRequirement=torch_reqs[0][len("torch"):])
        except ImportError:
            slicer.util.pip_install(torch_reqs[0])
    if others:
        pydeps = getattr(slicer, "pydeps", None)
        if pydeps is not None and hasattr(pydeps, "pip_ensure"):
            from packaging.requirements import Requirement

            pydeps.pip_ensure([Requirement(r) for r in others], requester="SlicerPASTA")
        else:
            slicer.util.pip_install(" ".join(others))
