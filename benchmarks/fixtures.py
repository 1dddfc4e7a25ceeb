"""Where the benchmarks read the real CT fixtures: the cache that scripts/fetch_test_data.py fills
($PASTA_TEST_DATA, else ~/.cache/pasta-test-data/<version>; docs/test-data.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_test_data.py"


def test_data_root() -> Path:
    """The fetched fixtures' root; exits with one ``error:`` line when they have not been fetched."""
    spec = importlib.util.spec_from_file_location("fetch_test_data", _SCRIPT)
    fetcher = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fetcher  # its dataclasses look their module up there
    spec.loader.exec_module(fetcher)
    root = fetcher.data_root()
    if not (root / fetcher.STAMP).is_file():
        raise SystemExit(f"error: test data not found at {root}; run `bash scripts/fetch_test_data.sh` first "
                         f"(or set PASTA_TEST_DATA to a folder it filled)")
    return root
