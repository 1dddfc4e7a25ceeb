"""PASTALib.embed: crops in LPS mm, probes against sklearn and against published TumorImagingBench
numbers, and the embedding pipeline end to end with a tiny random PastaUNet on the real lung
tumours of pyradiomics (lung1, lung2)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from PASTALib.embed import (
    cosine_similarity_matrix,
    crop_at_point,
    crop_grid,
    icc_2_1,
    knn_probe,
    logistic_probe,
    perturbations,
    perturbed_features,
    point_inside,
    ras_to_lps,
    repeated_split_auc,
    stability_report,
    summarize_by_kind,
)
from PASTALib.embed.extractor import EmbeddingError, LesionEmbedder, embed_table, load_embedder, read_features
from PASTALib.errors import MissingWeightsError
from PASTALib.io import read_ct
from PASTALib.model import PastaUNet, UNetConfig

torch.set_num_threads(1)

#: TumorImagingBench (AIM-Harvard/TumorImagingBench, notebooks/modelling/overall_results.csv):
#: FMCIB features, NSCLC-Radiomics 2-year survival, cosine k-NN probe (k tuned on validation),
#: test AUC 0.5770 [0.5496, 0.6044].
PUBLISHED_FMCIB_NSCLC_AUC = 0.5770381836945304


# --- crops and coordinates ----------------------------------------------------------------------

def test_crop_grid_is_centred_on_the_point() -> None:
    for size in (48, 49):
        grid = crop_grid((10.0, -20.5, 33.3), size)
        centre = grid.index_to_lps(np.full(3, (size - 1) / 2))
        assert np.allclose(centre, (10.0, -20.5, 33.3)) and grid.size == (size,) * 3


def test_crop_uses_lps_world_coordinates_for_any_orientation() -> None:
    """A bright voxel at a known LPS point lands at the crop centre, also for a RAS-stored image."""
    arr = np.full((40, 50, 60), -1000, np.int16)  # (z, y, x)
    arr[20, 25, 30] = 1000
    for direction in ((1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 1.0))
        img.SetOrigin((5.0, -7.0, 11.0))
        img.SetDirection(direction)
        point = img.TransformIndexToPhysicalPoint((30, 25, 20))
        crop = crop_at_point(img, point, size=9)  # odd: the point is the middle voxel
        assert crop.shape == (9, 9, 9)
        assert np.unravel_index(crop.argmax(), crop.shape) == (4, 4, 4) and crop.max() == pytest.approx(1000)
        assert point_inside(img, point) and not point_inside(img, np.asarray(point) + 500)
    assert ras_to_lps((1.0, 2.0, 3.0)) == (-1.0, -2.0, 3.0)


# --- probes -------------------------------------------------------------------------------------

def test_knn_probe_equals_sklearn_cosine_knn() -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier

    from PASTALib.embed.probes import knn_proba_all_k

    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 16)) + 3.0
    y = (X[:, 0] + rng.normal(0, 1, 90) > 3).astype(int)
    tr, va, te = np.arange(45), np.arange(45, 63), np.arange(63, 90)
    ks = [1, 3, 7, 15]
    mine = knn_proba_all_k(cosine_similarity_matrix(X[te], X[tr]), y[tr], ks, 2)
    for k, p in zip(ks, mine):
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(X[tr], y[tr]).predict_proba(X[te])
        assert np.allclose(p, ref)
    fit = knn_probe(X[tr], y[tr], X[va], y[va], X[te], y[te], ks=ks)
    best = max(ks, key=lambda k: (roc_auc_score(y[va], KNeighborsClassifier(n_neighbors=k, metric="cosine")
                                                 .fit(X[tr], y[tr]).predict_proba(X[va])[:, 1]), -k))
    assert fit.param == best


def test_logistic_probe_row_space_trick_is_exact() -> None:
    """With n < d the probe fits in the training row space; the result equals a direct fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 200))
    y = (X[:, :5].sum(axis=1) + rng.normal(0, 1, 60) > 0).astype(int)
    tr, va, te = np.arange(30), np.arange(30, 42), np.arange(42, 60)
    fit = logistic_probe(X[tr], y[tr], X[va], y[va], X[te], y[te], Cs=(0.01,), max_iter=5000)
    sc = StandardScaler().fit(X[tr])
    direct = LogisticRegression(C=0.01, max_iter=5000, tol=1e-10).fit(sc.transform(X[tr]), y[tr])
    assert fit.test_auc == pytest.approx(roc_auc_score(y[te], direct.predict_proba(sc.transform(X[te]))[:, 1]), abs=1e-6)


