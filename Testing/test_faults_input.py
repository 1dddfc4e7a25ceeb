"""Fault suite, input side: bad images, label maps, checkpoints, tables and numeric options.

Every case runs ``pasta`` in-process on small inputs made here and checks the CLI policy: status 2,
one ``error:`` line naming the problem, the input files byte-identical and no output written.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PASTALib.cli.main import build_parser, main
from PASTALib.errors import CheckpointError, InputImageError


# --------------------------------------------------------------------------- helpers
def _ct_array() -> np.ndarray:
    """(z, y, x) int16: air around a soft-tissue block with some fat, so it passes the CT check."""
    a = np.full((20, 32, 32), -1000, np.int16)
    a[2:18, 4:28, 4:28] = 40
    a[2:18, 4:8, 4:28] = -100
    return a


def _write(array: np.ndarray, path: Path, spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=str(path).endswith((".gz", ".nrrd", ".mha")))
    return path


@pytest.fixture()
def case(tmp_path: Path) -> dict[str, Path]:
    """A tiny CT with a PASTA organ map (liver 2, kidney 8) and a TotalSegmentator map (liver 5,
    right kidney 2, vertebra 30) on its grid."""
    ct = _ct_array()
    pasta = np.zeros(ct.shape, np.uint8)
    pasta[4:16, 6:20, 6:20] = 2
    pasta[4:12, 20:26, 20:26] = 8
    ts = np.zeros(ct.shape, np.uint8)
    ts[4:16, 6:20, 6:20] = 5
    ts[4:12, 20:26, 20:26] = 2
    ts[2:18, 14:18, 14:18] = 30
    folder = tmp_path / "in"
    folder.mkdir()
    return {"ct": _write(ct, folder / "ct.nii.gz"), "pasta": _write(pasta, folder / "pasta.nii.gz"),
            "ts": _write(ts, folder / "ts.nii.gz"), "dir": folder}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


def assert_refused(capsys, argv: list[str], words: list[str], inputs: Path, outputs: list[Path] = ()) -> str:
    """Status 2, exactly one error line holding ``words`` (case-insensitive), ``inputs`` unchanged, no ``outputs``."""
    before = _hashes(inputs)
    code, err = _run(capsys, argv)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    assert _hashes(inputs) == before, "an input file changed"
    for out in outputs:
        assert not out.exists() or (out.is_dir() and not any(out.iterdir())), f"partial output in {out}"
    return lines[0]


# --------------------------------------------------------------------------- 1. the checked image reader
def _truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _bad_image(kind: str, folder: Path) -> tuple[Path, list[str]]:
    ct = _ct_array()
    if kind == "missing":
        return folder / "nothing.nii.gz", ["not found"]
    if kind == "empty":
        (folder / "empty.nii.gz").write_bytes(b"")
        return folder / "empty.nii.gz", ["empty"]
    if kind.startswith("gz-truncated-"):  # in the header, early in the data, in the middle, at the very end
        fraction = float(kind.rsplit("-", 1)[1])
        path = _write(ct, folder / "t.nii.gz")
        if fraction == 1.0:
            path.write_bytes(path.read_bytes()[:-1])  # only the gzip trailer lost its last byte
        else:
            _truncate(path, fraction)
        return path, ["truncated"]
    if kind == "nii-truncated":
        return _truncate(_write(ct, folder / "t.nii"), 0.8), ["truncated"]
    if kind == "nii-one-byte-short":
        path = _write(ct, folder / "t.nii")
        path.write_bytes(path.read_bytes()[:-1])
        return path, ["truncated"]
    if kind == "nrrd-raw-truncated":
        return _truncate(_write(ct, folder / "t.nrrd"), 0.8), ["truncated"]
    if kind == "nrrd-gz-truncated":
        return _truncate(_write(ct, folder / "t.nrrd"), 0.6), ["corrupt"]
    if kind == "mha-truncated":
        image = sitk.GetImageFromArray(ct)
        sitk.WriteImage(image, str(folder / "t.mha"), useCompression=False)
        return _truncate(folder / "t.mha", 0.7), ["corrupt"]
    if kind == "garbage":
        (folder / "g.nii.gz").write_bytes(os.urandom(4000))
        return folder / "g.nii.gz", ["corrupt"]
    if kind in ("nan", "inf"):
        values = (ct > 0).astype(np.float32)  # valid as a CT and as a label map but for one voxel
        values[5, 5, 5] = np.nan if kind == "nan" else np.inf
        return _write(values, folder / f"{kind}.nii.gz"), ["nan or infinite"]
    if kind == "nan-nrrd":
        values = (ct > 0).astype(np.float32)
        values[5, 5, 5] = np.nan
        return _write(values, folder / "nan.nrrd"), ["nan or infinite"]
    if kind == "unreadable":
        path = _write(ct, folder / "locked.nii.gz")
        path.chmod(0)
        return path, ["permission denied"]
    if kind == "zero-spacing":
        path = _write(ct, folder / "z.nii")
        raw = bytearray(path.read_bytes())
        raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1]
        (folder / "z.nii.gz").write_bytes(gzip.compress(bytes(raw)))
        path.unlink()
        return folder / "z.nii.gz", ["spacing", "> 0"]
    if kind == "2d":
        return _write(ct[5], folder / "slice.nii.gz", spacing=(1.0, 1.0)), ["3d"]
    if kind == "vector":
        image = sitk.Compose([sitk.GetImageFromArray(ct)] * 3)
        sitk.WriteImage(image, str(folder / "rgb.nii.gz"))
        return folder / "rgb.nii.gz", ["components"]
    if kind == "empty-folder":
        (folder / "series").mkdir()
        return folder / "series", ["no dicom series"]
    raise AssertionError(kind)


IMAGE_FAULTS = ["missing", "empty", "gz-truncated-0.02", "gz-truncated-0.3", "gz-truncated-0.7", "gz-truncated-0.99",
                "gz-truncated-1.0", "nii-truncated", "nii-one-byte-short", "nrrd-raw-truncated", "nrrd-gz-truncated",
                "mha-truncated", "garbage", "nan", "inf", "nan-nrrd", "unreadable", "zero-spacing", "2d", "vector", "empty-folder"]


@pytest.mark.parametrize("kind", IMAGE_FAULTS)
def test_bad_image_is_refused(kind: str, tmp_path: Path, capsys) -> None:
    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    path, words = _bad_image(kind, tmp_path)
    assert_refused(capsys, ["io", "info", path], [*words, path.name], tmp_path)


@pytest.mark.parametrize("kind", ["gz-truncated-0.7", "nan", "zero-spacing"])
def test_bad_label_map_is_refused(kind: str, case: dict[str, Path], tmp_path: Path, capsys) -> None:
    path, words = _bad_image(kind, case["dir"])
    out = tmp_path / "out"
    assert_refused(capsys, ["synth", "lesion", "--ct", case["ct"], "--organs", path, "--type", "liver_tumor",
                            "--out", out], [*words, path.name], case["dir"], [out])


def test_truncated_image_in_a_training_folder_is_refused(case: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Every reader goes through the checked one: a truncated CT among training cases is not zero-filled."""
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        (data / name / "ct.nii.gz").write_bytes(case["ct"].read_bytes())
        (data / name / "organs.nii.gz").write_bytes(case["pasta"].read_bytes())
    _truncate(data / "b" / "ct.nii.gz", 0.5)
    out = tmp_path / "out"
    assert_refused(capsys, ["refine", "train", "--data", data, "--out", out, "--iterations", "1"],
                   ["truncated", "ct.nii.gz"], data, [out])


