"""Fault suite of `pasta review` (issue 13): corrupt answer databases, bad --answers files, hostile reader
names, blinding leaks through reports, outputs onto study files, broken case.json, stale partial folders,
and PASTA-Gen-30K subset folders as synthetic input (issue 18).

Every fault ends in one `error:` line and exit status 2 with the study's files (and the database, or at
least every answer in it) unchanged. Inputs are tiny volumes made here: the whole file runs in seconds.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PASTALib.cli.main import main as pasta_main
from PASTALib.review import ReviewError, SourceCase, StudySettings, add_reader, create_study, real_case, synthetic_case
from PASTALib.review.session import ReaderSession

REPORT = {"shape": "Irregular", "density": "Hyperdense", "heterogeneity": "Heterogeneous",
          "surface": "Ill-defined margin", "invasion": "Close relationship with adjacent structures"}


# ------------------------------------------------------------------ helpers


def _volume(seed: int) -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(seed)
    hu = rng.normal(-800, 30, (16, 20, 20)).astype(np.int16)
    hu[6:11, 7:13, 7:12] += 850
    mask = np.zeros(hu.shape, np.uint8)
    mask[6:11, 7:13, 7:12] = 1
    return sitk.GetImageFromArray(hu), sitk.GetImageFromArray(mask)


def _real(root: Path, i: int, report: dict | None = REPORT) -> SourceCase:
    img, lab = _volume(100 + i)
    sitk.WriteImage(img, str(root / f"real{i}.nrrd"))
    sitk.WriteImage(lab, str(root / f"real{i}_mask.nrrd"))
    return real_case(root / f"real{i}.nrrd", root / f"real{i}_mask.nrrd", "lung_tumor",
                     dict(report) if report is not None else None)


def _synthetic_folder(folder: Path, seed: int, report: dict | None = None, ct_name: str = "img.nii.gz") -> Path:
    """`pasta synth generate` layout: img.nii.gz, label.nii.gz (lesion 11), report.json."""
    img, lab = _volume(seed)
    folder.mkdir(parents=True)
    sitk.WriteImage(img, str(folder / ct_name))
    sitk.WriteImage(lab * 11, str(folder / "label.nii.gz"))
    (folder / "report.json").write_text(json.dumps(report or {"lesion_type": "lung_tumor", "label_value": 11, **REPORT}))
    return folder


def _make_study(root: Path, n: int = 2, readers: tuple[str, ...] = ("r1",)) -> Path:
    src = root / "src"
    src.mkdir(parents=True)
    real = [_real(src, i) for i in range(n)]
    synthetic = [synthetic_case(_synthetic_folder(src / f"syn{i}", 200 + i)) for i in range(n)]
    study = root / "study"
    create_study(real, synthetic, study, settings=StudySettings(seed=1, fov_mm=16))
    for reader in readers:
        add_reader(study, reader)
    return study


def _answer_all(study: Path, reader: str = "r1") -> int:
    with ReaderSession(study, reader) as session:
        for case_id in session.order:
            session.rate(case_id, 3)
        return len(session.order)


@pytest.fixture(scope="module")
def answered_study(tmp_path_factory) -> Path:
    """A 4-case study with every case answered by r1 (copied per test: tests damage it)."""
    study = _make_study(tmp_path_factory.mktemp("answered"))
    _answer_all(study)
    return study


def _copy_study(study: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(study, dest)
    return dest


def _snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (path -> bytes): compared before and after a refused command."""
    files = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            files[str(p)] = p.read_bytes()
    return files


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = pasta_main(["review", *argv])
    except SystemExit as exc:  # an option out of its range: argparse's usage + one error line
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def _refused(argv: list[str], capsys, *must: str) -> str:
    """Run ``pasta review ARGV``: status 2, one `error:` line on stderr containing every ``must``."""
    rc, out, err = _cli(argv, capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and (lines[0].startswith("error: ") or err.startswith("usage: ")), err
    assert "Traceback" not in err + out
    for text in must:
        assert text in err, (text, err)
    return err


# ------------------------------------------------------------------ 1. corrupt responses.sqlite


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_sqlite(path: Path) -> None:
    path.write_text("case_id,realism\nC000001,3\n")


def _wrong_schema(path: Path) -> None:
    path.unlink()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.execute("INSERT INTO notes VALUES ('hello')")
    conn.commit()
    conn.close()


def _zeroed_pages(path: Path) -> None:
    """A valid header, the table pages overwritten with zeros (a bad disk sector / partial copy)."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = bytes(len(data) - page)
    path.write_bytes(bytes(data))


DAMAGE = {"missing": (Path.unlink, "is missing"), "garbage": (_garbage, "not an SQLite database"), "truncated": (_truncate, "truncated"),
          "csv_file": (_not_sqlite, "not an SQLite database"), "wrong_schema": (_wrong_schema, "not a PASTA study database"),
          "zeroed_pages": (_zeroed_pages, "responses.sqlite")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_corrupt_database_is_an_error_for_every_command(answered_study, tmp_path, capsys, damage):
    study = _copy_study(answered_study, tmp_path / "study")
    key = answered_study.parent / "study_key"
    db_path = study / "responses.sqlite"
    # Fold the WAL into the file first, so damaging the file damages every answer.
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for extra in ("-wal", "-shm"):
        Path(f"{db_path}{extra}").unlink(missing_ok=True)
    make, what = DAMAGE[damage]
    make(db_path)
    before = _snapshot(study, key)
    answers = tmp_path / "answers.csv"
    answers.write_text("case_id,realism\n")
    for argv in (["status", str(study)], ["rate", str(study), "r1"], ["rate", str(study), "r1", "--answers", str(answers)],
                 ["export", str(study), str(tmp_path / "out.csv")], ["add-reader", str(study), "r2"],
                 ["analyze", str(study), "--key", str(key), "--out", str(tmp_path / "analysis")],
                 ["verify", str(study)]):
        _refused(argv, capsys, str(db_path), what)
    after = _snapshot(study, key)
    assert after == before  # nothing written: not the database, not its -wal/-shm, not the study files
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "analysis").exists()


def test_verify_runs_the_integrity_check(answered_study, tmp_path, capsys):
    """A damaged index page (header and schema fine) is found by SQLite's own check: `verify` says so
    (PRAGMA integrity_check) and so does every command before it reads or writes an answer (quick_check)."""
    study = _copy_study(answered_study, tmp_path / "study")
    db_path = study / "responses.sqlite"
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_answers_1'").fetchone()[0]
    conn.close()
    data = bytearray(db_path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    start = (root - 1) * page
    data[start + 3:start + 5] = (0).to_bytes(2, "big")  # the index's leaf page now claims 0 cells
    db_path.write_bytes(bytes(data))
    before = _snapshot(study)
    _refused(["status", str(study)], capsys, "integrity check", str(db_path))
    _refused(["rate", str(study), "r1"], capsys, "integrity check", str(db_path))
    err = _refused(["verify", str(study)], capsys, "integrity check", str(db_path))
    assert "Restore" in err and _snapshot(study) == before
    rc, out, _ = _cli(["verify", str(_copy_study(answered_study, tmp_path / "intact"))], capsys)
    assert rc == 0 and out.startswith("ok:")


# ------------------------------------------------------------------ 2. bad --answers files


def _study_case_ids(study: Path) -> list[str]:
    return json.loads((study / "study.json").read_text())["case_ids"]


def _answer_files(folder: Path, ids: list[str]) -> dict[str, tuple[Path, str]]:
    """name -> (answers file, text the error must contain). Each file is wrong in one way only; the
    rows before the fault are valid, so a reader that writes as it goes would record some."""
    folder.mkdir()
    good = [f"{c},3" for c in ids]

    def csv_file(name: str, lines: list[str], header: str = "case_id,realism") -> Path:
        path = folder / name
        path.write_text("\n".join([header, *lines]) + "\n")
        return path

    folder_path = folder / "a_folder.csv"
    folder_path.mkdir()
    binary = folder / "binary.csv"
    binary.write_bytes(b"case_id,realism\n" + bytes(range(128)))
    latin1 = folder / "latin1.csv"
    latin1.write_bytes("case_id,realism,reason\n".encode() + f"{ids[0]},3,d\xe9j\xe0 vu\n".encode("latin-1"))
    bad_json = folder / "bad.json"
    bad_json.write_text('[{"case_id": "%s", "realism": 3},' % ids[0])
    json_range = folder / "range.json"
    json_range.write_text(json.dumps([{"case_id": c, "realism": 3} for c in ids[:-1]] + [{"case_id": ids[-1], "realism": 7}]))
    return {
        "missing": (folder / "nope.csv", "No answers file"),
        "folder": (folder_path, "is a folder"),
        "binary": (binary, "NUL bytes"),
        "latin1": (latin1, "not UTF-8"),
        "empty": (csv_file("empty.csv", [], header=""), "has no column case_id, realism"),
        "header_only": (csv_file("header.csv", []), "has no answers"),
        "no_realism_column": (csv_file("norealism.csv", [f"{c},3" for c in ids], header="case_id,rating"), "no column realism"),
        "unknown_column": (csv_file("typo.csv", [f"{c},3,4" for c in ids], header="case_id,realism,shpae"), "unknown column(s) 'shpae'"),
        "unknown_case": (csv_file("unknown.csv", [*good, "C999999,3"]), "case 'C999999' is not in this study"),
        "traversal_case": (csv_file("traversal.csv", [*good, "../../etc/passwd,3"]), "is not in this study"),
        "duplicate_case": (csv_file("dup.csv", [*good, f"{ids[0]},4"]), f"case {ids[0]} is answered twice"),
        "realism_6": (csv_file("r6.csv", [*good[:-1], f"{ids[-1]},6"]), "Realism rating '6' is out of range"),
        "realism_0": (csv_file("r0.csv", [f"{ids[0]},0", *good[1:]]), "Realism rating '0' is out of range"),
        "realism_text": (csv_file("rtext.csv", [*good[:-1], f"{ids[-1]},very"]), "Realism rating 'very'"),
        "realism_fraction": (csv_file("rfrac.csv", [*good[:-1], f"{ids[-1]},3.5"]), "Realism rating '3.5'"),
        "realism_empty": (csv_file("rempty.csv", [*good[:-1], f"{ids[-1]},"]), "Realism rating ''"),
        "attribute_9": (csv_file("attr.csv", [f"{c},3,9" for c in ids], header="case_id,realism,shape"), "Shape accuracy rating '9'"),
        "seconds_negative": (csv_file("sec.csv", [*[f"{c},3,1" for c in ids[:-1]], f"{ids[-1]},3,-4"], header="case_id,realism,seconds"), "seconds '-4'"),
        "extra_fields": (csv_file("extra.csv", [*good[:-1], f"{ids[-1]},3,oops,more"]), "more fields than the header"),
        "bad_json": (bad_json, "not valid JSON"),
        "json_not_list": (csv_file("obj.json", [], header='{"realism": 3}'), "no list of answer objects"),
        "json_range": (json_range, "Realism rating 7 is out of range"),
    }


def test_bad_answers_files_record_nothing(tmp_path, capsys):
    study = _make_study(tmp_path)
    ids = _study_case_ids(study)
    files = _answer_files(tmp_path / "answers", ids)
    before = _snapshot(study)
    for name, (path, message) in files.items():
        inputs = _snapshot(path) if path.is_file() else {}
        err = _refused(["rate", str(study), "r1", "--answers", str(path)], capsys, message)
        assert str(path) in err, name
        assert _snapshot(path) == inputs if inputs else True
        with ReaderSession(study, "r1") as session:
            assert session.progress()[0] == 0, name  # nothing recorded, not even the valid rows before the fault
    assert _snapshot(study) == before
    # The same study takes a valid file (CSV or JSON) afterwards: the faults above changed nothing.
    good = tmp_path / "answers" / "good.json"
    good.write_text(json.dumps({c: {"realism": 4, "seconds": 2.5} for c in ids}))
    rc, out, err = _cli(["rate", str(study), "r1", "--answers", str(good)], capsys)
    assert rc == 0 and "all cases answered" in out, err
    with ReaderSession(study, "r1") as session:
        assert {c: a.realism for c, a in session.answers().items()} == {c: 4 for c in ids}


# ------------------------------------------------------------------ 3. reader names

BAD_NAMES = {
    "escape": ("\x1b[31mEVIL\x1b[0m", "'\\x1b'"),
    "bidi": ("ali\u202ece", "'\\u202e'"),
    "bell": ("bob\x07", "'\\x07'"),
    "newline": ("a\nb", "'\\n'"),
    "tab": ("a\tb", "'\\t'"),
    "slash": ("../../x", "'/'"),
    "backslash": ("a\\b", "'\\\\'"),
    "comma": ("smith, j", "','"),
    "empty": ("   ", "empty"),
    "long": ("x" * 65, "65 characters"),
    "zero_width": ("a\u200bb", "'\\u200b'"),
    "formula": ("=1+2", "starts with '='"),
    "formula_at": ("@SUM(A1)", "starts with '@'"),
}


def test_reader_names_are_checked_and_never_printed_raw(tmp_path, capsys):
    study = _make_study(tmp_path, n=1, readers=())
    before = _snapshot(study)
    for name, (reader, message) in BAD_NAMES.items():
        err = _refused(["add-reader", str(study), reader], capsys, message)
        assert "\x1b" not in err and "\u202e" not in err and "\x07" not in err, name
        # The same name is refused when rating (not "unknown reader" with the raw name in it).
        err = _refused(["rate", str(study), reader], capsys, "reader name")
        assert "\x1b" not in err and "\u202e" not in err, name
    assert _snapshot(study) == before
    rc, out, _ = _cli(["add-reader", str(study), "Dr. Müller (R2)"], capsys)
    assert rc == 0 and "'Dr. Müller (R2)'" in out
    # A name written into the database by other means (an older PASTALib) is shown escaped.
    conn = sqlite3.connect(study / "responses.sqlite")
    conn.execute("INSERT INTO readers VALUES (?, 1, 'x')", ("\x1b]0;pwned\x07",))
    conn.commit()
    conn.close()
    rc, out, _ = _cli(["status", str(study)], capsys)
    assert rc == 0 and "\\x1b]0;pwned\\x07: 0/2" in out and "\x1b" not in out
    rc, out, _ = _cli(["status", str(study), "--json"], capsys)
    assert rc == 0 and "\x1b" not in out and json.loads(out)["readers"]["\x1b]0;pwned\x07"] == [0, 2]


# ------------------------------------------------------------------ 4. reports that would reveal the origin


def _blinding_inputs(root: Path, real_reports: list[dict | None]) -> tuple[list[SourceCase], list[SourceCase]]:
    root.mkdir()
    real = [_real(root, i, r) for i, r in enumerate(real_reports)]
    synthetic = [synthetic_case(_synthetic_folder(root / f"syn{i}", 300 + i)) for i in range(len(real_reports))]
    return real, synthetic


def test_incomplete_or_reworded_reports_are_refused(tmp_path, capsys):
    two_of_five = {"shape": "Irregular", "density": "Hyperdense"}
    reworded = {**REPORT, "shape": "round", "surface": "smooth"}
    lowercase = {**REPORT, "density": "hyperdense"}
    for name, reports, must in (
        ("partial", [two_of_five, REPORT], ["1 of 4 cases", "2 of 5 attributes (missing heterogeneity, surface, invasion)",
                                            "real0.nrrd"]),
        ("reworded", [REPORT, reworded], ["shape 'round' is not a report wording (did you mean 'Round-like'?)",
                                          "surface 'smooth' is not a report wording (allowed: 'Well-defined margin', "
                                          "'Ill-defined margin')", "real1.nrrd"]),
        ("lowercase", [lowercase, lowercase], ["2 of 4 cases", "density 'hyperdense'", "did you mean 'Hyperdense'?"]),
    ):
        real, synthetic = _blinding_inputs(tmp_path / name, reports)
        inputs = _snapshot(tmp_path / name)
        with pytest.raises(ReviewError) as info:
            create_study(real, synthetic, tmp_path / f"{name}_study", settings=StudySettings(fov_mm=16))
        message = str(info.value)
        for text in [*must, "reveals the origin", "Complete the reports", "--no-attributes"]:
            assert text in message, (name, text, message)
        assert "synthetic /" not in message and "/syn" not in message  # only the offending (real) cases are listed
        assert not (tmp_path / f"{name}_study").exists() and not (tmp_path / f"{name}_study_key").exists()
        assert not list(tmp_path.glob(f".{name}_study*"))
        assert _snapshot(tmp_path / name) == inputs
    # The same cases without attribute questions: nothing is shown, nothing leaks.
    created = create_study(real, synthetic, tmp_path / "noattr", settings=StudySettings(fov_mm=16, ask_attributes=False))
    assert all(json.loads((created.study_dir / "cases" / c / "case.json").read_text())["report"] is None
               for c in created.case_ids)


def test_cli_create_lists_offending_reports(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "r.json").write_text(json.dumps({"shape": "Round-like mass", "density": "Hypodense"}))
    real = [_real(src, i) for i in range(2)]
    with open(src / "real.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "mask", "lesion_type", "report"])
        for case in real:
            writer.writerow([case.image.name, case.mask.name, "lung_tumor", "r.json"])
    for i in range(2):
        _synthetic_folder(src / "synth" / f"c{i}", 400 + i)
    inputs = _snapshot(src)
    _refused(["create", str(tmp_path / "study"), "--real-csv", str(src / "real.csv"), "--synthetic", str(src / "synth"),
              "--fov", "16"], capsys, "2 of 5 attributes (missing heterogeneity, surface, invasion)", "real0.nrrd",
             "real1.nrrd", "Complete the reports")
    assert _snapshot(src) == inputs and not (tmp_path / "study").exists()
    # "Round-like mass" (the report's sentence form) is the shape 'Round-like': shown as such once complete.
    (src / "r.json").write_text(json.dumps({**REPORT, "shape": "Round-like mass"}))
    rc, out, err = _cli(["create", str(tmp_path / "study"), "--real-csv", str(src / "real.csv"), "--synthetic",
                         str(src / "synth"), "--fov", "16"], capsys)
    assert rc == 0, err
    shown = {json.loads(p.read_text())["report"]["shape"] for p in (tmp_path / "study" / "cases").glob("*/case.json")}
    assert shown == {"Round-like", "Irregular"}


# ------------------------------------------------------------------ 5. outputs onto inputs, broken JSON, killed create


def test_export_and_analyze_never_write_onto_study_or_inputs(answered_study, tmp_path, capsys):
    study = _copy_study(answered_study, tmp_path / "study")
    key = _copy_study(answered_study.parent / "study_key", tmp_path / "study_key")
    source = Path(next(iter(json.loads((key / "key.json").read_text())["cases"].values()))["image"])
    a_file = tmp_path / "plain_file"
    a_file.write_text("x")
    before = _snapshot(study, key, source)
    for argv, must in (
        (["export", str(study), str(study / "study.json")], "inside the study folder"),
        (["export", str(study), str(study / "responses.sqlite")], "inside the study folder"),
        (["export", str(study), str(study / "answers.csv")], "inside the study folder"),
        (["export", str(study), str(study / "cases" / "x.csv"), "--key", str(key)], "inside the study folder"),
        (["export", str(study), str(key / "key.json"), "--key", str(key)], "would replace an input"),
        (["export", str(study), str(source), "--key", str(key)], "would replace an input"),
        (["export", str(study), str(tmp_path)], "is a folder"),
        (["export", str(study), str(a_file / "answers.csv")], "is a file, not a folder"),
        (["analyze", str(study), "--key", str(key), "--out", str(study)], "is the input folder"),
        (["analyze", str(study), "--key", str(key), "--out", str(study / "results")], "inside the study folder"),
        (["analyze", str(study), "--key", str(key), "--out", str(a_file)], "is an existing file"),
    ):
        _refused(argv, capsys, must)
    assert _snapshot(study, key, source) == before and a_file.read_text() == "x"
    assert not list(tmp_path.glob(".*partial*")) and not list(study.rglob(".*partial*"))
    rc, _, err = _cli(["export", str(study), str(tmp_path / "out" / "answers.csv"), "--key", str(key)], capsys)
    assert rc == 0, err
    assert len((tmp_path / "out" / "answers.csv").read_text().splitlines()) == 5  # header + 4 answers


def _break_json(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7] + b"\x00\xff{")


def test_broken_json_files_are_named_before_they_are_parsed(answered_study, tmp_path, capsys):
    key_src = answered_study.parent / "study_key"
    case_id = _study_case_ids(answered_study)[0]
    for name, damage, must in (
        ("case_json", lambda s, k: _break_json(s / "cases" / case_id / "case.json"),
         [f"cases/{case_id}/case.json changed (sha256 differs"]),
        ("case_json_deleted", lambda s, k: (s / "cases" / case_id / "case.json").unlink(),
         [f"cases/{case_id}/case.json is missing"]),
        ("study_json", lambda s, k: _break_json(s / "study.json"), ["study.json changed"]),
        ("manifest", lambda s, k: _break_json(s / "manifest.json"), ["manifest.json is damaged (not valid JSON"]),
        ("manifest_list", lambda s, k: (s / "manifest.json").write_text("[1, 2]"), ["manifest.json is damaged (not a JSON object"]),
        ("manifest_unlisted", lambda s, k: (s / "manifest.json").write_text(json.dumps({"sha256": {}})),
         ["study.json is not listed in"]),
    ):
        study = _copy_study(answered_study, tmp_path / name / "study")
        key = _copy_study(key_src, tmp_path / name / "study_key")
        damage(study, key)
        before = _snapshot(study, key)
        for argv in (["status", str(study)], ["rate", str(study), "r1"], ["add-reader", str(study), "r9"],
                     ["export", str(study), str(tmp_path / name / "a.csv")], ["verify", str(study)],
                     ["analyze", str(study), "--key", str(key), "--out", str(tmp_path / name / "out")]):
            _refused(argv, capsys, *must)
        assert _snapshot(study, key) == before
        assert not (tmp_path / name / "a.csv").exists() and not (tmp_path / name / "out").exists()
    # A damaged key: analyze and export --key refuse it by name.
    study = _copy_study(answered_study, tmp_path / "key" / "study")
    key = _copy_study(key_src, tmp_path / "key" / "study_key")
    _break_json(key / "key.json")
    for argv in (["analyze", str(study), "--key", str(key), "--out", str(tmp_path / "key" / "out")],
                 ["export", str(study), str(tmp_path / "key" / "a.csv"), "--key", str(key)],
                 ["verify", str(study), "--key", str(key)]):
        _refused(argv, capsys, "key.json is damaged", "Restore key.json")


_KILLED_CREATE = """
import os, signal, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from pathlib import Path
import test_faults_review as t
from PASTALib.review import StudySettings, create_study, synthetic_case
root = Path({root!r})
src = root / "src"
src.mkdir()
real = [t._real(src, i) for i in range(2)]
syn = [synthetic_case(t._synthetic_folder(src / f"syn{{i}}", 500 + i)) for i in range(2)]
def die(n, total):
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)
create_study(real, syn, root / "study", settings=StudySettings(fov_mm=16), progress=die)
"""


def test_killed_create_leaves_partials_that_the_next_create_removes(tmp_path, capsys):
    tests = Path(__file__).resolve().parent
    script = _KILLED_CREATE.format(repo=str(tests.parent), tests=str(tests), root=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    stale = sorted(p.name for p in tmp_path.glob(".*.partial-*"))
    assert len(stale) == 2 and all(".pasta-review-partial.json" in os.listdir(tmp_path / p) for p in stale)
    assert not (tmp_path / "study").exists()
    # Look-alikes that are not ours, or whose creator still runs, are left alone.
    foreign = tmp_path / ".other.partial-1"
    foreign.mkdir()
    (foreign / "data.txt").write_text("someone else's")
    alive = tmp_path / ".busy.partial-2"
    alive.mkdir()
    import socket

    (alive / ".pasta-review-partial.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    real, synthetic = _blinding_inputs(tmp_path / "again", [REPORT, REPORT])
    created = create_study(real, synthetic, tmp_path / "study2", settings=StudySettings(fov_mm=16))
    assert sorted(p.name for p in created.removed_partials) == stale
    assert sorted(p.name for p in tmp_path.glob(".*.partial-*")) == [".busy.partial-2", ".other.partial-1"]
    assert (foreign / "data.txt").read_text() == "someone else's"
    assert not list(created.study_dir.rglob(".pasta-review-partial.json"))
    assert not list(created.key_dir.rglob(".pasta-review-partial.json"))
    rc, out, _ = _cli(["verify", str(created.study_dir), "--key", str(created.key_dir)], capsys)
    assert rc == 0 and out.startswith("ok:")


# ------------------------------------------------------------------ 6. PASTA-Gen-30K subsets as synthetic input (#18)


def _pasta_gen_subset(out: Path, numbers: tuple[int, ...]) -> Path:
    """A `pasta data pasta-gen-30k` folder made by its own installer (PASTALib.synth.pasta_gen_30k.install_cases)
    from files laid out as the Hub's <Organ>/<Kind>/<n>/ in <out>/.hf: img/label/total.nii.gz + type.json."""
    from PASTALib.labels import LesionType
    from PASTALib.synth.pasta_gen_30k import DOWNLOAD_DIR, install_cases

    for i, n in enumerate(numbers):
        folder = out / DOWNLOAD_DIR / "Lung" / "Tumor" / str(n)
        folder.mkdir(parents=True)
        img, lab = _volume(600 + n)
        sitk.WriteImage(img, str(folder / "img.nii.gz"))
        sitk.WriteImage(lab * 11, str(folder / "label.nii.gz"))
        sitk.WriteImage(lab, str(folder / "total.nii.gz"))
        # type.json as `pasta synth generate` writes it (PASTA-Gen keys, "<shape> mass"); the first case
        # names its lesion type, the others leave it to the Lung/Tumor folder.
        meta = {"Enhancement status": "Enhanced CT", "Location": "Right lung", "Size": "9×9×9mm",
                "Shape": f"{REPORT['shape']} mass", **{k.capitalize(): v for k, v in REPORT.items() if k != "shape"}}
        if i == 0:
            meta.update(lesion_type="lung_tumor", label_value=11)
        (folder / "type.json").write_text(json.dumps(meta, ensure_ascii=False))
    install_cases(out / DOWNLOAD_DIR, out, [(LesionType.LUNG_TUMOR, n) for n in numbers], "0" * 40)
    # A case still downloading (hidden .hf area) must not be picked up.
    partial = out / DOWNLOAD_DIR / "Lung" / "Tumor" / "99"
    partial.mkdir(parents=True)
    (partial / "type.json").write_text(json.dumps({"lesion_type": "lung_tumor"}))
    return out


