"""The fast CPU path (PASTALib.infer.fast, `pasta segment --fast`): window plan, skipped windows, agreement
with the exact path, the plan line, --fast/--exact, bf16 only on CPUs with native bf16. Tiny random networks
and small arrays made here (agreement with the trained test model: benchmarks/bench_fast_infer.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import segment_cli
from PASTALib.infer import InferenceConfig, InferenceError
from PASTALib.infer import fast
from PASTALib.infer.sliding import plan_windows, segment_canonical, sliding_window_probabilities

CPU = torch.device("cpu")
PATCH = (32, 32, 32)


def _net():
    from PASTALib.model import PastaUNet, UNetConfig

    torch.manual_seed(0)
    return PastaUNet(UNetConfig.tiny(num_stages=5, base_channels=8)).eval()


def _body(shape=(40, 96, 96)) -> np.ndarray:
    hu = np.full(shape, -1000.0, np.float32)
    hu[2:-2, 4:-4, 4:-4] = 40.0
    return hu


class Counting(torch.nn.Module):
    """The network, counting the windows it segments."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.config, self.windows = net, net.config, 0

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.net.segment(x)


def test_window_plan_skips_windows_without_organ():
    hu = _body()
    cfg = InferenceConfig(patch_size=PATCH, overlap=0.0, spacing_mm=4.5, fast_margin_mm=0.0, fast_grid="organs")
    body, n_exact = plan_windows(hu, cfg)
    assert n_exact == 2 * 3 * 3  # body box 40 x 96 x 96 (margin clipped) with 32³ windows, no overlap
    organs = np.zeros(hu.shape, np.uint8)
    organs[5:10, 10:20, 10:20] = 2  # liver in one corner: one window
    region = fast.region_from_labels(organs, cfg)
    box, n_fast = plan_windows(hu, cfg, region)
    assert n_fast == 1 and [s.stop - s.start for s in box] == [5, 10, 10]
    # the reference's grid: the body box, and of its windows those holding the liver (z 0:32 and 8:40: both)
    assert plan_windows(hu, replace(cfg, fast_grid="body"), region) == (body, 2)
    organs[30:35, 70:80, 70:80] = 10  # bone is not in the default fast organs
    assert plan_windows(hu, cfg, fast.region_from_labels(organs, cfg))[1] == 1
    organs[30:35, 70:80, 70:80] = 24  # a kidney cyst counts as its organ's region
    box, n_two = plan_windows(hu, cfg, fast.region_from_labels(organs, cfg))
    assert n_two == sum(fast.windows_with_region(fast.region_from_labels(organs, cfg)[box], PATCH, 0.0)) < 2 * 3 * 3


def test_region_margin_is_a_ball_of_the_margin():
    from scipy import ndimage

    mask = np.zeros((30, 40, 50), bool)
    mask[15, 20, 25] = True
    mask[3:6, 30:38, 5:9] = True  # a block at the array's edge: the margin is clipped there
    grown = fast.dilate(mask, 6)
    # every voxel within 6 voxels (Euclidean) of the mask, and no other: scipy's EDT as the independent check
    assert np.array_equal(grown, ndimage.distance_transform_edt(~mask) <= 6)
    assert grown[15, 20, 31] and not grown[15, 20, 32] and not grown[15 + 5, 20 + 5, 25]  # a ball, not a cube
    assert np.array_equal(fast.dilate(mask, 0), mask) and not fast.dilate(np.zeros((4, 4, 4), bool), 3).any()


def test_skipped_windows_are_not_run_and_give_background():
    hu = _body((32, 96, 96))
    cfg = InferenceConfig(patch_size=PATCH, overlap=0.0, spacing_mm=4.5)
    region = np.zeros(hu.shape, bool)
    region[3:6, 40:45, 70:75] = True  # inside the window y 32:64, x 64:96
    net = Counting(_net())
    prob = sliding_window_probabilities(net, hu, cfg, CPU, region=region)
    assert net.windows == 1 == sum(fast.windows_with_region(region, PATCH, 0.0))
    assert torch.all(prob[0, :, :32, :64] == 1.0) and torch.all(prob[0, :, :, 64:][:, :32] == 1.0)
    assert not torch.all(prob[0, :, 32:64, 64:] == 1.0)  # the window that was run: the network's answer


