"""``pasta evaluate realism``: how well can real lesions be told from synthetic ones?

Per lesion: size-free shape features (:mod:`PASTALib.eval.shape_features`) and, unless
shape-only, PyRadiomics first-order and texture features (GLCM, GLRLM, GLSZM) of the CT inside the
mask. Acquisition matching (default on): each synthetic lesion is resampled to the voxel spacing of
a real scan drawn at random (seeded), so the slice staircase is not the giveaway; when the synthetic lesions'
template CTs are known (a ``pasta synth generate`` folder), only real lesions acquired with slices at least as
thick as the templates' take part (:func:`slice_floor`): a lesion pasted into 2.5 mm slices keeps that
staircase when resampled to 1.25 mm. Then:

* the classifier two-sample test (:func:`PASTALib.eval.two_sample.c2st_auc`): out-of-fold
  random-forest AUC with a bootstrap CI (0.5 = indistinguishable);
* per feature: standardized mean difference (synthetic − real, pooled SD), the two-sample
  Kolmogorov-Smirnov statistic and p value (``scipy.stats.ks_2samp``) and the Wasserstein distance
  in units of the real SD (``scipy.stats.wasserstein_distance``); sorted by KS statistic.

PyRadiomics is optional (its sdist needs a compiler and no build isolation); texture features
without it raise :class:`TextureUnavailableError`, whose message says how to install it.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import SimpleITK as sitk

from PASTALib.errors import PastaError
from PASTALib.eval.realism_io import LesionCase, load_lesion, match_spacing
from PASTALib.eval.shape_features import SIZE, SIZE_FREE, outline_gain, reader_outline, shape_features
from PASTALib.eval.tasks import EvaluationError
from PASTALib.eval.two_sample import C2STResult, c2st_auc

#: PyRadiomics classes used for "texture" (first order = intensity histogram; the rest = texture).
RADIOMICS_CLASSES = ("firstorder", "glcm", "glrlm", "glszm")
#: Settings of PyRadiomics' own lung reference values (bin width 25 HU); the grid is ours (matched).
RADIOMICS_SETTINGS = {"binWidth": 25, "voxelArrayShift": 2000, "label": 1, "padDistance": 5,
                      "interpolator": None, "resampledPixelSpacing": None}
INSTALL_RADIOMICS = ".venv/bin/python -m pip install --no-build-isolation pyradiomics==3.0.1"
#: Rows needed on each side for the classifier test (its folds shrink to the smaller side, down to 3).
MIN_ROWS_C2ST = 3


class TextureUnavailableError(EvaluationError):
    """Texture features were asked for but PyRadiomics is not installed."""


@dataclass(frozen=True)
class RealismResult:
    features: pd.DataFrame  # one row per lesion: case_id, source, lesion_type, spacing, feature columns
    distances: pd.DataFrame  # one row per feature, most separating first
    classifier_features: list[str]
    c2st: C2STResult | None
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def top_features(self, k: int = 5) -> list[str]:
        return list(self.distances["feature"].head(k))


def radiomics_extractor():
    """A PyRadiomics extractor with :data:`RADIOMICS_CLASSES` enabled; raises if PyRadiomics is absent."""
    try:
        from radiomics import featureextractor
    except ImportError:
        raise TextureUnavailableError(
            "texture features need PyRadiomics, which is not installed; install it with "
            f"`{INSTALL_RADIOMICS}` (or `bash scripts/bootstrap.sh --with-benchmarks`), or pass --shape-only") from None
    # PyRadiomics sets its logger to INFO and adds its own stderr handler at import: without this its
    # per-case records would reach the command's stderr (and any handler the application attached).
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(**RADIOMICS_SETTINGS)
    extractor.disableAllFeatures()
    for name in RADIOMICS_CLASSES:
        extractor.enableFeatureClassByName(name)
    return extractor


def texture_features(extractor, ct: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """``{"firstorder_Mean": ..., "glcm_Contrast": ...}`` of the CT inside the mask."""
    out = extractor.execute(ct, mask)
    return {k[len("original_"):]: float(v) for k, v in out.items() if k.startswith("original_")}


def lesion_features(case: LesionCase, *, spacing_xyz: Sequence[float] | None, extractor=None,
                    outline: bool = False) -> dict:
    """Shape (and, with an extractor, texture) features of one lesion, after resampling it to
    ``spacing_xyz`` (None: its own grid) and, with ``outline``, filling each slice as a reader's outline
    (:func:`PASTALib.eval.shape_features.reader_outline`). ``outline_gain`` is measured before that."""
    mask, ct = load_lesion(case, with_ct=extractor is not None)
    if spacing_xyz is not None and not np.allclose(mask.GetSpacing(), spacing_xyz, rtol=1e-3):
        mask, ct = match_spacing(mask, ct, spacing_xyz)
    array = sitk.GetArrayViewFromImage(mask).astype(bool)
    gain = outline_gain(array)
    if outline:
        array = reader_outline(array)
        outlined = sitk.GetImageFromArray(array.astype(np.uint8))
        outlined.CopyInformation(mask)
        mask = outlined
    row = {"case_id": case.case_id, "source": case.source, "lesion_type": case.lesion_type,
           "spacing_mm": "x".join(f"{s:.3g}" for s in mask.GetSpacing())}
    row.update({f"spacing_{axis}_mm": float(s) for axis, s in zip("xyz", mask.GetSpacing())})
    row.update(shape_features(array, mask.GetSpacing()[::-1]))
    row["outline_gain"] = gain
    row["log_volume"] = float(np.log(max(row["volume_mm3"], 1e-6)))
    if extractor is not None:
        row.update(texture_features(extractor, ct, mask))
    return row


def feature_distances(real: pd.DataFrame, synthetic: pd.DataFrame, features: Sequence[str],
                      importance: dict[str, float] | None = None) -> pd.DataFrame:
    """Per feature: means, SDs, SMD, KS statistic + p, Wasserstein / real SD; sorted by KS (desc)."""
    from scipy import stats

    rows = []
    for name in features:
        r, s = real[name].to_numpy(float), synthetic[name].to_numpy(float)
        r, s = r[np.isfinite(r)], s[np.isfinite(s)]
        if len(r) == 0 or len(s) == 0:
            continue
        sd_r, sd_s = (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in (r, s))
        pooled = math.sqrt((sd_r**2 + sd_s**2) / 2)
        scale = sd_r if sd_r > 0 else pooled
        ks = stats.ks_2samp(r, s)
        rows.append({
            "feature": name, "real_mean": float(r.mean()), "real_sd": sd_r, "synthetic_mean": float(s.mean()),
            "synthetic_sd": sd_s,
            "smd": float((s.mean() - r.mean()) / pooled) if pooled > 0 else 0.0,
            "ks": float(ks.statistic), "ks_p": float(ks.pvalue),
            "wasserstein_sd": float(stats.wasserstein_distance(r, s) / scale) if scale > 0 else 0.0,
            "importance": float((importance or {}).get(name, float("nan"))),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["abs_smd"] = table["smd"].abs()
    return table.sort_values(["ks", "abs_smd"], ascending=False).drop(columns="abs_smd").reset_index(drop=True)


#: outline decision (:func:`drawn_outlines`): lesions this large have a few slices with a traced outline
OUTLINE_MIN_DIAMETER_MM = 10.0
#: below this median gain the real outlines count as closed (LIDC >= 10 mm: 0.000; synthetic: ~0.03)
OUTLINE_GAIN_CLOSED = 0.005


def _large_gain(real: pd.DataFrame) -> float:
    return float(real[real["equivalent_diameter_mm"] >= OUTLINE_MIN_DIAMETER_MM]["outline_gain"].median())


#: slack (mm) when comparing a real scan's slice spacing with the synthetic lesions' templates'
SLICE_SLACK_MM = 0.05
#: fewest real lesions :func:`slice_floor` keeps; with fewer it keeps them all and says so
MIN_REAL_AT_FLOOR = 20


def slice_floor(real: pd.DataFrame, synthetic: Sequence[LesionCase]) -> tuple[pd.DataFrame, str | None]:
    """The real lesions acquired with slices no thinner than the synthetic lesions' template CTs (the thickest,
    :attr:`LesionCase.source_slice_mm`), and a note saying what was done; all of them when no template is known."""
    known = [c.source_slice_mm for c in synthetic if c.source_slice_mm is not None]
    if not known:
        return real, None
    floor = max(known)
    kept = real[real["spacing_z_mm"] >= floor - SLICE_SLACK_MM]
    if len(kept) < MIN_REAL_AT_FLOOR:
        return real, (f"only {len(kept)} real lesions come from slices >= {floor:g} mm (the synthetic lesions' "
                      f"templates'): all {len(real)} kept, so the templates' slice staircase may tell them apart")
    return kept, (f"real lesions: the {len(kept)} of {len(real)} acquired with slices >= {floor:g} mm, as the "
                  "synthetic lesions' template CTs were (a staircase does not go away when resampled finer)")


def target_spacings(real: pd.DataFrame, n: int, rng: np.random.Generator) -> list[tuple[float, ...]]:
    """``n`` voxel spacings (x, y, z mm) of real scans drawn at random: what acquisition matching resamples to."""
    pool = [tuple(float(v) for v in row) for row in real[["spacing_x_mm", "spacing_y_mm", "spacing_z_mm"]].to_numpy()]
    return [pool[int(i)] for i in rng.integers(0, len(pool), size=n)]


def drawn_outlines(real: pd.DataFrame) -> bool:
    """Whether the real masks are drawn as closed outlines per slice (median :func:`outline_gain` of those
    >= :data:`OUTLINE_MIN_DIAMETER_MM` below :data:`OUTLINE_GAIN_CLOSED`): then the synthetic masks are
    filled the same way in acquisition matching."""
    gain = _large_gain(real)
    return not math.isnan(gain) and gain < OUTLINE_GAIN_CLOSED


def _collect(cases: Sequence[LesionCase], spacings: Sequence, extractor, failed: list[str],
             progress: Callable[[LesionCase], None] | None, outline: bool = False) -> list[dict]:
    rows = []
    for case, spacing in zip(cases, spacings):
        try:
            rows.append(lesion_features(case, spacing_xyz=spacing, extractor=extractor, outline=outline))
        except (ValueError, RuntimeError, PastaError) as exc:
            # A degenerate lesion (too few voxels for a mesh or a texture matrix) or an unreadable synthetic case
            # is skipped and listed; a real lesion that cannot be read is the user's input error and stops the run.
            if isinstance(exc, PastaError) and case.source == "real":
                raise
            failed.append(f"{case.source} {case.case_id}: {exc}")
        if progress is not None:
            progress(case)
    return rows


def evaluate_realism(real: Sequence[LesionCase], synthetic: Sequence[LesionCase], *, rng: np.random.Generator,
                     shape_only: bool = False, match_acquisition: bool = True, with_size: bool = False,
                     max_synthetic: int | None = None, n_boot: int = 1000, n_trees: int = 300,
                     reader_outline: bool | None = None,
                     progress: Callable[[LesionCase], None] | None = None) -> RealismResult:
    """Features of every lesion, the C2ST AUC and per-feature distances (see the module docstring).

    ``reader_outline`` (acquisition matching only): fill each slice of a synthetic mask as a reader's
    outline; None decides from the real masks (:func:`drawn_outlines`)."""
    extractor = None if shape_only else radiomics_extractor()
    synthetic = list(synthetic)
    if max_synthetic is not None and len(synthetic) > max_synthetic:
        keep = np.sort(rng.choice(len(synthetic), size=max_synthetic, replace=False))
        synthetic = [synthetic[int(i)] for i in keep]
    failed: list[str] = []
    real_rows = _collect(real, [None] * len(real), extractor, failed, progress)
    if not real_rows:
        raise EvaluationError("no real lesion could be measured: " + "; ".join(failed[:3]))
    real_df = pd.DataFrame(real_rows)
    notes = []
    if match_acquisition:
        real_df, floor_note = slice_floor(real_df, synthetic)
        notes += [floor_note] if floor_note else []
    spacings = target_spacings(real_df, len(synthetic), rng) if match_acquisition else [None] * len(synthetic)
    outline = match_acquisition and (drawn_outlines(real_df) if reader_outline is None else reader_outline)
    if outline:
        notes.append("synthetic masks filled slice by slice as a reader's outline (the real masks are closed "
                     f"outlines: median outline gain {_large_gain(real_df):.3f} pixels per boundary pixel)")
    synthetic_df = pd.DataFrame(_collect(synthetic, spacings, extractor, failed, progress, outline))
    if synthetic_df.empty:
        raise EvaluationError("no synthetic lesion could be measured: " + "; ".join(failed[-3:]))
    features = pd.concat([real_df, synthetic_df], ignore_index=True)
    texture = [c for c in real_df.columns if c.split("_")[0] in RADIOMICS_CLASSES] if extractor else []
    clf_features = [*SIZE_FREE, *(["log_volume"] if with_size else []), *texture]
    finite = features[clf_features].replace([np.inf, -np.inf], np.nan).dropna(axis=1, how="any").columns
    if len(finite) < len(clf_features):
        notes.append("left out of the classifier (not finite for every lesion): "
                     + ", ".join(sorted(set(clf_features) - set(finite))))
        clf_features = [c for c in clf_features if c in finite]
    result = None
    n_min = min(len(real_df), len(synthetic_df))
    if n_min >= MIN_ROWS_C2ST:
        result = c2st_auc(real_df[clf_features].to_numpy(float), synthetic_df[clf_features].to_numpy(float),
                          list(clf_features), rng=rng, folds=min(5, n_min), n_resamples=n_boot,
                          n_estimators=n_trees)
    else:
        notes.append(f"classifier AUC not computed: it needs at least {MIN_ROWS_C2ST} lesions on each side "
                     f"({len(real_df)} real, {len(synthetic_df)} synthetic measured)")
    distance_features = [*clf_features, *(c for c in (*SIZE, "log_volume") if c not in clf_features)]
    distances = feature_distances(real_df, synthetic_df, distance_features, result.feature_importance if result else None)
    settings = {"shape_only": shape_only, "match_acquisition": match_acquisition, "reader_outline": bool(outline),
                "with_size": with_size,
                "n_boot": n_boot, "n_trees": n_trees, "radiomics_classes": [] if shape_only else list(RADIOMICS_CLASSES),
                "radiomics_settings": {} if shape_only else dict(RADIOMICS_SETTINGS)}
    return RealismResult(features, distances, list(clf_features), result, settings, notes, failed)
