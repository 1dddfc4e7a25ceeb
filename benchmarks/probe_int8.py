"""INT8 for the fast path's windows? A probe, not a product path (issue #17): NNCF post-training quantization of
the OpenVINO form of the network, its speed and what it does to the answer.

  full   full-width PastaUNet (random weights, seed 0): quantized on --calibration 128³ windows of example_ct;
         seconds per window bf16 vs INT8 (2 each, after one untimed).
  tiny   the tiny trained test model (bench_fast_infer's cache): quantized on --calibration windows of its test
         CT, then segment_ct fast (OpenVINO) vs exact: Dice per label, lesion recall. --keep-bf16 keeps the first
         stage, the second conv of every decoder block and the outputs out of INT8 (MIXED preset).

Needs NNCF, which PASTA does not depend on:  pip install nncf==3.4.0  (it pulls no torch).

    python benchmarks/probe_int8.py --part full --calibration 6      # ~6 min on 2 cores
    python benchmarks/probe_int8.py --part tiny --calibration 32 [--keep-bf16]
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

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.fixtures import test_data_root  # noqa: E402

#: the layers --keep-bf16 leaves out of INT8 (OpenVINO node names of the traced PastaUNet)
KEEP_BF16 = [r".*conv_blocks_context\.0\..*", r".*conv_blocks_localization\.[0-9]+\.1\..*", r".*seg_outputs.*"]


def windows(hu: np.ndarray, normalize, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random ``size``³ windows of a canonical HU array (air-padded), in the network's input map."""
    out = []
    for _ in range(count):
        start = [int(rng.integers(0, max(1, n - size))) for n in hu.shape]
        w = np.full((size,) * 3, -1024.0, np.float32)
        crop = hu[tuple(slice(s, s + size) for s in start)]
        w[tuple(slice(0, n) for n in crop.shape)] = crop
        out.append(np.asarray(normalize(w), np.float32)[None, None])
    return out


def quantize(model, calibration: list[np.ndarray], keep_bf16: bool):
    import nncf

    kwargs = {}
    if keep_bf16:
        kwargs = {"ignored_scope": nncf.IgnoredScope(patterns=KEEP_BF16, validate=False),
                  "preset": nncf.QuantizationPreset.MIXED}
    return nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration), **kwargs)


def part_full(args: argparse.Namespace) -> None:
    import openvino as ov

    from PASTALib.geometry import to_canonical
    from PASTALib.infer import openvino_runtime as ovr
    from PASTALib.io import read_ct
    from PASTALib.model import PastaUNet, UNetConfig
    from PASTALib.model.preprocess import SLF_VALUES, SLFNormalization

    torch.manual_seed(0)
    net = PastaUNet(UNetConfig()).eval()
    model = ovr.converted_model(net, net.config.divisor)
    model.reshape([1, 1, 128, 128, 128])
    ct = read_ct(test_data_root() / "totalsegmentator" / "example_ct.nii.gz")
    hu = sitk.GetArrayFromImage(to_canonical(ct, is_label=False, spacing=1.0)[0])
    rng = np.random.default_rng(0)
    calibration = windows(hu, SLFNormalization(tuple(SLF_VALUES)), 128, args.calibration, rng)
    test = windows(hu, SLFNormalization(tuple(SLF_VALUES)), 128, 1, rng)[0]
    t = time.perf_counter()
    quantized = quantize(model, calibration, args.keep_bf16)
    print(f"quantized in {time.perf_counter() - t:.1f} s ({args.calibration} calibration windows)", flush=True)
    core = ov.Core()
    for name, m in (("bf16", model), ("int8", quantized)):
        request = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": args.threads,
                                               "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
        request.infer(test)
        seconds = []
        for _ in range(2):
            t = time.perf_counter()
            request.infer(test)
            seconds.append(round(time.perf_counter() - t, 2))
        print(f"one 128³ window, {name}: {seconds} s", flush=True)


def part_tiny(args: argparse.Namespace) -> None:
    from benchmarks.bench_fast_infer import dice_per_label, lesion_agreement, tiny_model
    from PASTALib.geometry import to_canonical
    from PASTALib.infer import InferenceConfig, load_model, segment_ct
    from PASTALib.infer import openvino_runtime as ovr
    from PASTALib.io import read_ct

    os.environ["PASTA_OPENVINO_CACHE"] = tempfile.mkdtemp(prefix="pasta-int8-")
    ct_path, ckpt = tiny_model(Path(args.tiny_cache))
    pm, ct = load_model(ckpt, device="cpu"), read_ct(ct_path)
    base = InferenceConfig(device="cpu", patch_size=(32,) * 3, crop_size=(32,) * 3, spacing_mm=4.5, num_threads=args.threads)
    ref = segment_ct(ct, pm, base)
    hu = sitk.GetArrayFromImage(to_canonical(ct, is_label=False, spacing=base.spacing_mm)[0])
    calibration = windows(hu, pm.segmentation_normalization(), 32, args.calibration, np.random.default_rng(0))
    convert = ovr.converted_model

    def quantized_model(network, divisor, cache=None, core=None):
        model = convert(network, divisor, cache, core)
        model.reshape([1, 1, 32, 32, 32])
        return quantize(model, calibration, args.keep_bf16)

    for name, converted in (("bf16", convert), ("int8" + (" (first/last layers bf16)" if args.keep_bf16 else ""), quantized_model)):
        ovr.converted_model = converted
        pm.runtime_cache.clear()  # no OpenVINO form kept from the other run
        res = segment_ct(ct, pm, replace(base, speed="fast", runtime="openvino"))
        dice = dice_per_label(sitk.GetArrayFromImage(ref.labels), sitk.GetArrayFromImage(res.labels))
        agree = lesion_agreement(ref, res)
        print(f"tiny fast {name} vs exact: min organ Dice {min(d for v, d in dice.items() if v <= 10):.4f}; Dice "
              f"{json.dumps(dice)}; lesion recall {agree['lesion_recall']:.2f} ({agree['fast_lesions']} vs "
              f"{agree['reference_lesions']})", flush=True)
    ovr.converted_model = convert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("full", "tiny"), default="tiny")
    ap.add_argument("--calibration", type=int, default=32, help="calibration windows")
    ap.add_argument("--keep-bf16", action="store_true", help="first stage, second decoder convs and outputs not INT8")
    ap.add_argument("--tiny-cache", default=str(Path.home() / ".cache" / "pasta-bench" / "fast-tiny"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        import nncf  # noqa: F401
    except ImportError:
        raise SystemExit("this probe needs NNCF: pip install nncf==3.4.0")
    torch.set_num_threads(args.threads)
    (part_full if args.part == "full" else part_tiny)(args)


if __name__ == "__main__":
    main()
