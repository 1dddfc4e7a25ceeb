"""Sliding-window segmentation of a canonical (LPS, 1 mm) CT array with MONAI.

Arrays are in SimpleITK order (z, y, x) of the canonical image, the order the training
patches use (PASTALib.train.data). The input map is the checkpoint's segmentation map (SLF, or nnU-Net's CT
normalisation for models fine-tuned from PASTA_final.pth; PASTALib.model.preprocess), as in training.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import replace
from collections.abc import Callable, Sequence

import numpy as np
import torch

from PASTALib.infer.config import InferenceConfig
from PASTALib.model.preprocess import SLF_VALUES, SLFNormalization

ProgressFn = Callable[[float, str], None]


def body_box(hu_zyx: np.ndarray, threshold_hu: float, margin_vox: int) -> tuple[slice, slice, slice]:
    """Bounding box (with margin) of voxels above ``threshold_hu``; the whole array if none."""
    mask = hu_zyx > threshold_hu
    if not mask.any():
        return tuple(slice(0, n) for n in hu_zyx.shape)  # type: ignore[return-value]
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(0, int(hits[0]) - margin_vox), min(hu_zyx.shape[axis], int(hits[-1]) + margin_vox + 1)))
    return tuple(out)  # type: ignore[return-value]


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of windows MONAI's sliding_window_inference visits (after padding to ``roi``)."""
    n = 1
    for size, r in zip(shape, roi):
        size = max(size, r)
        interval = max(int(r * (1 - overlap)), 1)
        n *= 1 if size <= r else math.ceil((size - r) / interval) + 1
    return n


def _mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    axes = sorted(set(axes))
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type; no autocast with None."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _minutes(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{max(1, round(seconds))} s"


class WindowPredictor:
    """Window → softmax probabilities; optional mirroring TTA; autocast (``fast.window_dtype``); counts windows
    and tells the time left. With a ``region`` (MONAI's ``with_coord``) windows holding no region voxel are
    not run: they give background."""

    def __init__(self, model: torch.nn.Module, device: torch.device, cfg: InferenceConfig,
                 progress: ProgressFn | None = None, total_windows: int = 1, fraction_range: tuple[float, float] = (0.0, 1.0),
                 region: torch.Tensor | None = None) -> None:
        from PASTALib.infer.fast import window_dtype

        self.model, self.device, self.cfg = model, device, cfg
        self.dtype = window_dtype(device, cfg)
        self.authors = cfg.compat == "authors"  # nnU-Net's predictor: logits averaged, softmax after blending
        # Mirroring is not forced by compat: averaging over flips only helps a model trained with mirror
        # augmentation (the test model is not flip-invariant: liver DSC 0.86 -> 0.46 with mirroring)
        self.flips = _mirror_sets(cfg.mirror_axes) if cfg.mirroring else [()]
        self.progress, self.total, self.range = progress, max(1, total_windows), fraction_range
        self.region = region
        self.done = self.skipped = 0
        self.started: float | None = None

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.model.segment(x).float()

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        prob = None
        for flip in self.flips:
            dims = [a + 2 for a in flip]
            xi = torch.flip(x, dims) if dims else x
            p = self._logits(xi) if self.authors else torch.softmax(self._logits(xi), dim=1)
            if dims:
                p = torch.flip(p, dims)
            prob = p if prob is None else prob + p
        assert prob is not None
        return prob / len(self.flips) if len(self.flips) > 1 else prob

    def __call__(self, x: torch.Tensor, coords: Sequence[Sequence[slice]] | None = None) -> torch.Tensor:
        if self.started is None:
            self.started = time.perf_counter()
        keep = list(range(x.shape[0]))
        if coords is not None and self.region is not None:  # coords: [batch, channel, z, y, x] slices per window
            keep = [i for i, c in enumerate(coords) if bool(self.region[tuple(c[2:])].any())]
        self.skipped += x.shape[0] - len(keep)
        if len(keep) == x.shape[0]:
            prob = self._probabilities(x)
        else:
            n_out = int(getattr(getattr(self.model, "config", None), "num_seg_classes", 26))
            prob = torch.zeros((x.shape[0], n_out, *x.shape[2:]), device=x.device)
            prob[:, 0] = 1.0  # background
            if keep:
                prob[keep] = self._probabilities(x[keep])
        self.done += len(keep)
        if self.progress is not None and keep:
            lo, hi = self.range
            f = min(1.0, self.done / self.total)
            left = (time.perf_counter() - self.started) / self.done * max(0, self.total - self.done)
            self.progress(lo + (hi - lo) * f, f"segmenting: window {min(self.done, self.total)}/{self.total}, "
                                              f"{_minutes(left)} left")
        return prob


