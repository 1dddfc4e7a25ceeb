"""Shared fixtures: the real CT data in ../shared/data (never copied into the project)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PASTA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; the suite needs it (CI clones the repo beside ../shared)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"Test data not found at {SHARED_DATA}; set PASTA_SHARED_DATA to ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ts_data(shared_data: Path) -> Path:
    """TotalSegmentator example CTs and label maps."""
    return shared_data / "totalsegmentator"
