#!/usr/bin/env python
"""Refinement DDPM benchmark: time per lesion, and does refinement move radiomics toward real tumours?

Part 1 (speed, default network: channels 16,32,64,64, t = 5, windows up to 128 mm, weights random:
time does not depend on them): refine a synthesized lung tumour's neighbourhood through the
synthesizer hook; baseline = full T = 1000-step DDPM sampling of the same box, extrapolated from
``--baseline-steps`` timed steps (the same network call + scheduler step per timestep). Also one full
128^3 window step, extrapolated to t = 5 (the cost when a lesion neighbourhood fills a whole window).

Part 2 (realism): a small refiner trained briefly (``--train-iterations``) on 1 mm crops of the two
pyradiomics lung CTs (condition: classical lung mask) refines ``--n`` synthetic lung tumours
(PASTALib.anatomy.classical_lung_mask + synthesize_lesion, seeds 0..). PyRadiomics 3.0.1 first-order +
GLCM features (binWidth 25, original grid) of the real tumours (lung1/lung2 _label.nrrd) and of the
synthetic ones before/after refinement (same seeds: identical shapes and labels). Standardised
distance: per feature z = (mean_synthetic - mean_real) / SD over all real + synthetic values,
reported as RMS over features (0 = same means), plus the mean |z| of each lesion to the real mean.

    python benchmarks/bench_refine.py [--device cuda] [--n 6] [--train-iterations 200] [--skip-realism]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fixtures import test_data_root
from benchmarks.radiomics_features import make_extractor, original_features
from PASTALib.anatomy import classical_lung_mask
from PASTALib.errors import PastaError
from PASTALib.labels import LesionType, Phase
from PASTALib.refine import (
    Refiner,
    RefinerConfig,
    TrainOptions,
    build_model,
    load_case,
    train_refiner,
)
from PASTALib.synth import LesionSpec, synthesize_lesion

DATA = test_data_root() / "pyradiomics"
FEATURES = [
    "firstorder_Mean", "firstorder_10Percentile", "firstorder_90Percentile", "sd", "firstorder_Skewness",
    "firstorder_Kurtosis", "firstorder_Entropy", "firstorder_Uniformity",
    "glcm_Contrast", "glcm_Correlation", "glcm_JointEntropy", "glcm_Idm", "glcm_ClusterProminence", "glcm_Imc1",
]


def lung_case(name: str):
    ct = sitk.ReadImage(str(DATA / f"{name}_image.nrrd"))
    real = sitk.ReadImage(str(DATA / f"{name}_label.nrrd"))
    organs = classical_lung_mask(ct).pasta_label_map(include_lesions=False)
    arr = sitk.GetArrayFromImage(organs).transpose(2, 1, 0).copy()
    near_real = ndimage.distance_transform_edt(sitk.GetArrayFromImage(real).transpose(2, 1, 0) == 0,
                                               sampling=ct.GetSpacing()) <= 10.0
    placement = arr.copy()
    placement[near_real] = 0  # never place a synthetic lesion on the real tumour
    img = sitk.GetImageFromArray(np.ascontiguousarray(placement.transpose(2, 1, 0)))
    img.CopyInformation(ct)
    return ct, real, img, organs


def extractor():
    return make_extractor("firstorder", "glcm")


def features(ex, image: sitk.Image, mask: sitk.Image) -> np.ndarray:
    f = original_features(ex, image, mask)
    return np.array([f[k] for k in FEATURES])


def synthesize(cases, n: int, refiner=None):
    results, seed = [], 0
    per = [n - n // 2, n // 2]
    for (ct, _real, placement, _full), count in zip(cases, per):
        made = 0
        while made < count and seed < 20 * n:
            spec = LesionSpec(LesionType.LUNG_TUMOR, seed=seed)
            seed += 1
            try:
                t = time.perf_counter()
                res = synthesize_lesion(ct, placement, spec, phase=Phase.PLAIN, refiner=refiner)
                results.append((spec, res, time.perf_counter() - t))
                made += 1
            except PastaError:
                continue
    return results


def speed(cases, device: str, baseline_steps: int, full_window: bool) -> None:
    print("== Part 1: refinement time per lesion (default network, random weights) ==")
    config = RefinerConfig()
    torch.manual_seed(0)
    model = build_model(config)
    refiner = Refiner(model, config, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"network channels {config.channels}, {n_params / 1e6:.2f} M parameters, t = {config.refine_steps}, "
          f"window <= {config.crop_size}, device {device}, torch threads {torch.get_num_threads()}")
    ct, _real, placement, _full = cases[0]
    for seed in range(3):
        spec = LesionSpec(LesionType.LUNG_TUMOR, seed=seed, size_mm=(25, 25, 25))
        try:
            plain = synthesize_lesion(ct, placement, spec, phase=Phase.PLAIN)
            break
        except PastaError:
            continue
    refined = synthesize_lesion(ct, placement, spec, phase=Phase.PLAIN, refiner=refiner)
    info = refiner.last_info
    t_refine = info["seconds"]
    print(f"lesion 25 mm lung tumour: synthesis {plain.timings['total']:.2f} s unrefined, "
          f"{refined.timings['total']:.2f} s refined; refinement {t_refine:.2f} s "
          f"(box {info['box_shape']}, window {info['window']}, margin {info['margin_mm']} mm)")
    # Baseline: full DDPM sampling (T steps) of the same box, per-step time measured on `baseline_steps` steps.
    box_shape = info["box_shape"]
    x0 = np.zeros(box_shape, np.float32)
    cond = np.zeros(box_shape, np.float32)
    t = time.perf_counter()
    refiner.denoise(x0, cond, seed=0, steps=baseline_steps)
    per_step = (time.perf_counter() - t) / baseline_steps
    t_full = per_step * config.num_train_timesteps
    print(f"baseline full DDPM sampling of the same box: {per_step:.2f} s/step x {config.num_train_timesteps} = "
          f"{t_full:.0f} s (extrapolated from {baseline_steps} steps)")
    print(f"RATIO baseline/refinement = {t_full / t_refine:.0f}x faster (goal: refinement <= 5 s/lesion; "
          f"measured {t_refine:.2f} s on {device})")
    if full_window:
        c = config.crop_size
        t = time.perf_counter()
        refiner.denoise(np.zeros((c, c, c), np.float32), np.zeros((c, c, c), np.float32), seed=0, steps=1)
        one = time.perf_counter() - t
        print(f"full {c}^3 window: {one:.2f} s/step -> {one * config.refine_steps:.1f} s for t = {config.refine_steps} "
              "(extrapolated from 1 step)")
    print()


def realism(cases, args) -> None:
    print("== Part 2: radiomics of synthetic lung tumours before/after refinement vs real tumours ==")
    out = Path(args.work) / "lung_refiner"
    config = RefinerConfig(crop_size=args.train_crop, channels=tuple(int(c) for c in args.train_channels.split(",")),
                           norm_num_groups=4, lr=args.train_lr, train_t_max=args.train_t_max)
    train_cases = [load_case(f"lung{i + 1}", ct, full) for i, (ct, _r, _p, full) in enumerate(cases)]
    t = time.perf_counter()
    result = train_refiner(config, train_cases, out, TrainOptions(
        iterations=args.train_iterations, batch=2, device=args.device, val_every=max(1, args.train_iterations // 4),
        val_crops=4, checkpoint_every=args.train_iterations, progress_bar=False, resume=False))
    val = result.val_losses
    print(f"trained {args.train_iterations} iterations (crop {args.train_crop}, channels {config.channels}, "
          f"timesteps < {config.train_t_max or config.num_train_timesteps}, lr {config.lr}) in "
          f"{time.perf_counter() - t:.0f} s; validation L1 {val[0][1]:.4f} -> {val[-1][1]:.4f}")
    refiner = Refiner.from_checkpoint(result.files["weights"], args.device, crop_size=args.refine_window)

    ex = extractor()
    real = np.stack([features(ex, ct, real) for ct, real, _p, _f in cases])
    plain = synthesize(cases, args.n)
    refined = synthesize(cases, args.n, refiner)
    assert [s.seed for s, _, _ in plain] == [s.seed for s, _, _ in refined]
    lesion = int(LesionType.LUNG_TUMOR)
    f_plain = np.stack([features(ex, r.ct, r.labels == lesion) for _, r, _ in plain])
    f_ref = np.stack([features(ex, r.ct, r.labels == lesion) for _, r, _ in refined])
    labels_same = all(np.array_equal(sitk.GetArrayViewFromImage(a.labels), sitk.GetArrayViewFromImage(b.labels))
                      for (_, a, _), (_, b, _) in zip(plain, refined))
    dt = [tb - ta for (_, _, ta), (_, _, tb) in zip(plain, refined)]
    mean_hu_shift = f_ref[:, 0] - f_plain[:, 0]
    print(f"{len(plain)} synthetic lung tumours (seeds {[s.seed for s, _, _ in plain]}), labels identical after "
          f"refinement: {labels_same}; refinement time {np.mean(dt):.1f} s/lesion (tiny net, window <= "
          f"{args.refine_window}); lesion mean HU shift {mean_hu_shift.mean():+.1f} (range {mean_hu_shift.min():+.1f}.."
          f"{mean_hu_shift.max():+.1f})")
    sd = np.concatenate([real, f_plain, f_ref]).std(axis=0, ddof=1)
    sd[sd == 0] = 1.0
    z_plain = (f_plain.mean(axis=0) - real.mean(axis=0)) / sd
    z_ref = (f_ref.mean(axis=0) - real.mean(axis=0)) / sd
    print(f"{'feature':<26}{'lung1':>11}{'lung2':>11}{'unrefined':>12}{'refined':>12}{'z before':>10}{'z after':>9}")
    for i, k in enumerate(FEATURES):
        print(f"{k:<26}{real[0, i]:>11.4g}{real[1, i]:>11.4g}{f_plain[:, i].mean():>12.4g}{f_ref[:, i].mean():>12.4g}"
              f"{z_plain[i]:>+10.2f}{z_ref[i]:>+9.2f}")
    d_plain = float(np.sqrt(np.mean(z_plain ** 2)))
    d_ref = float(np.sqrt(np.mean(z_ref ** 2)))
    les_plain = np.abs((f_plain - real.mean(axis=0)) / sd).mean(axis=1)
    les_ref = np.abs((f_ref - real.mean(axis=0)) / sd).mean(axis=1)
    print(f"STANDARDISED DISTANCE to real tumours (RMS z of feature means): before {d_plain:.3f}, after {d_ref:.3f} "
          f"({'closer' if d_ref < d_plain else 'farther'}, {100 * (d_ref - d_plain) / d_plain:+.1f} %)")
    print(f"per-lesion mean |z| to the real mean: before {les_plain.mean():.3f}, after {les_ref.mean():.3f}; "
          f"lesions closer after refinement: {(les_ref < les_plain).sum()}/{len(les_plain)}")
    print("Caveats: 2 real tumours only; tiny network trained briefly on 2 CTs on CPU; numbers are a smoke "
          "test of the pipeline, not evidence about the paper's refiner.")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline-steps", type=int, default=2)
    p.add_argument("--no-full-window", action="store_true", help="skip the full 128^3 window timing")
    p.add_argument("--skip-realism", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--n", type=int, default=6, help="synthetic lung tumours (half per CT)")
    p.add_argument("--train-iterations", type=int, default=200)
    p.add_argument("--train-crop", type=int, default=32)
    p.add_argument("--train-channels", default="8,16,16")
    p.add_argument("--train-lr", type=float, default=1e-3)
    p.add_argument("--train-t-max", type=int, default=100, help="train on timesteps < this (refinement uses < 5)")
    p.add_argument("--refine-window", type=int, default=64)
    p.add_argument("--work", default="/tmp/pasta_bench_refine")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    cases = [lung_case("lung1"), lung_case("lung2")]
    print(f"loaded lung1/lung2 + classical lung masks in {time.perf_counter() - t:.1f} s\n")
    if not args.skip_speed:
        speed(cases, args.device, args.baseline_steps, not args.no_full_window)
    if not args.skip_realism:
        realism(cases, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
