"""Inference settings (typed) and device selection."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from PASTALib.errors import PastaError
from PASTALib.runtime import amp_dtype, resolve_device  # noqa: F401  (infer.pipeline imports them from here)


#: what may run the windows (``InferenceConfig.runtime``, `pasta segment --runtime`, ``$PASTA_RUNTIME``)
RUNTIMES = ("auto", "torch", "openvino")
FAST_GRIDS = ("body", "organs")  # InferenceConfig.fast_grid


class InferenceError(PastaError):
    """An inference setting or input is wrong; the message says what to do."""


@dataclass
class InferenceConfig:
    """Settings of whole-CT PASTA inference (:func:`PASTALib.infer.segment_ct`).

    Geometry: the CT is reoriented to LPS and resampled to ``spacing_mm`` isotropic (the
    training geometry), segmented there with MONAI's sliding window (Gaussian blending), and
    the label map is mapped back onto the input grid with nearest neighbour. ``compat="authors"``
    swaps in the authors' resampling and window blending (PASTALib.infer.compat).
    """

    patch_size: tuple[int, int, int] = (128, 128, 128)  # sliding-window size (canonical voxels, z, y, x)
    overlap: float = 0.5  # fraction of a window shared with its neighbour (nnU-Net: 0.5)
    mirroring: bool = False  # test-time augmentation: average over flips of ``mirror_axes``
    mirror_axes: tuple[int, ...] = (0, 1, 2)  # canonical array axes (z, y, x) to flip (2**n passes)
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    batch_size: int = 2  # windows per forward pass (sw_batch_size)
    amp: bool = True  # bf16/fp16 autocast on CUDA only (ignored on CPU)
    sigma_scale: float = 0.125  # Gaussian importance map sigma as a fraction of the window (nnU-Net)
    spacing_mm: float = 1.0  # canonical spacing the model was trained at
    crop_to_body: bool = True  # run the windows only over the body's bounding box (HU > body_threshold_hu)
    body_threshold_hu: float = -500.0
    body_margin_mm: float = 8.0
    min_lesion_volume_mm3: float = 20.0  # smaller lesion components are given back to the surrounding organ
    organ_shell_mm: float = 3.0  # shell around a lesion in which the surrounding organ is voted
    crop_size: tuple[int, int, int] = (96, 96, 96)  # lesion-centred crop for the attribute head (canonical voxels)
    slf_values: tuple[float, ...] | None = None  # SLF map values; None: the checkpoint's config.json or the default
    phase: str = "auto"  # enhancement wording source: auto | plain | enhanced
    num_threads: int | None = None  # torch CPU threads (None: leave torch's setting)
    aggregate_on_cpu: bool | None = None  # sliding-window output buffer on CPU (None: CPU unless CUDA has room)
    #: "pasta" (this library: SimpleITK linear resampling to spacing_mm, softmax probabilities blended with
    #: MONAI's Gaussian) or "authors" (LWHYC/PASTA + nnU-Net v2's predictor: ndimage.zoom resampling with aligned
    #: corners, logits blended with nnU-Net's Gaussian; PASTALib.infer.compat). Mirroring stays its own switch
    #: (``mirroring``; `pasta segment --compat authors` turns it on, as nnU-Net's predictor does by default)
    compat: str = "pasta"
    #: "exact" (the reference path: every window of the body box), "fast" (PASTALib.infer.fast: windows only
    #: over the dilated ``fast_organs`` region, ``fast_overlap``, bf16 on CPUs with native bf16, OpenVINO when
    #: installed) or "auto" (:meth:`resolved`: fast on a CPU, exact on CUDA; what `pasta segment` and the
    #: PASTA panel default to). The library default stays the reference.
    speed: str = "exact"
    #: 0.5 as the reference: measured against it (tiny test model, BENCHMARKS.md), 0.25 lost a lesion and
    #: 7 % organ Dice, 0.5 kept every lesion and organ Dice >= 0.995
    fast_overlap: float = 0.5
    #: where the fast windows sit: "body" (the reference's own grid over the body box, windows holding no region
    #: voxel skipped: at every region voxel the same windows, so the same answer up to bf16) or "organs" (a grid
    #: over the region's box: fewer windows where the organs fill the body, 60 instead of 100 on a whole abdomen,
    #: but the windows sit elsewhere against the anatomy and a model's answer can move with them: on the small
    #: models measured here as much as when the field of view changes; BENCHMARKS.md)
    fast_grid: str = "body"
    fast_margin_mm: float = 16.0  # organ region grown by this much: lesions at an organ's edge, coarse-pass misses
    fast_coarse_factor: float = 2.0  # coarse organ pass at this multiple of spacing_mm (no organ map given)
    #: organs (1-10) whose region is segmented in fast mode; bone (10) is left out: the skeleton spans the
    #: whole body, so with it no window would be skipped (bone metastases need --exact)
    fast_organs: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    #: what runs the windows: "torch", "openvino" (CPU; PASTALib.infer.openvino_runtime) or "auto" (OpenVINO for
    #: the fast path on CPU when the package is installed, torch otherwise)
    runtime: str = "auto"

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(v) for v in self.patch_size)  # type: ignore[assignment]
        self.crop_size = tuple(int(v) for v in self.crop_size)  # type: ignore[assignment]
        self.mirror_axes = tuple(int(v) for v in self.mirror_axes)
        self.fast_organs = tuple(int(v) for v in self.fast_organs)
        if self.slf_values is not None:
            self.slf_values = tuple(float(v) for v in self.slf_values)

    def validate(self, divisor: int = 32) -> None:
        if len(self.patch_size) != 3 or any(s <= 0 or s % divisor for s in self.patch_size):
            raise InferenceError(f"patch size {self.patch_size} must be 3 positive multiples of {divisor} (the network's downsampling)")
        if len(self.crop_size) != 3 or any(s <= 0 or s % divisor for s in self.crop_size):
            raise InferenceError(f"attribute crop size {self.crop_size} must be 3 positive multiples of {divisor}")
        if not 0.0 <= self.overlap < 1.0:
            raise InferenceError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise InferenceError("batch size must be ≥ 1")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise InferenceError(f"mirror axes must be among 0, 1, 2, got {self.mirror_axes}")
        if self.phase not in ("auto", "plain", "enhanced"):
            raise InferenceError(f"phase must be auto, plain or enhanced, not {self.phase!r}")
        if self.spacing_mm <= 0:
            raise InferenceError("spacing must be positive")
        if self.compat not in ("pasta", "authors"):
            raise InferenceError(f"compat must be pasta or authors, not {self.compat!r}")
        if self.speed not in ("auto", "exact", "fast"):
            raise InferenceError(f"speed must be auto, exact or fast, not {self.speed!r}")
        if self.speed == "fast" and self.compat == "authors":
            raise InferenceError("fast mode skips windows, which the authors' logit blending (--compat authors) "
                                 "cannot represent; use --exact with --compat authors")
        if not 0.0 <= self.fast_overlap < 1.0 or self.fast_coarse_factor < 1.0 or self.fast_margin_mm < 0:
            raise InferenceError("fast_overlap must be in [0, 1), fast_coarse_factor >= 1 and fast_margin_mm >= 0")
        if self.fast_grid not in FAST_GRIDS:
            raise InferenceError(f"fast_grid must be body or organs, not {self.fast_grid!r}")
        if self.runtime not in RUNTIMES:
            raise InferenceError(f"runtime must be auto, torch or openvino, not {self.runtime!r}")
        if not self.fast_organs or any(v not in range(1, 11) for v in self.fast_organs):
            raise InferenceError(f"fast_organs must be organ labels 1-10, got {self.fast_organs}")

    def resolved(self, device: Any) -> "InferenceConfig":
        """This config with ``speed`` and ``runtime`` decided for ``device`` (a torch.device): what runs."""
        from PASTALib.infer.openvino_runtime import resolve_runtime

        speed = self.speed
        if speed == "auto":  # the fast path's region and bf16 pay off on a CPU; a GPU runs the reference
            speed = "fast" if device.type == "cpu" and self.compat != "authors" else "exact"
        cfg = replace(self, speed=speed)
        return replace(cfg, runtime=resolve_runtime(cfg, device))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


