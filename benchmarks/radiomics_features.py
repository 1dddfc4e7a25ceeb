"""PyRadiomics set-up shared by the realism benchmarks (the settings of its own lung reference values)."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

#: The settings behind pyradiomics' baseline CSVs for lung1/lung2 (original grid, bin width 25).
SETTINGS = {"binWidth": 25, "voxelArrayShift": 2000, "label": 1, "padDistance": 5, "interpolator": None,
            "resampledPixelSpacing": None}


def make_extractor(*feature_classes: str):
    """A RadiomicsFeatureExtractor with only ``feature_classes`` enabled (e.g. "firstorder", "shape")."""
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(**SETTINGS)
    extractor.disableAllFeatures()
    for name in feature_classes:
        extractor.enableFeatureClassByName(name)
    return extractor


def original_features(extractor, image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """``{"firstorder_Mean": ..., ...}`` for the lesion (mask > 0), plus "sd" (square root of Variance)."""
    out = extractor.execute(image, sitk.Cast(mask > 0, sitk.sitkUInt8))
    features = {k[len("original_"):]: float(v) for k, v in out.items() if k.startswith("original_")}
    features["sd"] = float(np.sqrt(features["firstorder_Variance"]))
    return features
