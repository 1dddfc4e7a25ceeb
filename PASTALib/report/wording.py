"""Structured report (8 attributes, exact wording) measured from the output image and label."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.errors import SpecificationError
from PASTALib.labels import LesionType, Organ, Phase
from PASTALib.synth.attributes import Density, Heterogeneity, Invasion, Shape, Surface

SCHEMA_VERSION = 1


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a structured report."""
    text = resources.files("PASTALib").joinpath("resources/report.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def location_text(organ: Organ, side: str | None) -> str:
    """Organ display name, with the side for paired organs ("Right kidney")."""
    if organ.is_paired and side:
        return f"{side.capitalize()} {organ.display_name.lower()}"
    return organ.display_name


@dataclass(frozen=True)
class StructuredReport:
    """The PASTA structured report of one lesion plus the measurements behind it."""

    enhancement: str
    location: str
    size_zxy_mm: tuple[int, int, int]  # craniocaudal, right-left, anterior-posterior
    shape: str
    density: str
    heterogeneity: str
    surface: str
    invasion: str
    lesion_type: str
    label_value: int
    centre_mm: tuple[float, float, float]  # LPS centroid of the lesion label
    volume_mm3: float
    mean_hu: float
    organ_mean_hu: float
    seed: int | None = None

    @property
    def size_text(self) -> str:
        return "×".join(str(v) for v in self.size_zxy_mm) + "mm"

    @property
    def shape_text(self) -> str:
        # Masses are reported as "<shape> mass"; the other two wordings stand alone.
        return f"{self.shape} mass" if self.shape in (Shape.ROUND.value, Shape.IRREGULAR.value) else self.shape

    def to_text(self) -> str:
        """One-line form: "Enhanced CT; Right kidney; 25×25×37mm; Round-like mass; ..."."""
        return "; ".join(
            [self.enhancement, self.location, self.size_text, self.shape_text, self.density,
             self.heterogeneity, self.surface, self.invasion]
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["size_zxy_mm"] = list(self.size_zxy_mm)
        out["centre_mm"] = [round(float(v), 2) for v in self.centre_mm]
        out["size"] = self.size_text
        out["text"] = self.to_text()
        out["schema_version"] = SCHEMA_VERSION
        return out

    def to_json(self, indent: int | None = 2) -> str:
        data = self.to_dict()
        validate_report(data)
        return json.dumps(data, indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "StructuredReport":
        data = json.loads(text)
        validate_report(data)
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["size_zxy_mm"] = tuple(fields["size_zxy_mm"])
        fields["centre_mm"] = tuple(fields["centre_mm"])
        return cls(**fields)


def validate_report(data: dict[str, Any]) -> None:
    """Raise SpecificationError when ``data`` does not follow report.schema.json."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator(report_schema()).validate(data)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "report"
        raise SpecificationError(f"Invalid structured report at {where}: {exc.message}") from None


def measure_lesion(
    ct: sitk.Image, labels: sitk.Image, lesion_value: int, organ_value: int, shell_mm: float = 10.0,
    box: tuple[tuple[int, int], ...] | None = None,
) -> dict[str, Any]:
    """Measure a lesion on the output grid: extents (canonical x, y, z mm), volume, centroid, HU.

    Extents are taken along LPS axes from voxel centres plus one voxel (projected spacing), so
    a voxelised ellipsoid of diameter d measures ~d on any grid.
    """
    lab = sitk.GetArrayViewFromImage(labels).transpose(2, 1, 0)
    hu = sitk.GetArrayViewFromImage(ct).transpose(2, 1, 0)
    # ``box`` (where the lesion can be) avoids a whole-volume scan; indices stay global.
    offset = np.zeros(3, int) if box is None else np.array([b[0] for b in box])
    search = lab if box is None else lab[tuple(slice(a, b) for a, b in box)]
    idx = np.argwhere(search == lesion_value) + offset
    if idx.size == 0:
        raise SpecificationError("The lesion is empty on the output grid (smaller than a voxel); request a larger size.")
    spacing = np.asarray(labels.GetSpacing())
    direction = np.asarray(labels.GetDirection()).reshape(3, 3)
    points = np.asarray(labels.GetOrigin()) + (idx * spacing) @ direction.T
    voxel_extent = np.abs(direction) @ spacing  # one voxel's extent along each LPS axis
    extents = points.max(axis=0) - points.min(axis=0) + voxel_extent
    values = hu[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    # Surrounding organ: organ voxels within shell_mm of the lesion bounding box, not lesion.
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    pad = np.ceil(shell_mm / spacing).astype(int)
    sl = tuple(slice(max(0, a - p), b + p + 1) for a, b, p in zip(lo, hi, pad))
    organ = lab[sl] == organ_value
    organ_values = hu[sl][organ].astype(np.float64)
    return {
        "extents_xyz_mm": extents,
        "volume_mm3": float(idx.shape[0] * np.prod(spacing)),
        "centre_mm": tuple(float(v) for v in points.mean(axis=0)),
        "mean_hu": float(values.mean()),
        "std_hu": float(values.std()),
        "organ_mean_hu": float(np.median(organ_values)) if organ_values.size else float("nan"),
    }


def build_report(
    *, ct: sitk.Image, labels: sitk.Image, lesion_type: LesionType, phase: Phase, side: str | None,
    shape: Shape, density: Density, heterogeneity: Heterogeneity, surface: Surface, invades: bool,
    organ_reference_hu: float, seed: int | None, box: tuple[tuple[int, int], ...] | None = None,
) -> StructuredReport:
    """Report of a synthesized lesion, size/volume/HU measured from the output image and label."""
    m = measure_lesion(ct, labels, int(lesion_type), int(lesion_type.organ), box=box)
    x, y, z = (int(round(v)) for v in m["extents_xyz_mm"])
    return StructuredReport(
        enhancement=phase.value,
        location=location_text(lesion_type.organ, side),
        size_zxy_mm=(z, x, y),
        shape=shape.value,
        density=density.value,
        heterogeneity=heterogeneity.value,
        surface=surface.value,
        invasion=Invasion.of(invades).value,
        lesion_type=lesion_type.slug,
        label_value=int(lesion_type),
        centre_mm=tuple(round(v, 2) for v in m["centre_mm"]),
        volume_mm3=round(m["volume_mm3"], 1),
        mean_hu=round(m["mean_hu"], 1),
        organ_mean_hu=round(float(organ_reference_hu), 1),
        seed=seed,
    )
