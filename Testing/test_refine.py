"""Refinement DDPM (PASTALib.refine): training, exact resume, refinement contract, errors, CLI.

Tiny network on CPU (channels (8, 8, 16), 32 mm crops, one thread) on the real TotalSegmentator
example CT with its organ labels from the fetched test data.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from PASTALib.errors import MissingWeightsError, PastaError
from PASTALib.refine import (
    CHECKPOINT_ENV,
    Refiner,
    RefinerCheckpointError,
    RefinerConfig,
    TrainOptions,
    load_case,
    load_refiner,
    refine_case,
    region_weight,
    train_refiner,
)
from PASTALib.refine.data import CropSampler

torch.set_num_threads(1)

TINY = RefinerConfig(crop_size=32, channels=(8, 8, 16), norm_num_groups=4, lr=2e-3)


@pytest.fixture(scope="module")
def ct_case(ts_data: Path):
    from PASTALib.anatomy import OrganMasks
    from PASTALib.io import read_ct, read_label

    ct = read_ct(ts_data / "example_ct.nii.gz")
    masks = OrganMasks.from_label_map(read_label(ts_data / "example_seg_fast_force_split.nii.gz"), reference=ct)
    organs = masks.pasta_label_map(include_lesions=False)
    return ct, organs, load_case("example_ct", ct, organs)


@pytest.fixture(scope="module")
def trained(ct_case, tmp_path_factory):
    out = tmp_path_factory.mktemp("refine_train")
    options = TrainOptions(iterations=24, batch=2, val_every=12, val_crops=2, checkpoint_every=12, progress_bar=False)
    return train_refiner(TINY, [ct_case[2]], out, options)


@pytest.fixture(scope="module")
def refiner(trained) -> Refiner:
    # One 64 mm window covers a lesion neighbourhood: fewer forward passes on the shared CPU.
    return Refiner.from_checkpoint(trained.files["weights"], "cpu", crop_size=64)


@pytest.fixture(scope="module")
def synthesized(ct_case):
    from PASTALib.synth import LesionSpec, synthesize_lesion

    ct, organs, _ = ct_case
    spec = LesionSpec(lesion_type="liver_tumor", seed=3, size_mm=(22, 22, 22))
    return spec, synthesize_lesion(ct, organs, spec)


# ------------------------------------------------------------------------------- training
def test_training_lowers_validation_loss_and_writes_curves(trained):
    val = trained.val_losses
    assert val[0][0] == 0 and val[-1][0] == 24
    assert val[-1][1] <= 0.8 * val[0][1], val  # >= 20 % below the untrained evaluation
    for name in ("checkpoint.pt", "refiner.pt", "loss.csv", "loss.png", "config.json"):
        assert (trained.out / name).stat().st_size > 0, name
    with open(trained.out / "loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == list(range(25))
    assert float(rows[-1]["val_loss"]) == pytest.approx(val[-1][1], rel=1e-5)
    assert (trained.out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crops_are_canonical_and_organ_centred(ct_case):
    sampler = CropSampler([ct_case[2]], 32, np.random.default_rng(0))
    x, c = sampler.batch(3)
    assert x.shape == c.shape == (3, 1, 32, 32, 32)
    assert c.sum(axis=(1, 2, 3, 4)).min() > 0  # each crop holds its organ
    assert x.min() >= -1100 and x.max() < 4000


def test_resume_gives_identical_losses(ct_case, tmp_path):
    config = TINY.with_(crop_size=16)
    base = {"iterations": 6, "batch": 1, "val_every": 3, "val_crops": 1, "val_timesteps": 2, "checkpoint_every": 100,
            "progress_bar": False}
    full = train_refiner(config, [ct_case[2]], tmp_path / "full", TrainOptions(**base))
    part = train_refiner(config, [ct_case[2]], tmp_path / "resumed", TrainOptions(**base, stop_after=3))
    assert part.stopped and part.iteration == 3 and not (tmp_path / "resumed" / "refiner.pt").exists()
    resumed = train_refiner(config, [ct_case[2]], tmp_path / "resumed", TrainOptions(**base, resume=True))
    assert resumed.train_losses == full.train_losses
    assert resumed.val_losses == full.val_losses
    a = torch.load(full.files["weights"], weights_only=True)["model"]
    b = torch.load(resumed.files["weights"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "loss.csv").read_text() == (tmp_path / "resumed" / "loss.csv").read_text()


# ------------------------------------------------------------------------------- refinement
def test_region_weight_is_smooth_and_exactly_zero_beyond_margin():
    lesion = np.zeros((41, 41, 41), bool)
    lesion[18:23, 18:23, 18:23] = True
    w = region_weight(lesion, 8.0)
    dist = ndimage.distance_transform_edt(~lesion)
    assert np.all(w[lesion] == 1.0) and np.all(w[dist >= 8.0] == 0.0)
    assert np.all((w >= 0) & (w <= 1)) and np.abs(np.diff(w, axis=0)).max() < 0.5


def test_refiner_hook_keeps_lesion_label_and_mean(ct_case, synthesized, refiner):
    from PASTALib.synth import synthesize_lesion

    ct, organs, _ = ct_case
    spec, plain = synthesized
    refined = synthesize_lesion(ct, organs, spec, refiner=refiner)
    assert plain.details["refined"] is False and refined.details["refined"] is True
    la, lb = sitk.GetArrayFromImage(plain.labels), sitk.GetArrayFromImage(refined.labels)
    assert np.array_equal(la, lb)
    a = sitk.GetArrayFromImage(plain.ct).astype(float)
    b = sitk.GetArrayFromImage(refined.ct).astype(float)
    lesion = la == 12
    assert lesion.sum() > 50
    assert abs(b[lesion].mean() - a[lesion].mean()) < 30.0
    assert np.any(a != b)
    # Outside the synthesizer's changed box nothing moves.
    box = refined.changed_box
    outside = np.ones(a.shape, bool)
    outside[box[2][0]:box[2][1], box[1][0]:box[1][1], box[0][0]:box[0][1]] = False
    assert np.array_equal(a[outside], b[outside])


def test_apply_is_identical_beyond_margin_and_seeded(synthesized, refiner):
    _, plain = synthesized
    margin = 6.0
    out1, infos = refine_case(plain.ct, plain.labels, refiner, seed=5, margin_mm=margin)
    out2, _ = refine_case(plain.ct, plain.labels, refiner, seed=5, margin_mm=margin)
    src = sitk.GetArrayFromImage(plain.ct)
    r1, r2 = (sitk.GetArrayFromImage(o) for o in (out1, out2))
    assert r1.dtype == src.dtype and out1.GetOrigin() == plain.ct.GetOrigin()
    assert np.array_equal(r1, r2)  # same seed, same output
    lesion = sitk.GetArrayFromImage(plain.labels) == 12
    dist = ndimage.distance_transform_edt(~lesion, sampling=plain.ct.GetSpacing()[::-1])
    far = dist >= margin
    assert np.array_equal(r1[far], src[far])  # bit-identical beyond the margin
    changed = r1 != src
    assert changed.any() and infos[0]["touched_voxels"] >= changed.sum()
    assert abs(r1[lesion].astype(float).mean() - src[lesion].astype(float).mean()) < 30.0


def test_sliding_windows_blend_without_seams(ct_case, trained):
    """40^3 block, 16^3 windows: the change field has no step at window borders (Gaussian blending);
    the same windows without overlap (control) do show steps."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    ct, _, case = ct_case
    from PASTALib.refine.data import crop

    liver = case.centres[2]
    centre_idx = liver[len(liver) // 2]
    centre = np.asarray(ct.TransformContinuousIndexToPhysicalPoint(centre_idx.astype(float).tolist()))
    hu, organ = crop(case, centre, 40, 2)

    def ratio(overlap: float) -> float:
        ref = Refiner.from_checkpoint(trained.files["weights"], "cpu", crop_size=16, window_overlap=overlap)
        x0 = ref.config.normalize(hu)
        change = ref.denoise(x0, organ.astype(np.float32), seed=1) - x0
        interval = _get_scan_interval((40,) * 3, (16,) * 3, 3, (overlap,) * 3)
        slices = dense_patch_slices((40,) * 3, (16,) * 3, interval)
        borders = sorted({s[0].start for s in slices} | {s[0].stop for s in slices} - {0, 40})
        grad = np.abs(np.diff(change, axis=0)).mean(axis=(1, 2))  # grad[p-1]: between planes p-1 and p
        at_border = grad[[p - 1 for p in borders]].mean()
        interior = np.delete(grad, [p - 1 for p in borders]).mean()
        return float(at_border / interior)

    blended = ratio(0.25)
    assert blended < 1.25, blended
    control = ratio(0.0)
    print(f"border/interior gradient ratio: blended {blended:.3f}, no-overlap control {control:.3f}")
    assert control > blended, (control, blended)


# ------------------------------------------------------------------------------- errors
def test_missing_and_corrupt_checkpoints(trained, tmp_path, monkeypatch, caplog):
    with pytest.raises(MissingWeightsError, match="pasta refine train"):
        Refiner.from_checkpoint(tmp_path / "nope.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.files["weights"].read_bytes()[:2000])
    with pytest.raises(RefinerCheckpointError, match="corrupt"):
        Refiner.from_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(RefinerCheckpointError):
        Refiner.from_checkpoint(garbage)

    obj = torch.load(trained.files["weights"], weights_only=True)
    plain = tmp_path / "plain_state_dict.pt"
    torch.save(obj["model"], plain)  # a bare state dict (e.g. PASTA_final.pth style)
    with pytest.raises(RefinerCheckpointError, match="not a PASTA refiner checkpoint"):
        Refiner.from_checkpoint(plain)
    wrong = dict(obj)
    wrong["model"] = dict(obj["model"])
    dropped = "conv_in.conv.weight"
    assert dropped in wrong["model"]
    del wrong["model"][dropped]
    wrong["model"]["extra.weight"] = torch.zeros(1)
    wrong["model"]["out.2.conv.weight"] = torch.zeros(3, 3, 3, 3, 3)
    bad = tmp_path / "wrong_layout.pt"
    torch.save(wrong, bad)
    with pytest.raises(RefinerCheckpointError) as info:
        Refiner.from_checkpoint(bad)
    message = str(info.value)
    assert dropped in message and "extra.weight" in message and "out.2.conv.weight" in message
    assert issubclass(RefinerCheckpointError, PastaError)

    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="PASTALib.refine.refiner"):
        assert load_refiner(None) is None
    assert "without DDPM refinement" in caplog.text
    with pytest.raises(MissingWeightsError):
        load_refiner(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------- CLI
def _cli(argv: list[str]) -> int:
    from PASTALib.cli import refine as cli

    parser = argparse.ArgumentParser(prog="pasta")
    cli.add_parser(parser.add_subparsers(dest="group"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_train_and_apply(ts_data, synthesized, tmp_path, capsys):
    from PASTALib.io import write_image

    case = tmp_path / "data" / "case01"
    case.mkdir(parents=True)
    (case / "ct.nii.gz").symlink_to(ts_data / "example_ct.nii.gz")
    (case / "organs.nii.gz").symlink_to(ts_data / "example_seg_fast_force_split.nii.gz")
    out = tmp_path / "run"
    rc = _cli(["refine", "train", "--data", str(tmp_path / "data"), "--out", str(out), "--labels-kind", "totalsegmentator",
               "--iterations", "2", "--batch", "1", "--crop", "16", "--channels", "8,8,16", "--val-every", "1",
               "--val-crops", "1", "--progress-lines"])
    assert rc == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROGRESS ")]
    assert lines and float(lines[-1].split()[1]) == 1.0
    _, plain = synthesized
    write_image(plain.ct, tmp_path / "ct.nii.gz")
    write_image(plain.labels, tmp_path / "label.nii.gz")
    rc = _cli(["refine", "apply", "--ct", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "label.nii.gz"),
               "--out", str(tmp_path / "refined"), "--checkpoint", str(out / "refiner.pt"), "--margin", "4", "--threads", "1",
               "--device", "auto"])  # the documented default of the other commands: CUDA when there, else CPU
    assert rc == 0
    assert {p.name for p in (tmp_path / "refined").iterdir()} == {"ct.nii.gz", "label.nii.gz", "refine.json"}
    assert json.loads((tmp_path / "refined" / "refine.json").read_text())["lesions"][0]["device"] == \
        ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():  # a missing GPU: one clear error (main prints it as `error: ...`), no output
        with pytest.raises(PastaError, match=r"--device cuda was requested but CUDA is not available.*--device cpu"):
            _cli(["refine", "apply", "--ct", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "label.nii.gz"),
                  "--out", str(tmp_path / "on_cuda"), "--checkpoint", str(out / "refiner.pt"), "--device", "cuda"])
        assert not (tmp_path / "on_cuda").exists()
    with pytest.raises(MissingWeightsError):
        _cli(["refine", "apply", "--ct", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "label.nii.gz"),
              "--out", str(tmp_path / "x"), "--checkpoint", str(tmp_path / "missing.pt")])
