"""What PASTALib needs installed in 3D Slicer's Python, as data, and the check against it.

One torch-free table shared by the module panels (PASTASlicerLib.dependencies installs from it),
the tests (against pyproject.toml, the panels' imports and Slicer's bundled versions) and the
command line: ``python -m PASTALib.requirements [--slicer 5.10]`` prints each requirement with
the installed version and exits 1 when one is missing or outside its range.

Stdlib + ``packaging`` (which Slicer bundles) only, and Python 3.9-parsable: the module files
import it before refusing a Slicer older than 5.10 (whose Python is 3.9).
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Iterable
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
    pyproject.toml). ``slicer_lines``: the lines that need it (None: all). ``private``: installed
    with ``pip --target`` into :func:`private_site` (not Slicer's site-packages) and used only by
    subprocesses that put that folder first on PYTHONPATH: how Slicer 5.10 gets pydicom 3 for the
    DICOM export without replacing its own pydicom 2.4.4.
    """

    distribution: str
    module: str
    specifier: str
    used_by: str
    slicer_lines: tuple[tuple[int, int], ...] | None = None
    private: bool = False

    def requirement(self) -> str:
        return f"{self.distribution}{self.specifier}"


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
    PythonRequirement("openvino", "openvino", ">=2026.4.1,<2027", "fast CPU segmentation (pasta segment's windows)"),
    PythonRequirement("pandas", "pandas", ">=3.1.1,<4", "fine-tuning tables (pasta finetune)"),
    PythonRequirement("matplotlib", "matplotlib", ">=3.8,<4", "training curves (fine-tune)"),
    PythonRequirement("scikit-learn", "sklearn", ">=1.9.1,<2", "fine-tuning cross-validation metrics"),
    # Slicer 5.12 bundles highdicom 0.27 + pydicom 3 (the check passes, nothing is installed).
    PythonRequirement("highdicom", "highdicom", ">=0.27,<0.29", "DICOM SEG + SR export", slicer_lines=((5, 12),)),
    # Slicer 5.10 bundles pydicom 2.4.4 and no highdicom. highdicom 0.22.0 (the last for pydicom 2)
    # fails on pydicom 2.4's ambiguous codes.SCT.AnatomicalStructure; highdicom >= 0.23 needs
    # pydicom >= 3.0.1, which must not replace Slicer's. So the export runs in a subprocess whose
    # PYTHONPATH starts with a private folder holding exactly Slicer 5.12's pydicom/highdicom.
    PythonRequirement("pydicom", "pydicom", "==3.0.2", "DICOM export subprocess (Slicer 5.10)",
                      slicer_lines=((5, 10),), private=True),
    PythonRequirement("highdicom", "highdicom", "==0.27.0", "DICOM export subprocess (Slicer 5.10)",
                      slicer_lines=((5, 10),), private=True),
    PythonRequirement("pyjpegls", "pyjpegls", "==1.5.1", "JPEG-LS codec highdicom 0.27 imports (Slicer 5.10)",
                      slicer_lines=((5, 10),), private=True),
)

#: Imported only by CLI commands that no panel runs, so not installed by the panels (say why:
#: pingouin needs numpy >= 2.2.2 and scipy >= 1.15, which would replace Slicer 5.10's).
CLI_ONLY: dict[str, str] = {
    "pingouin": "pasta review analyze",
    "krippendorff": "pasta review analyze",
    "statsmodels": "pasta review analyze (OR-Hillis report, mixed model, Wilson intervals)",
    "threadpoolctl": "comes with scikit-learn",
    "skimage": "pasta evaluate realism and the realism benchmarks (lesion shape features)",
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


def private_site() -> str:
    """The folder of the ``private`` requirements (``$PASTA_PRIVATE_SITE``, else
    ``~/.pasta/slicer-site``); subprocesses that need them get it first on PYTHONPATH."""
    import os

    return os.environ.get("PASTA_PRIVATE_SITE") or os.path.join(os.path.expanduser("~"), ".pasta", "slicer-site")


def installed_version(distribution: str, path: str | None = None) -> str | None:
    """Version of an installed distribution (in ``path`` only, when given), or None."""
    if path is not None:
        from packaging.utils import canonicalize_name

        wanted = canonicalize_name(distribution)
        for dist in importlib.metadata.distributions(path=[path]):
            if canonicalize_name(dist.metadata["Name"] or "") == wanted:
                return dist.version
        return None
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
    return DependencyReport([
        RequirementStatus(r, r.specifier, installed_version(r.distribution, private_site() if r.private else None))
        for r in reqs])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m PASTALib.requirements", description=__doc__.splitlines()[0])
    parser.add_argument("--slicer", default=None, help="Slicer version whose line applies, e.g. 5.10 (default: the newest)")
    args = parser.parse_args(argv)
    line = slicer_line(*map(int, args.slicer.split(".")[:2])) if args.slicer else None
    report = check_dependencies(line=line)
    for status in report.statuses:
        state = "ok" if status.ok else ("MISSING" if status.installed is None else "WRONG VERSION")
        print(f"{status.wanted:<32} {status.installed or '-':<16} {state}  ({status.requirement.used_by})")
    if not report.ok:
        print(f"error: {report.message}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