def test_fast_agrees_with_exact_when_the_region_is_everything(monkeypatch):
    monkeypatch.setattr(fast, "cpu_supports_bf16", lambda *a, **k: False)  # full precision both ways
    hu, net = _body((32, 64, 64)), _net()
    cfg = InferenceConfig(patch_size=PATCH, overlap=0.25, spacing_mm=4.5)
    exact, box = segment_canonical(net, hu, cfg, CPU)
    organs = np.where(hu > -500, 2, 0).astype(np.uint8)
    fast_labels, fast_box = segment_canonical(net, hu, replace(cfg, speed="fast", fast_overlap=0.25, runtime="torch"),
                                              CPU, organ_labels=organs)
    assert np.array_equal(exact[fast_box], fast_labels[fast_box]) and exact[fast_box].any()
    outside = np.ones(hu.shape, bool)
    outside[fast_box] = False
    assert not fast_labels[outside].any()  # outside the region's box: background


def test_fast_on_the_reference_grid_keeps_its_answer_where_the_organs_are(monkeypatch):
    """The organs' box is tighter than the body box: on the reference's grid (the default) every region voxel is
    blended from the reference's windows, so it gets the reference's labels; on the organs' grid it need not."""
    monkeypatch.setattr(fast, "cpu_supports_bf16", lambda *a, **k: False)  # full precision both ways
    hu, net = _body((32, 96, 96)), _net()
    cfg = InferenceConfig(patch_size=PATCH, overlap=0.5, spacing_mm=4.5, fast_margin_mm=0.0, runtime="torch")
    organs = np.zeros(hu.shape, np.uint8)
    organs[4:28, 20:70, 14:60] = 2
    region = organs > 0
    exact, _ = segment_canonical(net, hu, cfg, CPU)
    counted = Counting(net)
    body, _ = segment_canonical(counted, hu, replace(cfg, speed="fast"), CPU, organ_labels=organs)
    assert np.array_equal(body[region], exact[region])
    n_fast = plan_windows(hu, replace(cfg, speed="fast"), region)[1]
    assert counted.windows == n_fast + 1 and n_fast < plan_windows(hu, cfg)[1]  # + 1: the window timed for the plan
    organs_grid, _ = segment_canonical(net, hu, replace(cfg, speed="fast", fast_grid="organs"), CPU, organ_labels=organs)
    assert not np.array_equal(organs_grid[region], exact[region])  # the windows moved: so did this network's answer


def test_coarse_pass_region_covers_the_fine_grid():
    hu = _body()
    cfg = InferenceConfig(patch_size=PATCH, spacing_mm=4.5, speed="fast")
    assert fast.coarse_patch(cfg, 16) == (32, 32, 32)  # two divisors at least (instance norm at the bottleneck)
    region = fast.coarse_region(_net(), hu, cfg, CPU, None, 16)
    assert region.shape == hu.shape and region.dtype == bool


def test_plan_message_and_time_left():
    messages = []
    hu, cfg = _body((32, 64, 64)), InferenceConfig(patch_size=PATCH, spacing_mm=4.5)
    n = plan_windows(hu, cfg)[1]
    assert n == 9  # box 32 x 60 x 60: 1 x 3 x 3 windows at overlap 0.5
    segment_canonical(_net(), hu, cfg, CPU, progress=lambda f, m: messages.append(m))
    assert messages[0].startswith("plan: about 9 windows (exact), ~") and messages[0].endswith("on this machine")
    assert messages[-1].startswith("segmenting: window 9/9, ~") and messages[-1].endswith("left")
    assert len([m for m in messages if m.startswith("segmenting")]) == 5  # one per batch of 2 windows


