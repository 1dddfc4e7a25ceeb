"""``pasta evaluate realism``: real lung tumours (pyradiomics' lung1/lung2) vs synthetic lesions end to end,
the classifier AUC on obviously different shapes (cubes vs balls) and on two samples of one distribution,
and the input errors (exit 2, one line, no output)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PASTALib.cli.main import main

REAL_SPACING_XYZ = (1.0, 1.0, 2.0)


def _pasta(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _write(array_zyx: np.ndarray, spacing_xyz, path: Path, origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _solid(kind: str, radii_mm, spacing_xyz, rng: np.random.Generator) -> np.ndarray:
    """A ball-like ellipsoid or an axis-aligned box with half-extents ``radii_mm`` on a (z, y, x) grid,
    centred with a random sub-voxel offset (so masks of one distribution are not identical)."""
    spacing_zyx = np.asarray(spacing_xyz, float)[::-1]
    radii = np.asarray(radii_mm, float)
    shape = np.ceil(2 * radii / spacing_zyx).astype(int) + 6
    centre = (shape - 1) / 2 * spacing_zyx + rng.uniform(-0.5, 0.5, 3) * spacing_zyx
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing_zyx))
    d = [np.abs(c - m) / r for c, m, r in zip(np.meshgrid(z, y, x, indexing="ij"), centre, radii)]
    if kind == "ball":
        return (d[0] ** 2 + d[1] ** 2 + d[2] ** 2 <= 1.0).astype(np.uint8)
    return (np.maximum(np.maximum(d[0], d[1]), d[2]) <= 1.0).astype(np.uint8)


def _radii(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(5.0, 9.0) * rng.uniform(0.8, 1.0, 3)


def _real_csv(root: Path, kind: str, n: int, rng: np.random.Generator) -> Path:
    rows = []
    for i in range(n):
        path = _write(_solid(kind, _radii(rng), REAL_SPACING_XYZ, rng), REAL_SPACING_XYZ, root / "real" / f"m{i}.nii.gz")
        rows.append({"mask": path.relative_to(root).as_posix(), "label": "1"})
    with open(root / "real.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["mask", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "real.csv"


def _synthetic_dir(root: Path, kind: str, n: int, rng: np.random.Generator, ct: np.ndarray | None = None) -> Path:
    """A PASTA-Gen layout without manifest: Lung/Tumor/<n>/label.nii.gz (lesion value 11) [+ img.nii.gz], 1 mm."""
    for i in range(n):
        mask = _solid(kind, _radii(rng), (1.0, 1.0, 1.0), rng)
        label = np.pad(mask * 11, 2).astype(np.uint8)
        label[0, 0, 0] = 1  # an organ voxel: not part of the lesion
        case = root / "Lung" / "Tumor" / f"{i:05d}"
        _write(label, (1.0, 1.0, 1.0), case / "label.nii.gz")
        if ct is not None:
            image = np.where(label == 11, 40, -850) + ct[: label.shape[0], : label.shape[1], : label.shape[2]]
            _write(image.astype(np.int16), (1.0, 1.0, 1.0), case / "img.nii.gz")
    return root


def test_real_lung_tumours_vs_synthetic_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    """lung1/lung2 (real CT + tumour mask) vs synthetic lesions with CTs: report files, matched spacing,
    real shape features equal to PyRadiomics' reference values, texture features when PyRadiomics is there."""
    pyradiomics = shared_data / "pyradiomics"
    with open(tmp_path / "real.csv", "w", newline="") as fh:
        fh.write("id,ct,mask\n")
        for case in ("lung1", "lung2"):
            fh.write(f"{case},{pyradiomics / f'{case}_image.nrrd'},{pyradiomics / f'{case}_label.nrrd'}\n")
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 30, (40, 40, 40)).astype(np.int16)
    synthetic = _synthetic_dir(tmp_path / "syn", "ball", 3, rng, ct=noise)
    try:
        import radiomics  # noqa: F401
        texture = []
    except ImportError:
        texture = ["--shape-only"]
    out = tmp_path / "report"
    rc, stdout, stderr = _pasta("evaluate", "realism", "--real", str(tmp_path / "real.csv"), "--synthetic",
                                str(synthetic), "--out", str(out), "--n-boot", "50", *texture)
    assert rc == 0, stderr
    assert {p.name for p in out.iterdir()} == {"realism.html", "realism.png", "features.csv", "distances.csv",
                                               "summary.json"}
    assert (out / "realism.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "realism.html").read_text()
    assert "data:image/png;base64," in html and "sphericity" in html
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_real"], summary["n_synthetic"]) == (2, 3)
    assert summary["auc"] is None and "at least 3" in summary["notes"][0]  # 2 real lesions: no classifier
    import pandas as pd

    features = pd.read_csv(out / "features.csv").set_index("case_id")
    real_spacings = {features.loc["lung1", "spacing_mm"], features.loc["lung2", "spacing_mm"]}
    assert set(features.loc[features["source"] == "synthetic", "spacing_mm"]) <= real_spacings  # matched
    with open(pyradiomics / "baseline" / "baseline_shape.csv", newline="") as fh:
        reference = {r["featureName"]: r for r in csv.DictReader(fh)}
    for case in ("lung1", "lung2"):  # the same mesh definitions as PyRadiomics' reference run
        for ours, theirs in (("sphericity", "Sphericity"), ("elongation", "Elongation"), ("flatness", "Flatness")):
            assert features.loc[case, ours] == pytest.approx(float(reference[f"original_shape_{theirs}"][case]), rel=0.03)
    if not texture:
        with open(pyradiomics / "baseline" / "baseline_firstorder.csv", newline="") as fh:
            first = {r["featureName"]: r for r in csv.DictReader(fh)}
        assert features.loc["lung2", "firstorder_Mean"] == pytest.approx(float(first["original_firstorder_Mean"]["lung2"]), abs=1.0)
        assert "glcm_Contrast" in features.columns
        # Synthetic lesions: 40 HU + noise in -850 HU lung, read back on the real 5 mm slices (partial volume
        # at the rim pulls the mean down, never up).
        assert features.loc[features["source"] == "synthetic", "firstorder_Mean"].between(-200, 45).all()


@pytest.mark.parametrize("synthetic_kind,expect_separable", [("box", True), ("ball", False)])
def test_classifier_auc_high_for_other_shapes_and_near_chance_for_the_same(
        tmp_path: Path, synthetic_kind: str, expect_separable: bool) -> None:
    rng = np.random.default_rng(1)
    real = _real_csv(tmp_path, "ball", 15, rng)
    synthetic = _synthetic_dir(tmp_path / "syn", synthetic_kind, 15, rng)
    out = tmp_path / "report"
    rc, stdout, stderr = _pasta("evaluate", "realism", "--real", str(real), "--synthetic", str(synthetic), "--out",
                                str(out), "--shape-only", "--n-boot", "200", "--trees", "50")
    assert rc == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    auc = summary["auc"]
    assert "C2ST AUC" in stdout
    if expect_separable:
        assert auc["estimate"] > 0.9 and auc["low"] > 0.75
        assert summary["most_separating"][0] in ("sphericity", "convexity", "max_diameter_ratio", "solidity")
    else:
        assert auc["low"] < 0.5 < auc["high"] and auc["estimate"] < 0.75
    import pandas as pd

    features = pd.read_csv(out / "features.csv")
    assert set(features.loc[features["source"] == "synthetic", "spacing_mm"]) == {"1x1x2"}  # acquisition matched


def test_input_errors_exit_2_without_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    real = _real_csv(tmp_path, "ball", 3, rng)
    synthetic = _synthetic_dir(tmp_path / "syn", "ball", 3, rng)
    out = tmp_path / "report"
    base = ("evaluate", "realism", "--real", str(real), "--synthetic", str(synthetic), "--out", str(out))
    # Texture features asked for without PyRadiomics: the message names the install command.
    monkeypatch.setitem(sys.modules, "radiomics", None)
    rc, _, stderr = _pasta(*base)
    assert rc == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1
    assert "no 'ct' column" in stderr and "--shape-only" in stderr  # mask-only CSV: checked first
    with open(tmp_path / "with_ct.csv", "w") as fh:
        fh.write(f"ct,mask\n{tmp_path / 'real' / 'm0.nii.gz'},{tmp_path / 'real' / 'm0.nii.gz'}\n")
    rc, _, stderr = _pasta(*base[:3], str(tmp_path / "with_ct.csv"), *base[4:])
    assert rc == 2 and "PyRadiomics" in stderr and "pip install --no-build-isolation pyradiomics==" in stderr
    # Missing file, empty lesion mask, empty synthetic folder, wrong type.
    (tmp_path / "bad.csv").write_text("mask\nreal/missing.nii.gz\n")
    rc, _, stderr = _pasta(*base[:3], str(tmp_path / "bad.csv"), *base[4:], "--shape-only")
    assert rc == 2 and "missing.nii.gz not found" in stderr
    (tmp_path / "label9.csv").write_text("mask,label\nreal/m0.nii.gz,9\n")
    rc, _, stderr = _pasta(*base[:3], str(tmp_path / "label9.csv"), *base[4:], "--shape-only")
    assert rc == 2 and "has no value [9]" in stderr
    (tmp_path / "empty").mkdir()
    rc, _, stderr = _pasta(*base[:5], str(tmp_path / "empty"), *base[6:], "--shape-only")
    assert rc == 2 and "no synthetic cases" in stderr
    rc, _, stderr = _pasta(*base, "--shape-only", "--types", "liver_tumor")
    assert rc == 2 and "of type liver_tumor" in stderr
    assert not out.exists()


def test_one_slice_mask_and_manifest_folder(tmp_path: Path) -> None:
    """A nodule contoured on one slice is measured, not refused; a folder with a manifest is read through it
    (failed rows and other types left out)."""
    from PASTALib.eval.realism import lesion_features
    from PASTALib.eval.realism_io import LesionCase, read_synthetic_dir

    flat = np.zeros((1, 12, 12), np.uint8)
    flat[0, 3:9, 4:10] = 1
    path = _write(flat, (0.7, 0.7, 2.5), tmp_path / "flat.nii.gz")
    row = lesion_features(LesionCase("flat", "real", path, None, None), spacing_xyz=None)
    assert row["spacing_mm"] == "0.7x0.7x2.5" and row["volume_mm3"] == pytest.approx(36 * 0.7 * 0.7 * 2.5, rel=0.35)
    rng = np.random.default_rng(3)
    root = _synthetic_dir(tmp_path / "syn", "ball", 2, rng)
    (root / "manifest.csv").write_text(
        "case_id,lesion_type,status,img,label\n"
        "lung_tumor-00000,lung_tumor,ok,Lung/Tumor/00000/img.nii.gz,Lung/Tumor/00000/label.nii.gz\n"
        "lung_tumor-00001,lung_tumor,failed,,\n"
        "liver_tumor-00000,liver_tumor,ok,Liver/Tumor/00000/img.nii.gz,Liver/Tumor/00000/label.nii.gz\n")
    cases = read_synthetic_dir(root, types=["lung_tumor"])
    assert [(c.case_id, c.values, c.ct) for c in cases] == [("lung_tumor-00000", (11,), None)]
    assert len(read_synthetic_dir(root)) == 2  # the liver case's files are missing: skipped when measured


def test_real_lesions_from_slices_thinner_than_the_templates_are_left_out(tmp_path: Path) -> None:
    """A `pasta synth generate` folder names its template CT (templates.index.json, case.json): its lesions carry
    that CT's 2.5 mm slice staircase, so only real lesions acquired with slices >= 2.5 mm are compared, at their
    spacings; with too few such real lesions all are kept and the summary says why."""
    from PASTALib.eval.realism_io import read_synthetic_dir

    rng = np.random.default_rng(3)
    syn = _synthetic_dir(tmp_path / "syn", "ball", 12, rng)
    template = _write(np.zeros((4, 8, 8), np.int16), (0.7, 0.7, 2.5), tmp_path / "template_ct.nii.gz")
    (syn / "templates.index.json").write_text(json.dumps({"chest": {"template": {"ct": str(template)}}}))
    for case in (syn / "Lung" / "Tumor").iterdir():
        (case / "case.json").write_text(json.dumps({"template": "chest"}))
    assert {c.source_slice_mm for c in read_synthetic_dir(syn)} == {2.5}

    def real_csv(name: str, thick: int, thin: int) -> Path:
        rows = []
        for i, spacing in enumerate([(0.7, 0.7, 2.5)] * thick + [(0.7, 0.7, 1.25)] * thin):
            path = _write(_solid("ball", _radii(rng), spacing, rng), spacing, tmp_path / name / f"m{i}.nii.gz")
            rows.append({"mask": str(path), "id": f"{spacing[2]}-{i}"})
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["mask", "id"])
            writer.writeheader()
            writer.writerows(rows)
        return tmp_path / f"{name}.csv"

    import pandas as pd

    for name, thick, thin in (("enough", 20, 10), ("too_few", 5, 10)):
        out = tmp_path / f"report_{name}"
        rc, _stdout, stderr = _pasta("evaluate", "realism", "--real", str(real_csv(name, thick, thin)), "--synthetic",
                                     str(syn), "--out", str(out), "--shape-only", "--n-boot", "50", "--trees", "20")
        assert rc == 0, stderr
        features = pd.read_csv(out / "features.csv")
        real, synthetic = features[features["source"] == "real"], features[features["source"] == "synthetic"]
        notes = " ".join(json.loads((out / "summary.json").read_text())["notes"])
        if name == "enough":
            assert len(real) == 20 and set(real["spacing_z_mm"]) == {2.5} and set(synthetic["spacing_z_mm"]) == {2.5}
            assert "the 20 of 30 acquired with slices >= 2.5 mm" in notes
        else:
            assert len(real) == 15 and set(synthetic["spacing_z_mm"]) == {1.25, 2.5}
            assert "only 5 real lesions come from slices >= 2.5 mm" in notes