def test_library_readers_share_the_checked_reader(tmp_path: Path) -> None:
    """The training, fine-tuning and evaluation loaders reject what read_image rejects."""
    from PASTALib.eval.tasks import evaluate_segmentation_dirs
    from PASTALib.train.data import CaseRecord, load_case

    bad = _truncate(_write(_ct_array(), tmp_path / "img.nii.gz"), 0.5)
    good = _write(np.zeros((20, 32, 32), np.uint8), tmp_path / "label.nii.gz")
    with pytest.raises(InputImageError, match="truncated"):
        load_case(CaseRecord(name="x", image_path=bad, label_path=good, report_path=None))
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "c.nii.gz").write_bytes(good.read_bytes())
    (tmp_path / "pred" / "c.nii.gz").write_bytes(bad.read_bytes())
    with pytest.raises(InputImageError, match="truncated"):
        evaluate_segmentation_dirs(tmp_path / "pred", tmp_path / "ref")


# --------------------------------------------------------------------------- 2. label maps vs CT and kind
def test_totalsegmentator_map_declared_pasta_is_refused(case: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    line = assert_refused(capsys, ["synth", "lesion", "--ct", case["ct"], "--organs", case["ts"], "--labels-kind", "pasta",
                                   "--type", "liver_tumor", "--out", out],
                          ["not a pasta label map", "--labels-kind totalsegmentator", "5 liver", "2 kidney_right"],
                          case["dir"], [out])
    assert "30" in line


def test_anatomy_refuses_a_totalsegmentator_map_as_pasta_labels(case: dict[str, Path], capsys) -> None:
    assert_refused(capsys, ["anatomy", "organs", "--ct", case["ct"], "--labels", case["ts"], "--pasta-labels"],
                   ["not a pasta label map", "ts.nii.gz"], case["dir"])


def test_labels_kind_is_detected() -> None:
    from PASTALib.anatomy.labelmaps import resolve_labels_kind

    ts = sitk.GetImageFromArray(np.array([[[0, 5, 2, 30]]] * 2, np.uint16))
    pasta = sitk.GetImageFromArray(np.array([[[0, 2, 8, 12]]] * 2, np.uint16))
    assert resolve_labels_kind(ts, "auto") == "totalsegmentator"
    assert resolve_labels_kind(pasta, "auto") == "pasta"
    assert resolve_labels_kind(pasta, "totalsegmentator") == "totalsegmentator"  # explicit kinds are kept
    with pytest.raises(InputImageError, match="above 25"):
        resolve_labels_kind(ts, "pasta")


def _moved_labels(case: dict[str, Path], how: str) -> tuple[Path, list[str]]:
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case["ts"])))
    path = case["dir"] / f"labels_{how}.nii.gz"
    if how == "half":  # covers the lower half of the CT only
        _write(labels[:10], path)
        return path, ["size (32, 32, 10)", "(32, 32, 20)"]
    if how == "origin":
        _write(labels, path, origin=(0.0, 0.0, 15.0))
        return path, ["origin"]
    if how == "spacing":
        _write(labels, path, spacing=(2.0, 2.0, 2.5))
        return path, ["spacing"]
    if how == "direction":
        _write(labels, path, direction=(1, 0, 0, 0, -1, 0, 0, 0, -1))
        return path, ["direction"]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["half", "origin", "spacing", "direction"])
