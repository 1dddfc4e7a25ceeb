"""OpenVINO for the segmentation windows on CPU (``InferenceConfig.runtime``; issue #17).

Measured on the full-width network, one 128³ window, 2 cores with AVX512-BF16 (BENCHMARKS.md): torch
float32 32.7 s, torch bf16 autocast 16.7 s, OpenVINO f32 11.2 s (max |logit difference| 7e-4, argmax equal
on 99.99 % of voxels), OpenVINO bf16 5.7 s. So the fast path runs its windows here when OpenVINO is
installed, with the precision the fast path would use anyway (bf16 only where the CPU has it natively).

The network is converted once per set of weights (``ov.convert_model`` traces ``segment`` on a small
window, ~30 s for the full width) and saved as OpenVINO IR under ``cache_dir()`` keyed by a digest of the
weights; each window shape is then a reshape + compile (~2 s) of that IR.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch

from PASTALib.infer.config import RUNTIMES, InferenceConfig, InferenceError

#: what `pip install` needs for ``runtime="openvino"`` (a pyproject dependency; PASTALib.requirements for Slicer)
OPENVINO_REQUIREMENT = "openvino==2026.4.1"
CACHE_ENV = "PASTA_OPENVINO_CACHE"
#: what ``runtime="auto"`` means in this environment: auto (default), torch or openvino. ``PASTA_RUNTIME=torch``
#: keeps OpenVINO out of a process that forks afterwards (its thread pool does not survive a fork) - the test suite
RUNTIME_ENV = "PASTA_RUNTIME"


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cache_dir() -> Path:
    """Where converted networks are kept: ``$PASTA_OPENVINO_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/pasta/openvino``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pasta" / "openvino"


def resolve_runtime(cfg: InferenceConfig, device: torch.device) -> str:
    """"torch" or "openvino" for this run: ``auto`` ($PASTA_RUNTIME unless set) is OpenVINO for the fast path on CPU
    when installed."""
    wanted = cfg.runtime if cfg.runtime != "auto" else os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    if wanted not in RUNTIMES:
        raise InferenceError(f"{RUNTIME_ENV}={wanted!r}: use auto, torch or openvino")
    if wanted == "torch":
        return "torch"
    if wanted == "openvino":
        if device.type != "cpu":
            raise InferenceError(f"--runtime openvino runs on the CPU, not {device}; use --device cpu, or --runtime torch")
        if not openvino_available():
            raise InferenceError(f"--runtime openvino needs the OpenVINO package: pip install {OPENVINO_REQUIREMENT} "
                                 "(or use --runtime torch)")
        return "openvino"
    return "openvino" if device.type == "cpu" and cfg.speed == "fast" and openvino_available() else "torch"


def weights_digest(network: torch.nn.Module) -> str:
    """SHA-256 (first 20 hex digits) of the network's class, parameter names, shapes, dtypes and values."""
    h = hashlib.sha256(type(network).__qualname__.encode())
    for name, tensor in network.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().data)  # the buffer itself: no 1 GB copy for the full width
    return h.hexdigest()[:20]


