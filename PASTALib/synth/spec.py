"""LesionSpec: what to synthesize; unspecified attributes are sampled from the type's profile."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from PASTALib.errors import SpecificationError
from PASTALib.labels import LesionType, Phase
from PASTALib.report.attributes import KEY_ALIASES, Density, Heterogeneity, Invasion, Shape, Surface, parse_attribute
from PASTALib.synth.profiles import TypeProfile, profile

# Independent random streams (SeedSequence([seed, stream])): changing one attribute (e.g. the
# surface) leaves the location, shape and texture of the same seed unchanged.
STREAM_ATTRIBUTES, STREAM_LOCATION, STREAM_SHAPE, STREAM_INTENSITY, STREAM_REFINER = range(5)
SIDES = ("left", "right")


def stream(seed: int, which: int) -> np.random.Generator:
    """The generator of one named random stream of a seed."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(which)]))


def _triple(value: Any, what: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.replace("×", ",").replace("x", ",").split(",")
    try:
        values = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise SpecificationError(f"{what} must be three numbers (x, y, z in mm), got {value!r}.") from None
    if len(values) == 1 and what == "size_mm":
        values = values * 3  # a single diameter means a sphere
    if len(values) != 3 or not all(np.isfinite(values)):
        raise SpecificationError(f"{what} must be three finite numbers (x, y, z in mm), got {value!r}.")
    return values  # type: ignore[return-value]


def _choice(rng: np.random.Generator, table: Mapping) -> Any:
    keys = [k for k, p in table.items() if p > 0]
    weights = np.array([table[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=weights / weights.sum()))]


@dataclass(frozen=True)
class LesionSpec:
    """A lesion request. ``None`` means: sample it (from ``seed``) or detect it.

    ``center_mm`` is LPS world mm; ``size_mm`` the extent along canonical x (right->left),
    y (anterior->posterior), z (inferior->superior). ``enhancement`` is the CT's phase the lesion
    is rendered for (None: detected). ``side`` restricts paired organs (kidney, lung).
    """

    lesion_type: LesionType
    center_mm: tuple[float, float, float] | None = None
    size_mm: tuple[float, float, float] | None = None
    shape: Shape | None = None
    density: Density | None = None
    heterogeneity: Heterogeneity | None = None
    surface: Surface | None = None
    invasion: bool | None = None
    enhancement: Phase | None = None
    side: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # Coerce user strings once, so every later stage sees enums (errors list allowed values).
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("lesion_type", LesionType.parse(self.lesion_type))
        set_("center_mm", _triple(self.center_mm, "center_mm"))
        set_("size_mm", _triple(self.size_mm, "size_mm"))
        for name, enum in (("shape", Shape), ("density", Density), ("heterogeneity", Heterogeneity), ("surface", Surface)):
            value = getattr(self, name)
            if value is not None:
                set_(name, parse_attribute(enum, value, name))
        if self.enhancement is not None:
            set_("enhancement", parse_attribute(Phase, self.enhancement, "enhancement"))
        if isinstance(self.invasion, str):
            text = self.invasion.strip().lower()
            if text in ("yes", "true", "1", Invasion.ADJACENT.value.lower()):
                set_("invasion", True)
            elif text in ("no", "false", "0", Invasion.NONE.value.lower()):
                set_("invasion", False)
            else:
                raise SpecificationError(
                    f"Unknown invasion {self.invasion!r}. Allowed values: true/false, "
                    f"{Invasion.NONE.value!r}, {Invasion.ADJACENT.value!r}."
                )
        if self.side is not None:
            side = str(self.side).strip().lower()
            if side not in SIDES:
                raise SpecificationError(f"Unknown side {self.side!r}. Allowed values: 'left', 'right'.")
            set_("side", side)
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise SpecificationError(f"seed must be a non-negative integer, got {self.seed!r}.")
        set_("seed", int(self.seed))

    @property
    def profile(self) -> TypeProfile:
        return profile(self.lesion_type)

    def validate(self, phase: Phase | None = None) -> "LesionSpec":
        """Check each given attribute against the type's allowed values; returns self."""
        prof, kind = self.profile, self.lesion_type
        name = kind.slug
        for attribute in ("shape", "heterogeneity", "surface"):
            value = getattr(self, attribute)
            allowed = prof.allowed(attribute)
            if value is not None and value not in allowed:
                raise SpecificationError(
                    f"{attribute} {value.value!r} is not possible for {name}. "
                    f"Allowed values: {', '.join(repr(v.value) for v in allowed)}."
                )
        if self.density is not None:
            phase = phase or self.enhancement
            allowed = (
                tuple(d for d in Density if prof.densities.get(phase, {}).get(d, 0) > 0) if phase else prof.allowed("density")
            )
            if self.density not in allowed:
                where = f" on {phase.value}" if phase else ""
                raise SpecificationError(
                    f"density {self.density.value!r} is not possible for {name}{where}. "
                    f"Allowed values: {', '.join(repr(v.value) for v in allowed)}."
                )
        if self.invasion and not kind.is_malignant:
            raise SpecificationError(
                f"invasion is only possible for malignant types; {name} is benign. "
                f"Allowed values: {Invasion.NONE.value!r}."
            )
        if self.side is not None and not kind.organ.is_paired:
            raise SpecificationError(f"side is only for paired organs (kidney, lung), not {kind.organ.display_name.lower()}.")
        if self.size_mm is not None:
            lo, hi = prof.size_range_mm
            bad = [s for s in self.size_mm if not lo <= s <= hi]
            if bad:
                raise SpecificationError(
                    f"size {self.size_mm} mm is out of range for {name}: each axis must be {lo:g}-{hi:g} mm."
                )
        return self

    def resolve(self, phase: Phase) -> "LesionSpec":
        """A copy with every attribute filled (location stays None if not given); deterministic in seed."""
        self.validate(phase)
        prof = self.profile
        rng = stream(self.seed, STREAM_ATTRIBUTES)
        # Always draw every value in a fixed order so a given attribute does not shift the others.
        shape = _choice(rng, prof.shapes)
        density = _choice(rng, prof.densities[phase])
        heterogeneity = _choice(rng, prof.heterogeneity)
        surface = _choice(rng, prof.surfaces)
        invasion = bool(rng.random() < prof.invasion_probability)
        diameter = float(np.exp(np.log(prof.size_median_mm) + prof.size_sigma * rng.standard_normal()))
        aspect = np.exp(prof.aspect_sigma * rng.standard_normal(3))
        size = tuple(float(np.clip(round(diameter * a, 1), *prof.size_range_mm)) for a in aspect)
        return replace(
            self,
            shape=self.shape or shape,
            density=self.density or density,
            heterogeneity=self.heterogeneity or heterogeneity,
            surface=self.surface or surface,
            invasion=self.invasion if self.invasion is not None else invasion,
            size_mm=self.size_mm or size,
            enhancement=phase,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as their wording, lesion type as its slug)."""
        out = asdict(self)
        out["lesion_type"] = self.lesion_type.slug
        for key in ("shape", "density", "heterogeneity", "surface", "enhancement"):
            if out[key] is not None:
                out[key] = out[key].value
        for key in ("center_mm", "size_mm"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LesionSpec":
        """A spec from a JSON-style dict; attribute names are mapped to the report's keys (``margin`` -> ``surface``)."""
        data = {KEY_ALIASES.get(key, key): value for key, value in data.items()}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise SpecificationError(f"Unknown lesion attribute(s) {sorted(unknown)}. Allowed: {sorted(cls.__dataclass_fields__)}.")
        return cls(**data)


def allowed_values(lesion_type: "LesionType | str") -> dict[str, list[str]]:
    """Allowed attribute wordings for a type (for UIs: slider/combo box contents)."""
    prof = profile(LesionType.parse(lesion_type))
    return {
        "shape": [v.value for v in prof.allowed("shape")],
        "density": [v.value for v in prof.allowed("density")],
        "heterogeneity": [v.value for v in prof.allowed("heterogeneity")],
        "surface": [v.value for v in prof.allowed("surface")],
        "invasion": [Invasion.NONE.value] + ([Invasion.ADJACENT.value] if LesionType.parse(lesion_type).is_malignant else []),
        "size_range_mm": [str(v) for v in prof.size_range_mm],
    }