def test_icc_matches_pingouin() -> None:
    import pingouin as pg

    rng = np.random.default_rng(0)
    subj = rng.normal(0, 2, 12)
    ratings = subj[:, None] + rng.normal(0, 1, (12, 3)) + np.array([0, 0.5, -0.2])
    long = pd.DataFrame([(i, j, ratings[i, j]) for i in range(12) for j in range(3)], columns=["s", "r", "v"])
    table = pg.intraclass_corr(long, targets="s", raters="r", ratings="v").set_index("Type")
    ref = table.loc["ICC(A,1)" if "ICC(A,1)" in table.index else "ICC2", "ICC"]  # pingouin ≥0.7 / older names
    assert icc_2_1(ratings) == pytest.approx(ref)
    assert icc_2_1(np.stack([ratings, ratings * 2], axis=-1)) == pytest.approx([ref, ref])


def _tib_csv() -> Path | None:
    spec = importlib.util.find_spec("tumorimagingbench")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "evaluation" / "readii_eval" / "original.csv"
    return path if path.is_file() else None


def test_probe_reproduces_published_fmcib_nsclc_survival_auc() -> None:
    """NSCLC-Radiomics (421 patients, 2-year survival) with the FMCIB features that the PyPI
    package ``tumorimagingbench`` ships: our cosine k-NN probe over 50 stratified 50/20/30 splits
    vs the published 0.577. The logistic probe is reported for comparison."""
    path = _tib_csv()
    if path is None:
        pytest.skip("pip install --no-deps tumorimagingbench==0.1.4 (ships the NSCLC-Radiomics FMCIB features)")
    df = pd.read_csv(path)
    X = df[[f"pred_{i}" for i in range(4096)]].to_numpy(np.float32)
    y = df["survival"].to_numpy().astype(int)  # 1 = alive at 2 years (Survival.time > 730 d)
    assert X.shape == (421, 4096) and y.sum() == 169
    assert ((df["Survival.time"] > 730).astype(int) == y).all()
    knn = repeated_split_auc(X, y, probe="knn", rng=np.random.default_rng(0), n_repeats=50)
    logreg = repeated_split_auc(X, y, probe="logreg", rng=np.random.default_rng(0), n_repeats=10)
    print(f"\nFMCIB NSCLC-Radiomics 2-y survival AUC: published k-NN {PUBLISHED_FMCIB_NSCLC_AUC:.3f}; "
          f"ours k-NN {knn.mean:.3f} [{knn.ci_low:.3f}, {knn.ci_high:.3f}] (50 splits, split range "
          f"{knn.range_low:.3f}-{knn.range_high:.3f}); logistic {logreg.mean:.3f} [{logreg.ci_low:.3f}, "
          f"{logreg.ci_high:.3f}] (10 splits)")
    assert abs(knn.mean - PUBLISHED_FMCIB_NSCLC_AUC) <= 0.05
    assert 0.5 < logreg.mean < 0.75


# --- the embedding pipeline on real tumours ---------------------------------------------------

