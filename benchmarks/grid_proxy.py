"""A test-style model with the published bottleneck, to ask how far a model's answer moves with its window grid
(issue #17): the tests' tiny model uses 32³ windows at 4.5 mm with a 2³ bottleneck, where every voxel is near a
window border; PASTA uses 128³ windows with a 4³ bottleneck; this model 64³ windows at 3 mm with 4³.

Builds the tests' cases (a large hypodense liver tumour and a right kidney cyst synthesized into
TotalSegmentator's example_ct, seeds 1-3) on the WHOLE CT, canonical at --spacing mm, trains a narrow
PastaUNet with the tests' recipe on --patch windows (Testing/conftest.py's training loop, only the window
and the iteration count changed), and writes the seed-1 CT and its labels where `bench_fast_infer.py
--part tiny --checkpoint ... --ct ...` reads them:

    python benchmarks/grid_proxy.py --out ~/.cache/pasta-bench/grid-proxy        # ~12 min on 2 cores (600 iterations)
    python benchmarks/bench_fast_infer.py --part tiny --checkpoint ~/.cache/pasta-bench/grid-proxy/model_final.pth \
        --ct ~/.cache/pasta-bench/grid-proxy/test_ct.nii.gz --patch 64 --spacing 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.fixtures import test_data_root  # noqa: E402


def _conftest():
    """Testing/conftest.py, where the test model's lesions and training loop live."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
    import conftest

    return conftest


def build_cases(out: Path, spacing: float) -> None:
    from PASTALib.anatomy import OrganMasks
    from PASTALib.geometry import to_canonical
    from PASTALib.io import read_ct, read_label, write_image
    from PASTALib.synth import synthesize_lesion

    conftest = _conftest()
    ts = test_data_root() / "totalsegmentator"
    ct = read_ct(ts / "example_ct.nii.gz")
    organs = OrganMasks.from_label_map(read_label(ts / "example_seg_fast_force_split.nii.gz"),
                                       reference=ct).pasta_label_map(include_lesions=False)
    for seed in (1, 2, 3):
        folder = out / "train" / f"case_{seed}"
        if (folder / "label.nii.gz").is_file():
            continue
        c, lab = ct, organs
        for spec in conftest.model_lesion_specs(seed):  # the tests' two lesions
            r = synthesize_lesion(c, lab, spec)
            c, lab = r.ct, r.labels
        cc, mapping = to_canonical(c, is_label=False, spacing=spacing)
        lc, _ = to_canonical(lab, mapping, is_label=True)
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Cast(sitk.Round(cc), sitk.sitkInt16), str(folder / "img.nii.gz"))
        sitk.WriteImage(lc, str(folder / "label.nii.gz"))
        if seed == 1:  # the case segmented by the benchmark, on the CT's own grid
            write_image(c, out / "test_ct.nii.gz")
            write_image(lab, out / "test_gt.nii.gz")
        print(f"case {seed} written", flush=True)


def train(out: Path, patch: int, iterations: int) -> Path:
    """The tests' training recipe (Testing/conftest.py `checkpoint`: the tiny 5-stage network, CE with the lesion
    classes weighted, Adam, poly schedule) with the window edge and the iteration count changed, nothing else."""
    path = out / "model_final.pth"
    if path.is_file():
        return path
    conftest = _conftest()
    conftest.PATCH, conftest.ITERATIONS = patch, iterations
    print(f"training {iterations} iterations on {patch}³ windows into {out} (once) ...", flush=True)
    return conftest.checkpoint.__wrapped__(SimpleNamespace(data=out / "train", root=out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "pasta-bench" / "grid-proxy")
    ap.add_argument("--spacing", type=float, default=3.0)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=600)
    args = ap.parse_args()
    build_cases(args.out, args.spacing)
    print(f"model: {train(args.out, args.patch, args.iterations)}; CT: {args.out / 'test_ct.nii.gz'}")


if __name__ == "__main__":
    main()
