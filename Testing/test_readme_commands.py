"""Every ```bash block of README.md is executed or checked, read from the README itself so the
examples cannot drift from the code.

Each block is listed in ``BLOCKS`` under its first line (exactly as in the README) with how it is
covered:

* :class:`Run`: executed with bash in a prepared folder of small real inputs (:func:`_prepare`),
  ``pasta`` being ``python -m PASTALib`` of this checkout; documented ``substitutions`` (text
  replaced before running) and ``stdin`` stand in for what a person would type; full-line comments
  in the block are the expected output when ``comments_are_output``.
* :class:`Parse`: too slow or needing what this machine lacks (weights, a GPU, the whole suite):
  every ``pasta …`` line is parsed by the real argument parser (a nonexistent option or subcommand
  fails), a ``python scripts/x.py …`` line must name only options its ``--help`` lists, a
  ``bash scripts/x.sh`` line must name an existing script that ``bash -n`` accepts.

A README block that is not listed fails :func:`test_every_bash_block_is_listed`: add it to ``BLOCKS``
(other branches add blocks: extend the dict, one entry per block).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


@dataclass(frozen=True)
class Run:
    """Execute the block (after ``substitutions``) in a prepared folder; ``outputs`` must exist afterwards."""

    substitutions: tuple[tuple[str, str], ...] = ()
    stdin: str = ""
    outputs: tuple[str, ...] = ()
    comments_are_output: bool = False


@dataclass(frozen=True)
class Parse:
    """Check every command's arguments without running it; ``why`` it is not run here."""

    why: str


#: Key: the first line of a ```bash block in README.md, exactly.
BLOCKS: dict[str, Run | Parse] = {
    "bash scripts/demo.sh     # the main job: writes demo_output/ (see below)": Parse(
        "demo.sh bootstraps .venv and test.sh runs the whole suite (~6 min); the demo itself is "
        "Testing/test_cli.py's `pasta demo` test"),
    "pasta synth lesion --ct ct.nii.gz --organs organs.nii.gz --labels-kind totalsegmentator \\": Run(
        outputs=("case/ct.nii.gz", "case/label.nii.gz", "case/report.json"), comments_are_output=True),
    "pasta synth generate --templates templates/ --out generated/ --per-type 2 --types lung_tumor": Run(
        # One reader answers at the terminal: realism, then Enter to skip the 5 attribute questions.
        stdin="5\n\n\n\n\n\n2\n\n\n\n\n\n4\n\n\n\n\n\n3\n\n\n\n\n\n",
        outputs=("study/study.json", "study_key/key.json", "results/report.html", "results/results.json")),
    "pasta evaluate realism --real real_lesions.csv --synthetic generated/ --types lung_tumor --out realism/": Parse(
        "needs the reader's own real lesions; Testing/test_realism.py runs the command on real lung tumours"),
    "pasta finetune --data fewshot/ --out runs/pasta   --k 1,2,4,8,16 --fold all": Parse(
        "the few-shot sweep trains 2 x 5 x 5 models (hours); Testing/test_finetune.py runs it small"),
    "pasta classify train --task detection --table cases.csv --out runs/det     # image, organs, organ, label (0/1)": Parse(
        "5-fold classification fine-tuning of the full-width encoder; Testing/test_classify.py runs it small"),
    ".venv/bin/python scripts/make_screenshots.py              # or --panel synthesis|reader_study|segment|fewshot": Parse(
        "renders four panels with VTK from real runs of the module logic (minutes)"),
    "pasta weights download": Parse(
        "downloads about 1 GB from Google Drive (no internet here); Testing/test_weights_download.py runs the "
        "download against a server on 127.0.0.1"),
    "pasta weights import ~/Downloads/PASTA_final.pth": Parse(
        "needs the real PASTA_final.pth; Testing/test_weights_download.py imports a file with the published layout"),
    "pasta data pasta-gen-30k --types lung_tumor,liver_tumor --per-type 20 --out pasta_gen_subset/": Parse(
        "downloads from the Hugging Face Hub (no internet here); Testing/test_pasta_gen_download.py runs it "
        "against a stand-in Hub on 127.0.0.1"),
    "bash scripts/gpu_check.sh            # on a CUDA machine: every CUDA path once at tiny sizes + the 3 benchmarks": Parse(
        "needs a CUDA GPU (or minutes of CPU with --cpu); Testing/test_gpu_readiness.py runs its --dry-run"),
}