def test_bf16_only_where_the_cpu_has_it(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t: fpu sse avx2 avx512f\n")
    assert not fast.cpu_supports_bf16(info)
    info.write_text("flags\t: fpu avx512f avx512_bf16\n")
    assert fast.cpu_supports_bf16(info)
    assert not fast.cpu_supports_bf16(tmp_path / "missing")
    cfg = InferenceConfig(speed="fast")
    monkeypatch.setattr(fast, "cpu_supports_bf16", lambda *a, **k: True)
    assert fast.window_dtype(CPU, cfg) == torch.bfloat16
    assert fast.window_dtype(CPU, replace(cfg, speed="exact")) is None  # the reference path stays float32
    assert fast.window_dtype(CPU, replace(cfg, amp=False)) is None
    monkeypatch.setattr(fast, "cpu_supports_bf16", lambda *a, **k: False)
    assert fast.window_dtype(CPU, cfg) is None  # emulated bf16 is slower than float32


def test_config_checks():
    with pytest.raises(InferenceError, match="exact or fast"):
        InferenceConfig(speed="quick").validate()
    with pytest.raises(InferenceError, match="--exact with --compat authors"):
        InferenceConfig(speed="fast", compat="authors").validate()
    with pytest.raises(InferenceError, match="organ labels 1-10"):
        InferenceConfig(speed="fast", fast_organs=(11,)).validate()
    with pytest.raises(InferenceError, match="fast_grid must be body or organs"):
        InferenceConfig(speed="fast", fast_grid="lungs").validate()


def _parse(argv):
    import argparse

    from PASTALib.cli import segment

    parser = argparse.ArgumentParser(prog="pasta")
    segment.add_parser(parser.add_subparsers(dest="group"))
    return parser.parse_args(["segment", "--ct", "a.nii.gz", "--out", "o", *argv])


def test_fast_exact_flags():
    assert _parse([]).speed == "auto"  # fast on a CPU, exact on CUDA (InferenceConfig.resolved)
    assert _parse(["--fast"]).speed == "fast" and _parse(["--exact"]).speed == "exact"
    with pytest.raises(SystemExit):
        _parse(["--fast", "--exact"])
    from PASTALib.infer.config import FAST_GRIDS

    assert _parse([]).fast_grid is None and all(_parse(["--fast-grid", g]).fast_grid == g for g in FAST_GRIDS)
    with pytest.raises(SystemExit):
        _parse(["--fast-grid", "lungs"])


def test_segment_cli_prints_the_plan(tmp_path):
    import SimpleITK as sitk

    torch.save(_net().state_dict(), tmp_path / "model_final.pth")
    ct = sitk.GetImageFromArray(_body((16, 40, 40)).astype(np.int16))
    ct.SetSpacing((4.5, 4.5, 4.5))
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    common = ["--ct", str(tmp_path / "ct.nii.gz"), "--checkpoint", str(tmp_path / "model_final.pth"), "--device", "cpu",
              "--patch-size", "32", "--spacing", "4.5", "--crop-size", "32", "--threads", "1", "--no-progress-bar"]
    rc, out, err = segment_cli([*common, "--out", str(tmp_path / "a"), "--fast"])
    assert rc == 0, err
    assert "plan: about" in err and "(fast, organs only: bone metastases elsewhere need --exact)" in err
    assert "on this machine" in err
    rc, out, err = segment_cli([*common, "--out", str(tmp_path / "b"), "--exact", "--progress-lines"])
    assert rc == 0, err
    assert any(line.startswith("PROGRESS") and "plan: about 4 windows (exact)" in line for line in out.splitlines())
    assert any("segmenting: window 4/4" in line and "left" in line for line in out.splitlines())


@pytest.mark.parametrize("argv", [["--fast", "--overlap", "0"], ["--exact", "--overlap", "0.1"], ["--overlap", "0.3"]])
def test_overlap_option_sets_the_overlap_of_the_path_that_runs(monkeypatch, tmp_path, argv):
    """`--overlap` reaches whichever path runs: --fast, --exact, or the one the device decides (auto)."""
    import PASTALib.infer as infer
    from PASTALib.infer import InferenceConfig

    seen: list[InferenceConfig] = []

    class Recording(InferenceConfig):
        def __post_init__(self) -> None:
            super().__post_init__()
            seen.append(self)
            raise KeyboardInterrupt  # stop before any model is loaded

    monkeypatch.setattr(infer, "InferenceConfig", Recording)
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt):
        segment_cli(["--ct", str(ct), "--out", str(tmp_path / "o"), *argv])
    value = float(argv[argv.index("--overlap") + 1])
    assert seen[0].fast_overlap == value and seen[0].overlap == value