def test_label_map_on_another_grid_is_refused(how: str, case: dict[str, Path], tmp_path: Path, capsys) -> None:
    path, words = _moved_labels(case, how)
    out = tmp_path / "out"
    assert_refused(capsys, ["synth", "lesion", "--ct", case["ct"], "--organs", path, "--type", "liver_tumor",
                            "--out", out], ["not on the CT's voxel grid", "--resample-labels", *words], case["dir"], [out])


def test_anatomy_refuses_a_moved_map_unless_resampling_is_asked(case: dict[str, Path], capsys) -> None:
    path, _ = _moved_labels(case, "half")
    argv = ["anatomy", "organs", "--ct", case["ct"], "--labels", path, "--json"]
    assert_refused(capsys, argv, ["not on the CT's voxel grid", "size"], case["dir"])
    code, err = _run(capsys, [*argv, "--resample-labels"])
    assert code == 0, err


def test_grid_within_float_rounding_is_accepted(case: dict[str, Path], capsys) -> None:
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case["ts"])))
    path = _write(labels, case["dir"] / "rounded.nii.gz", spacing=(2.00001, 2.0, 3.0), origin=(0.001, 0.0, -0.002))
    code, err = _run(capsys, ["anatomy", "organs", "--ct", case["ct"], "--labels", path, "--json"])
    assert code == 0, err


