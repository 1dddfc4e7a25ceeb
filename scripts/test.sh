#!/usr/bin/env bash
# The test command: installs what is missing, then runs the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest Testing -q --durations=15 "$@"