def bash_blocks(text: str) -> list[str]:
    """The ```bash (or ```sh / ```shell) blocks of a markdown text, in order."""
    return re.findall(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", text, flags=re.S | re.M)


def _commands(block: str) -> list[list[str]]:
    """Shell words of each command line (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", block)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if shlex.split(line, comments=True)]


def _blocks(text: str | None = None) -> dict[str, str]:
    text = README.read_text(encoding="utf-8") if text is None else text
    return {block.splitlines()[0]: block for block in bash_blocks(text)}


def unlisted_blocks(text: str) -> list[str]:
    """First lines of the text's shell blocks that BLOCKS does not cover."""
    return [first for first in _blocks(text) if first not in BLOCKS]


def test_every_bash_block_is_listed():
    found = _blocks()
    assert len(found) == len(bash_blocks(README.read_text(encoding="utf-8"))), "two README bash blocks start with the same line"
    unlisted = unlisted_blocks(README.read_text(encoding="utf-8"))
    assert not unlisted, ("README.md has ```bash blocks that no test runs or checks; add each to BLOCKS in "
                          f"Testing/test_readme_commands.py (Run or Parse): {unlisted}")
    stale = [first for first in BLOCKS if first not in found]
    assert not stale, f"BLOCKS lists blocks that are no longer in README.md (remove or update them): {stale}"


def test_block_extraction_and_command_splitting():
    text = "x\n```bash\npasta a --b 1 \\\n    --c 2   # note\n# out\ncat f\n```\n```python\nno\n```\n```sh\nls\n```\n"
    block, other = bash_blocks(text)
    assert _commands(block) == [["pasta", "a", "--b", "1", "--c", "2"], ["cat", "f"]]
    # A block nobody listed is reported (the README test then fails); a listed one is not.
    assert unlisted_blocks(text) == ["pasta a --b 1 \\", "ls"]
    assert unlisted_blocks("```bash\n" + next(iter(BLOCKS)) + "\n```\n") == []


def _check_command(words: list[str]) -> None:
    from PASTALib.cli.main import build_parser

    if words[0] == "pasta":
        parser = build_parser()
        try:
            parser.parse_args(words[1:])
        except SystemExit as exc:
            pytest.fail(f"README command does not parse ({exc.code}): {shlex.join(words)}")
        return
    if words[0] == "bash" and words[1].startswith("scripts/"):
        script = REPO / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, f"{words[1]} has a shell syntax error"
        return
    if words[0].endswith("python") and words[1].startswith("scripts/"):
        script = REPO / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                   cwd=REPO, timeout=120).stdout
        for option in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert option in help_text, f"{words[1]} has no option {option} (its --help does not list it)"
        return
    pytest.fail(f"no check for this README command; run its block instead: {shlex.join(words)}")


@pytest.mark.parametrize("first", [k for k, v in BLOCKS.items() if isinstance(v, Parse)])
def test_parse_block(first: str):
    block = _blocks().get(first)
    if block is None:
        pytest.skip("not in README.md (test_every_bash_block_is_listed reports it)")
    for words in _commands(block):
        _check_command(words)


def _prepare(folder: Path, shared_data: Path) -> None:
    """Small real inputs under the names the README uses."""
    ts, lung = shared_data / "totalsegmentator", shared_data / "pyradiomics"
    (folder / "ct.nii.gz").symlink_to(ts / "example_ct.nii.gz")
    (folder / "organs.nii.gz").symlink_to(ts / "example_seg_fast_force_split.nii.gz")
    (folder / "templates" / "example").mkdir(parents=True)
    (folder / "templates" / "example" / "ct.nii.gz").symlink_to(ts / "example_ct.nii.gz")
    (folder / "templates" / "example" / "organs.nii.gz").symlink_to(ts / "example_seg_fast_force_split.nii.gz")
    report = {"shape": "Round-like", "density": "Hyperdense", "heterogeneity": "Homogeneous",
              "surface": "Well-defined margin", "invasion": "No close relationship with surrounding structures"}
    (folder / "real_report.json").write_text(json.dumps(report))
    rows = ["image,mask,lesion_type,report,lesion_values"]
    rows += [f"{lung / f'lung{i}_image.nrrd'},{lung / f'lung{i}_label.nrrd'},lung_tumor,real_report.json,1" for i in (1, 2)]
    (folder / "real.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("first", [k for k, v in BLOCKS.items() if isinstance(v, Run)])
def test_run_block(first: str, tmp_path: Path, shared_data: Path):
    spec = BLOCKS[first]
    block = _blocks().get(first)
    if block is None:
        pytest.skip("not in README.md (test_every_bash_block_is_listed reports it)")
    for old, new in spec.substitutions:
        assert old in block, f"substitution target {old!r} is no longer in the README block"
        block = block.replace(old, new)
    _prepare(tmp_path, shared_data)
    script = f'set -euo pipefail\npasta() {{ "{sys.executable}" -m PASTALib "$@"; }}\n{block}'
    env = {**os.environ, "PYTHONPATH": str(REPO), "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, input=spec.stdin, capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, f"README block failed (exit {result.returncode}):\n{block}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    for output in spec.outputs:
        assert (tmp_path / output).is_file(), f"README block did not write {output}"
    if spec.comments_are_output:
        expected = [line[2:] for line in block.splitlines() if line.startswith("# ")]
        assert expected and all(line in result.stdout.splitlines() for line in expected), (
            f"README shows output the command does not print: {expected}\nprinted:\n{result.stdout}")
    if (tmp_path / "results" / "results.json").is_file():
        results = json.loads((tmp_path / "results" / "results.json").read_text())
        assert results["n_answers"] == 4 and results["n_cases_by_origin"] == {"real": 2, "synthetic": 2}
        assert any("at least 2 readers" in n for n in results["all_readers"]["auc"]["notes"])  # one reader so far


def test_parse_check_catches_the_old_reader_study_example():
    """The README's former example (options --study / --real that `review create` never had) fails the check."""
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _check_command(shlex.split("pasta review create --real real.csv --synthetic generated/ --study study/ --seed 1"))
    with pytest.raises(pytest.fail.Exception, match="no check for this README command"):
        _check_command(["curl", "https://example.org"])
