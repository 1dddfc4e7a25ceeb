"""PASTALib.model: the PASTA UNet layout (meta device), forward shapes, attribute head, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from PASTALib.errors import MissingWeightsError, PastaError
from PASTALib.model import (
    GROUP_SIZES,
    IGNORE_INDEX,
    CheckpointError,
    PastaUNet,
    UNetConfig,
    build_model_from_checkpoint,
    count_parameters,
    decode_attributes,
    default_weights_path,
    encode_attributes,
    grouped_cross_entropy,
    infer_config,
    load_pasta_checkpoint,
)
from PASTALib.report.attributes import Density, Heterogeneity, Invasion, Shape, Surface

#: Parameter names and shapes of the published PASTA checkpoint (provenance: docs/model.md).
LAYOUT = Path(__file__).resolve().parent / "data" / "pasta_state_dict_layout.json"

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def layout() -> dict[str, list]:
    if not LAYOUT.is_file():
        pytest.fail(f"{LAYOUT} not found (it is part of the repository)")
    return json.loads(LAYOUT.read_text())["parameters"]


def _tiny(**kw) -> PastaUNet:
    torch.manual_seed(0)
    return PastaUNet(UNetConfig.tiny(**kw))


# --- layout of the published model ------------------------------------------------------------

@pytest.mark.parametrize("num_seg_classes", [14, 26])
def test_full_model_state_dict_matches_public_layout(layout, num_seg_classes):
    with torch.device("meta"):
        model = PastaUNet(UNetConfig(num_seg_classes=num_seg_classes))
    sd = model.state_dict()
    expected = {k: [num_seg_classes if d == "S" else d for d in v] for k, v in layout.items()}
    assert len(expected) == 104
    assert sorted(sd) == sorted(expected)
    wrong = {k: (tuple(sd[k].shape), tuple(v)) for k, v in expected.items() if list(sd[k].shape) != v}
    assert not wrong
    assert all(t.device.type == "meta" for t in sd.values())


def test_full_model_parameter_count():
    with torch.device("meta"):
        m14 = PastaUNet(UNetConfig(num_seg_classes=14))
        m26 = PastaUNet(UNetConfig())
    # The layout file states 240,949,582 with 14 segmentation classes ("~240M" in the paper).
    assert count_parameters(m14) == 240_949_582
    assert count_parameters(m26) == 240_949_582 + 12 * (1024 + 512 + 256 + 128 + 64)
    assert UNetConfig().stage_channels == (64, 128, 256, 512, 1024, 1024)


def test_infer_config_from_layout(layout):
    with torch.device("meta"):
        sd = PastaUNet(UNetConfig(num_seg_classes=14)).state_dict()
    cfg = infer_config(sd)
    assert cfg == UNetConfig(num_seg_classes=14)


# --- forward ---------------------------------------------------------------------------------

def test_forward_deep_supervision_shapes_and_logits():
    model = _tiny().eval()
    x = torch.randn(2, 1, 64, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert len(out.segmentation) == 5
    for i, seg in enumerate(out.segmentation):
        size = 64 // 2**i
        assert tuple(seg.shape) == (2, 26, size, size, size)
    assert tuple(out.attribute_logits.shape) == (2, 14)
    assert tuple(out.feature.shape) == (2, model.config.feature_channels)
    with torch.no_grad():
        # encoder-only paths give the same feature / logits; segment() gives the full-res head
        assert torch.allclose(model.encode(x), out.feature, atol=1e-5)
        assert torch.allclose(model.classify(x), out.attribute_logits, atol=1e-5)
        assert torch.allclose(model.segment(x), out.segmentation[0], atol=1e-5)


def test_feature_comes_from_stage_before_bottleneck():
    """Changing the bottleneck must not change the feature (stage 4, 1/16 resolution)."""
    model = _tiny().eval()
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        f0 = model.encode(x)
        for p in model.conv_blocks_context[-1].parameters():
            p.add_(1.0)
        assert torch.equal(model.encode(x), f0)
    assert model.config.feature_stride == 16


def test_forward_rejects_bad_input_sizes():
    model = _tiny()
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 1, 40, 32, 32))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 2, 32, 32, 32))


def test_backward_reaches_all_parameters():
    model = _tiny(num_stages=5)
    out = model(torch.randn(1, 1, 32, 32, 32))
    loss = sum(s.mean() for s in out.segmentation) + out.attribute_logits.mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- attribute head --------------------------------------------------------------------------

def test_groups_and_report_wording():
    assert GROUP_SIZES == (5, 3, 2, 2, 2)
    logits = torch.full((2, 14), -10.0)
    # row 0: Irregular, Hyperdense, Heterogeneous, Ill-defined, Close relationship
    for idx in (1, 5 + 2, 8 + 1, 10 + 1, 12 + 1):
        logits[0, idx] = 10.0
    # row 1: empty 5th shape option wins the softmax but is never reported; Round-like second
    logits[1, 4], logits[1, 0] = 10.0, 5.0
    for idx in (5, 8, 10, 12):
        logits[1, idx] = 10.0
    pred = decode_attributes(logits)
    assert pred[0].values == {
        "shape": Shape.IRREGULAR.value, "density": Density.HYPER.value,
        "heterogeneity": Heterogeneity.HETEROGENEOUS.value, "surface": Surface.ILL_DEFINED.value,
        "invasion": Invasion.ADJACENT.value,
    }
    assert pred[1].values["shape"] == "Round-like" and pred[1].values["density"] == "Hypodense"
    assert pred[0].confidence("density") > 0.99
    assert abs(sum(pred[1].probabilities["shape"].values()) - 1) < 1e-6


def test_encode_attributes_roundtrip_and_grouped_ce():
    report = {"shape": "Round-like mass", "density": "Hypodense", "heterogeneity": "Homogeneous",
              "surface": "Well-defined margin", "invasion": Invasion.NONE.value}
    t = encode_attributes(report)
    assert t == [0, 0, 0, 0, 0]
    assert encode_attributes({"density": "Hyperdense"}) == [IGNORE_INDEX, 2] + [IGNORE_INDEX] * 3
    with pytest.raises(ValueError, match="allowed"):
        encode_attributes({"density": "Bright"})
    logits = torch.randn(3, 14, requires_grad=True)
    targets = torch.tensor([t, [1, 2, 1, 1, 1], [IGNORE_INDEX, 1, 0, IGNORE_INDEX, 0]])
    loss = grouped_cross_entropy(logits, targets)
    # reference: mean over the five groups of the per-group CE
    ref, start = [], 0
    for g, size in enumerate(GROUP_SIZES):
        ref.append(torch.nn.functional.cross_entropy(logits[:, start:start + size], targets[:, g], ignore_index=IGNORE_INDEX))
        start += size
    assert torch.allclose(loss, torch.stack(ref).mean())
    loss.backward()


# --- checkpoints -----------------------------------------------------------------------------

def test_load_plain_and_wrapped_checkpoints(tmp_path):
    src = _tiny()
    sd = src.state_dict()
    variants = {
        "plain.pth": sd,
        "wrapped.pth": {"state_dict": sd, "epoch": 3},
        "nnunet.pth": {"network_weights": sd, "optimizer_state": {}},
        "ddp.pth": {"model": {f"module.{k}": v for k, v in sd.items()}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        dst = PastaUNet(UNetConfig.tiny())
        res = load_pasta_checkpoint(dst, tmp_path / name)
        assert len(res.loaded) == len(sd) and not res.skipped
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items()), name
    model, _ = build_model_from_checkpoint(tmp_path / "plain.pth")
    assert model.config == src.config


def test_missing_weights_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTA_WEIGHTS_DIR", str(tmp_path / "w"))
    assert default_weights_path() == tmp_path / "w" / "PASTA_final.pth"
    with pytest.raises(MissingWeightsError) as info:
        load_pasta_checkpoint(_tiny())
    msg = str(info.value)
    assert "PASTA_final.pth" in msg and "LWHYC/PASTA" in msg and str(tmp_path / "w") in msg
    monkeypatch.delenv("PASTA_WEIGHTS_DIR")
    assert default_weights_path() == Path.home() / ".pasta" / "weights" / "PASTA_final.pth"


def test_corrupt_and_empty_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_tiny().state_dict(), good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(b"<html>404 Not Found</html>")
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("truncated.pth", "garbage.pth", "empty.pth"):
        with pytest.raises(CheckpointError) as info:
            load_pasta_checkpoint(_tiny(), tmp_path / name)
        assert isinstance(info.value, PastaError)
        assert name in str(info.value)
        assert "corrupt" in str(info.value) or "empty" in str(info.value) or "HTML" in str(info.value)
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pasta_checkpoint(_tiny(), tmp_path / "random.pth")
    torch.save({"epoch": 1, "notes": "x"}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="no model state dict"):
        load_pasta_checkpoint(_tiny(), tmp_path / "nostate.pth")


def test_wrong_layout_lists_keys_and_guesses_file(tmp_path):
    # a wider PASTA-layout checkpoint
    torch.save(PastaUNet(UNetConfig.tiny(base_channels=8)).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError) as info:
        load_pasta_checkpoint(_tiny(), tmp_path / "wide.pth")
    msg = str(info.value)
    assert "shape mismatch" in msg and "conv_blocks_context.0.blocks.0.conv.weight" in msg
    assert "file (8, 1, 3, 3, 3) vs model (4, 1, 3, 3, 3)" in msg
    assert "generic-UNet" in msg
    # an nnU-Net v2 style file
    torch.save({"network_weights": {"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(4, 1, 3, 3, 3),
                                    "decoder.seg_layers.0.weight": torch.zeros(2, 4, 1, 1, 1)}},
               tmp_path / "v2.pth")
    with pytest.raises(CheckpointError) as info:
        load_pasta_checkpoint(_tiny(), tmp_path / "v2.pth")
    msg = str(info.value)
    assert "nnU-Net v2" in msg and "missing in file" in msg and "unexpected in file" in msg
    # fewer segmentation classes: strict load refuses and suggests fine-tuning mode
    torch.save(PastaUNet(UNetConfig.tiny(num_seg_classes=14)).state_dict(), tmp_path / "s14.pth")
    with pytest.raises(CheckpointError, match="for_finetuning=True"):
        load_pasta_checkpoint(_tiny(), tmp_path / "s14.pth")


def test_finetuning_skips_heads_and_repeats_first_conv(tmp_path):
    src = _tiny(num_seg_classes=14)
    torch.save(src.state_dict(), tmp_path / "pre.pth")
    dst = PastaUNet(UNetConfig.tiny(in_channels=3, num_seg_classes=2, num_attribute_logits=14))
    fresh_seg = dst.seg_outputs[0].weight.detach().clone()
    fresh_head = dst.head[4].weight.detach().clone()
    res = load_pasta_checkpoint(dst, tmp_path / "pre.pth", for_finetuning=True, in_channels=3)
    assert res.adapted == ["conv_blocks_context.0.blocks.0.conv.weight"]
    assert any(k.startswith("seg_outputs.") for k in res.skipped) and any(k.startswith("head.") for k in res.skipped)
    assert torch.equal(dst.seg_outputs[0].weight, fresh_seg) and torch.equal(dst.head[4].weight, fresh_head)
    w_src = src.conv_blocks_context[0].blocks[0].conv.weight
    w_dst = dst.conv_blocks_context[0].blocks[0].conv.weight
    assert tuple(w_dst.shape) == (4, 3, 3, 3, 3)
    # public PASTA fine-tuning code: plain repeat along the input channels (no division)
    assert all(torch.equal(w_dst[:, c:c + 1], w_src) for c in range(3))
    assert torch.equal(dst.tu[0].weight, src.tu[0].weight)
    # 'mean' mode: a stack of identical channels reproduces the single-channel first conv output
    dst2 = PastaUNet(UNetConfig.tiny(in_channels=3, num_seg_classes=2))
    load_pasta_checkpoint(dst2, tmp_path / "pre.pth", for_finetuning=True, first_conv="mean")
    x = torch.randn(1, 1, 8, 8, 8)
    conv1, conv3 = src.conv_blocks_context[0].blocks[0].conv, dst2.conv_blocks_context[0].blocks[0].conv
    with torch.no_grad():
        assert torch.allclose(conv1(x), conv3(x.repeat(1, 3, 1, 1, 1)), atol=1e-5)
    with pytest.raises(ValueError, match="in_channels=2"):
        load_pasta_checkpoint(dst2, tmp_path / "pre.pth", for_finetuning=True, in_channels=2)
