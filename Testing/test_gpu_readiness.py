"""CUDA paths checked on a CPU machine: the device of every tensor a step touches (meta device), the
AMP dtype chooser (fake compute capabilities), RNG restore with fewer GPUs, ranks agreeing on a resume
(gloo, 2 processes), fp32 pooling under autocast, out-of-memory recognition, the benchmark's timing
window and GPU-name table, and the `scripts/gpu_check.sh` dry run (the script run on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from PASTALib import runtime
from PASTALib.model.unet import PastaUNet, UNetConfig
from PASTALib.train import Stage1Config, TrainingError
from PASTALib.train import common

REPO = Path(__file__).resolve().parents[1]
TS = SHARED_DATA / "totalsegmentator"
MICRO = {"batch_size": 1, "patch_size": (16, 16, 16), "base_channels": 4, "max_channels": 16, "num_stages": 4,
         "progress_bar": False, "num_threads": 1, "device": "cpu", "tensorboard": False, "curves": False}


def _tensors(*modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": t for i, m in enumerate(modules)
            for name, t in [*m.named_parameters(), *m.named_buffers()]}


# --- 1. everything a training step touches lives on the training device ---------------------------

def test_stage1_model_and_loss_are_moved_to_the_device():
    """With --lesion-weight != 1 the loss holds class-weight buffers (CE and Dice); on CUDA a buffer
    left on the CPU crashes the first step. The meta device stands in for CUDA."""
    from PASTALib.train.stage1 import build_model_and_loss

    cfg = Stage1Config(data="unused", out="unused", lesion_weight=10.0, **MICRO)
    model, criterion = build_model_and_loss(cfg, torch.device("meta"))
    buffers = dict(criterion.named_buffers())
    assert any(t.numel() == cfg.num_classes for t in buffers.values()), buffers  # the weights exist ...
    devices = {name: t.device.type for name, t in _tensors(model, criterion).items()}
    assert set(devices.values()) == {"meta"}, {k: v for k, v in devices.items() if v != "meta"}  # ... and moved


def test_classifier_loss_weights_follow_the_device():
    from PASTALib.finetune.classify import make_loss

    loss = make_loss("detection", [1.0, 4.0], torch.device("meta"))
    logits, target = torch.zeros(2, 2, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
    assert loss(logits, target).device.type == "meta"  # a CPU weight with meta logits would raise


# --- 2. AMP dtype from the compute capability of the device in use -------------------------------

@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_amp_dtype_follows_compute_capability(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) report bf16 as 'supported' (emulated); they must get fp16 + GradScaler."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what emulation reports
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability)
    device = torch.device("cuda", 1)
    dtype = runtime.amp_dtype(device, True)
    assert dtype == expected and asked == [device]  # the capability of the device in use, not device 0
    scaler = runtime.make_grad_scaler(device, dtype)
    assert (scaler is not None) == (expected == torch.float16)
    assert runtime.amp_dtype(device, True, "fp16") == torch.float16  # forced (gpu_check's GradScaler step)
    assert runtime.amp_dtype(device, True, "bf16") == torch.bfloat16
    assert runtime.amp_dtype(device, False) is None and runtime.amp_dtype(torch.device("cpu"), True) is None


def test_amp_dtype_setting_is_checked_and_parsed():
    with pytest.raises(TrainingError, match="unknown --amp-dtype 'fp8'"):
        Stage1Config(data="d", out="o", amp_dtype="fp8", **{k: v for k, v in MICRO.items()}).validate()
    import argparse

    from PASTALib.cli import train as cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["train", "stage1", "--data", "d", "--out", "o", "--amp-dtype", "fp16"])
    assert args.amp_dtype == "fp16"


def test_cudnn_benchmark_is_set_for_cuda_training_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    runtime.configure_fixed_shape_training(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    runtime.configure_fixed_shape_training(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True


# --- 3. resume: fewer GPUs than the checkpoint saw; ranks agree on the iteration --------------------

def test_resume_with_fewer_visible_gpus_than_saved_rng_states(monkeypatch):
    """A checkpoint from a 4-GPU node resumed where 1 GPU is visible: the first state is restored,
    the others are skipped (set_rng_state_all raised IndexError)."""
    restored = []

    def fake_set_rng_state(state, device=0):
        index = device.index if isinstance(device, torch.device) else int(device)
        if index >= 1:  # what torch.cuda.default_generators[index] does for a device that is not there
            raise IndexError("tuple index out of range")
        restored.append((index, state))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake_set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", fake_set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [])
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    state = {**common.rng_state(), "cuda": saved}
    common.set_rng_state(state)
    assert [i for i, _ in restored] == [0] and torch.equal(restored[0][1], saved[0])


_AGREE = r"""
import json, os, sys
from PASTALib.train.common import TrainingError, init_distributed
ctx, device = init_distributed("cpu")
out = {}
out["same"] = ctx.agree_on_resume(7, "ckpt.pt")
try:  # rank 1 does not see the checkpoint (another node, no shared --out)
    ctx.agree_on_resume(7 if ctx.rank == 0 else None, "ckpt.pt")
    out["differ"] = "no error"
except TrainingError as exc:
    out["differ"] = str(exc)
