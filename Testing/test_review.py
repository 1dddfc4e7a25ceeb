"""Blinded realism reader studies: creation + blinding, sessions (crash, resume, concurrency), statistics."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from PASTALib.labels import LesionType
from PASTALib.review import (
    ATTRIBUTES,
    AnswerLockedError,
    RatingRangeError,
    ReaderSession,
    ReviewError,
    SourceCase,
    StudySettings,
    StudyTamperedError,
    UnknownReaderError,
    add_reader,
    create_study,
    load_key,
    real_case,
    synthetic_case,
    verify_study,
)
from PASTALib.review import analysis
from PASTALib.review.study import balance

REPO = Path(__file__).resolve().parents[1]
REPORT_LUNG = {"shape": "Irregular", "density": "Hyperdense", "heterogeneity": "Heterogeneous",
               "surface": "Ill-defined margin", "invasion": "Close relationship with adjacent structures"}
REVEALING = "PASTA-Gen synthetic seed"


# ------------------------------------------------------------------ synthetic inputs


def _simple_insertion(ct: sitk.Image, seed: int) -> tuple[sitk.Image, sitk.Image, dict]:
    """TEST-ONLY STAND-IN for the synthesizer: blend a smoothed ~+900 HU ellipsoid into lung.

    Lung = air (< -400 HU) components not touching the in-plane border; the centre is a seeded
    lung voxel at least 15 mm from non-lung.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)  # z, y, x
    spacing = np.asarray(ct.GetSpacing())[::-1]
    air = hu < -400
    lung = np.zeros_like(air)
    for z in range(air.shape[0]):
        comp, n = ndimage.label(air[z])
        border = set(np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]])))
        lung[z] = np.isin(comp, [i for i in range(1, n + 1) if i not in border])
    depth = ndimage.distance_transform_edt(lung, sampling=spacing)
    candidates = np.argwhere(depth > 15)
    centre = candidates[rng.integers(len(candidates))]
    radii = rng.uniform(8, 12, 3)
    grid = np.indices(hu.shape, dtype=np.float32)
    r = np.sqrt(sum(((grid[a] - centre[a]) * spacing[a] / radii[a]) ** 2 for a in range(3)))
    weight = 1.0 / (1.0 + np.exp((r - 1.0) / 0.12))
    out = sitk.GetImageFromArray(np.rint(hu + 900.0 * weight).astype(np.int16))
    out.CopyInformation(ct)
    labels = np.where(lung, 1, 0).astype(np.uint8)
    labels[weight > 0.5] = 11
    lab = sitk.GetImageFromArray(labels)
    lab.CopyInformation(ct)
    report = {"lesion_type": "lung_tumor", "label_value": 11, "shape": "Round-like", "density": "Hyperdense",
              "heterogeneity": "Homogeneous", "surface": "Well-defined margin",
              "invasion": "No close relationship with surrounding structures", "seed": seed, "method": "test insertion"}
    return out, lab, report


def _synthesize(ct: sitk.Image, seed: int) -> tuple[sitk.Image, sitk.Image, dict, str]:
    """PASTALib.synth when it works on this CT; otherwise the test-only simple insertion."""
    try:
        from PASTALib.anatomy.lungmask import classical_lung_mask
        from PASTALib.synth.pipeline import synthesize_lesion_in_masks
        from PASTALib.synth.spec import LesionSpec

        result = synthesize_lesion_in_masks(ct, classical_lung_mask(ct), LesionSpec(LesionType.LUNG_TUMOR, seed=seed))
        return result.ct, result.labels, json.loads(result.report.to_json()), "PASTALib.synth"
    except Exception as exc:  # noqa: BLE001 - the synthesizer is developed in parallel; fall back, say so
        print(f"PASTALib.synth unavailable ({type(exc).__name__}: {exc}); using the test-only insertion")
        out, lab, report = _simple_insertion(ct, seed)
        return out, lab, report, "test insertion"