def _aggregate_device(device: torch.device, cfg: InferenceConfig, shape: Sequence[int], n_classes: int) -> torch.device:
    if device.type != "cuda":
        return device
    if cfg.aggregate_on_cpu is not None:
        return torch.device("cpu") if cfg.aggregate_on_cpu else device
    need = 2 * 4 * n_classes * int(np.prod(shape))  # output + count map, float32
    free, _total = torch.cuda.mem_get_info(device)
    return device if need < 0.5 * free else torch.device("cpu")


@torch.no_grad()
def sliding_window_probabilities(
    model: torch.nn.Module, hu_zyx: np.ndarray, cfg: InferenceConfig, device: torch.device,
    *, slf_values: Sequence[float] = SLF_VALUES, progress: ProgressFn | None = None,
    fraction_range: tuple[float, float] = (0.0, 1.0), normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    region: np.ndarray | None = None,
) -> torch.Tensor:
    """(C, z, y, x) float32 softmax probabilities of a canonical HU array (on the aggregation device).

    ``normalize``: the network's segmentation input map (a checkpoint's, PASTALib.model.preprocess);
    None: the SLF map with ``slf_values``. ``region``: boolean array of the same shape; windows holding
    none of its voxels are not run (background probability 1 there, PASTALib.infer.fast)."""
    from monai.inferers import sliding_window_inference

    normalize = normalize or SLFNormalization(tuple(slf_values))
    x = torch.from_numpy(np.asarray(normalize(np.asarray(hu_zyx, np.float32)), np.float32))[None, None]
    air = float(np.asarray(normalize(np.full(1, -1024.0, np.float32)))[0])  # SLF 0; nnU-Net CT: its lower clip, scaled
    shape = tuple(int(v) for v in hu_zyx.shape)
    # MONAI shrinks the window to the image along an axis shorter than the window, which the UNet cannot
    # take (sizes must be multiples of its divisor): pad with air up to the window and crop back.
    padded = tuple(max(n, r) for n, r in zip(shape, cfg.patch_size))
    if padded != shape:
        x = torch.nn.functional.pad(x, [p for n, q in zip(reversed(shape), reversed(padded)) for p in (0, q - n)],
                                    value=air)
    n_classes = int(getattr(getattr(model, "config", None), "num_seg_classes", 26))
    out_device = _aggregate_device(device, cfg, hu_zyx.shape, n_classes)
    region_t = None
    n_windows = count_windows(padded, cfg.patch_size, cfg.overlap)
    if region is not None:
        from PASTALib.infer.fast import windows_with_region

        if region.shape != shape:
            raise ValueError(f"region shape {region.shape} differs from the array's {shape}")
        n_windows = sum(windows_with_region(region, cfg.patch_size, cfg.overlap))
        region_t = torch.zeros(padded, dtype=torch.bool)
        region_t[: shape[0], : shape[1], : shape[2]] = torch.from_numpy(np.asarray(region, bool))
    predictor = WindowPredictor(model, device, cfg, progress, n_windows, fraction_range, region_t)
    weight_map = None
    if cfg.compat == "authors":
        from PASTALib.infer.compat import nnunet_gaussian

        weight_map = torch.from_numpy(nnunet_gaussian(cfg.patch_size, cfg.sigma_scale)).to(device)
    prob = sliding_window_inference(
        x.to(out_device), roi_size=cfg.patch_size, sw_batch_size=cfg.batch_size, predictor=predictor,
        overlap=cfg.overlap, mode="gaussian", sigma_scale=cfg.sigma_scale, padding_mode="constant", cval=air,
        sw_device=device, device=out_device, roi_weight_map=weight_map, with_coord=region is not None,
    )
    if cfg.compat == "authors":  # blended logits → probabilities (nnU-Net's order)
        prob = torch.softmax(prob, dim=1)
    return prob[0, :, : shape[0], : shape[1], : shape[2]]


