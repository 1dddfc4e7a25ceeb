"""Whole-CT inference time, like for like: the same canonical 1 mm body-cropped array, network,
window, overlap (0.5), Gaussian blending, batch size, threads and no mirroring through

  (a) ours      PASTALib.infer.sliding_window_probabilities
  (b) MONAI     plain monai.inferers.sliding_window_inference(mode="gaussian") on the SLF tensor
  (c) nnU-Net   nnunetv2 nnUNetPredictor.predict_sliding_window_return_logits (manual_initialization)

measured in the same run, plus PASTALib.infer.segment_case end to end (read, resampling, windows,
mapping back, lesion instances, attributes, reports and files) to show the cost outside the windows.
The three probability maps are compared (max abs difference, argmax agreement) before any ratio
is printed: a speed comparison of different computations would mean nothing.

    python benchmarks/bench_infer.py --smoke                              # tiny, 64³ windows, seconds
    python benchmarks/bench_infer.py                                      # tiny, example_ct_sm, 128³ windows
    python benchmarks/bench_infer.py --width full --max-size 128 128 192  # full width, 2 windows
    python benchmarks/bench_infer.py --device cuda --width full --ct "$(bash scripts/fetch_test_data.sh --print-root)/totalsegmentator/example_ct.nii.gz"

Like-for-like choices: the array is padded at its far ends with air (-1000 HU, SLF 0) to the
window size and to a whole number of window steps, so MONAI's fixed stride and nnU-Net's evenly
spread steps put the windows at the same places (the window count does not change). nnU-Net runs
one window per forward, so the batch size is 1 for all three by default. nnU-Net averages what
the network returns: it is given the network wrapped to return softmax probabilities, which is
what ours and MONAI average. On CUDA all three use the same autocast dtype (ours: bf16 where
supported; nnU-Net's own default would be fp16) and aggregate on the GPU. nnU-Net v2 comes with
``scripts/bootstrap.sh --with-benchmarks``; without it (c) is skipped with a note.

Weights are random unless --checkpoint is given: timing of the windows does not depend on them;
the lesion post-processing in segment_case does (random weights find whatever they find).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.fixtures import test_data_root  # noqa: E402

DEFAULT_CT = "<test data>/totalsegmentator/example_ct_sm.nii.gz"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype``; with None, explicitly off on CUDA (nnU-Net wraps its calls in fp16 autocast)."""
    if dtype is not None:
        return torch.autocast(device_type=device.type, dtype=dtype)
    return torch.autocast(device_type="cuda", enabled=False) if device.type == "cuda" else contextlib.nullcontext()


