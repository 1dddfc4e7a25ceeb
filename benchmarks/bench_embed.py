"""Lesion embeddings per second on CPU: our pipeline vs a naive one, same run, same model.

ours  : read each CT once (rows of one image share it), resample only a 96³ 1 mm crop around the
        point (PASTALib.embed.crop_at_point), SLF, encode.
naive : for every row, read the CT, resample the WHOLE CT to canonical LPS 1 mm
        (PASTALib.geometry.to_canonical), cut the 96³ crop with numpy, SLF, encode.

Run:  python benchmarks/bench_embed.py [--rows 6] [--full] [--threads 1]
Needs the fetched test data (pyradiomics lung1, lung2; scripts/fetch_test_data.sh). ``--full`` adds the published-width model
(~241M parameters, random weights) at 96³, batch 1 (slow on CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.fixtures import test_data_root  # noqa: E402
from PASTALib.embed.crop import crop_at_point  # noqa: E402
from PASTALib.embed.extractor import LesionEmbedder  # noqa: E402
from PASTALib.geometry import to_canonical  # noqa: E402
from PASTALib.io import read_ct  # noqa: E402
from PASTALib.model import PastaUNet, UNetConfig  # noqa: E402

DATA = test_data_root() / "pyradiomics"


def lesion_rows(n: int) -> list[tuple[Path, np.ndarray]]:
    rows = []
    for name in ("lung1", "lung2"):
        label = sitk.ReadImage(str(DATA / f"{name}_label.nrrd"))
        zyx = np.argwhere(sitk.GetArrayViewFromImage(label) > 0).mean(axis=0)
        centre = np.array(label.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))
        for j in range(n // 2):
            rows.append((DATA / f"{name}_image.nrrd", centre + np.array([2.0 * j, 0, 0])))
    return rows


def naive_crop(path: Path, point: np.ndarray, size: int) -> np.ndarray:
    canon, mapping = to_canonical(read_ct(path), is_label=False)
    arr = sitk.GetArrayFromImage(canon)  # (z, y, x)
    idx = np.round(mapping.canonical.lps_to_index(point)).astype(int)[::-1]
    out = np.full((size,) * 3, -1024.0, np.float32)
    lo = idx - size // 2
    src = tuple(slice(max(a, 0), min(a + size, n)) for a, n in zip(lo, arr.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    out[dst] = arr[src]
    return out


def run(embedder: LesionEmbedder, rows, mode: str) -> float:
    t0 = time.perf_counter()
    cache = (None, None)
    for path, point in rows:
        if mode == "ours":
            if cache[0] != path:
                cache = (path, read_ct(path))
            crop = crop_at_point(cache[1], point, embedder.crop_size)
        else:
            crop = naive_crop(path, point, embedder.crop_size)
        embedder.embed_crops(crop[None])
    return len(rows) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="also the published-width model (slow)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = lesion_rows(args.rows)
    configs = [("tiny", UNetConfig.tiny())] + ([("full", UNetConfig())] if args.full else [])
    print(f"CPU, torch {torch.__version__}, {args.threads} thread(s), {len(rows)} lesions "
          f"(lung1/lung2, {len(rows) // 2} per CT), crop {args.crop}³ at 1 mm, batch 1")
    for name, cfg in configs:
        torch.manual_seed(0)
        emb = LesionEmbedder(PastaUNet(cfg), crop_size=args.crop, batch_size=1)
        emb.embed_crops(np.zeros((1,) + (args.crop,) * 3, np.float32))  # warm-up
        r_rows = rows if name == "tiny" else rows[:2]
        ours = run(emb, r_rows, "ours")
        naive = run(emb, r_rows, "naive")
        print(f"{name:5s} model: ours {ours:.3f} emb/s, naive whole-CT resampling {naive:.3f} emb/s, "
              f"ratio {ours / naive:.1f}x")


if __name__ == "__main__":
    main()
