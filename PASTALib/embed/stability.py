"""Feature stability under small perturbations of the seed point and of the intensities.

Perturbations of one lesion (all on the same 1 mm crop grid, only the input changes):

* ``shift_±Nmm_<axis>`` — the seed point moved N mm along L, P or S (default 2 and 3 mm),
* ``hu_±D`` — a constant HU offset added to the crop (default ±20 HU, e.g. a calibration drift),
* ``noise_S`` — Gaussian noise with SD S HU (default 10 HU, seeded Generator passed in).

Reported per perturbation: the cosine similarity of the perturbed feature to the unperturbed one,
and across lesions the ICC of every feature dimension (ICC(2,1): two-way random effects, absolute
agreement, single measurement — Shrout & Fleiss; equal to pingouin's ``ICC2``), summarised by its
median and the fraction of dimensions with ICC ≥ 0.75 ("good" reliability, Koo & Li 2016).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from PASTALib.embed.probes import cosine_similarity_matrix

AXES = {"L": 0, "P": 1, "S": 2}


def icc_2_1(ratings: np.ndarray) -> np.ndarray:
    """ICC(2,1) of (n_subjects, k_conditions) ratings, or of (n, k, d) for d features at once → (d,)."""
    x = np.asarray(ratings, np.float64)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[:, :, None]
    n, k, _ = x.shape
    if n < 2 or k < 2:
        raise ValueError("ICC needs at least 2 subjects and 2 conditions")
    grand = x.mean(axis=(0, 1))
    row = x.mean(axis=1)  # (n, d)
    col = x.mean(axis=0)  # (k, d)
    ss_r = k * ((row - grand) ** 2).sum(axis=0)
    ss_c = n * ((col - grand) ** 2).sum(axis=0)
    ss_t = ((x - grand) ** 2).sum(axis=(0, 1))
    ss_e = ss_t - ss_r - ss_c
    ms_r, ms_c, ms_e = ss_r / (n - 1), ss_c / (k - 1), ss_e / ((n - 1) * (k - 1))
    denom = ms_r + (k - 1) * ms_e + k * (ms_c - ms_e) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        icc = np.where(denom > 0, (ms_r - ms_e) / denom, np.nan)
    return icc[0] if squeeze else icc


def perturbations(shifts_mm: Sequence[float] = (2.0, 3.0), hu_offsets: Sequence[float] = (-20.0, 20.0),
                  noise_sd: Sequence[float] = (10.0,)) -> list[dict]:
    """The list of perturbation specs used by :func:`stability_report`."""
    specs = []
    for mm in shifts_mm:
        for axis in AXES:
            for sign in (-1, 1):
                specs.append({"name": f"shift_{'+' if sign > 0 else '-'}{mm:g}mm_{axis}", "kind": "shift",
                              "mm": float(mm), "offset": np.eye(3)[AXES[axis]] * sign * mm})
    for d in hu_offsets:
        specs.append({"name": f"hu_{d:+g}", "kind": "hu", "hu": float(d)})
    for s in noise_sd:
        specs.append({"name": f"noise_{s:g}", "kind": "noise", "sd": float(s)})
    return specs


def perturbed_features(embedder, image, points_lps: Sequence[Sequence[float]], *, rng: np.random.Generator,
                       specs: list[dict] | None = None) -> tuple[np.ndarray, list[str]]:
    """Features (n_points, 1 + n_perturbations, D): index 0 is unperturbed; names of the columns."""
    specs = perturbations() if specs is None else specs
    names = ["base"] + [s["name"] for s in specs]
    out = []
    for p in points_lps:
        p = np.asarray(p, float)
        base = embedder.crop(image, p)
        crops = [base]
        for s in specs:
            if s["kind"] == "shift":
                crops.append(embedder.crop(image, p + s["offset"]))
            elif s["kind"] == "hu":
                crops.append(base + np.float32(s["hu"]))
            else:
                crops.append(base + rng.normal(0.0, s["sd"], base.shape).astype(np.float32))
        out.append(embedder.embed_crops(np.stack(crops)))
    return np.stack(out), names


def stability_report(features: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Per perturbation: mean / min cosine similarity to the unperturbed feature over lesions and,
    with ≥2 lesions, the median ICC(2,1) over feature dimensions of (base, perturbed) and the
    fraction of dimensions with ICC ≥ 0.75."""
    n = features.shape[0]
    rows = []
    for j, name in enumerate(names[1:], start=1):
        cos = np.array([cosine_similarity_matrix(features[i, :1], features[i, j:j + 1])[0, 0] for i in range(n)])
        row = {"perturbation": name, "n_lesions": n, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
        if n >= 2:
            icc = icc_2_1(features[:, [0, j], :])
            row["icc_median"] = float(np.nanmedian(icc))
            row["icc_frac_ge_0.75"] = float(np.nanmean(icc >= 0.75))
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_by_kind(report: pd.DataFrame) -> pd.DataFrame:
    """Collapse a :func:`stability_report` by perturbation family (shift_2mm, shift_3mm, hu, noise)."""
    def family(name: str) -> str:
        if name.startswith("shift_"):
            return "shift_" + name.split("_")[1].lstrip("+-")
        return name.split("_")[0]

    df = report.copy()
    df["family"] = df["perturbation"].map(family)
    agg = {c: "mean" for c in df.columns if c not in ("perturbation", "family", "n_lesions")}
    agg["cosine_min"] = "min"
    return df.groupby("family", sort=False).agg(agg).reset_index()
