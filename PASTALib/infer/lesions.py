"""Lesion instances from a predicted label map: components, organ/location, measurements,
attributes from the model head, and the structured report of each lesion; and, for a fine-tuned
model, the components of its annotated classes that are not PASTA lesion types (no report).

All measurements are taken on the output (input-grid) label map with
:func:`PASTALib.report.measure.measure_lesion`, the same code the synthesis reports use, so a
report's size, volume and HU equal what is measured back from ``labels.nii.gz``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from PASTALib.geometry import Grid, resample_to_grid
from PASTALib.geometry.canonical import IDENTITY_DIRECTION
from PASTALib.labels import LesionType, Organ, Phase
from PASTALib.model.attributes import AttributePrediction, decode_attributes
from PASTALib.model.preprocess import SLF_VALUES, slf_normalize, to_head_orientation
from PASTALib.report.measure import measure_lesion
from PASTALib.report.wording import StructuredReport

logger = logging.getLogger(__name__)

LESION_MIN, LESION_MAX = 11, 25
#: measure_lesion's shell around the lesion in which the organ HU is taken (mm).
MEASURE_SHELL_MM = 10.0


@dataclass
class LesionFinding:
    """One lesion instance on the input grid, with what was measured and predicted."""

    index: int  # 1-based instance number (largest lesion first)
    label_value: int  # 11-25
    organ: Organ
    location: str  # report wording with side ("Right kidney")
    voxels: int
    box_zyx: tuple[tuple[int, int], ...]  # input-grid array index range (end exclusive)
    measurement: dict[str, Any]  # measure_lesion output (extents_xyz_mm, volume_mm3, centre_mm, mean_hu, ...)
    longest_diameter_mm: float
    organ_votes: dict[int, int] = field(default_factory=dict)
    #: the predicted lesion classes belong to another organ than the one the lesion sits in: the
    #: location is the organ, the type is the network's majority class and is reported as uncertain
    type_uncertain: bool = False
    attributes: AttributePrediction | None = None
    report: StructuredReport | None = None

    @property
    def lesion_type(self) -> LesionType:
        return LesionType(self.label_value)

    @property
    def size_zxy_mm(self) -> tuple[int, int, int]:
        return _size_zxy_mm(self.measurement)

    def details(self) -> dict[str, Any]:
        """JSON-ready sidecar entry (what the schema-strict report cannot hold)."""
        out: dict[str, Any] = {
            "kind": "lesion",
            "index": self.index,
            "name": self.lesion_type.display_name,
            "label_value": self.label_value,
            "lesion_type": self.lesion_type.slug,
            **_common_measures(self.measurement),
            "location": self.location,
            "voxels": self.voxels,
            "volume_mm3": round(float(self.measurement["volume_mm3"]), 1),
            "extents_xyz_mm": [round(float(v), 2) for v in self.measurement["extents_xyz_mm"]],
            "longest_diameter_mm": round(self.longest_diameter_mm, 2),
            "centre_mm": [round(float(v), 2) for v in self.measurement["centre_mm"]],
            "std_hu": round(float(self.measurement["std_hu"]), 1),
            "box_zyx": [list(b) for b in self.box_zyx],
            "organ_votes": {str(k): int(v) for k, v in self.organ_votes.items()},
            "type_uncertain": self.type_uncertain,
        }
        if self.attributes is not None:
            out["attributes"] = dict(self.attributes.values)
            out["confidence"] = {k: round(self.attributes.confidence(k), 4) for k in self.attributes.values}
            out["probabilities"] = {k: {o: round(p, 4) for o, p in v.items()} for k, v in self.attributes.probabilities.items()}
        if self.report is not None:
            out["text"] = self.report.to_text() + self.type_note
        return out

    @property
    def type_note(self) -> str:
        """What a report line adds when the type is uncertain (empty otherwise)."""
        if not self.type_uncertain:
            return ""
        return (f"; lesion type uncertain ({self.lesion_type.display_name.lower()} predicted, "
                f"located in the {self.organ.display_name.lower()})")


def _size_zxy_mm(measurement: dict[str, Any]) -> tuple[int, int, int]:
    """Report order and rounding of measure_lesion's extents (the report's "Z×X×Y mm")."""
    x, y, z = (int(round(float(v))) for v in measurement["extents_xyz_mm"])
    return (z, x, y)


def _common_measures(measurement: dict[str, Any]) -> dict[str, Any]:
    """Keys every lesions.json entry has (lesion or annotated component), so a viewer reads them alike."""
    size = _size_zxy_mm(measurement)
    return {
        "volume_ml": round(float(measurement["volume_mm3"]) / 1000.0, 4),
        "size_zxy_mm": list(size),
        "size": "×".join(str(v) for v in size) + " mm",
        "centroid": [round(float(v), 2) for v in measurement["centre_mm"]],  # LPS mm
        "mean_hu": round(float(measurement["mean_hu"]), 1),
    }


@dataclass
class AnnotatedComponent:
    """A connected component of an annotated class of a fine-tuned model whose label value is not a
    PASTA lesion type (11-25): listed in lesions.json with its measurements, no structured report."""

    index: int  # numbered after the lesions (largest first), unique in lesions.json
    label_value: int
    name: str
    voxels: int
    box_zyx: tuple[tuple[int, int], ...]  # input-grid array index range (end exclusive)
    measurement: dict[str, Any]  # measure_lesion output (extents_xyz_mm, volume_mm3, centre_mm, mean_hu, ...)

    @property
    def size_zxy_mm(self) -> tuple[int, int, int]:
        return _size_zxy_mm(self.measurement)

    def details(self) -> dict[str, Any]:
        return {
            "kind": "annotated",
            "index": self.index,
            "name": self.name,
            "label_value": self.label_value,
            **_common_measures(self.measurement),
            "voxels": self.voxels,
            "volume_mm3": round(float(self.measurement["volume_mm3"]), 1),
            "extents_xyz_mm": [round(float(v), 2) for v in self.measurement["extents_xyz_mm"]],
            "box_zyx": [list(b) for b in self.box_zyx],
        }


def find_components(ct: sitk.Image, labels: sitk.Image, names: dict[int, str], *, min_volume_mm3: float,
                    first_index: int = 1) -> tuple[sitk.Image, list[AnnotatedComponent]]:
    """Connected components (26-connectivity, as :func:`find_lesions`) of each label value in ``names``.

    Components below ``min_volume_mm3`` are set to background (prediction specks, as lesion specks are
    dropped); the others are measured with measure_lesion (extents, volume, centroid, HU) and numbered
    from ``first_index``, largest first. Returns the cleaned label map (same grid) and the components.
    """
    if not names:
        return labels, []
    lab = sitk.GetArrayFromImage(labels)
    spacing_zyx = np.asarray(labels.GetSpacing(), float)[::-1]
    voxel_mm3 = float(np.prod(spacing_zyx))
    found: list[AnnotatedComponent] = []
    for value, name in sorted(names.items()):
        comp, _n = ndimage.label(lab == value, structure=np.ones((3, 3, 3), bool))
        for i, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None:
                continue
            local = comp[sl] == i
            count = int(local.sum())
            if count * voxel_mm3 < min_volume_mm3:
                lab[sl][local] = 0
                continue
            # measure this component alone: a crop whose label holds only its voxels
            (z0, z1), (y0, y1), (x0, x1) = ((b.start, b.stop) for b in sl)
            crop = sitk.GetImageFromArray(local.astype(np.uint8))
            ct_crop = ct[x0:x1, y0:y1, z0:z1]
            crop.CopyInformation(ct_crop)
            m = measure_lesion(ct_crop, crop, 1, 0, shell_mm=0.0)
            found.append(AnnotatedComponent(0, int(value), str(name), count, tuple((b.start, b.stop) for b in sl), m))
    found.sort(key=lambda c: (-c.voxels, c.label_value, c.box_zyx))
    for k, c in enumerate(found):
        c.index = first_index + k
    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(labels)
    return out, found


def _pad_box(sl: Sequence[slice], pad: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(sl, pad, shape))


def longest_axis_mm(mask_zyx: np.ndarray, image: sitk.Image,
                    offset_zyx: Sequence[int] = (0, 0, 0)) -> tuple[float, np.ndarray, np.ndarray]:
    """Longest distance (mm) between two points of the voxelised lesion (voxel corners, world space)
    and its two end points (LPS mm): the long axis a viewer draws."""
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist, squareform

    boundary = mask_zyx & ~ndimage.binary_erosion(mask_zyx)
    idx = np.argwhere(boundary)[:, ::-1].astype(float) + np.asarray(offset_zyx, float)[::-1]  # (x, y, z) index
    corners = np.array([[dx, dy, dz] for dx in (-0.5, 0.5) for dy in (-0.5, 0.5) for dz in (-0.5, 0.5)])
    pts_index = (idx[:, None, :] + corners[None]).reshape(-1, 3)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    pts = np.asarray(image.GetOrigin()) + (pts_index * np.asarray(image.GetSpacing())) @ direction.T
    pts = np.unique(np.round(pts, 4), axis=0)
    if len(pts) > 64:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:
            pass
    if len(pts) < 2:
        return 0.0, pts[0], pts[0]
    distances = squareform(pdist(pts))
    i, j = np.unravel_index(int(distances.argmax()), distances.shape)
    return float(distances[i, j]), pts[i], pts[j]


def longest_diameter_mm(mask_zyx: np.ndarray, image: sitk.Image, offset_zyx: Sequence[int] = (0, 0, 0)) -> float:
    """Largest distance (mm) between two points of the voxelised lesion (voxel corners, world space)."""
    return longest_axis_mm(mask_zyx, image, offset_zyx)[0]


def find_lesions(
    ct: sitk.Image, labels: sitk.Image, *, min_volume_mm3: float, organ_shell_mm: float,
    organ_labels: sitk.Image | None = None,
) -> tuple[sitk.Image, sitk.Image, list[LesionFinding]]:
    """Split lesion voxels (11-25) into connected components (26-connectivity) and measure them.

    * Components below ``min_volume_mm3`` go back to the organ voted around them (or background).
    * Each component gets one lesion type: the majority lesion class among the types that belong
      to the surrounding organ; its voxels are relabelled to it. When no predicted class belongs to
      that organ, the location stays the organ it sits in, the type is the overall majority class
      and the finding is marked ``type_uncertain`` (reports say so) — never a type of one organ
      located in another without saying so.
    * The organ (report location) is the majority organ label (1-10) in a ``organ_shell_mm`` shell
      around the lesion in ``organ_labels`` (a PASTA organ map on the same grid, e.g. from
      OrganMasks.pasta_label_map) when given — inside the lesion too — else in the prediction.

    Returns the cleaned label map (same grid), the instance map (uint16, lesion ``index`` per voxel)
    and the lesions, largest first (index 1 = largest), locations not yet set.
    """
    lab = sitk.GetArrayFromImage(labels).astype(np.uint8)
    organ_src = lab if organ_labels is None else sitk.GetArrayFromImage(organ_labels)
    spacing_zyx = np.asarray(labels.GetSpacing(), float)[::-1]
    voxel_mm3 = float(np.prod(spacing_zyx))
    comp, n = ndimage.label((lab >= LESION_MIN) & (lab <= LESION_MAX), structure=np.ones((3, 3, 3), bool))
    shell_pad = [int(math.ceil(organ_shell_mm / s)) + 1 for s in spacing_zyx]
    kept: list[tuple[int, tuple[slice, ...], int, Organ | None, dict[int, int], bool]] = []
    for i, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None:
            continue
        box = _pad_box(sl, shell_pad, lab.shape)
        region = comp[box] == i
        dist = ndimage.distance_transform_edt(~region, sampling=spacing_zyx)
        vote_mask = (dist > 0) & (dist <= organ_shell_mm)
        if organ_labels is not None:
            vote_mask |= region
        votes_arr = organ_src[box][vote_mask].astype(np.int64)
        votes_arr = votes_arr[(votes_arr >= 1) & (votes_arr <= 10)]
        counts = np.bincount(votes_arr, minlength=11)
        votes = {int(k): int(c) for k, c in enumerate(counts) if c and k}
        organ = Organ(int(counts.argmax())) if counts[1:].sum() else None
        count = int(region.sum())
        local = comp[sl] == i
        if count * voxel_mm3 < min_volume_mm3:
            sub = lab[sl]
            sub[local] = int(organ) if organ is not None else 0
            continue
        classes = np.bincount(lab[sl][local].astype(np.int64), minlength=LESION_MAX + 1)
        candidates = [v for v in range(LESION_MIN, LESION_MAX + 1) if classes[v] and organ is not None and LesionType(v).organ == organ]
        value = max(candidates, key=lambda v: classes[v]) if candidates else int(classes.argmax())
        uncertain = organ is not None and LesionType(value).organ != organ
        if uncertain:
            logger.info("lesion component %d: predicted %s but located in the %s; type reported as uncertain",
                        i, LesionType(value).display_name, organ.display_name)
        lab[sl][local] = value
        kept.append((i, sl, value, organ, votes, uncertain))

    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(labels)
    measure_pad = [int(math.ceil(MEASURE_SHELL_MM / s)) + 1 for s in spacing_zyx]
    findings: list[LesionFinding] = []
    component_of: dict[int, int] = {}
    for i, sl, value, organ, votes, uncertain in kept:
        findings.append(_measure_component(ct, comp, lab, i, sl, value, organ, votes, uncertain, measure_pad))
        component_of[id(findings[-1])] = i
    findings.sort(key=lambda f: (-f.voxels, f.box_zyx))
    lut = np.zeros(n + 1, np.uint16)
    for k, f in enumerate(findings, start=1):
        f.index = k
        lut[component_of[id(f)]] = k
    instances = sitk.GetImageFromArray(lut[comp])
    instances.CopyInformation(labels)
    return out, instances, findings


def _measure_component(
    ct: sitk.Image, comp: np.ndarray, lab: np.ndarray, i: int, sl: tuple[slice, ...], value: int,
    organ: Organ | None, votes: dict[int, int], uncertain: bool, measure_pad: list[int],
) -> LesionFinding:
    """Measure connected component ``i`` (label ``value``) on a padded crop; index and location set later."""
    box = _pad_box(sl, measure_pad, lab.shape)
    inst = comp[box] == i
    lab_crop = lab[box].copy()
    lab_crop[(lab_crop >= LESION_MIN) & ~inst] = 0  # other lesions do not count as this one or its organ
    lab_crop[inst] = value
    (z0, z1), (y0, y1), (x0, x1) = ((b.start, b.stop) for b in box)
    ct_crop = ct[x0:x1, y0:y1, z0:z1]
    lab_img = sitk.GetImageFromArray(lab_crop)
    lab_img.CopyInformation(ct_crop)
    organ = organ or LesionType(value).organ
    m = measure_lesion(ct_crop, lab_img, value, int(organ), shell_mm=MEASURE_SHELL_MM)
    if not np.isfinite(m["organ_mean_hu"]):  # no organ voxel around it: use the surrounding tissue
        hu = sitk.GetArrayViewFromImage(ct_crop)
        around = hu[(lab_crop < LESION_MIN) & ~inst]
        m["organ_mean_hu"] = float(np.median(around)) if around.size else float(m["mean_hu"])
    return LesionFinding(
        index=0, label_value=int(value), organ=organ, location=organ.display_name, voxels=int(inst.sum()),
        box_zyx=tuple((b.start, b.stop) for b in sl), measurement=m,
        longest_diameter_mm=longest_diameter_mm(inst, ct, (z0, y0, x0)), organ_votes=votes,
        type_uncertain=uncertain,
    )


def attribute_crop_grid(centre_lps: Sequence[float], size: Sequence[int], spacing: float = 1.0) -> Grid:
    """Canonical grid of exactly ``size`` voxels with the centre at voxel size//2 (as training crops)."""
    size = tuple(int(s) for s in size)
    origin = np.asarray(centre_lps, float) - np.asarray([s // 2 for s in size], float) * spacing
    return Grid(size, (float(spacing),) * 3, tuple(float(v) for v in origin), IDENTITY_DIRECTION)


@torch.no_grad()
def classify_lesions(
    model: torch.nn.Module, ct: sitk.Image, centres_lps: Sequence[Sequence[float]], *, device: torch.device,
    crop_size: Sequence[int] = (96, 96, 96), spacing: float = 1.0, slf_values: Sequence[float] = SLF_VALUES,
    batch_size: int = 2, dtype: torch.dtype | None = None,
) -> list[AttributePrediction]:
    """The five attributes of each lesion from a lesion-centred canonical crop in the SLF map."""
    preds: list[AttributePrediction] = []
    centres = list(centres_lps)
    for start in range(0, len(centres), max(1, batch_size)):
        crops = []
        for c in centres[start:start + batch_size]:
            grid = attribute_crop_grid(c, crop_size, spacing)
            hu = sitk.GetArrayFromImage(resample_to_grid(ct, grid, is_label=False))  # (z, y, x), -1024 outside
            # the head of PASTA_final.pth was trained on the authors' LAS-transposed crops (y flipped vs LPS)
            crops.append(to_head_orientation(slf_normalize(hu, values=tuple(slf_values)))[None])
        x = torch.from_numpy(np.stack(crops)).to(device)
        if dtype is not None:
            with torch.autocast(device_type=device.type, dtype=dtype):
                logits = model.classify(x)
        else:
            logits = model.classify(x)
        preds.extend(decode_attributes(logits.float()))
    return preds


def build_lesion_report(finding: LesionFinding, phase: Phase) -> StructuredReport:
    """StructuredReport of a finding (attributes required: run classify_lesions first)."""
    if finding.attributes is None:
        raise ValueError("lesion attributes are not predicted")
    m, a = finding.measurement, finding.attributes.values
    return StructuredReport(
        enhancement=Phase(phase).value,
        location=finding.location,
        size_zxy_mm=finding.size_zxy_mm,
        shape=a["shape"],
        density=a["density"],
        heterogeneity=a["heterogeneity"],
        surface=a["surface"],
        invasion=a["invasion"],
        lesion_type=finding.lesion_type.slug,
        label_value=finding.label_value,
        centre_mm=tuple(round(float(v), 2) for v in m["centre_mm"]),
        volume_mm3=round(float(m["volume_mm3"]), 1),
        mean_hu=round(float(m["mean_hu"]), 1),
        organ_mean_hu=round(float(m["organ_mean_hu"]), 1),
        seed=None,
    )
