"""PASTALib.finetune / ``pasta finetune``: few-shot folder → splits → K-shot fine-tune → held-out DSC."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SHARED_DATA

from PASTALib.finetune import (
    FinetuneConfig,
    class_mapping,
    evaluate_cases,
    finetune,
    make_splits,
    read_fewshot_folder,
)
from PASTALib.model import PastaUNet, UNetConfig
from PASTALib.train import MetricsCSV, TrainingError
from PASTALib.train.toydata import make_toy_dataset

torch.set_num_threads(1)

TS = SHARED_DATA / "totalsegmentator"
LABELS = {"liver lesion": 12}  # PASTA numbering, as the module's export would write them
TINY_NET = {"num_stages": 5, "base_channels": 8}  # divisor 16: 32³ patches
TINY = {"patch_size": (32, 32, 32), "batch_size": 2, "device": "cpu", "num_threads": 1, "progress_bar": False,
        "tensorboard": False, "curves": False, "spacing_mm": 3.0, "folds": 3, "fold": 0, "k": 2, "seed": 0}


@pytest.fixture(scope="module")
def fewshot(tmp_path_factory):
    """Six annotated crops of the real CT (strong ellipsoid liver lesions) in the PASTA module's export
    layout (export_training_case needs the MRML scene, so the same files are written directly)."""
    toy = tmp_path_factory.mktemp("toy")
    make_toy_dataset(toy, TS / "example_ct.nii.gz", TS / "example_seg_fast_force_split.nii.gz", n_cases=6,
                     crop=(48, 48, 48), radius_vox=(5.0, 7.0), density_delta_hu=150, lesions_per_case=3, seed=3)
    folder = tmp_path_factory.mktemp("fewshot")
    (folder / "imagesTr").mkdir()
    (folder / "labelsTr").mkdir()
    cases = []
    for case in sorted(toy.iterdir()):
        cid = f"patient_{case.name[-3:]}"
        image = sitk.ReadImage(str(case / "img.nii.gz"))
        label = sitk.ReadImage(str(case / "label.nii.gz"))
        lab = sitk.GetArrayFromImage(label)
        keep = np.where(np.isin(lab, list(LABELS.values())), lab, 0).astype(np.uint8)  # only annotated segments
        out_label = sitk.GetImageFromArray(keep)
        out_label.CopyInformation(label)
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{cid}_0000.nii.gz"), True)
        sitk.WriteImage(out_label, str(folder / "labelsTr" / f"{cid}.nii.gz"), True)
        cases.append({"id": cid, "image": f"imagesTr/{cid}_0000.nii.gz", "label": f"labelsTr/{cid}.nii.gz",
                      "segments": sorted(LABELS)})
    manifest = {"format": "pasta-fewshot/1", "labels": LABELS, "cases": cases}
    (folder / "pasta_fewshot.json").write_text(json.dumps(manifest, indent=2))
    return folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny 'pretrained' PASTA checkpoint (random init, 26 classes, plain state dict like PASTA_final.pth;
    5 stages so that 32³ patches keep a 2-voxel bottleneck)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_pasta.pth"
    torch.save(PastaUNet(UNetConfig.tiny(**TINY_NET)).state_dict(), path)
    return path


def test_manifest_classes_and_deterministic_splits(fewshot):
    labels, cases = read_fewshot_folder(fewshot)
    assert labels == LABELS and [c.id for c in cases] == [f"patient_{i:03d}" for i in range(6)]
    assert class_mapping(labels) == [{"class": 1, "name": "liver lesion", "label_value": 12}]
    # label values → contiguous classes in increasing value order (one name per value)
    classes = class_mapping({"tumour": 12, "liver": 2, "cyst": 30})
    assert [(c["class"], c["label_value"], c["name"]) for c in classes] == [(1, 2, "liver"), (2, 12, "tumour"), (3, 30, "cyst")]
    ids = [c.id for c in cases]
    a = make_splits(ids, folds=3, fold=1, k=2, seed=0)
    assert a == make_splits(list(reversed(ids)), folds=3, fold=1, k=2, seed=0)  # order of the input does not matter
    assert sorted(c for f in a["fold_cases"] for c in f) == sorted(ids)
    assert not set(a["train"]) & set(a["validation"]) and len(a["train"]) == 2 and set(a["train"]) <= set(a["train_pool"])
    # the held-out folds of all fold indices partition the cases
    vals = [make_splits(ids, folds=3, fold=f, k=2, seed=0)["validation"] for f in range(3)]
    assert sorted(c for v in vals for c in v) == sorted(ids)
    with pytest.raises(TrainingError, match="--k 5"):
        make_splits(ids, folds=3, fold=0, k=5, seed=0)


def test_finetune_improves_heldout_lesion_dice(fewshot, pretrained, tmp_path):
    out = tmp_path / "ft"
    result = finetune(FinetuneConfig(data=str(fewshot), out=str(out), init=str(pretrained), iterations=ITERATIONS,
                                     lr=1e-2, fg_fraction=1.0, checkpoint_every=ITERATIONS, **TINY))
    assert result.final_model == out / "model_final.pth" and result.final_model.is_file()
    classes = json.loads((out / "classes.json").read_text())
    assert classes["num_seg_classes"] == 2 and classes["classes"][0]["label_value"] == 12
    splits = json.loads((out / "splits.json").read_text())
    assert splits["train"] == make_splits([f"patient_{i:03d}" for i in range(6)], folds=3, fold=0, k=2, seed=0)["train"]
    assert len(MetricsCSV.read(out / "metrics.csv")) == ITERATIONS
    # before: the 'pretrained' network on the held-out cases, reading the lesion from its own label-12 output
    net = PastaUNet(UNetConfig.tiny(**TINY_NET))
    net.load_state_dict(torch.load(pretrained, weights_only=True))
    val_dirs = [out / "prepared" / "validation" / c for c in splits["validation"]]
    before = evaluate_cases(net, val_dirs, classes["classes"], patch_size=(32, 32, 32), output_channel="label_value")
    lesion = lambda rows: float(np.mean([r["dice"] for r in rows if r["label_value"] == 12]))
    after = result.validation
    assert {r["case"] for r in after} == set(splits["validation"])
    print(f"held-out lesion DSC before {lesion(before):.3f} after {lesion(after):.3f}")
    # measured on CPU: before 0.01, after 0.39 (K=2, 150 iterations, random-init tiny 'pretrained' model)
    assert lesion(after) > 0.2 and lesion(after) > lesion(before) + 0.15
    assert (out / "validation.csv").is_file()


ITERATIONS = 150


def test_resume_is_exact(fewshot, pretrained, tmp_path):
    kw = dict(data=str(fewshot), init=str(pretrained), iterations=6, checkpoint_every=3, lr=1e-3,
              evaluate=False, **TINY)
    full = finetune(FinetuneConfig(out=str(tmp_path / "full"), **kw))

    class Stop:
        stop = False

    stop = Stop()

    def cb(iteration, row):
        if iteration == 3:
            stop.stop = True

    part = finetune(FinetuneConfig(out=str(tmp_path / "part"), **kw), callback=cb, stop=stop)
    assert part.stopped_early and part.iteration == 3 and part.final_model is None
    resumed = finetune(FinetuneConfig(out=str(tmp_path / "part"), **kw))
    assert resumed.iteration == 6
    a = torch.load(full.final_model, weights_only=True)
    b = torch.load(resumed.final_model, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [r["loss"] for r in MetricsCSV.read(full.metrics)]
    lb = [r["loss"] for r in MetricsCSV.read(resumed.metrics)]
    assert la == lb and len(la) == 6
    # a changed split on resume is refused
    with pytest.raises(Exception, match="splits.json differs"):
        finetune(FinetuneConfig(out=str(tmp_path / "part"), **{**kw, "k": 3}))


def test_cli_missing_init_and_help(fewshot, tmp_path, capsys, monkeypatch):
    import argparse

    from PASTALib.cli import finetune as cli
    from PASTALib.errors import MissingWeightsError

    parser = argparse.ArgumentParser(prog="pasta")
    cli.add_parser(parser.add_subparsers(dest="group"))
    missing = tmp_path / "nowhere" / "PASTA_final.pth"
    args = parser.parse_args(["finetune", "--data", str(fewshot), "--out", str(tmp_path / "o"), "--init", str(missing),
                              "--device", "cpu"])
    with pytest.raises(MissingWeightsError, match="PASTA weights not found at .*Download PASTA_final.pth"):
        args.func(args)
    # default --init: PASTA_final.pth under PASTA_WEIGHTS_DIR; the Slicer module's --checkpoint spelling works too
    monkeypatch.setenv("PASTA_WEIGHTS_DIR", str(tmp_path / "empty"))
    args = parser.parse_args(["finetune", "--data", str(fewshot)])
    assert args.init is None
    with pytest.raises(MissingWeightsError, match="PASTA_final.pth"):
        args.func(args)
    assert parser.parse_args(["finetune", "--data", "d", "--checkpoint", "w.pth"]).init == "w.pth"
    assert not os.path.exists(tmp_path / "o" / "model_final.pth")
