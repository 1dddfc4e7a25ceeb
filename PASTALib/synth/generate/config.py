"""Settings of a generate run: one typed object, used by the driver and handed to every worker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PASTALib.errors import SpecificationError
from PASTALib.labels import LesionType

DEFAULT_CROP_MM = 128  # PASTA-Gen-30K ships 280 mm crops; smaller is much faster to write
DEFAULT_MAX_ATTEMPTS = 5


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/n"`` (or a tuple) as ``(i, n)``; ``None`` is the whole job ``(0, 1)``."""
    if text is None:
        return (0, 1)
    if isinstance(text, tuple):
        i, n = text
    else:
        try:
            i, n = (int(v) for v in str(text).split("/"))
        except ValueError:
            raise SpecificationError(f"--shard must be i/n (e.g. 0/4), got {text!r}.") from None
    if not (n >= 1 and 0 <= i < n):
        raise SpecificationError(f"--shard {i}/{n}: need n >= 1 and 0 <= i < n.")
    return (i, n)


@dataclass
class GenerateConfig:
    out: Path
    per_type: int
    types: tuple[LesionType, ...] = tuple(LesionType)
    seed: int = 0
    crop_mm: int = DEFAULT_CROP_MM
    any_phase: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    workers: int = 1
    shard: tuple[int, int] = (0, 1)  # "i/n" text is accepted and parsed by ``validate``

    def validate(self) -> None:
        """Parse ``shard``, make ``out`` a Path and check the numbers (a SpecificationError names the fix)."""
        self.shard = parse_shard(self.shard)
        self.out = Path(self.out)
        if self.per_type < 0 or self.max_attempts < 1 or self.crop_mm < 8 or self.workers < 1:
            raise SpecificationError("per-type >= 0, max-attempts >= 1, crop-mm >= 8 and workers >= 1 are required.")

    @property
    def manifest_path(self) -> Path:
        i, n = self.shard
        return self.out / ("manifest.csv" if n == 1 else f"manifest.shard-{i}-of-{n}.csv")
