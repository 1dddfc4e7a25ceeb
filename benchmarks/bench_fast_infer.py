"""The fast CPU path (``pasta segment --fast``) against the reference path (``--exact``), side by side in one run
on the same CT and weights (issue #17):

  tiny   the tiny model the tests train (Testing/conftest.py: `case` + `checkpoint`, trained once into
         --tiny-cache), on the test CT, so that lesions exist: segment_ct exact vs fast (region from the
         model's own coarse pass) for every --fast-overlap, and fast with the test CT's organ labels as the
         organ map at the first --fast-overlap, on the reference's grid (the default) and with --fast-grid
         organs (16 mm margin, and none: a box tighter than the body box, as on a whole abdomen). Agreement: Dice
         of every organ and lesion label between the two label maps, lesion recall (reference lesions the fast
         path also finds), max difference of the report attributes of matched lesions. Then the reference
         against itself with its grid moved by --grid-shift of the stride: how far the model's answer moves when
         only the window grid moves. --checkpoint/--ct/--patch/--spacing run the same on another model
         (benchmarks/grid_proxy.py trains one with 64³ windows).
  full   the full-width PastaUNet (random weights, seeded) for time on TotalSegmentator's example_ct: the
         windows each path runs on the whole CT (fast: region from the TotalSegmentator map, as `--organs`
         gives it), seconds per 128³ window (exact: torch float32; torch at the fast dtype; the fast path's
         runtime, OpenVINO when installed), the coarse pass on the whole body box (what fast costs without a
         map), and the whole-CT times they add up to. With --whole (or --slab: a z-slab, ~20 exact windows)
         also segment_ct end to end on that CT: exact, fast with the organ map at every --full-overlap, fast
         with the coarse pass.

Prints windows, wall and CPU time, speed-up, agreement; the load average before and after.

    python benchmarks/bench_fast_infer.py --part tiny            # ~5 min here (training once, then cached)
    python benchmarks/bench_fast_infer.py --part full            # ~5 min on 2 idle cores (--slab: +15 min)
    python benchmarks/bench_fast_infer.py --part full --whole    # + the whole CT end to end: ~70 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.fixtures import test_data_root  # noqa: E402
from PASTALib.infer.sliding import autocast  # noqa: E402


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


class Plan:
    """Progress callback that keeps the plan line (window count) and the last message."""

    def __init__(self) -> None:
        self.plan, self.windows, self.last = "", None, ""

    def __call__(self, fraction: float, message: str) -> None:
        self.last = message
        if message.startswith("plan:"):
            self.plan, self.windows = message, int(message.split()[2])


def tiny_model(cache: Path) -> tuple[Path, Path]:
    """(test CT, checkpoint) of the test suite's tiny model, trained once into ``cache``."""
    ct, ckpt = cache / "infer" / "test_ct.nii.gz", cache / "infer" / "model_final.pth"
    if ct.is_file() and ckpt.is_file():
        return ct, ckpt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
    import conftest

    def mktemp(name: str) -> Path:
        (cache / name).mkdir(parents=True, exist_ok=True)
        return cache / name

    case = conftest.case.__wrapped__(test_data_root() / "totalsegmentator", SimpleNamespace(mktemp=mktemp))
    print(f"training the tiny test model into {cache} (once) ...", flush=True)
    conftest.checkpoint.__wrapped__(case)
    return ct, ckpt


def dice_per_label(ref: np.ndarray, other: np.ndarray) -> dict[int, float]:
    out = {}
    for v in sorted(set(np.unique(ref)) | set(np.unique(other)) - {0}):
        a, b = ref == v, other == v
        out[int(v)] = round(2.0 * float((a & b).sum()) / float(a.sum() + b.sum()), 4)
    return out


