"""Classical lung mask for chest CT (no model, no download): threshold + connected components.

Used when TotalSegmentator is not installed (e.g. `pasta demo --ct CT` without `--organs`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from PASTALib.anatomy.organs import OrganMasks, world_x_mm
from PASTALib.errors import AnatomyError
from PASTALib.geometry.arrays import array_to_image, xyz_view

#: Aerated lung is about -900..-500 HU; soft tissue, vessels and nodules are above this.
AIR_MAX_HU = -400.0
#: Pure gas (bowel, stomach, outside air) is darker than this; lung parenchyma mostly is not.
GAS_MAX_HU = -950.0
#: A component with more than this share of voxels below GAS_MAX_HU is gas, not lung
#: (measured: lungs 0.1-3.4 %, colon gas 61-71 %).
MAX_GAS_SHARE = 0.5
#: A lung (even a cut-off one in a chest CT) is larger than this.
MIN_LUNG_ML = 100.0
#: Airway heuristics (per axial slice): trachea/main bronchi are small air regions near the midline.
AIRWAY_MAX_AREA_MM2 = 700.0
AIRWAY_MAX_MIDLINE_DISTANCE_MM = 30.0

LUNG_LABELS = {1: "lung_right", 2: "lung_left"}


def _in_plane_structure() -> np.ndarray:
    """Connectivity within axial slices only (z is the last array axis)."""
    s = np.zeros((3, 3, 3), bool)
    s[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    return s


def _box_centre_x(ct: sitk.Image, box: tuple[slice, ...]) -> float:
    centre = np.array([[(b.start + b.stop - 1) / 2 for b in box]])
    return float(world_x_mm(ct, centre)[0])


def classical_lung_mask(ct: sitk.Image) -> OrganMasks:
    """Left and right lung of a chest CT (``lung_right`` = 1, ``lung_left`` = 2, on the CT grid).

    Steps: voxels below -400 HU; per axial slice drop air connected to the image border
    (outside the body, including padding outside the field of view); drop small air regions
    near the midline (trachea, main bronchi, oesophageal air); drop 3D components that are
    mostly pure gas (> 50 % below -950 HU: bowel, stomach); keep components of at least
    100 ml (at most the two largest); fill holes per slice (vessels, nodules);
    assign each lung to the patient's side by LPS x relative to the body midline (+x is
    left). Lungs joined at the anterior junction line are split at the midline. Lobes are
    not separated. Raises AnatomyError when no lung is found (not a chest CT).
    """
    hu = xyz_view(ct)
    if hu.ndim != 3:
        raise AnatomyError("The lung mask needs a 3D CT.")
    spacing = np.asarray(ct.GetSpacing(), float)
    air = hu < AIR_MAX_HU
    in_plane = _in_plane_structure()

    # 1. outside air: per-slice components touching the x/y border of the slice
    labels, n = ndimage.label(air, in_plane)
    border = np.zeros(n + 1, bool)
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        border[np.unique(face)] = True
    border[0] = True
    inside = air & ~border[labels]
    body = ~(air & border[labels])

    # body midline from the body mask (robust without any organ labels)
    body_idx = np.argwhere(body[::4, ::4, ::2]) * np.array([4, 4, 2])
    midline = float(world_x_mm(ct, body_idx).mean()) if len(body_idx) else 0.0

    # 2. airways: small per-slice regions close to the midline (bounding-box centre is
    # enough for regions this small, and much faster than centroids on 10^7 voxels)
    labels, n = ndimage.label(inside, in_plane)
    if n:
        area = np.bincount(labels.ravel(), minlength=n + 1) * spacing[0] * spacing[1]
        boxes = ndimage.find_objects(labels)
        airway = np.zeros(n + 1, bool)
        for k in np.nonzero(area[1:] < AIRWAY_MAX_AREA_MM2)[0] + 1:
            if abs(_box_centre_x(ct, boxes[k - 1]) - midline) < AIRWAY_MAX_MIDLINE_DISTANCE_MM:
                airway[k] = True
        inside &= ~airway[labels]

    # 3. the lungs: the large 3D components
    labels, n = ndimage.label(inside, ndimage.generate_binary_structure(3, 1))
    voxel_ml = float(np.prod(spacing)) / 1000
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    # bowel/stomach gas is mostly pure air (< -950 HU); aerated lung holds blood and tissue
    # (-900..-700 HU), so only a small share of its voxels is that dark, even with emphysema
    gas_share = np.bincount(labels.ravel(), weights=(hu < GAS_MAX_HU).ravel(), minlength=n + 1) / np.maximum(counts, 1)
    sizes = np.where(gas_share[1:] <= MAX_GAS_SHARE, counts[1:] * voxel_ml, 0.0)
    order = [int(i) + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= MIN_LUNG_ML]
    if not order:
        raise AnatomyError(
            f"No lung found: no aerated-lung region inside the body of at least {MIN_LUNG_ML:.0f} ml "
            "(air in bowel or stomach does not count). The classical lung mask needs a chest CT; "
            "for other scans use TotalSegmentator or an organ label map."
        )
    boxes = ndimage.find_objects(labels)

    # 4. sides: whole components when one lies on each side of the midline, else split at it;
    # holes (vessels, nodules) are filled per axial slice within each lung
    out = np.zeros(hu.shape, np.uint8)
    comp_x = {k: _box_centre_x(ct, boxes[k - 1]) for k in order}
    if len(order) == 2 and (comp_x[order[0]] - midline) * (comp_x[order[1]] - midline) < 0:
        for k in order:
            box = boxes[k - 1]
            filled = ndimage.binary_fill_holes(labels[box] == k, in_plane)
            out[box][filled] = 2 if comp_x[k] > midline else 1
    else:
        lungs = ndimage.binary_fill_holes(np.isin(labels, order), in_plane)
        idx = np.argwhere(lungs)
        left = world_x_mm(ct, idx) > midline
        out[tuple(idx[left].T)] = 2
        out[tuple(idx[~left].T)] = 1
    return OrganMasks(array_to_image(out, ct), dict(LUNG_LABELS), source="classical lung mask")
