"""OpenVINO runtime checks (PASTALib.infer.openvino_runtime), run by test_infer_fast.py in a pytest subprocess of
their own: OpenVINO's thread pool must stay out of the main test process, which forks later. Not collected by
the suite directly (the file name does not start with test_)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from PASTALib.infer import InferenceConfig
from PASTALib.infer import fast
from PASTALib.infer.sliding import segment_canonical
from test_infer_fast import CPU, PATCH, Counting, _body, _net

def test_openvino_windows_match_torch_and_the_conversion_is_cached(monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    import openvino as ov

    from PASTALib.infer.openvino_runtime import OpenVINOSegmenter, weights_digest

    net = _net()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 32, 64, 32)).astype(np.float32))
    segmenter = OpenVINOSegmenter(net, bf16=False, threads=2, cache=tmp_path)
    with torch.no_grad():
        ref = net.segment(x)
    out = segmenter.segment(x)  # a batch of 2, in a shape other than the traced one
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert float((out - ref).abs().max()) < 1e-3
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) > 0.999
    ir = tmp_path / weights_digest(net)
    assert (ir / "segment.xml").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the IR is cached")

    monkeypatch.setattr(ov, "convert_model", no_conversion)
    again = OpenVINOSegmenter(net, bf16=False, threads=2, cache=tmp_path)
    assert torch.equal(again.segment(x), out)
    with torch.no_grad():  # other weights: another cache entry
        next(net.parameters()).add_(0.5)
    assert weights_digest(net) != ir.name


def test_damaged_openvino_cache_is_converted_again(tmp_path):
    pytest.importorskip("openvino")
    from PASTALib.infer.openvino_runtime import OpenVINOSegmenter, weights_digest

    net = _net()
    ir = tmp_path / weights_digest(net)
    ir.mkdir(parents=True)
    (ir / "segment.xml").write_text("<not a model")
    (ir / "segment.bin").write_bytes(b"\0" * 10)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 1, 32, 32, 32)).astype(np.float32))
    with torch.no_grad():
        ref = net.segment(x)
    out = OpenVINOSegmenter(net, bf16=False, threads=1, cache=tmp_path).segment(x)
    assert float((out - ref).abs().max()) < 1e-3
    assert (ir / "segment.xml").read_text().startswith("<?xml")


def test_fast_path_runs_its_windows_with_openvino(monkeypatch, tmp_path):
    """speed=fast on CPU with OpenVINO installed: the windows go through OpenVINO (the torch network is not
    called for them), and the labels equal torch's where the region is everything (f32)."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("PASTA_OPENVINO_CACHE", str(tmp_path))
    monkeypatch.setattr(fast, "cpu_supports_bf16", lambda *a, **k: False)
    hu, organs = _body((32, 64, 64)), None
    organs = np.where(_body((32, 64, 64)) > -500, 2, 0).astype(np.uint8)
    cfg = InferenceConfig(patch_size=PATCH, spacing_mm=4.5, speed="fast", runtime="openvino")
    torch_labels, _ = segment_canonical(_net(), hu, replace(cfg, runtime="torch"), CPU, organ_labels=organs)
    from PASTALib.infer.openvino_runtime import OpenVINOSegmenter

    net = Counting(_net())
    OpenVINOSegmenter(net, bf16=False, threads=1)  # converted into the cache (tracing calls segment)
    net.windows = 0
    ov_labels, _ = segment_canonical(net, hu, cfg, CPU, organ_labels=organs)
    assert net.windows == 0  # read from the cache, and no window ran through torch
    assert float((ov_labels == torch_labels).mean()) > 0.999 and ov_labels.any()


def test_openvino_form_is_kept_for_the_next_ct_while_the_weights_stay(monkeypatch, tmp_path):
    """runtime_network with a PastaModel.runtime_cache: the same OpenVINO stand-in for a second CT (no new
    conversion, IR read or compile), a new one once the weights change in place."""
    pytest.importorskip("openvino")
    from PASTALib.infer.openvino_runtime import OpenVINOSegmenter, runtime_network

    monkeypatch.setenv("PASTA_OPENVINO_CACHE", str(tmp_path))
    made = []
    real_init = OpenVINOSegmenter.__init__

    def counting_init(self, *args, **kwargs):
        made.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(OpenVINOSegmenter, "__init__", counting_init)
    net, cache = _net(), {}
    cfg = InferenceConfig(patch_size=PATCH, spacing_mm=4.5, speed="fast", runtime="openvino")
    hu = _body((32, 64, 64))
    organs = np.where(hu > -500, 2, 0).astype(np.uint8)
    first, _ = segment_canonical(net, hu, cfg, CPU, organ_labels=organs, runtime_cache=cache)
    second, _ = segment_canonical(net, hu, cfg, CPU, organ_labels=organs, runtime_cache=cache)
    assert len(made) == 1 and np.array_equal(first, second)
    assert runtime_network(net, cfg, CPU, cache) is made[0]
    with torch.no_grad():
        next(net.parameters()).mul_(0.5)
    assert runtime_network(net, cfg, CPU, cache) is not made[0] and len(made) == 2
    assert runtime_network(_net(), cfg, CPU, cache) is not made[1]  # another network with equal weights: its own