@pytest.fixture(scope="module")
def lung_cases(shared_data: Path) -> dict[str, dict]:
    """Tumour centres of lung1 / lung2 (label centroid, voxel index → LPS mm) and their CTs."""
    cases = {}
    for name in ("lung1", "lung2"):
        image = shared_data / "pyradiomics" / f"{name}_image.nrrd"
        label = sitk.ReadImage(str(shared_data / "pyradiomics" / f"{name}_label.nrrd"))
        centroid_zyx = np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(axis=0)
        point = np.array(label.TransformContinuousIndexToPhysicalPoint(centroid_zyx[::-1].tolist()))
        cases[name] = {"path": image, "point": point, "ct": read_ct(image)}
    return cases


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = PastaUNet(UNetConfig.tiny())
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def _table(cases: dict, path: Path, extra: int = 0) -> Path:
    rows = [dict(image_path=str(c["path"]), coordX=c["point"][0], coordY=c["point"][1], coordZ=c["point"][2],
                 label=i % 2, patient=name) for i, (name, c) in enumerate(cases.items())]
    for j in range(extra):  # more lesions: points 10 mm off the centres
        c = list(cases.values())[j % 2]
        p = c["point"] + np.array([10.0, 0, 0]) * (1 if j % 3 else -1)
        rows.append(dict(image_path=str(c["path"]), coordX=p[0], coordY=p[1], coordZ=p[2], label=j % 2, patient=f"x{j}"))
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_embed_table_shape_determinism_and_resume(lung_cases, tiny_checkpoint, tmp_path: Path, capsys) -> None:
    emb = load_embedder(tiny_checkpoint, device="cpu", crop_size=48, batch_size=2)
    table = _table(lung_cases, tmp_path / "lesions.csv", extra=2)  # 4 rows
    full = tmp_path / "full.csv"
    counts = embed_table(table, full, emb, npz=tmp_path / "full.npz", progress=False)
    assert counts == {"total": 4, "skipped": 0, "embedded": 4}
    meta, X = read_features(full)
    assert X.shape == (4, emb.feature_dim) == (4, 32) and np.isfinite(X).all()
    assert list(meta.columns[:6]) == ["row_id", "image_path", "coordX", "coordY", "coordZ", "label"]
    npz = np.load(tmp_path / "full.npz")
    assert np.array_equal(npz["features"], X) and list(npz["patient"]) == ["lung1", "lung2", "x0", "x1"]

    # determinism: a fresh model from the same file gives the same features
    again = tmp_path / "again.csv"
    embed_table(table, again, load_embedder(tiny_checkpoint, device="cpu", crop_size=48, batch_size=3), progress=False)
    assert np.allclose(read_features(again)[1], X, rtol=1e-5, atol=1e-6)

    # resume: keep the header + 2 rows and half of the third (killed mid-write), run again
    lines = full.read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.csv"
    partial.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    capsys.readouterr()
    counts = embed_table(table, partial, emb, progress=False, progress_lines=True)
    assert counts == {"total": 4, "skipped": 2, "embedded": 2}
    assert np.allclose(read_features(partial)[1], X, rtol=1e-5, atol=1e-6)
    assert embed_table(table, partial, emb, progress=False, progress_lines=True)["embedded"] == 0
    # one line per batch, counting the rows found done (2 + 2 of 4); none when nothing is left to do
    assert capsys.readouterr().out == "PROGRESS 1.0000 embedded 4/4\n"

    # an output made from other rows is refused
    other = _table({"lung2": lung_cases["lung2"], "lung1": lung_cases["lung1"]}, tmp_path / "other.csv")
    with pytest.raises(EmbeddingError, match="different input row"):
        embed_table(other, partial, emb, progress=False)


def test_missing_weights_and_bad_inputs(tmp_path: Path, tiny_checkpoint, monkeypatch) -> None:
    monkeypatch.setenv("PASTA_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MissingWeightsError, match="PASTA_final.pth"):
        load_embedder(None)
    with pytest.raises(EmbeddingError, match="multiple of 16"):
        load_embedder(tiny_checkpoint, device="cpu", crop_size=40)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"image_path": ["x.nrrd"], "x": [1]}).to_csv(bad, index=False)
    with pytest.raises(EmbeddingError, match="coordX"):
        embed_table(bad, tmp_path / "o.csv", load_embedder(tiny_checkpoint, device="cpu", crop_size=48), progress=False)


def test_cli_embed_extract_and_probe(lung_cases, tiny_checkpoint, tmp_path: Path, capsys) -> None:
    from PASTALib.cli import embed as embed_cli

    parser = argparse.ArgumentParser(prog="pasta")
    embed_cli.add_parser(parser.add_subparsers(dest="group"))
    table = _table(lung_cases, tmp_path / "t.csv")
    args = parser.parse_args(["embed", "extract", "--csv", str(table), "--out", str(tmp_path / "f.csv"),
                              "--weights", str(tiny_checkpoint), "--crop", "32", "--device", "cpu"])
    assert args.func(args) == 0
    assert read_features(tmp_path / "f.csv")[1].shape == (2, 32)
    assert "2 embedded" in capsys.readouterr().out
    # probe on synthetic features written in the same layout
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    feats = pd.DataFrame(rng.normal(size=(60, 8)) + y[:, None] * 0.8, columns=[f"feat_{i}" for i in range(8)])
    feats.insert(0, "label", y)
    feats.to_csv(tmp_path / "syn.csv", index=False)
    args = parser.parse_args(["embed", "probe", "--features", str(tmp_path / "syn.csv"), "--label", "label",
                              "--repeats", "5", "--out", str(tmp_path / "probe")])
    assert args.func(args) == 0
    res = pd.read_csv(tmp_path / "probe.csv")
    assert list(res.probe) == ["knn", "logreg"] and (res["mean"] > 0.7).all()