class SoftmaxNet(torch.nn.Module):
    """Network → softmax probabilities under a fixed autocast dtype.

    The baselines' predictor: MONAI calls it per batch of windows; nnU-Net calls ``network(x)`` and
    averages what it returns, so wrapping makes it average probabilities as ours does (softmax of
    averaged logits would be a different computation). The inner autocast overrides nnU-Net's fp16.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.network, self.device, self.dtype = network, device, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device, self.dtype):
            logits = self.network.segment(x)
        return torch.softmax(logits.float(), dim=1)


def aligned_shape(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> tuple[int, ...]:
    """Smallest shape ≥ ``shape`` and ≥ ``roi`` that is a whole number of window steps per axis.

    MONAI steps by int(roi·(1-overlap)) and clamps the last window to the end; nnU-Net spreads
    the same number of windows evenly. On such a shape both place every window identically.
    """
    out = []
    for n, r in zip(shape, roi):
        step = max(int(r * (1 - overlap)), 1)
        out.append(r if n <= r else r + math.ceil((n - r) / step) * step)
    return tuple(out)


def prepare_input(ct: sitk.Image, cfg: Any, max_size: tuple[int, int, int] | None) -> tuple[sitk.Image, np.ndarray]:
    """The canonical (LPS, ``cfg.spacing_mm``) CT cropped to the body box as segment_canonical does,
    optionally centre-cropped to ``max_size`` (z, y, x): the image and its HU array (z, y, x)."""
    from PASTALib.geometry import to_canonical
    from PASTALib.infer.sliding import body_box

    canonical, _ = to_canonical(ct, is_label=False, spacing=cfg.spacing_mm)
    hu = sitk.GetArrayFromImage(canonical)
    box = body_box(hu, cfg.body_threshold_hu, math.ceil(cfg.body_margin_mm / cfg.spacing_mm))
    if max_size is not None:
        box = tuple(slice(s.start + max(0, (s.stop - s.start - m) // 2),
                          s.start + max(0, (s.stop - s.start - m) // 2) + min(m, s.stop - s.start))
                    for s, m in zip(box, max_size))
    z, y, x = box
    return canonical[x, y, z], hu[box]  # SimpleITK slices in (x, y, z) and keeps the geometry


def compare(ref: torch.Tensor, other: torch.Tensor, chunk: int = 8, decided: float = 0.05) -> dict[str, float]:
    """How far two (C, z, y, x) probability maps differ: max / mean abs difference, fraction of voxels
    off by > 0.01, argmax agreement, and argmax agreement where ``ref``'s top two classes are
    ``decided`` apart (random weights leave many near-ties, where any rounding flips the argmax)."""
    if ref.shape != other.shape:
        raise ValueError(f"probability maps differ in shape: {tuple(ref.shape)} vs {tuple(other.shape)}")
    max_abs, sum_abs, off, equal, n_dec, equal_dec = 0.0, 0.0, 0, 0, 0, 0
    for i in range(0, ref.shape[1], chunk):  # in z slabs: whole-map float temporaries would double memory
        a = ref[:, i:i + chunk].float().cpu()
        b = other[:, i:i + chunk].float().cpu()
        d = (a - b).abs().amax(0)
        max_abs, sum_abs, off = max(max_abs, float(d.max())), sum_abs + float(d.double().sum()), off + int((d > 0.01).sum())
        same = a.argmax(0) == b.argmax(0)
        top2 = a.topk(2, dim=0).values
        dec = (top2[0] - top2[1]) >= decided
        equal, n_dec, equal_dec = equal + int(same.sum()), n_dec + int(dec.sum()), equal_dec + int((same & dec).sum())
    n = float(np.prod(ref.shape[1:]))
    return {"max_abs_diff": max_abs, "mean_abs_diff": sum_abs / n, "frac_off_1e-2": off / n,
            "argmax_agreement": equal / n, "decided_fraction": n_dec / n,
            "argmax_agreement_decided": equal_dec / n_dec if n_dec else float("nan")}


def nnunet_predictor(network: torch.nn.Module, device: torch.device, patch: tuple[int, ...], overlap: float,
                     n_classes: int) -> Any:
    """nnUNetPredictor around ``network`` from minimal plans / dataset dicts (no files, no training folder)."""
    with contextlib.redirect_stdout(io.StringIO()):  # nnunetv2.paths prints about unset nnUNet_* folders
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from PASTALib.labels import label_name

    plans = {
        "dataset_name": "Dataset000_PASTABench", "plans_name": "bench_infer", "label_manager": "LabelManager",
        # the architecture entry is never built: manual_initialization takes the network itself
        "configurations": {"3d_fullres": {"patch_size": list(patch), "architecture": {
            "network_class_name": "PASTALib.model.PastaUNet", "arch_kwargs": {}, "_kw_requires_import": []}}},
    }
    dataset_json = {"labels": {("background" if i == 0 else label_name(i)): i for i in range(n_classes)},
                    "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}
    plans_manager = PlansManager(plans)
    predictor = nnUNetPredictor(tile_step_size=1.0 - overlap, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("3d_fullres"), None,
                                    dataset_json, "nnUNetTrainer", None)
    return predictor


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float, float]:
    """(result, wall seconds, process CPU seconds, peak CUDA GiB) of ``fn``, CUDA synchronised around it.

    CPU seconds (all threads of this process) move much less than wall time when other jobs load
    the machine; on CUDA wall time is the number that counts.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return out, dt, dc, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default=DEFAULT_CT, help="CT file or DICOM folder (default: example_ct_sm)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--width", choices=["tiny", "full"], default="tiny", help="random-weight PastaUNet width")
    ap.add_argument("--checkpoint", help="weights file instead of random weights (its width wins)")
    ap.add_argument("--patch", type=int, default=128, help="window edge in canonical voxels (default 128)")
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--sw-batch-size", type=int, default=1,
                    help="windows per forward for ours and MONAI (nnU-Net always runs 1; keep 1 for like-for-like)")
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--max-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                    help="centre-crop the body box to at most this many canonical voxels (bounds the window count)")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="full precision on CUDA too")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads for every method")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per method, interleaved (median reported)")
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed")
    ap.add_argument("--skip-nnunet", action="store_true")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny width, 64³ windows, a 64×64×96 crop: a quick check")
    ap.add_argument("--json", help="also write the summary to this JSON file")
    args = ap.parse_args()
    if args.smoke:
        args.width, args.patch, args.max_size = "tiny", 64, args.max_size or [64, 64, 96]

    from monai.inferers import sliding_window_inference

    from PASTALib.infer import (
        InferenceConfig,
        PastaModel,
        load_model,
        resolve_device,
        segment_case,
    )
    from PASTALib.infer.sliding import count_windows, sliding_window_probabilities
    from PASTALib.io import read_ct, write_image
    from PASTALib.model import PastaUNet, UNetConfig
    from PASTALib.model.preprocess import SLF_THRESHOLDS_HU, slf_normalize
    from PASTALib.runtime import amp_dtype

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # nnUNetPredictor switches it on globally: on for all three
    if args.checkpoint:
        pm = load_model(args.checkpoint, device=str(device))
        width = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(args.seed)
        net = PastaUNet(UNetConfig.tiny() if args.width == "tiny" else UNetConfig()).to(device).eval()
        pm, width = PastaModel(net, device), args.width
    network = pm.network
    n_classes = int(network.config.num_seg_classes)
    patch = (args.patch,) * 3
    cfg = InferenceConfig(patch_size=patch, overlap=args.overlap, batch_size=args.sw_batch_size, device=str(device),
                          amp=args.amp, mirroring=False, spacing_mm=args.spacing, num_threads=args.threads,
                          aggregate_on_cpu=False if device.type == "cuda" else None)
    cfg.validate(pm.divisor)
    dtype = amp_dtype(device, args.amp)

    if args.ct == DEFAULT_CT:
        args.ct = str(test_data_root() / "totalsegmentator" / "example_ct_sm.nii.gz")
    ct = read_ct(args.ct)
    canonical_crop, hu_body = prepare_input(ct, cfg, tuple(args.max_size) if args.max_size else None)
    shape = aligned_shape(hu_body.shape, patch, args.overlap)
    hu = np.pad(hu_body, [(0, a - s) for a, s in zip(shape, hu_body.shape)], constant_values=SLF_THRESHOLDS_HU[0])
    n_win = count_windows(shape, patch, args.overlap)
    assert n_win == count_windows(hu_body.shape, patch, args.overlap)  # alignment adds air, never windows
    t = time.perf_counter()
    slf_normalize(hu, values=pm.slf_values)  # timed only: ours does it inside its call, the baselines get it done
    t_slf = time.perf_counter() - t
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    summary: dict[str, Any] = {
        "ct": str(args.ct), "device": str(device), "hardware": hw, "threads": torch.get_num_threads(),
        "width": width, "params": sum(p.numel() for p in network.parameters()), "patch": list(patch),
        "overlap": args.overlap, "sw_batch_size": args.sw_batch_size, "amp_dtype": str(dtype),
        "input_size": list(ct.GetSize()), "input_spacing": [round(s, 3) for s in ct.GetSpacing()],
        "body_crop_zyx": list(hu_body.shape), "aligned_zyx": list(shape), "windows": n_win,
        "load_start": _load(),
    }
    print(f"CT {args.ct}: size {ct.GetSize()} spacing {summary['input_spacing']}; canonical body crop (z,y,x) "
          f"{hu_body.shape}{' (bounded by --max-size)' if args.max_size else ''} -> aligned {shape}: {n_win} windows "
          f"of {patch}, overlap {args.overlap}, batch {args.sw_batch_size}, no mirroring")
    print(f"device {device} ({hw}), threads {summary['threads']}, width {width}, params {summary['params']:,}, "
          f"amp {dtype}; load average (1/5/15 min) {summary['load_start']}")
    if args.sw_batch_size != 1:
        print("note: nnU-Net's predictor runs one window per forward whatever --sw-batch-size says")

    plain_net = SoftmaxNet(network, device, dtype)
    predictor = None
    if not args.skip_nnunet:
        try:
            predictor = nnunet_predictor(plain_net, device, patch, args.overlap, n_classes)
        except ImportError as exc:
            print(f"nnU-Net skipped: nnunetv2 is not installed ({exc}); run scripts/bootstrap.sh --with-benchmarks")

    def make_methods(hu_in: np.ndarray) -> dict[str, Callable[[], torch.Tensor]]:
        """The timed calls on one input: each gets the array in the form its API takes."""
        x_in = torch.from_numpy(slf_normalize(hu_in, values=pm.slf_values)).to(device)
        out: dict[str, Callable[[], torch.Tensor]] = {
            "ours": lambda: sliding_window_probabilities(network, hu_in, cfg, device, slf_values=pm.slf_values),
            "monai": lambda: torch.no_grad()(sliding_window_inference)(
                x_in[None, None], roi_size=patch, sw_batch_size=args.sw_batch_size, predictor=plain_net,
                overlap=args.overlap, mode="gaussian", sigma_scale=cfg.sigma_scale)[0],
        }
        if predictor is not None:
            out["nnunet"] = lambda: predictor.predict_sliding_window_return_logits(x_in[None])
        return out

    # warm-up of every method on one window of air: allocator, cudnn autotune, lazy imports, nnU-Net's
    # cached Gaussian; the timed runs below use the same window shape
    for name, fn in make_methods(np.full(patch, SLF_THRESHOLDS_HU[0], np.float32)).items():
        timed(fn, device)
    methods = make_methods(hu)
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    peaks: dict[str, float] = {}
    agreement: dict[str, dict[str, float]] = {}
    reference: torch.Tensor | None = None
    names = list(methods)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate so load drifts hit every method
        for name in order:
            out, dt, dc, peak = timed(methods[name], device)
            times[name].append(dt)
            cpu[name].append(dc)
            peaks[name] = max(peaks.get(name, 0.0), peak)
            if r == 0:
                if name == "ours":
                    reference = out
                else:
                    agreement[name] = compare(reference, out)
            del out
            print(f"  run {r + 1}/{args.repeats} {name:6s} {dt:8.2f} s wall, {dc:8.2f} s CPU  (load {_load()})", flush=True)
    del reference
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    summary.update(seconds={k: [round(t, 3) for t in v] for k, v in times.items()},
                   cpu_seconds={k: [round(t, 3) for t in v] for k, v in cpu.items()},
                   median_s={k: round(v, 3) for k, v in med.items()},
                   median_cpu_s={k: round(v, 3) for k, v in med_cpu.items()}, slf_normalize_s=round(t_slf, 3),
                   agreement_with_ours=agreement)
    if device.type == "cuda":
        summary["peak_cuda_gib"] = {k: round(v, 2) for k, v in peaks.items()}

    print(f"SLF normalisation (outside the baselines' timings, inside ours): {t_slf:.2f} s")
    for name, stats in agreement.items():
        print(f"agreement {name} vs ours: max |Δp| {stats['max_abs_diff']:.2e}, mean {stats['mean_abs_diff']:.1e}, "
              f"{100 * stats['frac_off_1e-2']:.2f} % of voxels off by > 0.01; argmax agreement "
              f"{100 * stats['argmax_agreement']:.3f} % ({100 * stats['argmax_agreement_decided']:.3f} % where ours' top "
              f"two differ by ≥ 0.05: {100 * stats['decided_fraction']:.1f} % of voxels)")
    if "nnunet" in agreement:
        print("  (nnU-Net blends with its own weights: scipy Gaussian centred at i//2 with a non-zero floor, fp16 weights "
              "and accumulators, vs MONAI's float32 map floored at 1e-3; the differences sit near the array faces, where "
              "the weights are tiny)")
    for name in names:
        extra = f", peak {peaks[name]:.2f} GiB" if device.type == "cuda" else ""
        print(f"{name:6s}: {med[name]:8.2f} s wall median ({med[name] / n_win:.2f} s/window, {med[name] / med['monai']:.2f}x "
              f"MONAI plain); {med_cpu[name]:8.2f} s CPU ({med_cpu[name] / med_cpu['monai']:.2f}x){extra}")

    if not args.skip_end_to_end:
        with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
            if args.max_size:  # segment_case reads a file: give it the bounded crop, already canonical
                source = write_image(canonical_crop, Path(tmp) / "crop.nii.gz")
            else:
                source = Path(args.ct)
            (result, files), dt, dc, _ = timed(lambda: segment_case(source, Path(tmp) / "out", pm, cfg), device)
        tm = {k: round(v, 2) for k, v in result.timings.items()}
        outside = dt - result.timings["sliding_window"]
        summary["end_to_end"] = {"source": str(source) if args.max_size is None else "bounded canonical crop",
                                 "seconds": round(dt, 3), "cpu_seconds": round(dc, 3), "timings_s": tm, "lesions": len(result.lesions),
                                 "outside_windows_s": round(outside, 3), "files": len(files)}
        print(f"segment_case end to end: {dt:.2f} s wall ({dc:.2f} s CPU) = windows {result.timings['sliding_window']:.2f} s + "
              f"{outside:.2f} s outside them ({100 * outside / dt:.1f} %); {len(result.lesions)} lesion(s), "
              f"{len(files)} files; stages {json.dumps(tm)}")
    summary["load_end"] = _load()
    print(f"load average at the end {summary['load_end']}")
    print("SUMMARY " + json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
