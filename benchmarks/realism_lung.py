#!/usr/bin/env python
"""Realism of synthetic lung tumours: PyRadiomics first-order + shape features vs two real tumours.

1. Check: PyRadiomics (settings of its own reference run: binWidth 25, voxelArrayShift 2000,
   original grid, label 1) on the REAL tumours lung1/lung2 must reproduce
   <test data>/pyradiomics/baseline/baseline_{firstorder,shape}.csv.
2. Synthetic: N lung tumours (half in each real chest CT, sizes and attributes sampled from the
   lung-tumour prior, seeds 0..) into the classical lung mask (PASTALib.anatomy.classical_lung_mask)
   minus a 10 mm margin around the real tumour; features on the CT's own grid (0.6 x 0.6 x 5 mm).
3. Baseline: the SyntheticTumors recipe (benchmarks/baselines/synthetic_tumors.py) run on the
   same CTs resampled to 1 mm (its native setting), pasted back onto the original grid (HU change
   linear, tumour mask linear > 0.5), largest connected component as the lesion. Two variants:
   as published (a hypo-attenuating liver recipe: -65..-145 HU x texture) and lung-adapted
   (+1400..+2000 HU x texture, so the texture-weighted lesion reaches soft tissue from aerated lung);
   texture cut from a bank precomputed once per CT (as in its training pipeline).
4. Per feature: the two real values, each synthetic set's mean ± SD, and the real value's
   percentile within it. With only 2 real tumours a classifier two-sample AUC is not meaningful,
   so each real tumour's distance to each synthetic cloud is reported instead: mean |z| over a set
   of scale-free features and a Mahalanobis distance with Ledoit-Wolf shrinkage (and, for
   reference, the same distance of the cloud's own members, median).

    python benchmarks/realism_lung.py [--n 30] [--n-baseline 20]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fixtures import test_data_root
from benchmarks.baselines import synthetic_tumors as st
from benchmarks.radiomics_features import make_extractor, original_features
from PASTALib.anatomy import classical_lung_mask
from PASTALib.errors import PastaError
from PASTALib.geometry import from_canonical, to_canonical
from PASTALib.labels import LesionType, Phase
from PASTALib.synth import LesionSpec, synthesize_lesion

DATA = test_data_root() / "pyradiomics"
TABLE_FEATURES = [
    "firstorder_Mean", "firstorder_Median", "firstorder_10Percentile", "firstorder_90Percentile",
    "firstorder_Variance", "firstorder_Skewness", "firstorder_Kurtosis", "firstorder_Entropy",
    "firstorder_Uniformity", "firstorder_Minimum", "firstorder_Maximum",
    "shape_MeshVolume", "shape_Maximum3DDiameter", "shape_Sphericity", "shape_Elongation",
    "shape_Flatness", "shape_SurfaceVolumeRatio",
]
#: Distance features: intensity distribution + scale-free shape (+ log volume).
DIST_FEATURES = ["firstorder_Mean", "firstorder_10Percentile", "firstorder_90Percentile", "sd", "firstorder_Skewness",
                 "firstorder_Entropy", "shape_Sphericity", "shape_Elongation", "shape_Flatness", "log_volume"]


def extractor():
    return make_extractor("firstorder", "shape")


def features(ex, image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    f = original_features(ex, image, mask)
    f["log_volume"] = float(np.log(f["shape_MeshVolume"]))
    return f


def reference_check(ex) -> tuple[dict[str, dict[str, float]], int, int]:
    refs: dict[str, dict[str, float]] = {"lung1": {}, "lung2": {}}
    for name in ("firstorder", "shape"):
        with open(DATA / "baseline" / f"baseline_{name}.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["featureName"].startswith("original_"):
                    for case in refs:
                        refs[case][row["featureName"][len("original_"):]] = float(row[case])
    real = {}
    print("Check: PyRadiomics 3.0.1 on the real tumours vs its reference values (baseline_*.csv)")
    print(f"{'feature':<34}{'lung1 ref':>14}{'ours':>14}{'lung2 ref':>14}{'ours':>14}")
    n_ok = n_all = 0
    for case in refs:
        img = sitk.ReadImage(str(DATA / f"{case}_image.nrrd"))
        lab = sitk.ReadImage(str(DATA / f"{case}_label.nrrd"))
        real[case] = features(ex, img, lab)
    for key in sorted(refs["lung1"]):
        vals = []
        for case in refs:
            ref, got = refs[case][key], real[case].get(key, float("nan"))
            ok = abs(got - ref) <= 1e-3 * max(1.0, abs(ref))
            n_ok += ok
            n_all += 1
            vals += [ref, got]
        flag = "" if all(abs(vals[i + 1] - vals[i]) <= 1e-3 * max(1.0, abs(vals[i])) for i in (0, 2)) else "  <-- differs"
        print(f"{key:<34}{vals[0]:>14.5g}{vals[1]:>14.5g}{vals[2]:>14.5g}{vals[3]:>14.5g}{flag}")
    print(f"reproduced {n_ok}/{n_all} reference values (relative tolerance 1e-3)\n")
    return real, n_ok, n_all


def lung_template(case: str):
    ct = sitk.ReadImage(str(DATA / f"{case}_image.nrrd"))
    real = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / f"{case}_label.nrrd"))).transpose(2, 1, 0) > 0
    organs = classical_lung_mask(ct).pasta_label_map(include_lesions=False)
    arr = sitk.GetArrayFromImage(organs).transpose(2, 1, 0).copy()
    near_real = ndimage.distance_transform_edt(~real, sampling=ct.GetSpacing()) <= 10.0
    arr[near_real] = 0  # never place (or measure) a synthetic lesion on the real tumour
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    out.CopyInformation(ct)
    return ct, out


def ours(ex, templates, n: int) -> tuple[list[dict], list[float]]:
    feats, times, seed = [], [], 0
    per = [n // 2 + n % 2, n // 2]
    for (ct, organs), count in zip(templates, per):
        made = 0
        while made < count and seed < 10 * n:
            spec = LesionSpec(LesionType.LUNG_TUMOR, seed=seed)
            seed += 1
            t = time.perf_counter()
            try:
                result = synthesize_lesion(ct, organs, spec, phase=Phase.PLAIN)
            except PastaError:
                continue
            times.append(time.perf_counter() - t)
            mask = sitk.Cast(result.labels == int(LesionType.LUNG_TUMOR), sitk.sitkUInt8)
            feats.append(features(ex, result.ct, mask))
            made += 1
    return feats, times


def baseline(ex, templates, n: int, sign: float, difference: tuple[float, float]) -> list[dict]:
    feats = []
    per = [n // 2 + n % 2, n // 2]
    for t_index, ((ct, organs), count) in enumerate(zip(templates, per)):
        ct1, mapping = to_canonical(ct, is_label=False)
        org1, _ = to_canonical(organs, mapping, is_label=True)
        vol = sitk.GetArrayFromImage(ct1).transpose(2, 1, 0).astype(np.float64)
        mask = sitk.GetArrayFromImage(org1).transpose(2, 1, 0) == 1
        bank = st.get_texture(tuple(int(v) for v in vol.shape), np.random.default_rng(1000 + t_index))
        for i in range(count):
            rng = np.random.default_rng([t_index, i])
            # Size from the same lung-tumour prior as ours, mapped to the recipe's nearest size class.
            size = LesionSpec(LesionType.LUNG_TUMOR, seed=i).resolve(Phase.PLAIN).size_mm
            cls = st.size_class(float(np.mean(size)))
            out, tumour = st.synthesize_tumor(vol, mask, cls, rng, texture=bank, sign=sign, difference=difference)
            lab, k = ndimage.label(tumour)
            if k == 0:
                continue
            largest = lab == (1 + int(np.argmax(ndimage.sum(tumour, lab, range(1, k + 1)))))
            delta = sitk.GetImageFromArray(np.ascontiguousarray((out - vol).astype(np.float32).transpose(2, 1, 0)))
            delta.CopyInformation(ct1)
            tm = sitk.GetImageFromArray(np.ascontiguousarray(largest.astype(np.float32).transpose(2, 1, 0)))
            tm.CopyInformation(ct1)
            delta_o = sitk.GetArrayFromImage(from_canonical(delta, mapping, is_label=False, default_value=0.0))
            tm_o = sitk.GetArrayFromImage(from_canonical(tm, mapping, is_label=False, default_value=0.0)) > 0.5
            if tm_o.sum() < 10:
                continue
            new = np.clip(np.round(sitk.GetArrayFromImage(ct).astype(np.float64) + delta_o), -32768, 32767).astype(np.int16)
            img = sitk.GetImageFromArray(new)
            img.CopyInformation(ct)
            m = sitk.GetImageFromArray(tm_o.astype(np.uint8))
            m.CopyInformation(ct)
            feats.append(features(ex, img, m))
    return feats


def distances(real: dict[str, dict], cloud: list[dict]) -> dict[str, tuple[float, float]]:
    from sklearn.covariance import LedoitWolf

    x = np.array([[f[k] for k in DIST_FEATURES] for f in cloud])
    mu, sd = x.mean(axis=0), x.std(axis=0, ddof=1) + 1e-9
    z = (x - mu) / sd
    lw = LedoitWolf().fit(z)
    prec = lw.precision_
    own = np.sqrt(np.einsum("ij,jk,ik->i", z, prec, z))
    out = {"cloud median": (float(np.median(np.abs(z).mean(axis=1))), float(np.median(own)))}
    for case, f in real.items():
        zr = (np.array([f[k] for k in DIST_FEATURES]) - mu) / sd
        out[case] = (float(np.abs(zr).mean()), float(np.sqrt(zr @ prec @ zr)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30, help="synthetic tumours (ours)")
    ap.add_argument("--n-baseline", type=int, default=20, help="lesions per SyntheticTumors variant")
    args = ap.parse_args()
    ex = extractor()
    real, n_ok, n_all = reference_check(ex)

    templates = [lung_template(c) for c in ("lung1", "lung2")]
    t = time.perf_counter()
    ours_f, times = ours(ex, templates, args.n)
    print(f"ours: {len(ours_f)} synthetic lung tumours ({np.median(times):.2f} s median synthesis), "
          f"{time.perf_counter() - t:.0f} s with feature extraction")
    clouds = {"PASTALib": ours_f}
    for name, sign, diff in (("ST lung-adapted", 1.0, (1400.0, 2000.0)), ("ST published", -1.0, (65.0, 145.0))):
        t = time.perf_counter()
        clouds[name] = baseline(ex, templates, args.n_baseline, sign, diff)
        print(f"{name}: {len(clouds[name])} lesions, {time.perf_counter() - t:.0f} s")

    print("\nFeature distributions (real value, and its percentile within each synthetic set)")
    head = f"{'feature':<26}{'lung1':>10}{'lung2':>10}"
    for name in clouds:
        head += f"{name + ' mean±SD':>28}{'pct l1/l2':>11}"
    print(head)
    for key in TABLE_FEATURES:
        line = f"{key:<26}{real['lung1'][key]:>10.4g}{real['lung2'][key]:>10.4g}"
        for cloud in clouds.values():
            v = np.array([f[key] for f in cloud])
            p1, p2 = (stats.percentileofscore(v, real[c][key]) for c in ("lung1", "lung2"))
            line += f"{f'{v.mean():.4g} ± {v.std(ddof=1):.3g}':>28}{f'{p1:.0f}/{p2:.0f}':>11}"
        print(line)

    print("\nTwo-sample AUC: not meaningful with 2 real tumours (a leave-one-out classifier would rest on 2 "
          "positives). Distance of each real tumour to each synthetic cloud instead")
    print(f"(features: {', '.join(DIST_FEATURES)}; z-scored by the cloud; Mahalanobis with Ledoit-Wolf shrinkage)")
    print(f"{'cloud':<18}{'n':>4}{'lung1 mean|z|':>15}{'lung1 Mahal.':>14}{'lung2 mean|z|':>15}{'lung2 Mahal.':>14}"
          f"{'members: mean|z|':>18}{'Mahal.':>8}")
    for name, cloud in clouds.items():
        d = distances(real, cloud)
        print(f"{name:<18}{len(cloud):>4}{d['lung1'][0]:>15.2f}{d['lung1'][1]:>14.2f}{d['lung2'][0]:>15.2f}"
              f"{d['lung2'][1]:>14.2f}{d['cloud median'][0]:>18.2f}{d['cloud median'][1]:>8.2f}")
    print(f"\nreference check: {n_ok}/{n_all} PyRadiomics reference values reproduced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