def test_create_reads_a_pasta_gen_30k_subset(tmp_path, capsys):
    from PASTALib.review import find_synthetic_cases

    subset = _pasta_gen_subset(tmp_path / "pg", (3, 12))
    assert sorted(p.relative_to(subset).as_posix() for p in subset.glob("Lung/Tumor/*")) == ["Lung/Tumor/00003", "Lung/Tumor/00012"]
    found = find_synthetic_cases([subset])
    assert [(c.image.parent.name, c.image.name, int(c.lesion_type), c.lesion_values) for c in found] == [
        ("00003", "img.nii.gz", 11, (11,)), ("00012", "img.nii.gz", 11, (11,))]
    src = tmp_path / "real"
    src.mkdir()
    (src / "r.json").write_text(json.dumps(REPORT))
    with open(src / "real.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "mask", "lesion_type", "report"])
        for i in range(2):
            case = _real(src, i)
            writer.writerow([case.image.name, case.mask.name, "lung_tumor", "r.json"])
    inputs = _snapshot(subset, src)
    study = tmp_path / "study"
    rc, out, err = _cli(["create", str(study), "--real-csv", str(src / "real.csv"), "--synthetic", str(subset),
                         "--fov", "16"], capsys)
    assert rc == 0, err
    assert "lung_tumor: 2 real + 2 synthetic" in out
    key = json.loads((tmp_path / "study_key" / "key.json").read_text())
    synthetic = sorted(Path(c["image"]).relative_to(subset).as_posix() for c in key["cases"].values() if c["origin"] == "synthetic")
    assert synthetic == ["Lung/Tumor/00003/img.nii.gz", "Lung/Tumor/00012/img.nii.gz"]
    reports = [json.loads(p.read_text())["report"] for p in (study / "cases").glob("*/case.json")]
    assert reports == [REPORT] * 4  # same five questions, same wording, whatever the source
    assert _snapshot(subset, src) == inputs
    # A generate folder and a subset together under one --synthetic root are both read.
    both = tmp_path / "both"
    _pasta_gen_subset(both / "pg", (5,))
    _synthetic_folder(both / "generate" / "Lung" / "Tumor" / "00000", 700)
    assert sorted(c.image.parent.name for c in find_synthetic_cases([both])) == ["00000", "00005"]
    # A type.json whose folder is no <Organ>/<Kind> and that names no lesion type is refused by name.
    lost = tmp_path / "lost" / "case"
    _synthetic_folder(lost, 800)
    (lost / "report.json").unlink()
    (lost / "type.json").write_text(json.dumps({"Shape": "Irregular mass"}))
    _refused(["create", str(tmp_path / "s3"), "--real-csv", str(src / "real.csv"), "--synthetic", str(lost.parent)],
             capsys, "type.json has no 'lesion_type'", "add \"lesion_type\"")
    _refused(["create", str(tmp_path / "s4"), "--real-csv", str(src / "real.csv"), "--synthetic", str(tmp_path / "nope")],
             capsys, "is not a folder")


# ------------------------------------------------------------------ numeric options: range stated, nothing written


def test_numeric_options_state_their_range(answered_study, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "r.json").write_text(json.dumps(REPORT))
    (src / "real.csv").write_text("image,mask,lesion_type,report\n")
    study = _copy_study(answered_study, tmp_path / "study")
    key = answered_study.parent / "study_key"
    create = ["create", str(tmp_path / "new"), "--real-csv", str(src / "real.csv"), "--synthetic", str(src)]
    analyze = ["analyze", str(study), "--key", str(key), "--out", str(tmp_path / "out")]
    before = _snapshot(study, key)
    for argv, must in (
        (create + ["--spacing", "0"], "argument --spacing: must be a number >= 0.1 and <= 10 (got '0')"),
        (create + ["--spacing", "nan"], "argument --spacing: expected a finite number, got 'nan'"),
        (create + ["--spacing", "inf"], "argument --spacing: expected a finite number, got 'inf'"),
        (create + ["--fov", "-5"], "argument --fov: must be a number >= 0 and <= 2000 (got '-5')"),
        (create + ["--fov", "2", "--spacing", "1"], "--fov; 0 keeps the whole CT) 2.0 is out of range: give a number from 4 to 2000"),
        (create + ["--seed", "-1"], "argument --seed:"),
        (["add-reader", str(study), "r7", "--seed", "-3"], "argument --seed:"),
        (["rate", str(study), "r1", "--pace", "-1"], "argument --pace: must be a number >= 0 and <= 3600 (got '-1')"),
        (["rate", str(study), "r1", "--pace", "nan"], "argument --pace: expected a finite number"),
        (analyze + ["--threshold", "9"], "argument --threshold: must be an integer >= 2 and <= 5 (got '9')"),
        (analyze + ["--margin", "-1"], "argument --margin: must be a number >= 0.01 and <= 4"),
        (analyze + ["--margin", "inf"], "argument --margin: expected a finite number"),
        (analyze + ["--n-boot", "-5"], "argument --n-boot: must be an integer >= 20 and <= 100000 (got '-5')"),
        (analyze + ["--seed", "-5"], "argument --seed:"),
    ):
        _refused(argv, capsys, must)
    assert _snapshot(study, key) == before
    assert not (tmp_path / "new").exists() and not (tmp_path / "out").exists()


def test_cli_and_library_share_the_review_bounds():
    """The argparse types and the library checks come from one table (PASTALib.limits): same edges."""
    import argparse

    from PASTALib import limits
    from PASTALib.cli.args import bounded
    from PASTALib.review.db import check_number
    from PASTALib.review.errors import ReviewError

    table = [limits.SEED, limits.REVIEW_SPACING_MM, limits.REVIEW_FOV_MM, limits.REVIEW_PACE_S,
             limits.REVIEW_THRESHOLD, limits.REVIEW_MARGIN, limits.REVIEW_N_BOOT]
    for bound in table:
        convert = bounded(bound)
        step = 1 if bound.integer else 1e-3
        for edge in (bound.low, bound.high):
            assert convert(str(edge)) == check_number(edge, "x", bound) == edge
        for outside in (bound.low - step, bound.high + step):
            with pytest.raises(argparse.ArgumentTypeError, match="must be"):
                convert(str(outside))
            with pytest.raises(ReviewError, match="out of range"):
                check_number(outside, "x", bound)


# ------------------------------------------------------------------ a full disk (small tmpfs; skipped where mounting is not allowed)


@pytest.fixture
def small_disk(tmp_path):
    """Factory: a tmpfs of ``kib`` KiB at a fresh folder (unmounted afterwards)."""
    mounts = []

    def make(kib: int) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'needs root'})")
        mounts.append(point)
        return point

    yield make
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_full_disk_create_and_rate(tmp_path, small_disk, capsys):
    real, synthetic = _blinding_inputs(tmp_path / "src", [REPORT, REPORT])
    disk = small_disk(512)
    _fill(disk).unlink()  # the tmpfs works
    filler = _fill(disk)
    os.truncate(filler, filler.stat().st_size - 24 * 1024)  # 24 KiB left: too little for the study + key
    with pytest.raises(ReviewError, match="cannot create the study .*No space left on device.*nothing was created"):
        create_study(real, synthetic, disk / "study", settings=StudySettings(fov_mm=16))
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no study, no key, no partial folder
    # Rating on a full disk: an error, and every answer given before it is still there.
    filler.unlink()
    study = disk / "study"
    create_study(real, synthetic, study, settings=StudySettings(fov_mm=16))
    add_reader(study, "r1")
    ids = _study_case_ids(study)
    with ReaderSession(study, "r1") as session:
        first = session.order[0]
        session.rate(first, 2)
    answers = tmp_path / "answers.csv"
    answers.write_text("case_id,realism\n" + "".join(f"{c},4\n" for c in ids))
    filler = _fill(disk)
    rc, out, err = _cli(["rate", str(study), "r1", "--answers", str(answers)], capsys)
    assert rc == 2 and err.startswith("error: ") and "full" in err and "Traceback" not in err, (rc, out, err)
    filler.unlink()
    with ReaderSession(study, "r1") as session:
        assert session.answers()[first].realism == 2
    rc, out, err = _cli(["rate", str(study), "r1", "--answers", str(answers)], capsys)
    assert rc == 0, err
    with ReaderSession(study, "r1") as session:
        assert session.progress() == (4, 4) and session.answers()[first].realism == 2
    rc, out, _ = _cli(["verify", str(study)], capsys)
    assert rc == 0, out


def test_export_escapes_reasons_a_spreadsheet_would_run(tmp_path, capsys):
    """A reader's free-text reason starting like a formula (=HYPERLINK(...), +, -, @) reaches the CSV
    as text (a leading apostrophe); the database keeps the reader's words unchanged."""
    import csv

    study = _make_study(tmp_path)
    reasons = ['=HYPERLINK("http://x","click")', "+1 odd rim", "-ish texture", "@mention", "plain reason"]
    with ReaderSession(study, "r1") as session:
        for case_id, reason in zip(session.order, reasons):
            session.rate(case_id, 2, reason=reason)
        stored = {a.reason for a in session.answers().values()}
    assert stored == set(reasons[:len(stored)])  # unchanged in the study
    rc, _, err = _cli(["export", str(study), str(tmp_path / "answers.csv")], capsys)
    assert rc == 0, err
    with open(tmp_path / "answers.csv", newline="") as stream:
        exported = {row["reason"] for row in csv.DictReader(stream)}
    expected = {("'" + r if r[0] in "=+-@" else r) for r in reasons[:len(stored)]}
    assert exported == expected and not any(r.startswith(("=", "+", "-", "@")) for r in exported)