def test_fast_without_any_organ_runs_and_times_nothing(monkeypatch):
    """No organ in the given map: no window is run, the per-window timing probe is not run either, the
    plan says so, and the labels are background."""
    def no_probe(*args, **kwargs):
        raise AssertionError("the timing probe ran although there was no window to time")

    monkeypatch.setattr(fast, "probe_seconds_per_window", no_probe)
    hu = _body()
    cfg = InferenceConfig(patch_size=PATCH, spacing_mm=4.5, speed="fast")
    net, said = Counting(_net()), []
    labels, _box = segment_canonical(net, hu, cfg, CPU, progress=lambda f, m: said.append(m),
                                     organ_labels=np.zeros(hu.shape, np.uint8))
    assert net.windows == 0 and not labels.any()
    assert any(m.startswith("plan: no window to run (fast)") for m in said), said


# --- OpenVINO runtime (PASTALib.infer.openvino_runtime) -----------------------------------------------------------

def test_runtime_and_speed_are_decided_per_device(monkeypatch):
    from PASTALib.infer import openvino_runtime as ovr

    monkeypatch.delenv("PASTA_RUNTIME", raising=False)  # conftest sets torch for the suite
    cuda = torch.device("cuda")
    auto = InferenceConfig(speed="auto")
    assert auto.resolved(CPU).speed == "fast" and auto.resolved(cuda).speed == "exact"
    assert replace(auto, compat="authors").resolved(CPU).speed == "exact"  # fast cannot blend the authors' way
    monkeypatch.setattr(ovr, "openvino_available", lambda: True)
    assert auto.resolved(CPU).runtime == "openvino" and auto.resolved(cuda).runtime == "torch"
    assert InferenceConfig().resolved(CPU).runtime == "torch"  # the reference path stays torch unless asked
    with pytest.raises(InferenceError, match="runs on the CPU"):
        InferenceConfig(runtime="openvino").resolved(cuda)
    monkeypatch.setattr(ovr, "openvino_available", lambda: False)
    assert auto.resolved(CPU).runtime == "torch"  # not installed: torch, silently
    with pytest.raises(InferenceError, match=r"pip install openvino==.*--runtime torch"):
        InferenceConfig(runtime="openvino").resolved(CPU)
    with pytest.raises(InferenceError, match="runtime must be"):
        InferenceConfig(runtime="onnx").validate()
    monkeypatch.setattr(ovr, "openvino_available", lambda: True)
    monkeypatch.setenv("PASTA_RUNTIME", "torch")  # the environment decides what auto means
    assert auto.resolved(CPU).runtime == "torch"
    assert InferenceConfig(speed="auto", runtime="openvino").resolved(CPU).runtime == "openvino"  # explicit wins
    monkeypatch.setenv("PASTA_RUNTIME", "onnx")
    with pytest.raises(InferenceError, match="PASTA_RUNTIME='onnx'"):
        auto.resolved(CPU)


def test_openvino_runtime_in_its_own_process(tmp_path):
    """Testing/openvino_checks.py (OpenVINO windows equal torch's, the conversion cached, a damaged cache
    converted again, the fast path's windows through OpenVINO, the OpenVINO form kept per model) in a pytest subprocess: OpenVINO's thread pool
    must not be loaded into this process, which forks later (conftest.openvino_cache)."""
    pytest.importorskip("openvino")
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PASTA_RUNTIME"}
    env["PASTA_OPENVINO_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(repo),
                           str(repo / "Testing" / "openvino_checks.py")], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=900)
    checks = (repo / "Testing" / "openvino_checks.py").read_text().count("\ndef test_")  # every one ran, none skipped
    assert proc.returncode == 0 and f"{checks} passed" in proc.stdout.splitlines()[-1], proc.stdout[-3000:] + proc.stderr[-2000:]
