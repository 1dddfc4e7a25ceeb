"""Stage-1 training throughput: PASTALib's loop vs a plain MONAI reference loop, same run.

Both loops train the same PastaUNet on the same toy data (PASTALib.train.toydata from the real
example CT) with the same patch sampler, SLF input map, SGD and deep-supervised MONAI DiceCELoss.
Our loop adds what a real run needs (poly lr, grad clipping, metrics CSV, batch Dice, atomic
checkpoints, progress); the reference is the minimal loop an engineer would write by hand:

    for it in range(n):
        x, y = sampler.sample(batch); loss = sum(w * DiceCELoss(out, y[::s])); loss.backward(); opt.step()

Prints iterations/s of each, the ratio (ours / reference), peak memory (CPU RSS high-water mark via
resource.getrusage, or torch.cuda.max_memory_allocated on CUDA) and, with FLOPs counted by
torch.utils.flop_counter.FlopCounterMode for one forward+backward, the achieved FLOP/s and the
model-FLOPs utilisation against the device's dense bf16 peak (CUDA only; set --peak-tflops to override).

    python benchmarks/bench_train.py                       # CPU, tiny model, 32³ patches
    python benchmarks/bench_train.py --full --patch 32 --iterations 4   # full width, small patch
    python benchmarks/bench_train.py --device cuda --patch 128 --batch 2 --full --iterations 30
    python benchmarks/bench_train.py --device cuda --patch 128 --batch 2 --full --iterations 30 \
        --num-workers 4 --channels-last --compile --warmup 3     # throughput options (ours only)

The throughput options apply to our loop only (the reference stays the hand-written loop); the first
``--warmup`` iterations (which include torch.compile's compilation) are not timed.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fixtures import test_data_root
from PASTALib.model.preprocess import slf_normalize
from PASTALib.model.unet import PastaUNet
from PASTALib.runtime import amp_dtype, resolve_device
from PASTALib.train import Stage1Config, discover_cases, load_case, train_stage1
from PASTALib.train.data import PatchSampler
from PASTALib.train.stage1 import deep_supervision_weights
from PASTALib.train.toydata import make_toy_dataset

TS_DATA = test_data_root() / "totalsegmentator"

#: Dense tensor-core peaks (TFLOP/s, no sparsity) at the AMP dtype the device trains in: bf16 from
#: Ampere on, fp16 on V100 / T4 (which train in fp16, see PASTALib.runtime.choose_amp_dtype). Keys are
#: tuples of name tokens; a GPU matches an entry when all the entry's tokens are among its name's
#: tokens, the entry with the most tokens winning ("NVIDIA L40" is not an L4, "H100 PCIe" not SXM).
PEAK_TFLOPS: dict[tuple[str, ...], float] = {
    ("H200",): 989.0, ("H100",): 989.0, ("H100", "PCIE"): 756.0, ("H100", "NVL"): 835.0, ("GH200",): 989.0,
    ("A100",): 312.0, ("A800",): 312.0, ("L40S",): 362.0, ("L40",): 181.0, ("L4",): 121.0,
    ("A10",): 125.0, ("A10G",): 70.0, ("A30",): 165.0, ("A40",): 150.0, ("V100",): 125.0, ("T4",): 65.0,
}


def name_tokens(name: str) -> set[str]:
    """Upper-case alphanumeric tokens of a device name ('NVIDIA A100-SXM4-80GB' -> NVIDIA, A100, SXM4, 80GB)."""
    return {t for t in re.split(r"[^A-Z0-9]+", name.upper()) if t}


def peak_tflops(name: str) -> float | None:
    """The table's peak for a CUDA device name, matched by whole tokens (None when unknown)."""
    tokens = name_tokens(name)
    matches = [key for key in PEAK_TFLOPS if set(key) <= tokens]
    return PEAK_TFLOPS[max(matches, key=len)] if matches else None


def peak_rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def flops_per_iteration(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, criterion) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss = criterion(model(x).segmentation, y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def reference_loop(cfg: Stage1Config, iterations: int, warmup: int, device: torch.device) -> dict:
    """Plain torch + MONAI DiceCELoss loop (no checkpoints, metrics, clipping or schedule)."""
    from monai.losses import DiceCELoss

    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as our loop (PASTALib.runtime.configure_fixed_shape_training)
    cases = [load_case(r, seed=cfg.seed + i) for i, r in enumerate(discover_cases(cfg.data))]
    sampler = PatchSampler(cases, cfg.patch_size, fg_fraction=cfg.fg_fraction, seed=cfg.seed)
    model = PastaUNet(cfg.model_config()).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.99, nesterov=True, weight_decay=3e-5)
    dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    weights = deep_supervision_weights(cfg.num_stages - 1)
    dtype = amp_dtype(device, cfg.amp, cfg.amp_dtype)  # the same autocast dtype as our loop
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def criterion(outs, y):
        return sum(w * dice_ce(o.float(), y[:, :, ::2**i, ::2**i, ::2**i]) for i, (w, o) in enumerate(zip(weights, outs)) if w)

    def step():
        img, lab = sampler.sample(cfg.batch_size)
        x = torch.from_numpy(slf_normalize(img)).to(device)
        y = torch.from_numpy(lab.astype(np.int64)).to(device)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outs = model(x).segmentation
        loss = criterion(outs, y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return x, y, criterion

    model.train()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iterations):
        x, y, crit = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {"it_per_s": iterations / seconds, "seconds": seconds}
    if device.type == "cuda":
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out["flops_per_it"] = flops_per_iteration(model, x, y, crit)
    return out