def _write_synthetic_folder(folder: Path, ct: sitk.Image, labels: sitk.Image, report: dict) -> None:
    """Synthesizer layout; the CT header carries a revealing description the study must strip."""
    folder.mkdir(parents=True)
    sitk.WriteImage(sitk.Cast(ct, sitk.sitkFloat32), str(folder / "ct.nii.gz"))
    sitk.WriteImage(labels, str(folder / "label.nii.gz"))
    image = nib.load(folder / "ct.nii.gz")
    image.header["descrip"] = REVEALING.encode()
    image.header["aux_file"] = b"synth"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header), folder / "ct.nii.gz")
    (folder / "report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def lung_study(shared_data: Path, tmp_path_factory) -> dict:
    """2 real pyradiomics lung tumours + 2 synthetic lung tumours in the same CTs' lungs."""
    from PASTALib.io import read_ct

    root = tmp_path_factory.mktemp("lung_study")
    data = shared_data / "pyradiomics"
    real, synthetic, methods = [], [], []
    for i in (1, 2):
        (root / f"report{i}.json").write_text(json.dumps(REPORT_LUNG))
        real.append(real_case(data / f"lung{i}_image.nrrd", data / f"lung{i}_label.nrrd", "lung_tumor",
                              root / f"report{i}.json", [1]))
        ct, labels, report, method = _synthesize(read_ct(data / f"lung{i}_image.nrrd"), seed=i)
        _write_synthetic_folder(root / "synth" / f"case{i}", ct, labels, report)
        synthetic.append(synthetic_case(root / "synth" / f"case{i}"))
        methods.append(method)
    created = create_study(real, synthetic, root / "study", settings=StudySettings(seed=3))
    return {"created": created, "root": root, "methods": methods}


# ------------------------------------------------------------------ tiny fast studies for sessions


def _tiny_cases(root: Path, n: int, seed: int) -> tuple[list[SourceCase], list[SourceCase]]:
    rng = np.random.default_rng(seed)
    real, synthetic = [], []
    for i in range(2 * n):
        hu = rng.normal(-800, 30, (20, 24, 24)).astype(np.int16)
        hu[8:13, 9:15, 9:14] += 850
        mask = np.zeros(hu.shape, np.uint8)
        mask[8:13, 9:15, 9:14] = 1
        img, lab = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(mask)
        for im in (img, lab):
            im.SetSpacing((0.8, 0.8, 2.0) if i < n else (1.0, 1.0, 1.0))
        if i < n:
            sitk.WriteImage(img, str(root / f"real{i}.nrrd"))
            sitk.WriteImage(lab, str(root / f"real{i}_mask.nrrd"))
            real.append(real_case(root / f"real{i}.nrrd", root / f"real{i}_mask.nrrd", "lung_tumor", dict(REPORT_LUNG)))
        else:
            folder = root / f"syn{i}"
            folder.mkdir()
            sitk.WriteImage(img, str(folder / "img.nii.gz"))  # `pasta synth generate` layout (lung_study: ct.nii.gz)
            sitk.WriteImage(lab * 11, str(folder / "label.nii.gz"))
            (folder / "report.json").write_text(json.dumps({"lesion_type": "lung_tumor", **REPORT_LUNG}))
            synthetic.append(synthetic_case(folder))
    return real, synthetic


@pytest.fixture
def tiny_study(tmp_path: Path):
    """Factory: a 2n-case study on small volumes (fast), optionally allowing answer changes."""

    def make(n: int = 6, allow_changes: bool = False, readers=("r1",)) -> Path:
        src = tmp_path / f"src{n}{allow_changes}"
        src.mkdir()
        real, synthetic = _tiny_cases(src, n, seed=n)
        study = tmp_path / f"study{n}{allow_changes}"
        create_study(real, synthetic, study, settings=StudySettings(seed=1, fov_mm=16, allow_changes=allow_changes))
        for reader in readers:
            add_reader(study, reader)
        return study

    return make


def test_duplicate_sources_are_refused(tmp_path: Path):
    """A scan used twice would be analysed as two independent cases: refuse (same file, or same voxels)."""
    real, synthetic = _tiny_cases(tmp_path, 3, seed=9)
    assert synthetic[0].image.name == "img.nii.gz"  # generate's layout is read
    with pytest.raises(ReviewError, match=r"same scan is used twice \(same source file\).*real0.nrrd"):
        create_study([*real, real[0]], [*synthetic, synthetic[1]], tmp_path / "s1")
    shutil.copy(tmp_path / "real0.nrrd", tmp_path / "real0_copy.nrrd")
    copy = real_case(tmp_path / "real0_copy.nrrd", tmp_path / "real0_mask.nrrd", "lung_tumor", dict(REPORT_LUNG))
    # A relabelled folder holding the same voxels as a real scan (converted to NIfTI: other file bytes).
    folder = tmp_path / "syn_copy"
    folder.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "real1.nrrd")), str(folder / "ct.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "real1_mask.nrrd")) * 11, str(folder / "label.nii.gz"))
    (folder / "report.json").write_text(json.dumps({"lesion_type": "lung_tumor", **REPORT_LUNG}))
    for reals, synths in (([*real[:2], copy], synthetic), (real, [*synthetic[:2], synthetic_case(folder)])):
        with pytest.raises(ReviewError, match=r"identical voxels"):
            create_study(reals, synths, tmp_path / "s2", tmp_path / "k2", settings=StudySettings(fov_mm=16))
        assert not (tmp_path / "s2").exists() and not (tmp_path / "k2").exists()
        assert not list(tmp_path.glob(".s2.partial*"))


def _count(db_path: Path, table: str, reader: str | None = None) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        if reader:
            return conn.execute(f"SELECT COUNT(*) FROM {table} WHERE reader = ?", (reader,)).fetchone()[0]
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _answers_csv(path: Path, study: Path, seed: int) -> dict[str, int]:
    """A scripted reader: one random realism per case (and accuracy of every attribute)."""
    rng = np.random.default_rng(seed)
    ids = json.loads((study / "study.json").read_text())["case_ids"]
    values = {c: int(rng.integers(1, 6)) for c in ids}
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "realism", *ATTRIBUTES, "reason"])
        for c in ids:
            writer.writerow([c, values[c], *(int(rng.integers(1, 6)) for _ in ATTRIBUTES), f"reason {c}"])
    return values