def test_feature_stability_on_real_tumours(lung_cases, tiny_checkpoint) -> None:
    """Shifts of the seed point (±2, ±3 mm on each axis), ±20 HU and 10 HU noise, tiny random model,
    48³ crops: numbers are printed (a random encoder is not a trained one: these say nothing about
    PASTA's own stability, they pin the pipeline)."""
    emb = load_embedder(tiny_checkpoint, device="cpu", crop_size=48, batch_size=16)
    feats = np.concatenate([perturbed_features(emb, c["ct"], [c["point"]], rng=np.random.default_rng(0))[0]
                            for c in lung_cases.values()])
    names = ["base"] + [s["name"] for s in perturbations()]
    report = stability_report(feats, names)
    summary = summarize_by_kind(report)
    print("\n" + summary.to_string(index=False))
    assert len(report) == 15 and set(summary.family) == {"shift_2mm", "shift_3mm", "hu", "noise"}
    by = summary.set_index("family")
    # intensity perturbations barely move the (instance-normalised) features
    assert by.loc["hu", "cosine_min"] > 0.999 and by.loc["noise", "cosine_min"] > 0.999
    assert (report["cosine_min"] > 0.99).all()


def test_small_shift_changes_features_less_than_a_far_point(lung_cases, tiny_checkpoint) -> None:
    """Mean cosine similarity to the centre's feature: the six ±2 mm shifts vs six points 60 mm
    away (in the scan), per tumour, 96³ crops (the default size)."""
    emb = load_embedder(tiny_checkpoint, device="cpu", crop_size=96, batch_size=13)
    assert emb.feature_dim == 32
    specs = perturbations(shifts_mm=(2.0,), hu_offsets=(), noise_sd=())
    for name, c in lung_cases.items():
        p = c["point"]
        far = [p + d for d in np.vstack([np.eye(3), -np.eye(3)]) * 60.0 if point_inside(c["ct"], p + d)]
        assert len(far) >= 4
        crops = [emb.crop(c["ct"], p)] + [emb.crop(c["ct"], p + s["offset"]) for s in specs] + [emb.crop(c["ct"], q) for q in far]
        f = emb.embed_crops(np.stack(crops))
        assert f.shape == (len(crops), 32)
        sim = cosine_similarity_matrix(f[:1], f[1:])[0]
        shift_sim, far_sim = sim[: len(specs)].mean(), sim[len(specs):].mean()
        print(f"\n{name}: mean cosine similarity 2 mm shifts {shift_sim:.5f}, far points {far_sim:.5f}")
        assert shift_sim > far_sim
        # the crops themselves: a 2 mm shift keeps the image, a far point does not
        r_shift = np.corrcoef(crops[0].ravel(), crops[1].ravel())[0, 1]
        r_far = np.corrcoef(crops[0].ravel(), crops[len(specs) + 1].ravel())[0, 1]
        assert r_shift > 0.9 > r_far


@pytest.mark.cuda
def test_embedder_runs_on_cuda_when_available(tiny_checkpoint, monkeypatch) -> None:
    """Same features on CUDA as on the CPU. TF32 is switched off for the comparison: with cuDNN's TF32
    convolutions (10-bit mantissa) features differ by ~1e-3 relative, which says nothing about the
    code. What remains is fp32 summation order (cuDNN vs oneDNN kernels, InstanceNorm reductions):
    ~1e-6 relative per layer, so 1e-4 relative to the features' norm is a bound with margin."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    emb = load_embedder(tiny_checkpoint, device="cuda", crop_size=32)
    cpu = load_embedder(tiny_checkpoint, device="cpu", crop_size=32)
    x = np.random.default_rng(0).uniform(-1000, 400, (2, 32, 32, 32)).astype(np.float32)
    on_cuda, on_cpu = emb.embed_crops(x), cpu.embed_crops(x)
    assert np.linalg.norm(on_cuda - on_cpu) <= 1e-4 * np.linalg.norm(on_cpu)


def test_lesion_embedder_rejects_odd_device() -> None:
    with pytest.raises(EmbeddingError):
        LesionEmbedder(PastaUNet(UNetConfig.tiny()), device=torch.device("cpu"), crop_size=24)
