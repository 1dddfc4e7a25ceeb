"""PNG overviews of a CT with its label map: three orthogonal slices through a point."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PASTALib.geometry import image_to_array, local_grid, resample_to_grid

#: Soft-tissue window (level 40, width 400) for abdomen; lung lesions get the lung window.
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
LUNG_WINDOW = (-1350.0, 150.0)


def render_overview(
    ct: sitk.Image,
    labels: sitk.Image,
    center_lps: Sequence[float],
    path: str | os.PathLike,
    *,
    title: str = "",
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
    lesion_values: Sequence[int] = tuple(range(11, 26)),
    field_of_view_mm: float = 160.0,
) -> Path:
    """Axial, coronal and sagittal 1 mm slices through ``center_lps`` with contours.

    Organs (1-10) are outlined in yellow, lesions (11-25) in red.
    Matplotlib runs headless (Agg).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Only the field of view around the point is resampled to 1 mm, never the whole CT.
    grid = local_grid(center_lps, (field_of_view_mm,) * 3)
    volume = image_to_array(resample_to_grid(ct, grid, is_label=False))
    label_array = image_to_array(resample_to_grid(labels, grid, is_label=True))
    x, y, z = (np.asarray(grid.size) - 1) // 2
    # Radiological display: patient right on the image left, anterior/superior up.
    panels = {
        "Axial": (volume[:, :, z].T, label_array[:, :, z].T, False),
        "Coronal": (volume[:, y, :].T, label_array[:, y, :].T, True),
        "Sagittal": (volume[x, :, :].T, label_array[x, :, :].T, True),
    }
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="black")
    for axis, (name, (image, label, flip)) in zip(axes, panels.items()):
        origin = "lower" if flip else "upper"
        axis.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], origin=origin, interpolation="bilinear")
        organ = (label > 0) & (label <= 10)
        if organ.any():
            axis.contour(organ, levels=[0.5], colors="#f2d15c", linewidths=0.7, origin=origin)
        lesion_plane = np.isin(label, lesion_values)
        if lesion_plane.any():
            axis.contour(lesion_plane, levels=[0.5], colors="#ff3b30", linewidths=1.0, origin=origin)
        axis.set_title(name, color="white", fontsize=10)
        axis.axis("off")
    if title:
        figure.suptitle(title, color="white", fontsize=10, wrap=True)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, facecolor="black")
    plt.close(figure)
    return path