# --------------------------------------------------------------------------- 3. checkpoints and tables
def _checkpoint_fault(kind: str, path: Path) -> None:
    if kind == "garbage":
        path.write_bytes(os.urandom(2048))
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(64, 64)}, "optimizer": {}, "iteration": 3, "config": {}}, path)
        path.write_bytes(path.read_bytes()[:700])
    elif kind == "wrong-keys":
        torch.save({"weights": {"w": torch.zeros(2)}}, path)
    elif kind == "not-a-dict":
        torch.save([1, 2, 3], path)
    elif kind == "text":
        path.write_text("<html>login</html>")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong-keys", "not-a-dict", "text"])
def test_corrupt_resume_checkpoint_is_a_checkpoint_error(kind: str, tmp_path: Path) -> None:
    from PASTALib.train.common import read_resume_state

    path = tmp_path / "checkpoint_last.pt"
    _checkpoint_fault(kind, path)
    with pytest.raises(CheckpointError) as info:
        read_resume_state(path, ("config", "model", "optimizer", "iteration"), f"Delete {path} to start over.")
    assert str(path) in str(info.value) and "Delete" in str(info.value)


def test_checkpoint_that_does_not_fit_the_model_is_a_checkpoint_error(tmp_path: Path) -> None:
    from PASTALib.train.common import restoring

    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match="does not fit"):
        with restoring(tmp_path / "checkpoint_last.pt", "Delete it."):
            model.load_state_dict({"weight": torch.zeros(5, 5)})


@pytest.mark.parametrize("kind", ["garbage", "wrong-keys"])
def test_refine_resume_from_a_corrupt_checkpoint_is_refused(kind: str, case: dict[str, Path], tmp_path: Path,
                                                            capsys) -> None:
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    (data / "ct.nii.gz").write_bytes(case["ct"].read_bytes())
    (data / "organs.nii.gz").write_bytes(case["pasta"].read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    _checkpoint_fault(kind, out / "checkpoint.pt")
    assert_refused(capsys, ["refine", "train", "--data", tmp_path / "data", "--out", out, "--iterations", "1",
                            "--resume", "--channels", "8,8", "--crop", "16"], ["checkpoint.pt"], out)


def _template(case: dict[str, Path], root: Path) -> Path:
    folder = root / "templates" / "t0"
    folder.mkdir(parents=True)
    (folder / "ct.nii.gz").write_bytes(case["ct"].read_bytes())
    (folder / "organs.nii.gz").write_bytes(case["ts"].read_bytes())
    return root / "templates"


@pytest.mark.parametrize("content", [b"\x00\xff\xfe garbage \x89PNG", b"not,a,manifest\n1,2,3\n"])
def test_garbage_generation_manifest_is_refused(content: bytes, case: dict[str, Path], tmp_path: Path,
                                                capsys) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    (out / "manifest.csv").write_bytes(content)
    assert_refused(capsys, ["synth", "generate", "--templates", _template(case, tmp_path), "--out", out,
                            "--per-type", "1", "--types", "liver_tumor", "--no-bar"],
                   ["manifest.csv", "delete it"], out)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]


def test_broken_case_json_is_generated_again(case: dict[str, Path], tmp_path: Path, capsys) -> None:
    """A finished case whose case.json is broken is not counted as done on resume: it is made again
    (deterministic from the seed), not trained on and not a traceback."""
    from PASTALib.synth.generate import case_list
    from PASTALib.labels import LesionType

    out = tmp_path / "gen"
    job = case_list([LesionType.LIVER_TUMOR], 1)[0]
    (out / job.rel_dir).mkdir(parents=True)
    (out / job.rel_dir / "case.json").write_text("{broken")
    (out / job.rel_dir / "report.json").write_text("{}")
    code, err = _run(capsys, ["synth", "generate", "--templates", _template(case, tmp_path), "--out", out,
                              "--per-type", "1", "--types", "liver_tumor", "--any-phase", "--no-bar"])
    assert code == 0, err
    assert json.loads((out / job.rel_dir / "case.json").read_text())["seed"] is not None


