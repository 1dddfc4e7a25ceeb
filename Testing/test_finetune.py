"""PASTALib.finetune / ``pasta finetune``: few-shot folder → splits → K-shot fine-tune → held-out DSC."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from contextlib import redirect_stdout
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PASTALib.model.checkpoint import load_state_dict_file
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
from PASTALib.train import MetricsCSV, StopFlag, TrainingError
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


@pytest.fixture(scope="module")
def finetuned(fewshot, pretrained, tmp_path_factory):
    """K=2 fine-tuning of the tiny 'pretrained' model for ITERATIONS iterations (fold 0 of 3); also the
    model that `pasta segment` runs in test_segment_with_finetuned_model."""
    out = tmp_path_factory.mktemp("finetuned") / "ft"
    result = finetune(FinetuneConfig(data=str(fewshot), out=str(out), init=str(pretrained), iterations=ITERATIONS,
                                     lr=1e-2, fg_fraction=1.0, checkpoint_every=ITERATIONS, **TINY))
    return SimpleNamespace(out=out, result=result)


def test_finetune_improves_heldout_lesion_dice(finetuned, pretrained):
    out, result = finetuned.out, finetuned.result
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
    a = load_state_dict_file(full.final_model)
    b = load_state_dict_file(resumed.final_model)
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


# --- the few-shot sweep (K x fold) and its table --------------------------------------------------

# the sweep ignores TINY's k and fold; 6 mm: one 32³ validation window per 48³ (3 mm) case, as the runs are many
SWEEP = {**TINY, "iterations": 3, "checkpoint_every": 3, "lr": 1e-3, "spacing_mm": 6.0}


def _progress_lines(stdout: str) -> list[tuple[float, str]]:
    return [(float(line.split()[1]), line.split(" ", 2)[2]) for line in stdout.splitlines() if line.startswith("PROGRESS ")]


@pytest.fixture(scope="module")
def sweep(fewshot, pretrained, tmp_path_factory):
    """K ∈ {1, 2, 8} x folds 0, 1 (3 folds of the 6 cases: training pools of 4, so K=8 is skipped)."""
    from PASTALib.finetune import run_sweep

    out = tmp_path_factory.mktemp("sweep") / "pasta"
    cfg = FinetuneConfig(data=str(fewshot), out=str(out), init=str(pretrained), **{**SWEEP, "progress_lines": True})
    seen: list[tuple[int, int, int]] = []
    buffer, logged = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logged)  # the notes (module scope: no caplog)
    logging.getLogger("PASTALib.finetune").addHandler(handler)
    try:
        with redirect_stdout(buffer):  # PROGRESS lines
            result = run_sweep(cfg, ks=(1, 2, 8), folds=(0, 1), callback=lambda k, f, it, row: seen.append((k, f, it)))
    finally:
        logging.getLogger("PASTALib.finetune").removeHandler(handler)
    return SimpleNamespace(out=out, cfg=cfg, result=result, seen=seen, stdout=buffer.getvalue(), log=logged.getvalue())


def test_sweep_writes_fewshot_table(sweep, fewshot):
    import pandas as pd

    from PASTALib.finetune.sweep import FEWSHOT_FIELDS

    runs = [(r.k, r.fold, r.status) for r in sweep.result.runs]
    assert runs == [(1, 0, "trained"), (1, 1, "trained"), (2, 0, "trained"), (2, 1, "trained")]
    assert sweep.seen == [(k, f, it) for k, f, _ in runs for it in (1, 2, 3)]  # 3 iterations per run, K-major
    assert len(sweep.result.notes) == 2 and all("K=8" in n and "only 4" in n for n in sweep.result.notes)
    assert "note: K=8 skipped for fold 0" in sweep.log and "note: K=8 skipped for fold 1" in sweep.log
    progress = _progress_lines(sweep.stdout)
    assert len(progress) == len(sweep.stdout.splitlines())  # stdout holds the PROGRESS protocol only
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(any(f"K={k} fold {f}" in m for _, m in progress) for k, f, _ in runs)

    table = pd.read_csv(sweep.out / "fewshot.csv")
    assert list(table.columns) == FEWSHOT_FIELDS and set(table["method"]) == {"PASTA"}
    ids = [f"patient_{i:03d}" for i in range(6)]
    for k, fold, _ in runs:
        run = sweep.out / f"k{k}" / f"fold{fold}"
        assert (run / "model_final.pth").is_file()
        splits = json.loads((run / "splits.json").read_text())
        assert len(splits["train"]) == k and splits["validation"] == make_splits(ids, folds=3, fold=fold, k=k, seed=0)["validation"]
        rows = table[(table["K"] == k) & (table["fold"] == fold)]
        validation = pd.read_csv(run / "validation.csv")
        # one row per held-out case and class, the value being that run's held-out DSC
        assert sorted(rows["case"]) == sorted(splits["validation"]) and set(rows["name"]) == {"liver lesion"}
        assert np.allclose(rows.sort_values("case")["value"], validation.sort_values("case")["dice"], equal_nan=True)
        assert ((rows["value"].dropna() >= 0) & (rows["value"].dropna() <= 1)).all()
    assert len(table) == 4 * 2


def test_sweep_rerun_skips_finished_runs(sweep):
    import pandas as pd

    from PASTALib.finetune import run_sweep

    models = sorted(sweep.out.glob("k*/fold*/model_final.pth"))
    mtimes = [p.stat().st_mtime_ns for p in models]
    before = pd.read_csv(sweep.out / "fewshot.csv")
    seen: list = []
    again = run_sweep(sweep.cfg, ks=(1, 2, 8), folds=(0, 1), callback=lambda *a: seen.append(a))
    assert seen == [] and [r.status for r in again.runs] == ["finished earlier"] * 4
    assert [p.stat().st_mtime_ns for p in models] == mtimes and len(models) == 4
    pd.testing.assert_frame_equal(pd.read_csv(sweep.out / "fewshot.csv"), before)
    # a finished run is not silently reused under other settings
    from dataclasses import replace

    with pytest.raises(TrainingError, match=r"holds a finished run with other settings \(iterations 3 → 4"):
        run_sweep(replace(sweep.cfg, iterations=4), ks=(1,), folds=(0,))


def test_sweep_stops_and_resumes_exactly(sweep, tmp_path):
    """A stop inside the second run keeps the table of the first; the rerun resumes that run from its
    checkpoint and ends with the weights of the uninterrupted sweep."""
    from dataclasses import replace

    import pandas as pd

    from PASTALib.finetune import run_sweep

    cfg = replace(sweep.cfg, out=str(tmp_path / "stopped"), progress_lines=False)
    stop = StopFlag()

    def cb(k, fold, iteration, row):
        if (k, fold, iteration) == (1, 1, 1):
            stop.stop = True

    part = run_sweep(cfg, ks=(1,), folds=(0, 1), callback=cb, stop=stop)
    assert part.stopped_early and [(r.fold, r.status) for r in part.runs] == [(0, "trained"), (1, "stopped")]
    table = pd.read_csv(tmp_path / "stopped" / "fewshot.csv")
    assert len(table) == 2 and set(table["fold"]) == {0}  # fold 0's two held-out cases
    seen: list = []
    done = run_sweep(cfg, ks=(1,), folds=(0, 1), callback=lambda *a: seen.append(a[2]))
    assert [r.status for r in done.runs] == ["finished earlier", "trained"] and seen == [2, 3]
    a = load_state_dict_file(sweep.out / "k1" / "fold1" / "model_final.pth")
    b = load_state_dict_file(tmp_path / "stopped" / "k1" / "fold1" / "model_final.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_scratch_sweep_cli_and_fewshot_curve(sweep, fewshot, pretrained, tmp_path, capsys):
    """`pasta finetune --init scratch --fold all` (the baseline) and `pasta evaluate fewshot` on both tables."""
    import pandas as pd

    from PASTALib.cli.main import main

    # the layout comes from this file, its weights must not: constant 0.5 everywhere
    layout = tmp_path / "layout.pth"
    torch.save({k: torch.full_like(v, 0.5) if v.is_floating_point() else v
                for k, v in torch.load(pretrained, weights_only=True).items()}, layout)
    out = tmp_path / "scratch"
    rc = main(["finetune", "--data", str(fewshot), "--out", str(out), "--init", "scratch", "--layout", str(layout),
               "--k", "1,8", "--fold", "all", "--folds", "3", "--iterations", "3", "--checkpoint-every", "3",
               "--lr", "1e-3", "--patch-size", "32", "--spacing", "6", "--device", "cpu", "--threads", "1",
               "--no-progress-bar", "--progress-lines", "--intensity-samples", "20000"])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    summary = json.loads(stdout[stdout.index("\n{") + 1:])
    assert summary["method"] == "scratch" and [(r["K"], r["fold"]) for r in summary["runs"]] == [(1, 0), (1, 1), (1, 2)]
    assert len(summary["skipped"]) == 3 and all("K=8" in s for s in summary["skipped"])
    assert any("K=1 fold 2 (run 3/3)" in m for _, m in _progress_lines(stdout))
    config = json.loads((out / "k1" / "fold0" / "finetune_config.json").read_text())
    assert config["scratch"] is True and config["init"] == str(layout)
    weight = load_state_dict_file(out / "k1" / "fold0" / "model_final.pth")["conv_blocks_context.0.blocks.0.conv.weight"]
    # 3 Adam steps at lr 1e-3 move a weight by ≤ 3e-3: far from 0.5 means the constant file was not loaded
    assert weight.shape[0] == TINY_NET["base_channels"] and float((weight - 0.5).abs().min()) > 0.05
    scratch = pd.read_csv(out / "fewshot.csv")
    assert set(scratch["method"]) == {"scratch"} and sorted(set(scratch["fold"])) == [0, 1, 2] and len(scratch) == 6

    both = tmp_path / "both.csv"
    pd.concat([pd.read_csv(sweep.out / "fewshot.csv"), scratch]).to_csv(both, index=False)
    plot = tmp_path / "fewshot.png"
    rc = main(["evaluate", "fewshot", "--csv", str(sweep.out / "fewshot.csv"), str(out / "fewshot.csv"),
               "--plot", str(plot), "--n-boot", "200",
               "--out", str(tmp_path / "curve")])
    assert rc == 0, capsys.readouterr().err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = pd.read_csv(tmp_path / "curve.csv")
    expected = pd.read_csv(both).dropna(subset=["value"]).groupby(["method", "K"])["value"].agg(["mean", "count"])
    assert sorted(zip(curve["method"], curve["K"])) == [("PASTA", 1), ("PASTA", 2), ("scratch", 1)]
    for _, row in curve.iterrows():
        assert row["mean"] == pytest.approx(expected.loc[(row["method"], row["K"]), "mean"])
        assert row["n"] == expected.loc[(row["method"], row["K"]), "count"]


# --- `pasta segment` with a fine-tuned model --------------------------------------------------------

def _dsc(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b)))


def _segment_args(ct, out, checkpoint) -> list[str]:
    return ["segment", "--ct", str(ct), "--out", str(out), "--checkpoint", str(checkpoint), "--device", "cpu",
            "--patch-size", "32", "--spacing", "3", "--crop-size", "32", "--threads", "1", "--no-progress-bar"]


def test_segment_with_finetuned_model_writes_annotated_values(finetuned, fewshot, tmp_path, capsys):
    from PASTALib.cli.main import main

    splits = json.loads((finetuned.out / "splits.json").read_text())
    case_id = splits["validation"][0]
    out = tmp_path / "seg"
    rc = main(_segment_args(fewshot / "imagesTr" / f"{case_id}_0000.nii.gz", out, finetuned.out / "model_final.pth"))
    assert rc == 0, capsys.readouterr().err
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(fewshot / "labelsTr" / f"{case_id}.nii.gz")))
    # the annotated value (12), not the network's output channel (1)
    assert set(np.unique(pred)) - {0} == set(np.unique(ref)) - {0} == set(LABELS.values())
    dsc = _dsc(pred == 12, ref == 12)
    held_out = next(r["dice"] for r in finetuned.result.validation if r["case"] == case_id)
    print(f"{case_id}: DSC through `pasta segment` {dsc:.3f}, in validation.csv {held_out:.3f}")
    # the same network and sliding window on the same 3 mm canonical grid as the validation
    assert dsc > 0.2 and abs(dsc - held_out) < 0.02  # measured: 0.421 and 0.421
    run = json.loads((out / "run.json").read_text())
    assert run["label_names"] == {str(v): name for name, v in LABELS.items()} and run["annotated_components"] == 0
    reports = json.loads((out / "reports.json").read_text())
    lesions = json.loads((out / "lesions.json").read_text())
    assert reports and all(r["label_value"] == 12 and r["lesion_type"] == "liver_tumor" for r in reports)
    assert [e["kind"] for e in lesions] == ["lesion"] * len(reports)


def test_mismatched_classes_json_is_a_clear_error(finetuned, fewshot, tmp_path, capsys):
    from PASTALib.cli.main import main
    from PASTALib.infer import load_model
    from PASTALib.model.checkpoint import CheckpointError

    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(finetuned.out / "model_final.pth", folder)
    doc = json.loads((finetuned.out / "classes.json").read_text())
    doc["classes"].append({"class": 2, "name": "liver cyst", "label_value": 21})
    (folder / "classes.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"2 class\(es\) \+ background = 3 output channels, but .* has 2 output"):
        load_model(folder / "model_final.pth", device="cpu")
    out = tmp_path / "seg"
    rc = main(_segment_args(fewshot / "imagesTr" / "patient_000_0000.nii.gz", out, folder / "model_final.pth"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "3 output channels" in err and "has 2 output channels" in err
    assert not (out / "labels.nii.gz").exists()


def test_annotated_components_are_listed_with_measurements(fewshot, tmp_path):
    """A fine-tuned model with a class outside PASTA's lesion types (40, 'nodule'): its components are listed in
    lesions.json (measured like lesions), the 12s get reports; checked against SimpleITK's label statistics."""
    import slicerio

    from PASTALib.infer import InferenceConfig, report_lesions
    from PASTALib.infer.pipeline import PastaModel, write_outputs

    torch.manual_seed(0)
    net = PastaUNet(UNetConfig.tiny(num_seg_classes=3, **TINY_NET)).eval()
    classes = [{"class": 1, "name": "liver lesion", "label_value": 12}, {"class": 2, "name": "nodule", "label_value": 40}]
    model = PastaModel(net, torch.device("cpu"), classes=classes)
    ct = sitk.ReadImage(str(fewshot / "imagesTr" / "patient_000_0000.nii.gz"))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(fewshot / "labelsTr" / "patient_000.nii.gz")))
    zz, yy, xx = np.indices(lab.shape)
    for centre, radius in (((8, 9, 10), 4.0), ((38, 36, 37), 2.5)):
        ball = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
        lab[ball & (lab == 0)] = 40
    lab[24, 2, 2] = 40  # one voxel (27 mm³ < 30): a speck, removed
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(ct)
    cfg = InferenceConfig(device="cpu", spacing_mm=3.0, crop_size=(32,) * 3, min_lesion_volume_mm3=30.0)
    result = report_lesions(ct, labels, model, cfg)
    write_outputs(result, tmp_path / "out")
    entries = json.loads((tmp_path / "out" / "lesions.json").read_text())
    annotated = [e for e in entries if e["kind"] == "annotated"]
    written = sitk.ReadImage(str(tmp_path / "out" / "labels.nii.gz"))
    assert sitk.GetArrayViewFromImage(written)[24, 2, 2] == 0
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.ConnectedComponent(written == 40, True))
    expected = sorted(stats.GetLabels(), key=lambda k: -stats.GetNumberOfPixels(k))
    assert len(annotated) == len(expected) == 2
    for entry, k in zip(annotated, expected):
        assert entry["name"] == "nodule" and entry["label_value"] == 40
        assert entry["volume_ml"] == pytest.approx(stats.GetPhysicalSize(k) / 1000.0, abs=1e-4)
        assert entry["centroid"] == pytest.approx(list(stats.GetCentroid(k)), abs=0.01)  # LPS mm
        bx, by, bz = (n * s for n, s in zip(stats.GetBoundingBox(k)[3:], written.GetSpacing()))
        assert entry["size_zxy_mm"] == [round(bz), round(bx), round(by)]
    lesions = [e for e in entries if e["kind"] == "lesion"]
    reports = json.loads((tmp_path / "out" / "reports.json").read_text())
    assert len(reports) == len(lesions) >= 1 and all(r["label_value"] == 12 for r in reports)
    assert [e["index"] for e in entries] == list(range(1, len(entries) + 1))
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["label_names"] == {"12": "liver lesion", "40": "nodule"} and run["annotated_components"] == 2
    segments = slicerio.read_segmentation(str(tmp_path / "out" / "labels.seg.nrrd"), skip_voxels=True)["segments"]
    assert {s["labelValue"]: s["name"] for s in segments} == {12: "liver lesion", 40: "nodule"}
