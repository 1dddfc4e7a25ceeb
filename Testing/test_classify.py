"""Classification fine-tuning with k-fold CV (PASTALib.finetune.classify, `pasta classify`).

Cohort: the real TotalSegmentator example CT (3 mm), cropped around the kidneys; 10 cases, each with
one synthesized kidney tumour and seeded scanner-like noise (σ 3 HU): 5 with a hyperdense 34 mm
tumour in the right kidney (detection label 1 for the right kidney) and 5 with a hypodense 22 mm
tumour in the left kidney (label 0 for the right kidney). The network is PASTA's tiny variant
(UNetConfig.tiny) with seeded random weights saved as the "pretrained" init; crops are 32³.

Cost control (2 shared cores): the detection runs are linear probes (frozen encoder, the head on
standardised features), 40 iterations per fold; all runs share one crop cache.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from PASTALib.errors import AnatomyError, MissingWeightsError
from PASTALib.finetune.classify import (
    ClassifyConfig,
    ClassifyError,
    class_weight_vector,
    make_cv_splits,
    make_loss,
    predict_table,
    read_case_table,
    train_classifier,
)
from PASTALib.io import read_ct, read_label, write_image
from PASTALib.model import UNetConfig
from PASTALib.model.attributes import ATTRIBUTE_GROUPS

N_CASES = 10
#: Out-of-fold AUC of the 5-fold detection linear probe below: measured 1.0 (every fold separates its
#: tumour case from its normal one). The bound leaves room for platform float differences.
DETECTION_AUC_BOUND = 0.8
ITERATIONS = 40


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids oversubscription
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cohort(ts_data, tmp_path_factory):
    from PASTALib.anatomy import OrganMasks
    from PASTALib.model import PastaUNet, UNetConfig
    from PASTALib.synth import LesionSpec, synthesize_lesion

    root = tmp_path_factory.mktemp("classify")
    ct = read_ct(ts_data / "example_ct.nii.gz")
    seg = read_label(ts_data / "example_seg_fast_force_split.nii.gz")
    seg = sitk.Resample(seg, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, seg.GetPixelID())
    organs = OrganMasks.from_label_map(seg, reference=ct).pasta_label_map(include_lesions=False)
    a = sitk.GetArrayViewFromImage(organs)
    idx = np.argwhere(a == 8)
    (z0, y0, x0), (z1, y1, x1) = np.maximum(idx.min(0) - 4, 0), np.minimum(idx.max(0) + 5, a.shape)

    def crop(im):
        return im[int(x0):int(x1), int(y0):int(y1), int(z0):int(z1)]

    ct_c, organs_c = crop(ct), crop(organs)
    write_image(crop(seg), root / "organs.nii.gz")  # TotalSegmentator ids, as a user's table points to
    rows = []
    for i in range(N_CASES):
        tumour_right = i % 2 == 0
        spec = LesionSpec(lesion_type="kidney_tumor", size_mm=(34,) * 3 if tumour_right else (22,) * 3,
                          side="right" if tumour_right else "left",
                          density="Hyperdense" if tumour_right else "Hypodense", seed=i)
        r = synthesize_lesion(ct_c, organs_c, spec)
        arr = sitk.GetArrayFromImage(r.ct).astype(np.float32) + np.random.default_rng(i).normal(0, 3.0, ct_c.GetSize()[::-1])
        img = sitk.GetImageFromArray(np.round(arr).astype(np.int16))
        img.CopyInformation(r.ct)
        write_image(img, root / f"ct_{i}.nii.gz")
        rep = r.report
        rows.append(dict(id=f"case{i}", image=f"ct_{i}.nii.gz", organs="organs.nii.gz", organ="kidney_right",
                         label=int(tumour_right), coordX=rep.centre_mm[0], coordY=rep.centre_mm[1],
                         coordZ=rep.centre_mm[2], shape=rep.shape, density=rep.density,
                         heterogeneity=rep.heterogeneity, margin=rep.surface, invasion=rep.invasion))
    table = root / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init_model = PastaUNet(UNetConfig.tiny())
    init = root / "tiny_init.pth"
    torch.save(init_model.state_dict(), init)
    return SimpleNamespace(root=root, table=table, rows=rows, init=init, init_sd=init_model.state_dict(),
                           crops=root / "crops")


def _config(cohort, out: Path, **kw) -> ClassifyConfig:
    params = dict(task="detection", table=str(cohort.table), out=str(out), input_size=32, iterations=ITERATIONS,
                  batch_size=4, lr=1e-2, init=str(cohort.init), freeze_encoder=True, augment=False, seed=0,
                  checkpoint_every=10, n_boot=200, progress_bar=False, crops_dir=str(cohort.crops),
                  device="cpu")  # pinned: the runs are compared at 1e-5 with CPU runs (predict_table, resume)
    params.update(kw)
    return ClassifyConfig(**params)


@pytest.fixture(scope="module")
def detection_run(cohort):
    out = cohort.root / "detection"
    result = train_classifier(_config(cohort, out))
    return SimpleNamespace(out=out, result=result)


# --- crop geometry ------------------------------------------------------------------------------

def test_detection_crop_geometry_on_real_ct(ts_data):
    """Organ box + margin lies inside the crop, the cube is padded with exactly -1024 HU along the short
    axis, the output is size³, and the organ sits where the label map says (its mean HU matches)."""
    from PASTALib.anatomy import OrganMasks
    from PASTALib.finetune.crops import detection_crop, organ_box_lps
    from PASTALib.geometry import resample_to_grid
    from PASTALib.labels import Organ

    ct = read_ct(ts_data / "example_ct.nii.gz")
    masks = OrganMasks.from_label_map(read_label(ts_data / "example_seg_fast_force_split.nii.gz"), reference=ct)
    size, margin = 32, 10.0
    c = detection_crop(ct, masks, Organ.LIVER, None, margin_mm=margin, size=size)
    assert c.array.shape == (size,) * 3 and c.array.dtype == np.float32
    lo, hi = organ_box_lps(masks, Organ.LIVER)
    np.testing.assert_allclose(c.region_lo, lo - margin)
    np.testing.assert_allclose(c.region_hi, hi + margin)
    # The crop's extent (outer voxel faces) is a cube that holds the box + margin on every axis.
    sp = c.grid.spacing[0]
    first = np.asarray(c.grid.origin) - sp / 2
    last = first + size * sp
    assert np.all(first <= c.region_lo + c.resample_spacing) and np.all(last >= c.region_hi - c.resample_spacing)
    extent = c.region_hi - c.region_lo
    assert abs(size * sp - extent.max()) <= c.resample_spacing + 1e-6  # cube side = longest side (aspect kept)
    # Padding: the liver box is shortest along z (I→S); whole output slices in the pad are exactly -1024.
    short = int(np.argmin(extent))
    assert short == 2
    pad_out = int(np.floor(c.pad_before_xyz[short] * c.resample_spacing / sp)) - 1
    assert pad_out >= 2
    assert np.all(c.array[:pad_out] == -1024.0) and np.all(c.array[-pad_out:] == -1024.0)
    assert c.array[size // 2].max() > 0  # the middle slice holds tissue
    # Orientation: the liver label resampled onto the crop grid covers liver-like HU.
    liver = sitk.GetArrayFromImage(resample_to_grid(masks.pasta_label_map(), c.grid, is_label=True)) == int(Organ.LIVER)
    ct_arr = sitk.GetArrayViewFromImage(ct)
    ref = float(ct_arr[sitk.GetArrayViewFromImage(masks.pasta_label_map()) == int(Organ.LIVER)].mean())
    assert liver.sum() > 500
    assert abs(float(c.array[liver].mean()) - ref) < 15.0, (float(c.array[liver].mean()), ref)
    # An organ that is not in the label map: the error names it and lists the organs present.
    with pytest.raises(AnatomyError, match=r"esophagus not found.*present: .*liver"):
        detection_crop(ct, masks, Organ.ESOPHAGUS, None, size=size)


def test_classifier_encoder_keeps_the_published_layout():
    """The full-size classifier's encoder and attribute head carry PASTA_final.pth's names and shapes
    (so --init loads the public weights), and the decoder is not built (~57M of ~241M parameters)."""
    from PASTALib.finetune.classify import PastaClassifier

    layout = json.loads((Path(__file__).resolve().parent / "data" / "pasta_state_dict_layout.json").read_text())["parameters"]
    model = PastaClassifier(UNetConfig(), None, device="meta")
    own = {k[len("unet."):]: list(v.shape) for k, v in model.state_dict().items() if k.startswith("unet.")}
    assert own and all(layout[k] == shape for k, shape in own.items())
    assert {k.split(".")[0] for k in own} == {"conv_blocks_context", "head"}
    assert {k.split(".")[1] for k in own if k.startswith("conv_blocks_context")} == {"0", "1", "2", "3", "4"}
    assert 50e6 < sum(v.numel() for v in model.parameters()) < 60e6
    detection = PastaClassifier(UNetConfig(), 2, device="meta")
    assert not any(k.startswith("unet.head") for k in detection.state_dict())
    assert tuple(detection.classifier.weight.shape) == (2, 1024)


# --- splits -------------------------------------------------------------------------------------

def test_splits_fixed_stratified_grouped():
    ids = [f"c{i}" for i in range(23)]
    labels = [1 if i % 3 == 0 else 0 for i in range(23)]  # 8 positives, 15 negatives
    a = make_cv_splits(ids, folds=5, seed=7, strata=labels)
    assert a == make_cv_splits(ids, folds=5, seed=7, strata=labels)
    assert a != make_cv_splits(ids, folds=5, seed=8, strata=labels)
    flat = [i for fold in a["validation"] for i in fold]
    assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))  # each case validated exactly once
    pos = [sum(labels[ids.index(i)] for i in fold) for fold in a["validation"]]
    assert sorted(pos) == [1, 1, 2, 2, 2]  # 8 positives over 5 folds, as even as possible
    groups = [f"p{i // 2}" for i in range(23)]  # two cases per patient
    g = make_cv_splits(ids, folds=4, seed=0, strata=labels, groups=groups)
    fold_of = {i: f for f, fold in enumerate(g["validation"]) for i in fold}
    for p in set(groups):
        assert len({fold_of[i] for i, gp in zip(ids, groups) if gp == p}) == 1
    with pytest.raises(ClassifyError, match=r"fewer cases than the 5 folds.*--folds 3"):
        make_cv_splits(ids[:13], folds=5, seed=0, strata=[1, 1, 1] + [0] * 10)


# --- loss ---------------------------------------------------------------------------------------

def test_class_weights_reach_the_loss(cohort, monkeypatch):
    cfg = _config(cohort, cohort.root / "unused")
    assert class_weight_vector(cfg, 2, [0, 1, 1]) == [1.0, 10.0]  # detection default: normal 1, tumour 10
    bal = class_weight_vector(_config(cohort, cohort.root / "u", class_weights="balanced"), 2, [0, 0, 0, 1])
    assert bal == pytest.approx([4 / 6, 4 / 2])
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.0]])
    target = torch.tensor([1, 0, 1])
    nll = -torch.log_softmax(logits, 1)[torch.arange(3), target]
    w = torch.tensor([1.0, 10.0])[target]
    assert float(make_loss("detection", [1.0, 10.0])(logits, target)) == pytest.approx(float((w * nll).sum() / w.sum()))
    # In training: every fold's loss is built with the configured weights (spy on make_loss where the fold loop calls it).
    from PASTALib.finetune.classify import folds

    seen = []

    def spy(task, weights, device="cpu"):
        seen.append((task, None if weights is None else list(weights)))
        return make_loss(task, weights, device)

    monkeypatch.setattr(folds, "make_loss", spy)
    out = cohort.root / "weights"  # (also: a randomly initialised baseline, --init scratch, of the tiny layout)
    train_classifier(_config(cohort, out, class_weights=(1.0, 4.0), folds=2, iterations=2, init="scratch",
                             scratch_config=UNetConfig.tiny().to_dict()))
    assert torch.load(out / "fold_0" / "model.pth", weights_only=True)["init"] == "scratch"
    assert seen == [("detection", [1.0, 4.0])] * 2
    assert json.loads((out / "fold_1" / "done.json").read_text())["class_weights"] == [1.0, 4.0]
    assert torch.load(out / "fold_1" / "model.pth", weights_only=True)["class_weights"] == [1.0, 4.0]
    with pytest.raises(ClassifyError, match="3 value"):
        train_classifier(_config(cohort, cohort.root / "weights3", class_weights=(1.0, 2.0, 3.0), folds=2, iterations=2))


# --- the cross-validated run ---------------------------------------------------------------------

def test_detection_cv_auc_outputs_and_evaluate(cohort, detection_run):
    from PASTALib.cli.main import main

    out, result = detection_run.out, detection_run.result
    assert result.folds_trained == [0, 1, 2, 3, 4] and not result.stopped_early
    preds = pd.read_csv(out / "predictions.csv", dtype={"id": str})
    assert list(preds.columns[:5]) == ["id", "fold", "label", "prob_0", "prob_1"]
    assert preds["id"].tolist() == [r["id"] for r in cohort.rows]
    assert sorted(preds["fold"].value_counts().tolist()) == [2] * 5
    np.testing.assert_allclose(preds[["prob_0", "prob_1"]].sum(axis=1), 1.0, atol=1e-6)
    splits = json.loads((out / "splits.json").read_text())
    for f, fold_ids in enumerate(splits["validation"]):
        assert set(preds.loc[preds.fold == f, "id"]) == set(fold_ids)
        assert (out / f"fold_{f}" / "model.pth").is_file() and (out / f"fold_{f}" / "done.json").is_file()
        assert not (out / f"fold_{f}" / "checkpoint_last.pt").exists()
    metrics = pd.read_csv(out / "metrics.csv")
    pooled = metrics[metrics.scope == "all"].set_index("metric")
    auc = float(pooled.loc["AUC", "estimate"])
    assert auc >= DETECTION_AUC_BOUND, metrics
    assert set(metrics.scope) == {"all", *(f"fold_{f}" for f in range(5))}
    assert (out / "metrics.md").read_text().count("AUC") == 6
    # `pasta evaluate cls` reads the out-of-fold predictions and reports the same AUC.
    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(io.StringIO()):
        assert main(["evaluate", "cls", "--csv", str(out / "predictions.csv"), "--n-boot", "50"]) == 0
    line = next(row for row in buf.getvalue().splitlines() if row.startswith("| AUC"))
    assert float(line.split("|")[3]) == pytest.approx(auc, abs=1e-3)
    # A fold model applied to its own validation rows through predict_table gives the same probabilities.
    val = preds[preds.fold == 0]
    table0 = cohort.root / "fold0_rows.csv"
    pd.DataFrame([r for r in cohort.rows if r["id"] in set(val.id)]).to_csv(table0, index=False)
    again = predict_table(out / "fold_0" / "model.pth", table0, device="cpu", progress=False)
    np.testing.assert_allclose(again["prob_1"].to_numpy(), val["prob_1"].to_numpy(), atol=1e-5)
    assert again["label"].tolist() == val["label"].tolist()


def test_stop_mid_fold_and_resume_matches_uninterrupted_run(cohort, detection_run):
    """Stop (StopFlag) in fold 1 at iteration 25 after fold 0 finished; the rerun skips fold 0, resumes
    fold 1 from its checkpoint and trains the rest: files identical to the uninterrupted run."""
    from PASTALib.train.common import StopFlag

    out = cohort.root / "detection_resumed"
    stop = StopFlag()
    finished = []

    def on_iteration(fold: int, iteration: int, loss: float) -> None:
        if fold == 1 and iteration == 25:
            stop.stop = True

    first = train_classifier(_config(cohort, out), stop=stop, on_iteration=on_iteration,
                             on_fold=lambda r: finished.append((r.fold, r.done, r.iteration)))
    assert first.stopped_early and first.folds_done == [0] and first.predictions is None
    assert finished == [(0, True, ITERATIONS), (1, False, 25)]
    assert (out / "fold_1" / "checkpoint_last.pt").is_file() and not (out / "predictions.csv").exists()
    second = train_classifier(_config(cohort, out))
    assert second.folds_trained == [1, 2, 3, 4] and second.folds_done == [0, 1, 2, 3, 4]
    ref = detection_run.out
    for name in ("splits.json", "predictions.csv", "metrics.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    # A third run has nothing left to train.
    assert train_classifier(_config(cohort, out)).folds_trained == []
    # Changed training settings on the same folder are refused instead of mixing models.
    with pytest.raises(ClassifyError, match="lr"):
        train_classifier(_config(cohort, out, lr=5e-3))


# --- report attributes ---------------------------------------------------------------------------

def test_attribute_head_training_decodes_to_report_wording(cohort):
    out = cohort.root / "attributes"
    cfg = _config(cohort, out, task="attributes", folds=2, iterations=15, lr=1e-2)
    losses = []
    result = train_classifier(cfg, on_iteration=lambda f, i, loss: losses.append((f, loss)))
    fold0 = [v for f, v in losses if f == 0]
    assert np.mean(fold0[-5:]) < np.mean(fold0[:5])  # the grouped cross-entropy goes down
    bundle = torch.load(out / "fold_0" / "model.pth", weights_only=True)
    sd = bundle["state_dict"]
    # PASTA stage-2 style: the attribute head is trained, the (frozen) encoder is the init's.
    assert not torch.equal(sd["unet.head.4.weight"], cohort.init_sd["head.4.weight"])
    key = "conv_blocks_context.3.blocks.1.conv.weight"
    assert torch.equal(sd[f"unet.{key}"], cohort.init_sd[key])
    preds = pd.read_csv(result.predictions, keep_default_na=False)
    for g in ATTRIBUTE_GROUPS:
        assert set(preds[f"{g.name}_pred"]) <= set(g.options[:4] if g.name == "shape" else g.options)
    truth = {r["id"]: r for r in cohort.rows}
    assert preds["density"].tolist() == [truth[i]["density"] for i in preds["id"]]
    assert preds["surface"].tolist() == [truth[i]["margin"] for i in preds["id"]]
    metrics = pd.read_csv(out / "metrics.csv")
    pooled = metrics[metrics.scope == "all"]
    assert set(pooled.attribute) == {g.name for g in ATTRIBUTE_GROUPS}
    assert set(pooled.metric) == {"ACC", "F1_macro"}
    assert pooled.estimate.between(0, 1).all()
    # predict_table on new rows (no attribute columns) gives the wording too.
    bare = cohort.root / "bare.csv"
    inputs = ("id", "image", "coordX", "coordY", "coordZ")
    pd.DataFrame([{k: r[k] for k in inputs} for r in cohort.rows[:3]]).to_csv(bare, index=False)
    applied = predict_table(out / "fold_0" / "model.pth", bare, device="cpu", progress=False)
    assert "density" not in applied.columns
    assert set(applied["density_pred"]) <= {"Hypodense", "Isodense", "Hyperdense"}


# --- CLI: roi task, progress lines, predict ---------------------------------------------------------

def test_cli_roi_train_and_predict(cohort):
    from PASTALib.cli.main import main

    out = cohort.root / "roi"
    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(io.StringIO()):
        rc = main(["classify", "train", "--task", "roi", "--table", str(cohort.table), "--out", str(out),
                   "--label-col", "density", "--folds", "2", "--iterations", "4", "--input-size", "32",
                   "--init", str(cohort.init), "--device", "cpu", "--progress-lines", "--no-progress-bar",
                   "--n-boot", "50"])
    assert rc == 0, buf.getvalue()
    fractions = [float(line.split()[1]) for line in buf.getvalue().splitlines() if line.startswith("PROGRESS ")]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns[:6]) == ["id", "fold", "label", "label_value", "prob_0", "prob_1"]
    # Text classes are indexed in sorted order: Hyperdense = 0, Hypodense = 1.
    assert (preds["label"] == (preds["label_value"] == "Hypodense").astype(int)).all()
    assert json.loads((out / "classify_config.json").read_text())["class_values"] == ["Hyperdense", "Hypodense"]
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        rc = main(["classify", "predict", "--model", str(out / "fold_1" / "model.pth"), "--table", str(cohort.table),
                   "--out", str(out / "applied.csv"), "--label-col", "density", "--device", "cpu"])
    assert rc == 0
    applied = pd.read_csv(out / "applied.csv")
    assert len(applied) == N_CASES and {"prob_0", "prob_1", "pred", "pred_value"} <= set(applied.columns)


# --- errors ---------------------------------------------------------------------------------------

def test_clear_errors(cohort, tmp_path, monkeypatch):
    from PASTALib.cli.main import main

    rows = [dict(r) for r in cohort.rows]
    # A missing column: named, with the columns that are there.
    no_organ = tmp_path / "no_organ.csv"
    pd.DataFrame([{k: v for k, v in r.items() if k != "organ"} for r in rows]).to_csv(no_organ, index=False)
    with pytest.raises(ClassifyError, match=r"lacks column\(s\) 'organ'.*columns present: \['id', 'image'"):
        read_case_table(no_organ, "detection")
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        rc = main(["classify", "train", "--task", "detection", "--table", str(no_organ), "--out", str(tmp_path / "o")])
    assert rc == 2 and err.getvalue().startswith("error:") and "'organ'" in err.getvalue()
    assert not (tmp_path / "o").exists()  # nothing written for a bad table
    # An unknown attribute value: the allowed wordings are listed.
    bad = [dict(r) for r in rows]
    bad[3]["density"] = "Very bright"
    bad_attr = tmp_path / "bad_attr.csv"
    pd.DataFrame(bad).to_csv(bad_attr, index=False)
    with pytest.raises(ClassifyError, match=r"row 3, column 'density'.*allowed: Hypodense, Isodense, Hyperdense"):
        read_case_table(bad_attr, "attributes")
    # An organ the case's label map lacks.
    eso = [dict(r, organ="esophagus") for r in rows]
    eso_table = cohort.root / "eso.csv"  # beside the images (relative paths)
    pd.DataFrame(eso).to_csv(eso_table, index=False)
    with pytest.raises(AnatomyError, match=r"row 0 \(case0\): organ esophagus not found"):
        train_classifier(_config(cohort, tmp_path / "eso", table=str(eso_table), crops_dir=None))
    # Too few cases of a class for the folds.
    few = cohort.root / "few.csv"
    pd.DataFrame(rows[:7]).to_csv(few, index=False)  # 4 tumour, 3 normal
    with pytest.raises(ClassifyError, match=r"\{'0': 3, '1': 4\}.*needs at least 5 cases per class.*--folds 3"):
        train_classifier(_config(cohort, tmp_path / "few", table=str(few)))
    # No PASTA weights where they are expected: the message says where to get them.
    monkeypatch.setenv("PASTA_WEIGHTS_DIR", str(tmp_path / "no_weights"))
    with pytest.raises(MissingWeightsError, match="PASTA weights not found"):
        train_classifier(_config(cohort, tmp_path / "w", init=None))