@pytest.mark.parametrize("text", ["{not json", json.dumps({"classes": [{"class": 2, "name": "x", "label_value": 1}]}),
                                  json.dumps({"classes": "x"})])
def test_garbage_classes_json_is_a_checkpoint_error(text: str, tmp_path: Path) -> None:
    from PASTALib.weights import read_classes

    (tmp_path / "classes.json").write_text(text)
    with pytest.raises(CheckpointError, match="classes"):
        read_classes(tmp_path / "classes.json")


# --------------------------------------------------------------------------- 4. numeric options
NUMERIC_FAULTS = [
    (["synth", "generate", "--templates", "t", "--out", "o", "--per-type", "0"], "--per-type", ">= 1"),
    (["synth", "generate", "--templates", "t", "--out", "o", "--per-type", "2", "--workers", "-1"], "--workers", ">= 1"),
    (["synth", "generate", "--templates", "t", "--out", "o", "--per-type", "2", "--crop-mm", "0"], "--crop-mm", ">= 1"),
    (["synth", "generate", "--templates", "t", "--out", "o", "--per-type", "2", "--max-attempts", "0"], "--max-attempts", ">= 1"),
    (["synth", "lesion", "--ct", "c", "--organs", "o", "--type", "liver_tumor", "--out", "x", "--seed", "-3"], "--seed", ">= 0"),
    (["segment", "--ct", "c", "--out", "o", "--overlap", "1"], "--overlap", "< 1"),
    (["segment", "--ct", "c", "--out", "o", "--overlap", "nan"], "--overlap", "finite"),
    (["segment", "--ct", "c", "--out", "o", "--spacing", "0"], "--spacing", "> 0"),
    (["segment", "--ct", "c", "--out", "o", "--sw-batch-size", "0"], "--sw-batch-size", ">= 1"),
    (["segment", "--ct", "c", "--out", "o", "--patch-size", "0"], "--patch-size", ">= 1"),
    (["segment", "--ct", "c", "--out", "o", "--min-lesion-volume", "-1"], "--min-lesion-volume", ">= 0"),
    (["geometry", "canonical", "a", "b", "--spacing", "inf"], "--spacing", "finite"),
    (["geometry", "canonical", "a", "b", "--spacing", "-1"], "--spacing", "> 0"),
    (["train", "stage1", "--data", "d", "--out", "o", "--lr", "0"], "--lr", "> 0"),
    (["train", "stage1", "--data", "d", "--out", "o", "--fg-fraction", "1.5"], "--fg-fraction", "<= 1"),
    (["finetune", "--data", "d", "--out", "o", "--folds", "1"], "--folds", ">= 2"),
    (["classify", "train", "--task", "roi", "--table", "t", "--out", "o", "--iterations", "0"], "--iterations", ">= 1"),
    (["refine", "train", "--data", "d", "--out", "o", "--weight-decay", "-0.1"], "--weight-decay", ">= 0"),
    (["embed", "probe", "--features", "f", "--out", "o", "--train", "1"], "--train", "< 1"),
    (["evaluate", "compare", "--a", "a", "--b", "b", "--n-perm", "0"], "--n-perm", ">= 1"),
    (["review", "create", "--out", "s", "--fov", "-5"], "--fov", ">= 0"),
    (["review", "analyze", "s", "--threshold", "9"], "--threshold", "<= 5"),
    (["synth", "generate", "--templates", "t", "--out", "o", "--per-type", "two"], "--per-type", "integer"),
    (["finetune", "--data", "d", "--k", "0,4"], "--k", ">= 1"),
    (["classify", "train", "--task", "roi", "--table", "t", "--out", "o", "--fold", "-1"], "--fold", ">= 0"),
    (["classify", "train", "--task", "roi", "--table", "t", "--out", "o", "--class-weights", "1,-2"], "--class-weights", "> 0"),
]


