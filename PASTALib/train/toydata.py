"""A small PASTA-Gen style dataset from one real CT + organ labels, for smoke tests and benchmarks.

Each case is a crop of the CT around the liver (random offset), with organ labels mapped to the
PASTA values (liver 2, kidney 8, ...), and 1-2 ellipsoid liver lesions (label 12) that are either
hypodense or hyperdense, written as img.nii.gz / label.nii.gz / report.json (list of reports with
label_value, centre_mm and the five attribute wordings). Not a substitute for PASTA-Gen: the
lesions are simple on purpose so that tests can check learning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from PASTALib.io.image import read_image, read_label
from PASTALib.layout import CASE_IMAGE_NAME, CASE_LABEL_NAME, CASE_REPORT_NAME
from PASTALib.report.attributes import Density, Heterogeneity, Invasion, Shape, Surface

#: TotalSegmentator "total" ids → PASTA organ labels (lung lobes, liver, gallbladder, pancreas,
#: esophagus, stomach, colon, kidneys, bladder).
TOTALSEG_TO_PASTA = {10: 1, 11: 1, 12: 1, 13: 1, 14: 1, 5: 2, 4: 3, 7: 4, 15: 5, 6: 6, 20: 7, 2: 8, 3: 8, 21: 9}


def make_toy_dataset(out: str | Path, ct_path: str | Path, seg_path: str | Path, *, n_cases: int = 6,
                     crop: Sequence[int] = (48, 48, 48), lesions_per_case: int = 2, radius_vox: tuple[float, float] = (2.5, 4.0),
                     density_delta_hu: float = 70.0, seed: int = 0) -> list[Path]:
    """Write ``n_cases`` case folders under ``out``; returns their paths."""
    rng = np.random.default_rng(seed)
    ct = read_image(ct_path)
    seg = read_label(seg_path)
    ct_a = sitk.GetArrayFromImage(ct).astype(np.float32)
    ts = sitk.GetArrayFromImage(seg)
    org = np.zeros(ts.shape, np.uint8)
    for src, dst in TOTALSEG_TO_PASTA.items():
        org[ts == src] = dst
    liver = np.argwhere(org == 2)
    if len(liver) == 0:
        raise ValueError("the label map has no liver (TotalSegmentator id 5)")
    centre = liver.mean(axis=0).astype(int)
    crop = np.asarray(crop)
    out = Path(out)
    folders = []
    for c in range(n_cases):
        offset = centre - crop // 2 + rng.integers(-4, 5, size=3)
        offset = np.clip(offset, 0, np.asarray(ct_a.shape) - crop)
        sl = tuple(slice(int(o), int(o + n)) for o, n in zip(offset, crop))
        img = ct_a[sl].copy()
        lab = org[sl].copy()
        img += rng.normal(0, 5, img.shape).astype(np.float32)  # a little extra noise per case
        zz, yy, xx = np.indices(img.shape)
        reports = []
        cand = np.argwhere(lab == 2)
        for k in range(lesions_per_case):
            density = Density.HYPER if (c + k) % 2 else Density.HYPO
            for _ in range(100):
                p = cand[rng.integers(len(cand))]
                r = rng.uniform(*radius_vox, size=3)
                m = ((zz - p[0]) / r[0]) ** 2 + ((yy - p[1]) / r[1]) ** 2 + ((xx - p[2]) / r[2]) ** 2 <= 1
                if (lab[m] == 2).mean() > 0.9 and not (lab[m] >= 11).any():
                    break
            organ_hu = float(np.median(img[lab == 2]))
            target = organ_hu + (density_delta_hu if density is Density.HYPER else -density_delta_hu)
            img[m] = target + rng.normal(0, 8, int(m.sum()))
            lab[m] = 12
            origin = np.asarray(ct.GetOrigin())
            spacing = np.asarray(ct.GetSpacing())
            direction = np.asarray(ct.GetDirection()).reshape(3, 3)
            ijk = (offset + p)[::-1].astype(float)  # (x, y, z) index in the full image
            centre_mm = origin + direction @ (ijk * spacing)
            reports.append({
                "label_value": 12, "lesion_type": "liver_tumor", "centre_mm": [round(float(v), 3) for v in centre_mm],
                "shape": Shape.ROUND.value, "density": density.value, "heterogeneity": Heterogeneity.HOMOGENEOUS.value,
                "surface": Surface.WELL_DEFINED.value, "invasion": Invasion.NONE.value,
            })
        folder = out / f"case_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        image = sitk.GetImageFromArray(img)
        origin_mm = ct.TransformIndexToPhysicalPoint([int(v) for v in offset[::-1]])
        image.SetSpacing(ct.GetSpacing())
        image.SetOrigin(origin_mm)
        image.SetDirection(ct.GetDirection())
        label = sitk.GetImageFromArray(lab)
        label.CopyInformation(image)
        sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(folder / CASE_IMAGE_NAME))
        sitk.WriteImage(label, str(folder / CASE_LABEL_NAME))
        (folder / CASE_REPORT_NAME).write_text(json.dumps(reports, indent=1))
        folders.append(folder)
    return folders