def _numbers(d: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a details() dict to {dotted key: leaf}."""
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _numbers(val, f"{prefix}{key}.").items()}
    if isinstance(d, (list, tuple)):
        return {k: v for i, val in enumerate(d) for k, v in _numbers(val, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): d}


def lesion_agreement(ref, other) -> dict[str, Any]:
    """Lesion recall (a reference lesion counts as found when a fast lesion instance *of the same lesion type*
    overlaps it: a lesion absorbed into a neighbour of another type is missed) and the max difference of the
    report attributes (every numeric field of lesions.json; text fields that differ)."""
    ri, oi = sitk.GetArrayViewFromImage(ref.instances), sitk.GetArrayViewFromImage(other.instances)
    found, numeric, text = 0, {}, set()
    by_index = {f.index: f for f in other.lesions}
    for f in ref.lesions:
        hits = oi[ri == f.index]
        hits = np.array([h for h in hits[hits > 0] if by_index[int(h)].label_value == f.label_value], dtype=np.int64)
        if not hits.size:
            continue
        found += 1
        match = by_index[int(np.bincount(hits).argmax())]
        a, b = _numbers(f.details()), _numbers(match.details())
        for k in a.keys() & b.keys():
            if k in ("index",):
                continue
            if isinstance(a[k], (int, float)) and not isinstance(a[k], bool) and isinstance(b[k], (int, float)):
                numeric[k] = max(numeric.get(k, 0.0), abs(float(a[k]) - float(b[k])))
            elif a[k] != b[k]:
                text.add(k)
    return {"reference_lesions": len(ref.lesions), "fast_lesions": len(other.lesions),
            "lesion_recall": found / len(ref.lesions) if ref.lesions else float("nan"),
            "max_attribute_diff": {k: round(v, 4) for k, v in sorted(numeric.items()) if v},
            "text_fields_differing": sorted(text)}


def part_tiny(args: argparse.Namespace) -> dict[str, Any]:
    from PASTALib.infer import InferenceConfig, load_model, segment_ct
    from PASTALib.io import read_ct

    ct_path, ckpt = (Path(args.ct), Path(args.checkpoint)) if args.checkpoint else tiny_model(Path(args.tiny_cache))
    model = load_model(ckpt, device="cpu")
    ct = read_ct(ct_path)
    base = InferenceConfig(device="cpu", patch_size=(args.patch,) * 3, crop_size=(args.patch,) * 3,
                           spacing_mm=args.spacing, num_threads=args.threads)
    runs: dict[str, Any] = {}
    plan = Plan()
    ref, dt, dc = timed(lambda: segment_ct(ct, model, base, progress=plan))
    runs["exact"] = {"windows": plan.windows, "wall_s": round(dt, 2), "cpu_s": round(dc, 2), "plan": plan.plan}
    ref_lab = sitk.GetArrayFromImage(ref.labels)
    print(f"tiny exact: {plan.windows} windows, {dt:.1f} s wall, {dc:.1f} s CPU, {len(ref.lesions)} lesion(s)", flush=True)
    # the region from the model's coarse pass at every --fast-overlap, then from the reference organ map (the
    # labels beside the test CT, as `--organs` gives a TotalSegmentator map), on the reference's grid and on the
    # organs' box
    from PASTALib.anatomy import OrganMasks
    from PASTALib.io import read_label

    gt = ct_path.parent / "test_gt.nii.gz"
    organs = OrganMasks.from_pasta_label_map(read_label(gt), reference=ct) if gt.is_file() else None
    variants = [(f"fast_overlap_{ov}", ov, {}, {}) for ov in args.fast_overlap]
    if organs is not None:
        ov = args.fast_overlap[0]
        variants.append((f"fast_organ_map_overlap_{ov}", ov, {"organ_masks": organs}, {}))
        # --fast-grid organs: a grid over the organs' box (16 mm margin), and without the margin (a box tighter than
        # the body box, as on a whole abdomen: the same overlap, the grid anchored elsewhere against the anatomy)
        organs_grid = {"fast_grid": "organs"}
        variants.append((f"fast_organ_map_organs_grid_overlap_{ov}", ov, {"organ_masks": organs}, organs_grid))
        variants.append((f"fast_organ_map_organs_grid_no_margin_overlap_{ov}", ov, {"organ_masks": organs},
                         {**organs_grid, "fast_margin_mm": 0.0}))
    for name, ov, kwargs, overrides in variants:
        plan = Plan()
        cfg = replace(base, speed="fast", fast_overlap=ov, **overrides)
        res, dt2, dc2 = timed(lambda: segment_ct(ct, model, cfg, progress=plan, **kwargs))
        dice = dice_per_label(ref_lab, sitk.GetArrayFromImage(res.labels))
        agree = lesion_agreement(ref, res)
        organ_dice = [d for v, d in dice.items() if v <= 10]
        runs[name] = {"windows": plan.windows, "wall_s": round(dt2, 2), "cpu_s": round(dc2, 2),
                                      "speedup_wall": round(dt / dt2, 2), "speedup_cpu": round(dc / dc2, 2),
                                      "plan": plan.plan, "dice": dice, "min_organ_dice": min(organ_dice, default=1.0),
                                      **agree}
        print(f"tiny {name}: {plan.windows} windows, {dt2:.1f} s wall ({dt / dt2:.2f}x), {dc2:.1f} s CPU "
              f"({dc / dc2:.2f}x); min organ Dice {min(organ_dice, default=1.0):.4f}; Dice {json.dumps(dice)}; "
              f"lesion recall {agree['lesion_recall']:.2f} ({agree['fast_lesions']} vs {agree['reference_lesions']}); "
              f"max attribute diff {json.dumps(agree['max_attribute_diff'])}; text differing {agree['text_fields_differing']}",
              flush=True)
    runs["reference_repeatability"] = reference_repeatability(ct, model, base, args.grid_shift)
    return {"ct": str(ct_path), "checkpoint": str(ckpt), "runs": runs}


def label_lesion_recall(ref: np.ndarray, other: np.ndarray) -> tuple[float, int]:
    """Share of the lesion components (labels >= 11, 26-connected, per label) of ``ref`` that ``other`` overlaps with
    the same label, and their number (NaN when none)."""
    from scipy import ndimage

    found = total = 0
    for v in np.unique(ref[ref >= 11]):
        comps, n = ndimage.label(ref == v, structure=np.ones((3, 3, 3)))
        hit = np.unique(comps[(other == v) & (comps > 0)])
        total, found = total + n, found + int(hit.size)
    return (found / total if total else float("nan")), total


def reference_repeatability(ct: sitk.Image, model, base, shifts: list[float]) -> dict[str, Any]:
    """The reference path against itself when only its window grid moves: the same canonical array cropped by
    ``shift`` x the window stride at the body box's start of one axis (a field of view that starts a little later),
    compared where both have the scan. What a path whose windows sit elsewhere cannot beat: when the reference's
    own answer moves this much, agreement below it measures window placement, not the fast path."""
    from PASTALib.geometry import to_canonical
    from PASTALib.infer.sliding import segment_canonical

    out: dict[str, Any] = {}
    if not shifts:
        return out
    hu = sitk.GetArrayFromImage(to_canonical(ct, is_label=False, spacing=base.spacing_mm)[0])
    cpu, norm = torch.device("cpu"), model.segmentation_normalization()
    ref, box = segment_canonical(model.network, hu, base, cpu, normalize=norm)
    stride = [max(int(r * (1 - base.overlap)), 1) for r in base.patch_size]
    for shift in shifts:
        for axis in range(3):
            cut = [slice(None)] * 3
            moved = max(1, int(round(shift * stride[axis])))
            cut[axis] = slice(box[axis].start + moved, None)
            labels, _ = segment_canonical(model.network, hu[tuple(cut)], base, cpu, normalize=norm)
            dice = dice_per_label(ref[tuple(cut)], labels)
            recall, n = label_lesion_recall(ref[tuple(cut)], labels)
            name = f"grid_moved_{moved}_voxels_{'zyx'[axis]}"
            out[name] = {"mm": moved * base.spacing_mm, "min_organ_dice": min((d for v, d in dice.items() if v <= 10),
                                                                              default=1.0),
                         "lesion_recall": recall, "lesions": n, "dice": dice}
            print(f"tiny reference vs itself, grid moved {moved} voxels ({moved * base.spacing_mm:g} mm, {shift:g} of "
                  f"the stride) along {'zyx'[axis]}: min organ Dice {out[name]['min_organ_dice']:.4f}; lesion recall "
                  f"{recall:.2f} of {n}; Dice {json.dumps(dice)}", flush=True)
    runs = list(out.values())
    mins, recalls = [r["min_organ_dice"] for r in runs], [r["lesion_recall"] for r in runs]
    out["summary"] = {"min_organ_dice_median": float(np.median(mins)), "min_organ_dice_min": min(mins),
                      "runs_with_recall_1": sum(r == 1.0 for r in recalls), "runs": len(runs)}
    print(f"tiny reference repeatability: min organ Dice median {np.median(mins):.4f} (worst {min(mins):.4f}); "
          f"every lesion found in {out['summary']['runs_with_recall_1']} of {len(runs)} runs", flush=True)
    return out


def end_to_end(args: argparse.Namespace, ct_full: sitk.Image, pm, exact, fastcfg, whole: bool) -> dict[str, Any]:
    """segment_ct end to end on the same CT and weights, one after the other: exact, fast with the
    TotalSegmentator organ map (--organs), fast with the model's own coarse pass (no map); windows, wall and
    CPU time, speed-ups, Dice of every label between the exact and each fast label map. The first fast run
    pays the OpenVINO conversion (a fresh cache folder per benchmark run); the second reads it from the cache."""
    from PASTALib.anatomy import OrganMasks
    from PASTALib.infer import segment_ct
    from PASTALib.io import read_label

    ts = test_data_root() / "totalsegmentator"
    z0, z1 = (0, ct_full.GetSize()[2]) if whole else args.z_slices
    ct = ct_full[:, :, z0:z1]
    organs = OrganMasks.from_label_map(read_label(ts / "example_seg_fast_force_split.nii.gz")[:, :, z0:z1], reference=ct)
    what = "whole example_ct" if whole else f"slab z {z0}:{z1} of example_ct"
    print(f"end to end, {what}, size {ct.GetSize()}; load {_load()}", flush=True)
    out: dict[str, Any] = {"ct": what, "size": list(ct.GetSize()), "load_start": _load()}
    plan = Plan()
    ref, dt, dc = timed(lambda: segment_ct(ct, pm, exact, progress=plan))
    ref_lab = sitk.GetArrayFromImage(ref.labels)
    out["exact"] = {"windows": plan.windows, "wall_s": round(dt, 1), "cpu_s": round(dc, 1), "plan": plan.plan,
                    "runtime": ref.config.runtime, "lesions": len(ref.lesions),
                    "stages_s": {k: round(v, 1) for k, v in ref.timings.items()}}
    print(f"exact: {plan.windows} windows, {dt:.1f} s wall, {dc:.1f} s CPU ({plan.plan}); stages "
          f"{json.dumps(out['exact']['stages_s'])}; load {_load()}", flush=True)
    # fast with the organ map on the reference's grid (the default), then on the organs' box at every --full-overlap,
    # then (unless --skip-coarse) with the coarse pass
    organs_grid = replace(fastcfg, fast_grid="organs")
    runs = [("fast_organ_map", fastcfg, {"organ_masks": organs})]
    runs += [(f"fast_organ_map_organs_grid{'' if i == 0 else f'_overlap_{ov}'}", replace(organs_grid, fast_overlap=ov),
              {"organ_masks": organs}) for i, ov in enumerate(args.full_overlap)]
    runs += [] if args.skip_coarse else [("fast_coarse_pass", fastcfg, {})]
    for name, cfg, kwargs in runs:
        plan = Plan()
        res, dt2, dc2 = timed(lambda: segment_ct(ct, pm, cfg, progress=plan, **kwargs))
        dice = dice_per_label(ref_lab, sitk.GetArrayFromImage(res.labels))
        out[name] = {"overlap": cfg.fast_overlap, "grid": cfg.fast_grid, "windows": plan.windows, "wall_s": round(dt2, 1), "cpu_s": round(dc2, 1), "plan": plan.plan,
                     "runtime": res.config.runtime, "lesions": len(res.lesions),
                     "stages_s": {k: round(v, 1) for k, v in res.timings.items()},
                     "speedup_wall": round(dt / dt2, 2), "speedup_cpu": round(dc / dc2, 2),
                     "min_dice": min(dice.values(), default=1.0), "dice": dice}
        print(f"{name} (overlap {cfg.fast_overlap}, grid {cfg.fast_grid}): {plan.windows} windows ({res.config.runtime}), {dt2:.1f} s wall ({dt / dt2:.2f}x), {dc2:.1f} s "
              f"CPU ({dc / dc2:.2f}x) ({plan.plan}); Dice vs exact min {out[name]['min_dice']:.4f}; stages "
              f"{json.dumps(out[name]['stages_s'])}; load {_load()}",
              flush=True)
    return out


def part_full(args: argparse.Namespace) -> dict[str, Any]:
    from PASTALib.anatomy import OrganMasks
    from PASTALib.geometry import to_canonical
    from PASTALib.infer import InferenceConfig, PastaModel
    from PASTALib.infer import fast
    from PASTALib.infer.sliding import plan_windows
    from PASTALib.io import read_ct, read_label
    from PASTALib.model import PastaUNet, UNetConfig

    ts = test_data_root() / "totalsegmentator"
    ct_full = read_ct(ts / "example_ct.nii.gz")
    organs_full = OrganMasks.from_label_map(read_label(ts / "example_seg_fast_force_split.nii.gz"), reference=ct_full)
    # --no-lesions: random weights leave hundreds of spurious lesion components, each costing an attribute-head
    # crop (one encoder pass, the same in both paths): a whole-CT run spent > 16 min there after its windows
    exact = InferenceConfig(device="cpu", num_threads=args.threads,
                            min_lesion_volume_mm3=1e12 if args.no_lesions else InferenceConfig.min_lesion_volume_mm3)
    fastcfg = replace(exact, speed="fast", fast_overlap=args.full_overlap[0])

    # window counts on the whole CT (no network): what the slab's per-window seconds are scaled by
    canonical, mapping = to_canonical(ct_full, is_label=False, spacing=1.0)
    hu = sitk.GetArrayFromImage(canonical)
    org_c = sitk.GetArrayFromImage(to_canonical(organs_full.pasta_label_map(include_lesions=False), mapping,
                                                is_label=True)[0])
    n_exact_whole = plan_windows(hu, exact)[1]
    region = fast.region_from_labels(org_c, fastcfg)
    n_fast = {f"{grid}_grid_overlap_{ov}": plan_windows(hu, replace(fastcfg, overlap=ov, fast_grid=grid), region)[1]
              for grid in ("body", "organs") for ov in args.full_overlap}
    print(f"whole example_ct: exact {n_exact_whole} windows, fast (TotalSegmentator organs) "
          + ", ".join(f"{n} windows ({key})" for key, n in n_fast.items()), flush=True)

    torch.manual_seed(args.seed)
    net = PastaUNet(UNetConfig.tiny() if args.width == "tiny" else UNetConfig()).eval()
    pm = PastaModel(net, torch.device("cpu"))
    bf16 = fast.window_dtype(torch.device("cpu"), fastcfg)
    print(f"full width: {sum(p.numel() for p in net.parameters()):,} parameters, threads {args.threads}, fast dtype "
          f"{bf16} (native bf16 on this CPU: {fast.cpu_supports_bf16()}); load {_load()}", flush=True)
    out: dict[str, Any] = {"load_start": _load(), "whole_ct_windows": {"exact": n_exact_whole, **n_fast}}
    # seconds per 128³ window, float32 (exact) and the fast dtype, interleaved, on the CT's centre window
    box = plan_windows(hu, exact)[0]
    centre = tuple(slice((b.start + b.stop) // 2 - 64, (b.start + b.stop) // 2 + 64) for b in box)
    x = torch.from_numpy(np.asarray(pm.segmentation_normalization()(hu[centre]), np.float32))[None, None]
    from PASTALib.infer.openvino_runtime import runtime_network

    fast_net, dt_conv, _ = timed(lambda: runtime_network(net, fastcfg, torch.device("cpu")))
    runtime = "torch" if fast_net is net else f"openvino {fast_net.precision}"
    out["fast_runtime"] = {"runtime": runtime, "prepare_s": round(dt_conv, 1)}
    print(f"fast runtime: {runtime} (conversion/loading {dt_conv:.1f} s)", flush=True)
    with torch.no_grad():  # one untimed window each: first-call setup (oneDNN primitives, OpenVINO compile)
        for model, dtype in ((net, None), (net, bf16), (fast_net, bf16)):
            with autocast(torch.device("cpu"), dtype):
                model.segment(x)
    per: dict[str, list[list[float]]] = {"exact": [], "torch_fast_dtype": [], "fast": []}
    with torch.no_grad():
        for r in range(args.window_repeats):
            for name, model, dtype in (("exact", net, None), ("torch_fast_dtype", net, bf16), ("fast", fast_net, bf16)):
                with autocast(torch.device("cpu"), dtype):
                    _, dt, dc = timed(lambda: model.segment(x))
                per[name].append([dt, dc])
                print(f"  window {r + 1}/{args.window_repeats} {name}: {dt:.1f} s wall, {dc:.1f} s CPU (load {_load()})",
                      flush=True)
    med = {k: [float(np.median([v[i] for v in per[k]])) for i in (0, 1)] for k in per}
    out["window_s"] = {k: {"wall": [round(v[0], 1) for v in per[k]], "cpu": [round(v[1], 1) for v in per[k]]} for k in per}
    _, dt3, dc3 = timed(lambda: fast.coarse_region(fast_net, hu[box], fastcfg, torch.device("cpu"),
                                                   pm.segmentation_normalization(), pm.divisor))
    out["coarse_pass_whole_ct"] = {"wall_s": round(dt3, 1), "cpu_s": round(dc3, 1)}
    print(f"coarse pass on the whole body box (what fast costs without an organ map): {dt3:.1f} s wall, {dc3:.1f} s CPU",
          flush=True)
    proj = {}
    for key, n_fast_whole in n_fast.items():
        for i, unit in enumerate(("wall", "cpu")):
            t_exact = n_exact_whole * med["exact"][i]
            t_map = n_fast_whole * med["fast"][i]
            t_coarse = t_map + (dt3, dc3)[i]
            proj[f"{key}_{unit}"] = {
                "exact_s": round(t_exact), "fast_organ_map_s": round(t_map), "fast_coarse_pass_s": round(t_coarse),
                "speedup_organ_map": round(t_exact / t_map, 2), "speedup_coarse_pass": round(t_exact / t_coarse, 2)}
            print(f"whole example_ct windows, fast {key} ({unit} time): exact {n_exact_whole} x "
                  f"{med['exact'][i]:.1f} s = {t_exact / 60:.1f} min; fast {n_fast_whole} x {med['fast'][i]:.1f} s = "
                  f"{t_map / 60:.1f} min with the organ map ({t_exact / t_map:.2f}x), {t_coarse / 60:.1f} min with "
                  f"the coarse pass ({t_exact / t_coarse:.2f}x)", flush=True)
    out["whole_ct_projection"] = proj
    if args.slab or args.whole:
        out["end_to_end"] = end_to_end(args, ct_full, pm, exact, fastcfg, whole=args.whole)
    out["load_end"] = _load()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("tiny", "full", "both"), default="both")
    ap.add_argument("--tiny-cache", default=str(Path.home() / ".cache" / "pasta-bench" / "fast-tiny"),
                    help="where the tiny test model is trained once and reused")
    ap.add_argument("--checkpoint", help="tiny part: these weights (with --ct) instead of the cached test model")
    ap.add_argument("--ct", help="tiny part: CT for --checkpoint")
    ap.add_argument("--patch", type=int, default=32, help="tiny part: window edge (the test model's 32)")
    ap.add_argument("--spacing", type=float, default=4.5, help="tiny part: spacing in mm (the test model's 4.5)")
    ap.add_argument("--fast-overlap", type=float, nargs="+", default=[0.5, 0.25, 0.0], help="tiny part: fast overlaps tried")
    ap.add_argument("--full-overlap", type=float, nargs="+", default=[0.5, 0.25, 0.0],
                    help="full part: fast overlaps counted (the first one for --slab / --whole)")
    ap.add_argument("--z-slices", type=int, nargs=2, default=(66, 96), metavar=("Z0", "Z1"),
                    help="full part: example_ct slices (3 mm) of the slab (default 66 96: kidneys, liver, pancreas)")
    ap.add_argument("--width", choices=("full", "tiny"), default="full", help="full part: network width (tiny: a smoke run)")
    ap.add_argument("--window-repeats", type=int, default=2, help="full part: timed 128³ windows per dtype")
    ap.add_argument("--slab", action="store_true", help="full part: also segment_ct end to end, exact vs fast, on "
                                                        "the --z-slices slab (about 20 exact windows: ~15 min idle)")
    ap.add_argument("--whole", action="store_true", help="full part: segment_ct end to end, exact vs fast, on the whole "
                                                         "CT (100 exact windows: ~1 h on 2 idle cores)")
    ap.add_argument("--skip-coarse", action="store_true", help="full part end to end: no run with the coarse pass "
                                                                "(random weights call every voxel an organ)")
    ap.add_argument("--no-lesions", action="store_true", help="full part end to end: no lesion reporting (random weights "
                                                              "make hundreds of spurious lesions; their attribute crops "
                                                              "cost the same in both paths)")
    ap.add_argument("--grid-shift", type=float, nargs="*", default=[0.25, 0.5],
                    help="tiny part: the reference path against itself with its grid moved by these fractions of the "
                         "window stride along each axis (none: skipped)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args()
    if bool(args.checkpoint) != bool(args.ct):
        ap.error("--checkpoint and --ct go together")
    torch.set_num_threads(args.threads)
    summary: dict[str, Any] = {"threads": args.threads, "load_start": _load(), "cpu": _cpu_name()}
    # a fresh OpenVINO cache (the full width's IR is ~1 GB): the run pays the conversion once, as a user's
    # first fast run does
    with tempfile.TemporaryDirectory(prefix="pasta-bench-openvino-") as cache:
        os.environ["PASTA_OPENVINO_CACHE"] = cache
        if args.part in ("tiny", "both"):
            summary["tiny"] = part_tiny(args)
        if args.part in ("full", "both"):
            summary["full"] = part_full(args)
    summary["load_end"] = _load()
    print("SUMMARY " + json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