@pytest.mark.parametrize(("argv", "option", "allowed"), NUMERIC_FAULTS, ids=[f"{a[0]}{o}" for a, o, _ in NUMERIC_FAULTS])
def test_numeric_option_out_of_range_is_refused(argv: list[str], option: str, allowed: str, tmp_path: Path,
                                                capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run(capsys, argv)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1, err
    assert f"argument {option}" in lines[0] and allowed in lines[0], lines[0]
    assert not any(tmp_path.iterdir()), "a refused command wrote something"


def test_every_numeric_option_states_its_range() -> None:
    """No subcommand option converts with bare int/float (which accepts 0, negatives, nan and inf)."""
    bare = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}")
            elif action.type in (int, float):
                bare.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "pasta")
    assert not bare, bare


# --------------------------------------------------------------------------- 5. the CLI error policy
def test_output_under_a_file_is_one_line_with_the_path_and_a_fix(case: dict[str, Path], tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is needed")
    out = blocker / "canonical.nii.gz"
    line = assert_refused(capsys, ["geometry", "canonical", case["ct"], out], [str(blocker), "is a file", "choose"], case["dir"])
    assert "error: " in line and blocker.read_text() == "a file where a folder is needed"


@pytest.mark.parametrize("errno_value, words", [(errno.ENOSPC, ["no space left", "free disk space"]),
                                                (errno.EACCES, ["permission denied", "permissions"]),
                                                (errno.EROFS, ["read-only", "writable disk"])])
def test_an_unforeseen_os_error_is_one_line_with_the_path_and_a_fix(monkeypatch, tmp_path: Path, capsys,
                                                                    errno_value: int, words: list[str]) -> None:
    """The last resort of the CLI's policy: an OSError no check anticipated still ends in one line."""
    import PASTALib.cli.io as cli_io

    def fails(args):
        raise OSError(errno_value, os.strerror(errno_value), str(tmp_path / "x.nii.gz"))

    monkeypatch.setattr(cli_io, "_info", fails)
    line = assert_refused(capsys, ["io", "info", tmp_path / "x.nii.gz"], [str(tmp_path / "x.nii.gz"), "fix:", *words], tmp_path)
    assert "Traceback" not in line


def test_control_characters_in_user_text_are_escaped(tmp_path: Path, capsys) -> None:
    name = tmp_path / "evil\x1b]0;owned\x07\x1b[2J\r.nii.gz"
    line = assert_refused(capsys, ["io", "info", name], ["not found", "\\x1b"], tmp_path)
    assert not any(c in line for c in "\x1b\x07\r")


def test_control_characters_on_stdout_are_escaped(case: dict[str, Path], capsys) -> None:
    """What a command prints on success passes the same filter (here the label map's file name)."""
    labels = case["dir"] / "ts\x1b[2J.nii.gz"
    labels.write_bytes(case["ts"].read_bytes())
    code = main(["anatomy", "organs", "--ct", str(case["ct"]), "--labels", str(labels)])
    out = capsys.readouterr().out
    assert code == 0 and "\x1b" not in out and "ts\\x1b[2J.nii.gz" in out, out


def test_printable_keeps_newlines_and_text() -> None:
    from PASTALib.errors import printable

    assert printable("Zürich\tline\nnext \x1b[31mred\x9b") == "Zürich\tline\nnext \\x1b[31mred\\x9b"


@pytest.mark.parametrize("text, words", [
    ("ct,id\na.nii.gz,one,extra\n", ["line 2", "3 fields but the header has 2", "quote paths"]),
    ("path\na.nii.gz\n", ["needs a 'ct' column"]),
    ("ct,id\n,one\n", ["line 2", "empty 'ct'"]),
])
def test_bad_batch_csv_is_named_not_a_traceback(tmp_path: Path, text: str, words: list[str]) -> None:
    from PASTALib.infer.batch import discover_batch
    from PASTALib.errors import PastaError

    (tmp_path / "cases.csv").write_text(text)
    with pytest.raises(PastaError) as raised:
        discover_batch(tmp_path / "cases.csv")
    assert all(w in str(raised.value) for w in words), str(raised.value)