def plan_windows(hu_zyx: np.ndarray, cfg: InferenceConfig, region: np.ndarray | None = None
                 ) -> tuple[tuple[slice, slice, slice], int]:
    """The box the windows tile and the number of windows the network runs there. The box is the body box, or
    with a ``region`` and ``cfg.fast_grid == "organs"`` the region's box within it; with a region only windows
    holding a region voxel run."""
    if cfg.crop_to_body:
        margin = int(math.ceil(cfg.body_margin_mm / cfg.spacing_mm))
        box = body_box(hu_zyx, cfg.body_threshold_hu, margin)
    else:
        box = tuple(slice(0, n) for n in hu_zyx.shape)  # type: ignore[assignment]
    if region is None:
        shape = [max(s.stop - s.start, r) for s, r in zip(box, cfg.patch_size)]
        return box, count_windows(shape, cfg.patch_size, cfg.overlap)  # type: ignore[return-value]
    from PASTALib.infer.fast import region_box, windows_with_region

    inner = region_box(region[box])
    if inner is None:
        return tuple(slice(s.start, s.start) for s in box), 0  # type: ignore[return-value]
    if cfg.fast_grid == "organs":
        box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))  # type: ignore[assignment]
    return box, sum(windows_with_region(region[box], cfg.patch_size, cfg.overlap))  # type: ignore[return-value]


def segment_canonical(
    model: torch.nn.Module, hu_zyx: np.ndarray, cfg: InferenceConfig, device: torch.device,
    *, slf_values: Sequence[float] = SLF_VALUES, progress: ProgressFn | None = None,
    fraction_range: tuple[float, float] = (0.0, 1.0), normalize: Callable[[np.ndarray], np.ndarray] | None = None,
    organ_labels: np.ndarray | None = None, runtime_cache: dict | None = None,
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Argmax label array (uint8, z, y, x) of a canonical HU array, and the box that was segmented.

    With ``crop_to_body`` only the body's bounding box is run through the network; voxels
    outside it are background (air around the patient, the table). With ``cfg.speed == "fast"``
    only windows over the dilated organ region are run (PASTALib.infer.fast): the region comes
    from ``organ_labels`` (a canonical PASTA organ map, e.g. from TotalSegmentator) when given, else
    from a coarse pass of the model. Before the windows, ``progress`` gets a "plan: about N windows,
    ~M on this machine" message. ``runtime_cache``: where the network's OpenVINO form is kept between calls
    (``PastaModel.runtime_cache``).
    """
    from PASTALib.infer import fast
    from PASTALib.infer.openvino_runtime import runtime_network

    say = progress or (lambda f, m: None)
    lo, hi = fraction_range
    normalize = normalize or SLFNormalization(tuple(slf_values))
    divisor = int(getattr(getattr(model, "config", None), "divisor", 32))
    region = None
    cfg = cfg.resolved(device)
    windows_net = None  # the network, or its OpenVINO stand-in: made when a window is to run
    if cfg.speed == "fast":
        if organ_labels is not None:
            region = fast.region_from_labels(organ_labels, cfg)
        else:
            say(lo, "coarse organ pass")
            windows_net = runtime_network(model, cfg, device, runtime_cache)
            region = fast.coarse_region(windows_net, hu_zyx, cfg, device, normalize, divisor)
            lo = lo + 0.1 * (hi - lo)
        cfg = replace(cfg, overlap=cfg.fast_overlap)
    box, n_windows = plan_windows(hu_zyx, cfg, region)
    labels = np.zeros(hu_zyx.shape, np.uint8)
    if n_windows == 0:  # no organ region: nothing to run, so nothing to time either
        say(lo, f"plan: no window to run ({cfg.speed}): no organ region found")
        return labels, box
    if windows_net is None:
        windows_net = runtime_network(model, cfg, device, runtime_cache)
    per_window = fast.probe_seconds_per_window(windows_net, cfg, device, divisor, fast.window_dtype(device, cfg))
    what = "exact" if cfg.speed == "exact" else "fast, organs only: bone metastases elsewhere need --exact"
    say(lo, f"plan: about {n_windows} windows ({what}), {_minutes(n_windows * per_window)} on this machine")
    prob = sliding_window_probabilities(windows_net, hu_zyx[box], cfg, device, progress=progress, fraction_range=(lo, hi),
                                        normalize=normalize, region=None if region is None else region[box])
    labels[box] = prob.argmax(0).to(torch.uint8).cpu().numpy()
    return labels, box  # type: ignore[return-value]