def _rate_cmd(study: Path, reader: str, answers: Path, pace: float = 0.0) -> list[str]:
    return [sys.executable, "-m", "PASTALib", "review", "rate", str(study), reader, "--answers", str(answers), "--pace", str(pace)]


# ------------------------------------------------------------------ creation and blinding


def test_study_is_balanced_and_key_kept_apart(lung_study):
    created = lung_study["created"]
    print("synthetic cases made by:", lung_study["methods"])
    assert created.counts == {"lung_tumor": {"real": 2, "synthetic": 2}}
    assert created.dropped == [] and created.warnings == []
    assert created.key_dir.parent == created.study_dir.parent  # beside, never inside
    key = load_key(created.key_dir)
    assert sorted(key["cases"]) == created.case_ids
    assert sorted(c["origin"] for c in key["cases"].values()) == ["real", "real", "synthetic", "synthetic"]
    assert set(key["sha256"]) >= {f"cases/{c}/image.nii.gz" for c in created.case_ids}
    # Nothing in the reader folder names an origin or a source file.
    for path in created.study_dir.rglob("*"):
        if path.is_file() and path.suffix == ".json":
            text = path.read_text().lower()
            for word in ("origin", "synthetic", "real\"", "lung1", "lung2", "nrrd", "seed", "method"):
                assert word not in text, (path, word)
    assert verify_study(created.study_dir, created.key_dir) == len(key["sha256"])


def test_exported_files_do_not_reveal_origin(lung_study):
    created = lung_study["created"]
    origin = {c: e["origin"] for c, e in load_key(created.key_dir)["cases"].items()}
    facts: dict[str, list] = {}
    for case_id in created.case_ids:
        folder = created.study_dir / "cases" / case_id
        names = tuple(sorted(p.name for p in folder.iterdir()))
        files = {}
        for name in ("image.nii.gz", "mask.nii.gz"):
            raw = (folder / name).read_bytes()
            data = gzip.decompress(raw)
            header = nib.Nifti1Header.from_fileobj(io.BytesIO(data))
            files[name] = {
                "gzip_header": raw[:10],  # no stored file name, mtime 0
                "nifti_header": data[:352],  # every header field, byte for byte
                "uncompressed_size": len(data),
                "dtype": str(header.get_data_dtype()),
                "zooms": header.get_zooms(),
                "descrip": header["descrip"].item(),
                "mtime": (folder / name).stat().st_mtime,
            }
        image = np.asarray(nib.load(folder / "image.nii.gz").dataobj)
        case = json.loads((folder / "case.json").read_text())
        facts[case_id] = [names, files, sorted(case), case["report"] is not None, image.dtype.str,
                          bool(image.min() >= -1024 and image.max() <= 3071), (folder / "image.nii.gz").stat().st_size]
    reference = facts[created.case_ids[0]]
    for case_id, fact in facts.items():
        assert fact[:6] == reference[:6], f"{case_id} ({origin[case_id]}) differs in file metadata"
        assert fact[1]["image.nii.gz"]["descrip"] == b"" and fact[1]["image.nii.gz"]["dtype"] == "int16"
        assert fact[1]["mask.nii.gz"]["dtype"] == "uint8" and fact[1]["image.nii.gz"]["zooms"] == (1.0, 1.0, 1.0)
    # Compressed size depends on content only: all cases in one size class (within 30 %).
    sizes = {o: [facts[c][6] for c in facts if origin[c] == o] for o in ("real", "synthetic")}
    allsizes = sizes["real"] + sizes["synthetic"]
    assert max(allsizes) / min(allsizes) < 1.3, sizes
    # Scaling is explicit identity (no hidden offset encoding).
    raw = gzip.decompress((created.study_dir / "cases" / created.case_ids[0] / "image.nii.gz").read_bytes())
    assert np.frombuffer(raw[112:120], "<f4").tolist() == [1.0, 0.0]


def test_study_image_matches_source_hu(lung_study):
    """The anonymised image is the source CT resampled (lesion at the centre): no HU shift."""
    created = lung_study["created"]
    key = load_key(created.key_dir)
    case_id = next(c for c, e in key["cases"].items() if e["origin"] == "real" and "lung2" in e["image"])
    image = sitk.ReadImage(str(created.study_dir / "cases" / case_id / "image.nii.gz"))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(created.study_dir / "cases" / case_id / "mask.nii.gz")))
    assert image.GetOrigin() == (-64.0, -64.0, -64.0)
    volume_ml = mask.sum() / 1000.0
    assert 40 < volume_ml < 57  # pyradiomics: 48.4 ml (nearest resampling of 5 mm slices)
    source_mean = -63.9 if "lung1" in key["cases"][case_id]["image"] else 7.6
    mean = sitk.GetArrayFromImage(image)[mask > 0].mean()
    assert abs(mean - source_mean) < 60  # linear resampling blurs the border of a 5 mm-slice lesion


