#!/usr/bin/env bash
# The main job: synthesize a lung tumour into the real chest CT that slicerio ships and write
# CT + segmentation + structured report + PNG overview to demo_output/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/pasta demo --out "${1:-demo_output}"
