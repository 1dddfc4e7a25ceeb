"""Whole-CT inference time: PASTALib.infer (canonical 1 mm LPS + body crop + Gaussian sliding window
+ mapping back + lesion reports) vs MONAI's plain sliding_window_inference on the input grid (no
resampling, no crop), same network, same window, same overlap, measured in the same run.

    python benchmarks/bench_infer.py                                   # tiny width, CPU, example_ct_sm
    python benchmarks/bench_infer.py --device cuda --width full --ct ../shared/data/totalsegmentator/example_ct.nii.gz

Weights are random unless --checkpoint is given (timing does not depend on them; lesion
post-processing does, so with random weights the "ours" time includes whatever it finds).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

DEFAULT_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator" / "example_ct_sm.nii.gz"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default=str(DEFAULT_CT))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--checkpoint")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--sw-batch-size", type=int, default=2)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--mirror", action="store_true")
    ap.add_argument("--no-amp", dest="amp", action="store_false")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-plain", action="store_true")
    args = ap.parse_args()

    from monai.inferers import sliding_window_inference

    from PASTALib.infer import InferenceConfig, load_model, resolve_device, segment_ct
    from PASTALib.infer.pipeline import PastaModel
    from PASTALib.infer.sliding import WindowPredictor, count_windows
    from PASTALib.io import read_ct
    from PASTALib.model import PastaUNet, UNetConfig
    from PASTALib.model.preprocess import slf_normalize

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.checkpoint:
        pm = load_model(args.checkpoint, device=args.device)
    else:
        torch.manual_seed(0)
        cfg_net = UNetConfig.tiny() if args.width == "tiny" else UNetConfig()
        pm = PastaUNet(cfg_net).to(device).eval()
        pm = PastaModel(pm, device)
    cfg = InferenceConfig(patch_size=(args.patch,) * 3, overlap=args.overlap, batch_size=args.sw_batch_size,
                          device=str(device), amp=args.amp, mirroring=args.mirror, spacing_mm=args.spacing)
    ct = read_ct(args.ct)
    print(f"CT {args.ct}: size {ct.GetSize()} spacing {tuple(round(s, 3) for s in ct.GetSpacing())}; device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"threads {torch.get_num_threads()}, width {args.width}, params {sum(p.numel() for p in pm.network.parameters()):,}")

    # warm-up (cudnn autotune, allocator)
    with torch.no_grad():
        pm.network.segment(torch.zeros(1, 1, args.patch, args.patch, args.patch, device=device))
    _sync(device)

    t = time.perf_counter()
    result = segment_ct(ct, pm, cfg)
    _sync(device)
    ours = time.perf_counter() - t
    canon = result.canonical_grid.size
    print(f"ours : {ours:8.2f} s total  (sliding window {result.timings['sliding_window']:.2f} s; canonical grid {canon}, "
          f"{len(result.lesions)} lesion(s)); timings {json.dumps({k: round(v, 2) for k, v in result.timings.items()})}")

    if args.skip_plain:
        return
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)  # input grid, (z, y, x), no resampling / crop
    x = torch.from_numpy(slf_normalize(arr))[None, None].to(device)
    predictor = WindowPredictor(pm.network, device, cfg)
    t = time.perf_counter()
    with torch.no_grad():
        prob = sliding_window_inference(x, roi_size=cfg.patch_size, sw_batch_size=cfg.batch_size, predictor=predictor,
                                        overlap=cfg.overlap, mode="gaussian", sigma_scale=cfg.sigma_scale, device=device)
        labels = prob.argmax(1).to(torch.uint8).cpu().numpy()
    _sync(device)
    plain = time.perf_counter() - t
    print(f"plain: {plain:8.2f} s  (MONAI sliding_window_inference on the input grid {arr.shape[::-1]}, "
          f"{count_windows(arr.shape, cfg.patch_size, cfg.overlap)} windows; labels {labels.shape})")
    print(f"ratio ours/plain = {ours / plain:.2f}  (ours works at {args.spacing} mm: "
          f"{int(np.prod(canon))/arr.size:.1f}x the input's voxels before the body crop)")


if __name__ == "__main__":
    main()
