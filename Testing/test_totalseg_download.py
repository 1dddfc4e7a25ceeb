"""When TotalSegmentator may download its own weights: only on request (--allow-download), never
offline (--offline / PASTA_OFFLINE=1), and a failed download ends in the offline steps. A stand-in
``totalsegmentator.python_api`` records the call (TotalSegmentator itself is not installed here)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import SimpleITK as sitk

from PASTALib.anatomy.totalsegmentator import check_totalsegmentator_weights, offline_mode, run_totalsegmentator
from PASTALib.errors import MissingWeightsError


@pytest.fixture()
def no_weights(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.delenv("PASTA_OFFLINE", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts_home"))
    return tmp_path / "ts_home" / "nnunet" / "results"


def _fake(monkeypatch, calls: list[dict], *, weights_dir: Path, labels: Path | None, fail: Exception | None = None):
    """Stand-in that 'downloads' Dataset297 (writes its checkpoint) then writes ``labels``, or raises ``fail``."""

    def totalsegmentator(**kwargs):
        calls.append(kwargs)
        if fail is not None:
            raise fail
        ckpt = weights_dir / "Dataset297_TotalSegmentator_total_3mm_1559subj" / "fold_0" / "checkpoint_final.pth"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_bytes(b"weights")
        sitk.WriteImage(sitk.ReadImage(str(labels)), kwargs["output"])

    package = types.ModuleType("totalsegmentator")
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = totalsegmentator
    package.python_api = api
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)


def test_offline_mode_from_flag_and_environment(monkeypatch):
    monkeypatch.delenv("PASTA_OFFLINE", raising=False)
    assert offline_mode() is False and offline_mode(True) is True
    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("PASTA_OFFLINE", value)
        assert offline_mode() is expected
    monkeypatch.setenv("PASTA_OFFLINE", "1")
    assert offline_mode(False) is False  # an explicit choice wins over the environment


def test_missing_weights_without_request_says_how_to_allow_and_size(no_weights):
    with pytest.raises(MissingWeightsError) as info:
        check_totalsegmentator_weights(fast=True)
    message = str(info.value)
    assert "--allow-download" in message and "about 0.2 GB" in message
    assert "totalseg_download_weights -t total_fast" in message and str(no_weights) in message
    assert check_totalsegmentator_weights(fast=True, allow_download=True) == no_weights


def test_offline_environment_beats_allow_download(no_weights, monkeypatch, ts_data):
    monkeypatch.setenv("PASTA_OFFLINE", "1")
    calls: list[dict] = []
    _fake(monkeypatch, calls, weights_dir=no_weights, labels=ts_data / "example_seg_fast_force_split.nii.gz")
    with pytest.raises(MissingWeightsError, match=r"offline mode is set \(PASTA_OFFLINE=1.*about 1.5 GB.*totalseg_download_weights -t total`"):
        run_totalsegmentator(ts_data / "example_ct.nii.gz", allow_download=True)
    assert calls == []


def test_allowed_download_runs_totalsegmentator(no_weights, monkeypatch, ts_data):
    calls: list[dict] = []
    _fake(monkeypatch, calls, weights_dir=no_weights, labels=ts_data / "example_seg_fast_force_split.nii.gz")
    masks = run_totalsegmentator(ts_data / "example_ct.nii.gz", fast=True, allow_download=True)
    assert len(calls) == 1 and calls[0]["fast"] is True
    assert masks.source.startswith("TotalSegmentator") and masks.label_map.GetSize() == sitk.ReadImage(str(ts_data / "example_ct.nii.gz")).GetSize()
    assert check_totalsegmentator_weights(fast=True) == no_weights  # installed now: no flag needed


def test_failed_download_gives_offline_steps(no_weights, monkeypatch, ts_data):
    calls: list[dict] = []
    _fake(monkeypatch, calls, weights_dir=no_weights, labels=None,
          fail=ConnectionError("HTTPSConnectionPool(host='github.com'): Max retries exceeded"))
    with pytest.raises(MissingWeightsError) as info:
        run_totalsegmentator(ts_data / "example_ct.nii.gz", fast=True, allow_download=True)
    message = str(info.value)
    assert "TotalSegmentator's download failed (ConnectionError: HTTPSConnectionPool(host='github.com')" in message
    assert "totalseg_import_weights -i" in message and "Dataset297" in message
    assert len(calls) == 1


def test_cli_offline_flag(no_weights, monkeypatch, ts_data, capsys):
    from PASTALib.cli.main import main

    calls: list[dict] = []
    _fake(monkeypatch, calls, weights_dir=no_weights, labels=ts_data / "example_seg_fast_force_split.nii.gz")
    ct = str(ts_data / "example_ct.nii.gz")
    assert main(["anatomy", "organs", "--ct", ct, "--totalsegmentator", "--fast", "--offline"]) == 2
    assert "offline mode is set" in capsys.readouterr().err and calls == []
    assert main(["anatomy", "organs", "--ct", ct, "--totalsegmentator", "--fast", "--allow-download", "--json"]) == 0
    assert len(calls) == 1