def _looks_like_ir(xml: Path) -> bool:
    """An OpenVINO IR file (checked before reading: OpenVINO tries every frontend it has, TensorFlow's and
    ONNX's included, on a file it cannot read, loading their libraries into the process)."""
    try:
        with open(xml, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return head.startswith(b"<?xml") and b"<net " in head


class _SegmentOnly(torch.nn.Module):
    """The traced graph: full-resolution segmentation logits only (no deep supervision, no heads)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.segment(x)


def weights_version(network: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Cheap fingerprint of the weights in memory: each tensor's address and in-place version counter (torch bumps
    ``_version`` on every in-place change, an optimizer step or a ``load_state_dict`` included)."""
    return tuple((t.data_ptr(), t._version) for t in (*network.parameters(), *network.buffers()))


def converted_model(network: torch.nn.Module, divisor: int, cache: Path | None = None, core: Any = None) -> Any:
    """The network's ``segment`` as an OpenVINO model, read from the cache or converted and saved there
    (written to a temporary folder and renamed: a crash never leaves a half-written IR)."""
    import openvino as ov

    folder = (cache or cache_dir()) / weights_digest(network)
    xml = folder / "segment.xml"
    core = core or ov.Core()
    if _looks_like_ir(xml) and (folder / "segment.bin").is_file():
        try:
            return core.read_model(str(xml), str(folder / "segment.bin"))
        except RuntimeError:  # a damaged cache entry: convert again
            pass
    shutil.rmtree(folder, ignore_errors=True)
    was_training = network.training
    network.eval()
    try:
        # a small example window (2 divisors per side): tracing runs one forward pass, and the graph takes
        # any multiple of the divisor after reshape
        example = torch.zeros((1, int(getattr(network.config, "in_channels", 1)), *(2 * divisor,) * 3))
        with torch.no_grad(), warnings.catch_warnings():
            # the shape checks in PastaUNet's forward are traced as constants: right for every valid window
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(_SegmentOnly(network), example_input=example)
    finally:
        network.train(was_training)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        # full-precision weights in the IR: the precision is chosen when compiling (f32, or bf16 on CPUs with it)
        ov.save_model(model, str(staging / "segment.xml"), compress_to_fp16=False)
        try:
            staging.rename(folder)
        except OSError:  # another run saved the same weights first: use theirs
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


class OpenVINOSegmenter:
    """``segment(x)`` of a network, run by OpenVINO on the CPU: a stand-in for the network in the sliding
    window (same ``config``; one compiled model per window shape; windows of a batch run one by one)."""

    def __init__(self, network: torch.nn.Module, *, bf16: bool, threads: int | None, cache: Path | None = None) -> None:
        import openvino as ov

        self.config = network.config
        self._network, self._version = weakref.ref(network), weights_version(network)
        divisor = int(getattr(network.config, "divisor", 32))
        self._core = ov.Core()
        self._model = converted_model(network, divisor, cache, self._core)
        self._properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                                            "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.precision = self._properties["INFERENCE_PRECISION_HINT"]
        self._requests: dict[tuple[int, ...], Any] = {}

    def is_for(self, network: torch.nn.Module) -> bool:
        """Made from this network with the weights it has now (no in-place change since)."""
        return self._network() is network and weights_version(network) == self._version

    def _request_for(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._requests:
            self._model.reshape(list(shape))
            self._requests[shape] = self._core.compile_model(self._model, "CPU", self._properties).create_infer_request()
        return self._requests[shape]

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        import openvino as ov

        request = self._request_for((1, *x.shape[1:]))
        x_cpu = x.detach().to("cpu", torch.float32).contiguous()
        out = torch.empty((x_cpu.shape[0], *request.get_output_tensor(0).shape[1:]), dtype=torch.float32)
        for i in range(x_cpu.shape[0]):
            # OpenVINO reads the window from and writes the logits into torch's memory: its own output array
            # (a fresh 200+ MB numpy array per window) cost ~1 s per window in page faults on a 2-core VM
            request.set_input_tensor(ov.Tensor(x_cpu[i:i + 1].numpy(), shared_memory=True))
            request.set_output_tensor(ov.Tensor(out[i:i + 1].numpy(), shared_memory=True))
            request.infer()
        return out.to(x.device)


def runtime_network(network: torch.nn.Module, cfg: InferenceConfig, device: torch.device,
                    cache: dict[Any, Any] | None = None) -> Any:
    """The object the windows call ``segment`` on: the network itself, or its OpenVINO stand-in. ``cache`` (a
    ``PastaModel.runtime_cache``) keeps the stand-in for the next CT while the weights stay the same: a batch
    does not hash ~1 GB of weights, read the IR and compile every window shape again per case."""
    if resolve_runtime(cfg, device) == "torch":
        return network
    from PASTALib.infer.fast import window_dtype

    bf16 = window_dtype(device, cfg) is torch.bfloat16
    key = ("openvino", bf16, cfg.num_threads)
    made = None if cache is None else cache.get(key)
    if made is None or not made.is_for(network):
        made = OpenVINOSegmenter(network, bf16=bf16, threads=cfg.num_threads)
        if cache is not None:
            cache[key] = made
    return made