ctx.close()
open(os.path.join(sys.argv[1], f"rank{ctx.rank}.json"), "w").write(json.dumps(out))
"""


def test_ranks_agree_on_the_resume_iteration(tmp_path):
    """Two gloo processes (torchrun): the same view passes; different views raise the same clear
    error on every rank (before: each rank trained on from its own iteration and hung at the end)."""
    script = tmp_path / "agree.py"
    script.write_text(_AGREE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    views = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [v["same"] for v in views] == [7, 7]
    assert views[0]["differ"] == views[1]["differ"]
    assert "rank 0: iteration 7, rank 1: none" in views[0]["differ"] and "shared folder" in views[0]["differ"]


# --- 4. frozen-encoder features pooled in fp32 ----------------------------------------------------

def test_pooled_features_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = PastaUNet(UNetConfig(base_channels=4, max_channels=16, num_stages=4)).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feature = model.encode(x)
        feature_map = model._encode(x, model.config.num_stages - 1)[-1]
        forward_feature = model(x).feature
    assert feature_map.dtype == torch.bfloat16  # the encoder itself runs in bf16 ...
    assert feature.dtype == torch.float32 and forward_feature.dtype == torch.float32  # ... the pooling does not
    assert torch.equal(feature, feature_map.float().mean(dim=(2, 3, 4)))
    rounded = feature_map.mean(dim=(2, 3, 4)).float()  # the old bf16 pooling: off by up to 2^-9 relative
    assert not torch.equal(rounded, feature)
    with torch.no_grad():  # fp32 (the authors' computation) unchanged
        assert torch.equal(model.encode(x), model._encode(x, model.config.num_stages - 1)[-1].mean(dim=(2, 3, 4)))


# --- 7. out of memory from cuDNN / cuBLAS, the hint ------------------------------------------------

@pytest.mark.parametrize("exc, oom", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8589934592 bytes."), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "
                  "non-contiguous input."), False),
    (RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"), False),
    (RuntimeError("shape mismatch"), False),
    (ValueError("out of memory"), False),
])
def test_out_of_memory_classifier(exc, oom):
    assert common.is_out_of_memory(exc) is oom


def test_out_of_memory_hint_does_not_recommend_channels_last():
    err = common.out_of_memory_error(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), iteration=4,
                                     device=torch.device("cuda"), batch_size=2, size=(128, 128, 128),
                                     size_flag="--patch-size", amp=True)
    text = str(err)
    assert "--channels-last" not in text and "--base-channels" in text and "CUDNN_STATUS_ALLOC_FAILED" in text


# --- 7. the training benchmark: timing window, GPU-name table ---------------------------------------

def _bench_train():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA L40", 181.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A10G", 70.0), ("NVIDIA A10", 125.0), ("Tesla V100-SXM2-16GB", 125.0), ("Tesla T4", 65.0),
    ("NVIDIA GeForce RTX 4090", None), ("NVIDIA A1000", None),
])
def test_peak_tflops_matches_whole_name_tokens(name, peak):
    assert _bench_train().peak_tflops(name) == peak


def test_benchmark_window_excludes_checkpoint_saves(tmp_path, monkeypatch):
    """Our loop's timed window must not contain a checkpoint write (the final one is 1.9 GB at full
    width); saves are stamped through the stage-1 module's atomic_torch_save."""
    import time

    from PASTALib.train import stage1
    from PASTALib.train.toydata import make_toy_dataset

    bench = _bench_train()
    saves: list[float] = []
    real_save = stage1.atomic_torch_save

    def stamped_save(obj, path):
        result = real_save(obj, path)
        saves.append(time.perf_counter())
        return result

    monkeypatch.setattr(stage1, "atomic_torch_save", stamped_save)
    make_toy_dataset(tmp_path / "data", TS / "example_ct.nii.gz", TS / "example_seg_fast_force_split.nii.gz",
                     n_cases=1, crop=(32, 32, 32), seed=0)
    cfg = Stage1Config(data=str(tmp_path / "data"), out=str(tmp_path / "run"), checkpoint_every=10**6, resume=False,
                       **MICRO)
    result = bench.ours(cfg, iterations=2, warmup=1, device=torch.device("cpu"))
    start, end = result["window"]
    assert saves and all(not start <= t <= end for t in saves), (saves, start, end)
    assert result["it_per_s"] > 0


# --- the GPU check script: its CPU dry run ------------------------------------------------------------

def test_gpu_check_dry_run(tmp_path):
    """`scripts/gpu_check.sh --dry-run`: the environment report, the data preparation and a tiny stage-1
    run for real on the CPU; every other step's command lines through the CLI's parser (a renamed or
    removed option fails) and the benchmark scripts parsed; DDP / CUDA tests skipped; the summary line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PASTA_TEST_DATA": str(SHARED_DATA)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--work", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    status = {line.split()[1]: line.split()[0] for line in out.splitlines()
              if line.startswith(("PASS ", "FAIL ", "SKIP ", "DRY  "))}
    assert "FAIL" not in status.values(), out
    assert {k for k, v in status.items() if v == "PASS"} == {"environment", "prepare", "stage1_amp"}, out
    assert {k for k, v in status.items() if v == "DRY"} == {
        "stage1_fp32", "stage1_fp16_scaler", "stage1_resume", "stage1_compile_cl_workers", "stage2", "segment",
        "segment_mirror", "refine_train", "refine_apply", "finetune", "classify", "embed", "bench_train",
        "bench_train_channels_last", "bench_refine", "bench_infer"}, out
    assert {k for k, v in status.items() if v == "SKIP"} == {"stage1_ddp", "cuda_tests"}, out
    assert (tmp_path / "s1_amp" / "model_final.pth").is_file() and (tmp_path / "logs" / "stage1_amp.log").is_file()
    assert "gpu_check: 3 passed, 0 failed, 16 parsed only, 2 skipped" in out