def test_balance_drops_surplus_deterministically():
    def case(origin, name, t="lung_tumor"):
        return SourceCase(origin, Path(f"/x/{name}.nii.gz"), Path(f"/x/{name}_m.nii.gz"), LesionType.parse(t))

    cases = [case("real", f"r{i}") for i in range(3)] + [case("synthetic", "s0"), case("real", "liver", "liver_tumor")]
    kept, dropped = balance(cases, seed=5)
    assert sorted(c.origin for c in kept) == ["real", "synthetic"]
    assert len(dropped) == 3
    assert [d["reason"] for d in dropped if d["lesion_type"] == "liver_tumor"] == ["no synthetic liver_tumor case to pair with"]
    assert balance(list(reversed(cases)), seed=5) == (kept, dropped)  # order of input does not matter
    chosen = {str(balance(cases, seed=s)[0][0].image) for s in range(20)}
    assert len(chosen) > 1  # the seed decides which surplus case is dropped


def test_cli_create_from_csv_and_synthetic_folders(tmp_path, capsys):
    from PASTALib.cli.main import main as pasta_main

    def main(argv):
        return pasta_main(["review", *argv])

    real, synthetic = _tiny_cases(tmp_path, 3, seed=2)
    (tmp_path / "r.json").write_text(json.dumps(REPORT_LUNG))
    with open(tmp_path / "real.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "mask", "lesion_type", "report", "lesion_values"])
        for case in real[:2]:  # 2 real vs 3 synthetic: one synthetic is dropped
            writer.writerow([case.image.name, case.mask.name, "lung_tumor", "r.json", "1"])
    study = tmp_path / "out" / "study"
    rc = main(["create", str(study), "--real-csv", str(tmp_path / "real.csv"), "--synthetic", str(tmp_path),
               "--fov", "16", "--seed", "9"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 real + 2 synthetic" in out and "dropped synthetic" in out and "surplus synthetic" in out
    assert (tmp_path / "out" / "study_key" / "key.json").is_file()
    assert main(["status", str(study)]) == 0 and "no readers yet" in capsys.readouterr().out
    assert main(["rate", str(study), "nobody"]) == 2
    assert "Unknown reader 'nobody'" in capsys.readouterr().err


def test_report_presence_must_not_reveal_origin(tmp_path):
    real = [SourceCase("real", Path("/x/a.nrrd"), Path("/x/a_m.nrrd"), LesionType.LUNG_TUMOR)]
    syn = [SourceCase("synthetic", Path("/x/b.nii.gz"), Path("/x/b_m.nii.gz"), LesionType.LUNG_TUMOR, dict(REPORT_LUNG))]
    with pytest.raises(ReviewError, match="reveals the origin"):
        create_study(real, syn, tmp_path / "study")
    with pytest.raises(ReviewError, match="outside the study folder"):
        create_study(real, syn, tmp_path / "study", tmp_path / "study" / "key")


# ------------------------------------------------------------------ sessions


def test_session_order_resume_and_errors(tiny_study):
    study = tiny_study(6, readers=("r1", "r2"))
    with ReaderSession(study, "r1") as s:
        order = s.order
        assert s.progress() == (0, 12) and s.current().position == 1
        for _ in range(3):
            view = s.current()
            s.rate(view.case_id, 4, {"shape": 5, "invasion": 2}, reason="looks fine", seconds=2.5)
            s.next()
        paths = s.case_paths(order[0])
        assert paths.image.name == "image.nii.gz" and paths.centre_lps_mm == (0.0, 0.0, 0.0)
        with pytest.raises(AnswerLockedError, match="already answered"):
            s.rate(order[0], 3)
        for bad in (0, 6, 3.5, "x", None, True):
            with pytest.raises(RatingRangeError, match="1 to 5"):
                s.rate(order[5], bad)
        with pytest.raises(RatingRangeError):
            s.rate(order[5], 3, {"shape": 9})
        with pytest.raises(RatingRangeError, match="Unknown report attribute"):
            s.rate(order[5], 3, {"size": 3})
    with ReaderSession(study, "r1") as s:  # resume: same order, first unanswered case
        assert s.order == order and s.progress() == (3, 12)
        assert s.current().case_id == order[3] and s.current().position == 4
        assert s.previous().answer.realism == 4
        answer = s.answers()[order[0]]
        assert answer.attributes == {"shape": 5, "invasion": 2} and answer.seconds == 2.5 and answer.reason == "looks fine"
    with ReaderSession(study, "r2") as s:
        assert sorted(s.order) == sorted(order) and s.order != order
    with pytest.raises(UnknownReaderError, match=r"'r1', 'r2'.*add-reader"):
        ReaderSession(study, "dr_who")


def test_changes_allowed_keep_an_audit_trail(tiny_study):
    study = tiny_study(2, allow_changes=True)
    with ReaderSession(study, "r1") as s:
        case_id = s.current().case_id
        s.rate(case_id, 2)
        assert s.rate(case_id, 5).revision == 2
        assert s.answers()[case_id].realism == 5
    assert _count(study / "responses.sqlite", "answers") == 1
    assert _count(study / "responses.sqlite", "answer_log") == 2


def test_tampered_study_file_is_named(tiny_study):
    study = tiny_study(2)
    key = study.parent / f"{study.name}_key"
    case_id = json.loads((study / "study.json").read_text())["case_ids"][1]
    target = study / "cases" / case_id / "mask.nii.gz"
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(StudyTamperedError, match=f"cases/{case_id}/mask.nii.gz changed"):
        verify_study(study)
    with ReaderSession(study, "r1") as s, pytest.raises(StudyTamperedError, match=case_id):
        s.case_paths(case_id)
    manifest = study / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"study_id"', '"study_id" ', 1))
    with pytest.raises(StudyTamperedError, match="manifest.json"):
        verify_study(study, key)


def test_sigkill_mid_session_then_resume(tiny_study, tmp_path):
    study = tiny_study(8)
    expected = _answers_csv(tmp_path / "a.csv", study, seed=11)
    db_path = study / "responses.sqlite"
    proc = subprocess.Popen(_rate_cmd(study, "r1", tmp_path / "a.csv", pace=0.25), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _count(db_path, "answers") < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    k = _count(db_path, "answers")
    assert 3 <= k < 16 and _count(db_path, "answer_log") == k
    with ReaderSession(study, "r1") as s:
        assert s.current().position == k + 1  # resumes at the first unanswered case
    done = subprocess.run(_rate_cmd(study, "r1", tmp_path / "a.csv"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {k} of 16 answered" in done.stdout
    assert _count(db_path, "answers") == 16 and _count(db_path, "answer_log") == 16  # none lost, none twice
    with ReaderSession(study, "r1") as s:
        assert {c: a.realism for c, a in s.answers().items()} == expected


def test_interactive_prompt_loop(tiny_study):
    study = tiny_study(2, readers=("r1",))
    # case 1: "9" is refused, then 4 with shape accuracy 5 (others skipped); case 2: back, then quit.
    keys = "9\n4\n5\n\n\n\n\nb\nq\n"
    run = subprocess.run([sys.executable, "-m", "PASTALib", "review", "rate", str(study), "r1"], cwd=REPO,
                         input=keys, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "(1 of 4)" in run.stdout and "enter a whole number from 1 to 5" in run.stdout
    assert "your answer: realism 4 (final in this study)" in run.stdout and "1 of 4 answered" in run.stdout
    with ReaderSession(study, "r1") as s:
        (answer,) = s.answers().values()
        assert (answer.realism, answer.attributes) == (4, {"shape": 5}) and answer.seconds is not None


def test_concurrent_readers_share_one_database(tiny_study, tmp_path):
    readers = ("r1", "r2", "r3")
    study = tiny_study(10, readers=readers)
    expected = {r: _answers_csv(tmp_path / f"{r}.csv", study, seed=i) for i, r in enumerate(readers)}
    procs = [subprocess.Popen(_rate_cmd(study, r, tmp_path / f"{r}.csv", pace=0.05), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in readers[:2]]
    deadline = time.monotonic() + 60
    while _count(study / "responses.sqlite", "answers", "r1") < 2 or _count(study / "responses.sqlite", "answers", "r2") < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    with ReaderSession(study, "r3") as s:  # a third reader in this process while both others write
        view = s.current()
        while view is not None:
            s.rate(view.case_id, expected["r3"][view.case_id])
            view = s.next()
    assert any(p.poll() is None for p in procs), "the readers did not overlap; slow the scripted ones down"
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    conn = sqlite3.connect(study / "responses.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == 1
    conn.close()
    for reader in readers:
        with ReaderSession(study, reader) as s:
            assert {c: a.realism for c, a in s.answers().items()} == expected[reader]
    assert _count(study / "responses.sqlite", "answer_log") == 60


# ------------------------------------------------------------------ statistics vs hand computation


def test_auc_and_threshold_metrics_by_hand():
    real, syn = np.array([5, 4, 3]), np.array([4, 2, 1])
    scores, is_real = np.r_[real, syn], np.r_[[True] * 3, [False] * 3]
    # Pairs (real > synthetic) + half ties: 5>4,2,1; 4=4 (0.5), 4>2,1; 3>2,1 => 7.5 of 9.
    assert analysis.auc(scores, is_real) == pytest.approx(7.5 / 9)
    assert analysis._auc_rank(scores, is_real) == pytest.approx(7.5 / 9)
    m = analysis.threshold_metrics(scores, is_real, 4)  # called real: 5, 4 | 4
    assert (m["sensitivity"], m["specificity"], m["accuracy"]) == pytest.approx((2 / 3, 2 / 3, 4 / 6))
    boot = analysis.bootstrap_auc(np.array([5, 5, 4, 1, 2, 1.0]), is_real, 200, seed=0)
    assert boot["auc"] == 1.0 and boot["ci95"] == [1.0, 1.0] and boot["n_undefined"] == 0
    a = analysis.bootstrap_auc(scores.astype(float), is_real, 300, seed=4)
    assert a == analysis.bootstrap_auc(scores.astype(float), is_real, 300, seed=4)
    assert a["ci95"][0] <= a["auc"] <= a["ci95"][1]
    # A reader who rated one real and one synthetic case: replicates that draw only the NaN case(s) are undefined.
    partial = analysis.bootstrap_auc(np.array([5, np.nan, np.nan, 1, np.nan, np.nan]), is_real, 300, seed=1)
    assert partial["auc"] == 1.0 and 0 < partial["n_undefined"] < 300
    # Wilson interval and exact binomial test (statsmodels / scipy) against their formulas.
    z = 1.959963984540054
    centre, half = (4 + z * z / 2) / (6 + z * z), z / (6 + z * z) * np.sqrt(4 * 2 / 6 + z * z / 4)
    assert analysis.proportion_ci(4, 6) == pytest.approx([centre - half, centre + half])
    assert analysis.binomial_test(4, 6) == pytest.approx(2 * (15 + 6 + 1) / 64)


def test_quadratic_kappa_by_hand():
    a = np.array([1, 2, 3, 4, 5, 3, 2])
    b = np.array([1, 3, 3, 5, 4, 3, 1])
    observed = np.zeros((5, 5))
    for x, y in zip(a, b):
        observed[x - 1, y - 1] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = np.array([[(i - j) ** 2 for j in range(5)] for i in range(5)]) / 16
    kappa = 1 - (weights * observed).sum() / (weights * expected).sum()
    assert analysis.weighted_kappa(a, b) == pytest.approx(kappa)


def test_icc_by_anova_hand_formula():
    m = np.array([[1, 2, 3, 4, 5, 3], [2, 2, 3, 5, 4, 3], [1, 3, 3, 4, 5, 2]], float)  # readers x cases
    k, n = m.shape
    grand = m.mean()
    ss_rows = k * ((m.mean(0) - grand) ** 2).sum()  # between cases
    ss_cols = n * ((m.mean(1) - grand) ** 2).sum()  # between readers
    ss_err = ((m - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    msw = (ss_cols + ss_err) / (n * (k - 1))
    icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)  # Shrout & Fleiss ICC(2,1)
    icc1 = (msr - msw) / (msr + (k - 1) * msw)
    table = {row["type"]: row["icc"] for row in analysis.icc_table(m)}
    assert table["ICC(A,1)"] == pytest.approx(icc2)
    assert table["ICC(1,1)"] == pytest.approx(icc1)


def _alpha_ordinal_by_hand(m: np.ndarray) -> float:
    """Krippendorff (2011) ordinal alpha from the coincidence matrix, written out independently."""
    o = np.zeros((5, 5))
    for unit in m.T:
        unit = unit[~np.isnan(unit)].astype(int)
        if unit.size < 2:
            continue
        for i, j in ((i, j) for i in range(unit.size) for j in range(unit.size) if i != j):
            o[unit[i] - 1, unit[j] - 1] += 1 / (unit.size - 1)
    n_c = o.sum(1)
    n = n_c.sum()
    delta = np.zeros((5, 5))
    for c in range(5):
        for k in range(5):
            lo, hi = min(c, k), max(c, k)
            delta[c, k] = (n_c[lo:hi + 1].sum() - (n_c[c] + n_c[k]) / 2) ** 2
    expected = np.outer(n_c, n_c)
    return 1 - (n - 1) * (o * delta).sum() / (expected * delta).sum()


def test_krippendorff_ordinal_alpha_by_hand():
    m = np.array([[1, 2, 3, 4, 5, 3, np.nan], [2, 2, 3, 5, 4, 3, 1], [1, 3, np.nan, 4, 5, 2, 2]], float)
    assert analysis.krippendorff_ordinal(m) == pytest.approx(_alpha_ordinal_by_hand(m))


def test_quadratic_kappa_rows_equals_sklearn():
    rng = np.random.default_rng(3)
    a, b = rng.integers(1, 6, (2, 40, 9))
    fast = analysis.quadratic_kappa_rows(a, b)
    slow = [analysis.weighted_kappa(x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    assert np.isnan(analysis.quadratic_kappa_rows([3, 3, 3], [3, 3, 3])[0])


def _rows(matrix: np.ndarray, origin: list[str], lesion_type: list[str]) -> list[dict]:
    return [{"reader": f"R{i}", "case_id": f"c{j:02d}", "origin": origin[j], "lesion_type": lesion_type[j],
             "realism": int(v), **{k: 3 for k in ATTRIBUTES}}
            for i, row in enumerate(matrix) for j, v in enumerate(row) if not np.isnan(v)]


def test_mixed_model_matches_balanced_anova_and_tost_holm():
    """Balanced crossed design: the fixed-effect SE of a case-level factor equals the closed form
    sqrt((sigma_case^2 + sigma_e^2 / R) * (1/n_real + 1/n_syn)) and the estimate the mean difference."""
    rng = np.random.default_rng(5)
    n_readers, n_cases = 4, 12
    origin = ["real" if j % 2 == 0 else "synthetic" for j in range(n_cases)]
    lesion = ["lung" if j < 6 else "liver" for j in range(n_cases)]
    case_effect = rng.normal(0, 0.7, n_cases)
    matrix = np.clip(np.round(3 + case_effect[None] + rng.normal(0, 0.6, (n_readers, n_cases))
                              + np.arange(n_readers)[:, None] * 0.3), 1, 5)
    rows = _rows(matrix, origin, lesion)
    fit = analysis.mixed_model_difference(rows, margin=1.0)
    real = np.array([o == "real" for o in origin])
    case_means = matrix.mean(axis=0)
    assert fit["difference"] == pytest.approx(case_means[real].mean() - case_means[~real].mean(), abs=1e-6)
    vc = fit["variance_components"]
    expected_se = np.sqrt((vc["case"] + vc["residual"] / n_readers) * (1 / real.sum() + 1 / (~real).sum()))
    assert fit["se"] == pytest.approx(expected_se, rel=1e-3)
    lo, hi = fit["ci90"]
    assert hi - lo == pytest.approx(2 * 1.6448536 * fit["se"])
    assert (fit["tost_p"] < 0.05) == (-1.0 < lo and hi < 1.0)
    both = analysis.realism_differences(rows, margin=1.0)
    ps = sorted(e["tost_p"] for e in both["by_type"])
    holm = sorted(e["tost_p_holm"] for e in both["by_type"])
    assert holm[0] == pytest.approx(min(1.0, 2 * ps[0]))
    assert holm[1] == pytest.approx(min(1.0, max(2 * ps[0], ps[1])))


def test_interim_study_does_not_crash_and_says_why():
    """Early in a study with shuffled orders: no case has two readers yet, readers have seen one class."""
    origin = ["real", "synthetic"] * 4
    matrix = np.full((4, 8), np.nan)
    for i in range(4):
        matrix[i, 2 * i] = 4 if i % 2 else 5   # each reader: one real and one synthetic case of their own
        matrix[i, 2 * i + 1] = 2
    results = analysis.analyze_rows(_rows(matrix, origin, ["lung"] * 8), n_boot=50)
    json.dumps(analysis._clean(results), allow_nan=False)
    assert results["complete"] is False
    alpha = results["agreement"]["krippendorff_alpha"]
    assert np.isnan(alpha["value"]) and "no case has been rated by two readers" in alpha["reason"]
    assert all("0 case(s) rated by both readers" in k["reason"] for k in results["agreement"]["kappa_pairs"])
    assert "undefined: 0 case(s) rated by every reader" in results["agreement"]["icc_primary"]["reason"]
    assert any("incomplete design" in n for n in results["all_readers"]["auc"]["notes"])
    # One reader so far: no random-reader analysis, and the reason is given.
    one = analysis.analyze_rows(_rows(matrix[:1], origin, ["lung"] * 8), n_boot=20)
    only_real = analysis.analyze_rows(_rows(matrix[:1, :1], origin, ["lung"] * 8), n_boot=20)["per_reader"][0]
    assert "has not rated cases of both origins" in only_real["auc_case_bootstrap"]["reason"]
    assert "not rated a synthetic case yet" in only_real["specificity_reason"] and only_real["accuracy_ci95"][1] > 0
    assert any("at least 2 readers" in n for n in one["all_readers"]["auc"]["notes"])
    assert "too few" in one["realism_difference"]["all"]["reason"]
    assert one["agreement"]["note"] == "Agreement needs at least two readers."
    # One reader who rated every case once: ratings independent, the model is OLS = Student's t-test.
    from scipy import stats

    ratings = np.array([[5, 2, 4, 3, 4, 1, 3, 2.0]])
    solo = analysis.mixed_model_difference(_rows(ratings, origin, ["lung"] * 8), margin=0.5)
    assert solo["model"] == "realism ~ real, OLS" and "no random effect" in solo["notes"][0]
    real = np.array([o == "real" for o in origin])
    t = stats.ttest_ind(ratings[0, real], ratings[0, ~real])
    assert solo["p_difference"] == pytest.approx(t.pvalue) and solo["difference"] == pytest.approx(2.0)


# ------------------------------------------------------------------ end to end: CLI + analysis


def matrix_of(table: dict, plans: dict, ids: list) -> np.ndarray:
    return np.array([[table[r, c] for c in ids] for r in plans], float)


def test_cli_end_to_end_analysis(lung_study, tmp_path, capsys):
    from PASTALib.cli.main import main as pasta_main

    def main(argv):
        return pasta_main(["review", *argv])

    created = lung_study["created"]
    study = tmp_path / "study"
    key = tmp_path / "study_key"
    shutil.copytree(created.study_dir, study)
    shutil.copytree(created.key_dir, key)
    origin = {c: e["origin"] for c, e in load_key(key)["cases"].items()}
    # Reader A tells them apart perfectly, B is fooled by one synthetic case, C rates all 4.
    plans = {"A": {"real": [5, 5], "synthetic": [1, 2]}, "B": {"real": [4, 3], "synthetic": [4, 2]},
             "C": {"real": [4, 4], "synthetic": [4, 4]}}
    ids = sorted(origin)
    table = {}
    for reader, plan in plans.items():
        assert main(["add-reader", str(study), reader]) == 0
        rows, it = [], {o: iter(v) for o, v in plan.items()}
        for c in ids:
            table[reader, c] = next(it[origin[c]])
            rows.append([c, table[reader, c], 4, 3, 5, 4, 2])
        with open(tmp_path / f"{reader}.csv", "w", newline="") as stream:
            csv.writer(stream).writerows([["case_id", "realism", *ATTRIBUTES], *rows])
        assert main(["rate", str(study), reader, "--answers", str(tmp_path / f"{reader}.csv")]) == 0
    assert main(["verify", str(study), "--key", str(key)]) == 0
    assert main(["status", str(study), "--json"]) == 0
    assert '"A": [\n      4,\n      4\n    ]' in capsys.readouterr().out
    assert main(["export", str(study), str(tmp_path / "blind.csv")]) == 0
    with open(tmp_path / "blind.csv") as stream:
        header = next(csv.reader(stream))
    assert "origin" not in header and "source_image" not in header
    out = tmp_path / "analysis"
    assert main(["analyze", str(study), "--key", str(key), "--out", str(out), "--n-boot", "1000", "--seed", "7"]) == 0

    results = json.loads((out / "results.json").read_text())
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Krippendorff" in html
    with open(out / "answers.csv") as stream:
        exported = list(csv.DictReader(stream))
    assert len(exported) == 12 and {r["origin"] for r in exported} == {"real", "synthetic"}
    reals = [table[r, c] for r in plans for c in ids if origin[c] == "real"]
    syns = [table[r, c] for r in plans for c in ids if origin[c] == "synthetic"]
    lung = results["realism_by_type"][0]
    assert lung["lesion_type"] == "lung_tumor"
    assert lung["real"]["mean"] == pytest.approx(np.mean(reals)) and lung["real"]["sd"] == pytest.approx(np.std(reals, ddof=1))
    assert lung["synthetic"]["mean"] == pytest.approx(np.mean(syns))
    auc = {p["reader"]: p["auc"] for p in results["per_reader"]}
    # A: all real > all synthetic = 1; B: real {4,3} vs synthetic {4,2}: (0.5+1+0+1)/4; C: all ties = 0.5.
    assert auc == pytest.approx({"A": 1.0, "B": 2.5 / 4, "C": 0.5})
    mrmc = results["all_readers"]["auc"]
    assert mrmc["estimate"] == pytest.approx(np.mean(list(auc.values())))
    from PASTALib.eval.mrmc import or_hillis

    expected = or_hillis(matrix_of(table, plans, ids), np.array([origin[c] == "real" for c in ids]))["modalities"][0]
    assert mrmc["ci95"] == pytest.approx(expected["ci"]) and mrmc["p_vs_null"] == pytest.approx(expected["p"])
    assert mrmc["df"] == pytest.approx(expected["df"]) and mrmc["notes"] == []
    # "All readers" accuracy is the mean of the reader accuracies (not pooled ratings), with its OR CI.
    assert results["all_readers"]["accuracy"]["estimate"] == pytest.approx(np.mean([p["accuracy"] for p in results["per_reader"]]))
    assert "realism difference" in html.lower() and "Obuchowski" in html and "Primary ICC: ICC(A,1)" in html
    a = {p["reader"]: p for p in results["per_reader"]}["A"]
    assert (a["sensitivity"], a["specificity"], a["accuracy"]) == (1.0, 1.0, 1.0)
    assert a["accuracy_ci95"] == pytest.approx(analysis.proportion_ci(4, 4)) and a["accuracy_p_vs_50"] == pytest.approx(0.125)
    pairs = {tuple(k["readers"]): k["kappa_quadratic"] for k in results["agreement"]["kappa_pairs"]}
    matrix = np.array([[table[r, c] for c in ids] for r in plans], float)
    assert pairs["A", "B"] == pytest.approx(analysis.weighted_kappa(matrix[0], matrix[1]))
    assert results["agreement"]["krippendorff_alpha_ordinal"] == pytest.approx(_alpha_ordinal_by_hand(matrix))
    assert results["agreement"]["icc_n_cases"] == 4
    accuracy = {(e["lesion_type"], e["origin"]): e for e in results["attribute_accuracy"]}
    assert accuracy["lung_tumor", "synthetic"]["shape"]["mean"] == 4.0
    assert accuracy["lung_tumor", "real"]["invasion"]["mean"] == 2.0
    assert results["agreement"]["icc_primary"]["n_cases"] == 4
    print("lung study results:", json.dumps({"per_reader_auc": auc, "all_readers_auc": mrmc,
                                             "realism_difference": results["realism_difference"]["all"],
                                             "alpha": results["agreement"]["krippendorff_alpha_ordinal"]}))


def test_cli_group_is_registered():
    from PASTALib.cli import main as cli_main

    assert "review" in cli_main.GROUPS
    parser = cli_main.build_parser()
    args = parser.parse_args(["review", "verify", "somewhere"])
    assert args.func.__name__ == "_verify"