def ours(cfg: Stage1Config, iterations: int, warmup: int, device: torch.device) -> dict:
    """PASTALib's train_stage1, timed by the callback clock from the end of iteration max(warmup, 1)
    over ``iterations`` iterations. One more iteration runs after the window: the last iteration
    writes the final checkpoint (1.9 GB at full width), which is I/O, not training throughput."""
    stamps: dict[int, float] = {}
    first = max(warmup, 1)

    def cb(it, row):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps[it] = time.perf_counter()
        if it == first and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    cfg.iterations = first + iterations + 1
    train_stage1(cfg, callback=cb)
    start, end = stamps[first], stamps[first + iterations]
    out = {"it_per_s": iterations / (end - start), "seconds": end - start, "window": (start, end)}
    if device.type == "cuda":
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="published width (64..1024 channels, 6 stages)")
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--max-channels", type=int, default=32)
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, help="device peak for the MFU estimate (default: table by GPU name)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--num-workers", type=int, help="our loop: DataLoader workers (default: 0 on CPU, a few on CUDA)")
    ap.add_argument("--compile", action="store_true", help="our loop: torch.compile")
    ap.add_argument("--channels-last", action="store_true", help="our loop: channels_last_3d")
    ap.add_argument("--amp-dtype", choices=("auto", "bf16", "fp16"), default="auto",
                    help="autocast dtype on CUDA, both loops (default: by compute capability)")
    ap.add_argument("--toy-cases", type=int, default=4, help="toy cases to sample patches from")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    width = {"base_channels": 64, "max_channels": 1024, "num_stages": 6} if args.full else {
        "base_channels": args.base_channels, "max_channels": args.max_channels, "num_stages": args.stages}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data = Path(tmp) / "data"
        crop = tuple(min(max(args.patch, 48), n) for n in (112, 101, 122))
        make_toy_dataset(data, TS_DATA / "example_ct.nii.gz", TS_DATA / "example_seg_fast_force_split.nii.gz",
                         n_cases=args.toy_cases, crop=crop, radius_vox=(4.5, 6.5), density_delta_hu=150, seed=0)
        cfg = Stage1Config(data=str(data), out=str(Path(tmp) / "run"), batch_size=args.batch, patch_size=(args.patch,) * 3,
                           device=str(device), progress_bar=False, checkpoint_every=10**6, resume=False,
                           amp_dtype=args.amp_dtype,
                           num_threads=args.threads if device.type == "cpu" else None, **width)
        n_params = sum(p.numel() for p in PastaUNet(cfg.model_config()).parameters())
        ref = reference_loop(cfg, args.iterations, args.warmup, device)
        cfg.num_workers, cfg.compile, cfg.channels_last = args.num_workers, args.compile, args.channels_last
        rss_ref = peak_rss_mib()
        mine = ours(cfg, args.iterations, args.warmup, device)
        rss = peak_rss_mib()

    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)",
           "torch": torch.__version__, "patch": args.patch, "batch": args.batch, "params": n_params, **width,
           "iterations": args.iterations, "num_workers": args.num_workers, "compile": args.compile,
           "channels_last": args.channels_last,
           "amp_dtype": str(amp_dtype(device, cfg.amp, cfg.amp_dtype)).replace("torch.", ""), "ours_it_per_s": mine["it_per_s"], "reference_it_per_s": ref["it_per_s"],
           "ratio_ours_over_reference": mine["it_per_s"] / ref["it_per_s"], "flops_per_iteration": ref["flops_per_it"],
           "achieved_tflops_ours": ref["flops_per_it"] * mine["it_per_s"] / 1e12}
    if device.type == "cuda":
        name = res["device"]
        peak = args.peak_tflops or peak_tflops(name)
        res.update(gpu_peak_mib_ours=mine["gpu_peak_mib"], gpu_peak_mib_reference=ref["gpu_peak_mib"],
                   peak_tflops=peak, mfu_ours=(res["achieved_tflops_ours"] / peak) if peak else None)
    else:
        res.update(peak_rss_mib_after_reference=rss_ref, peak_rss_mib_after_ours=rss)
    for k, v in res.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
