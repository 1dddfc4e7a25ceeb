"""Lesion embeddings with the PASTA encoder: crop at 1 mm around a point → SLF map → 1024-d feature.

Choices (and how they differ from TumorImagingBench's PASTA extractor, which the numbers there
come from):

* Crop: default **96³ at 1 mm**, the lesion-centred crop size of PASTA's stage 2 (the attribute
  head is trained on the encoder feature of 96³ crops, docs/model.md). TumorImagingBench crops
  **48³** for every model (``get_transforms(spatial_size=(48, 48, 48))``); pass ``crop_size=48``
  to compare with it. The public ``feature_extraction.py`` of LWHYC/PASTA runs a 128³ example.
* Intensity: the SLF map (``slf_normalize``; −1000/−200/200/1000 HU → 0/0.2/0.9/1, or the
  unused 0.8 default of their loader class with ``slf_values=SLF_VALUES_LOADER_DEFAULT``; every public
  loader and ``feature_extraction.py`` pass 0.9). TumorImagingBench instead scales
  −1024…2048 HU linearly to 0…1.
* Feature: global average pool of stage 4 (1/16 resolution; ``PastaUNet.encode``), as the public
  classification code. TumorImagingBench pools the bottleneck output (stage 5, 1/32) instead.
* Coordinates: LPS world mm (see :mod:`PASTALib.embed.crop`).

Tables: :func:`embed_table` reads a CSV with ``image_path, coordX, coordY, coordZ`` (+ any other
columns, e.g. label / endpoint), writes the input columns + ``row_id`` + ``feat_0..feat_{D-1}``
to an output CSV batch by batch (flushed), so an interrupted run resumes where it stopped:
rows whose ``row_id`` is already in the output are skipped (after checking that the output was
made from the same rows). Optionally also an ``.npz`` with ``features`` (N, D) float32,
``row_id`` and the input columns.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from PASTALib.runtime import resolve_device

from PASTALib.embed.crop import crop_at_point
from PASTALib.errors import PastaError
from PASTALib.progress import Progress
from PASTALib.model import PastaUNet, build_model_from_checkpoint
from PASTALib.weights import weights_path
from PASTALib.model.preprocess import SLF_THRESHOLDS_HU, SLF_VALUES, slf_normalize, to_head_orientation

COORD_COLUMNS = ("coordX", "coordY", "coordZ")
REQUIRED_COLUMNS = ("image_path", *COORD_COLUMNS)
FEATURE_PREFIX = "feat_"
DEFAULT_CROP_SIZE = 96


class EmbeddingError(PastaError):
    """An embedding input (table, point, output file, device) is wrong; the message says what to do."""




@dataclass
class LesionEmbedder:
    """A frozen PASTA encoder plus the crop / normalisation settings."""

    model: PastaUNet
    device: torch.device = torch.device("cpu")
    crop_size: int = DEFAULT_CROP_SIZE
    spacing: float = 1.0
    batch_size: int = 4
    slf_thresholds: tuple[float, ...] = SLF_THRESHOLDS_HU
    slf_values: tuple[float, ...] = SLF_VALUES

    def __post_init__(self) -> None:
        stride = self.model.config.feature_stride
        if self.crop_size % stride:
            raise EmbeddingError(f"crop size {self.crop_size} must be a multiple of {stride} "
                                 f"(the encoder downsamples {stride}x before the pooled stage)")
        self.model = self.model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.feature_channels)

    @torch.inference_mode()
    def embed_crops(self, crops_hu: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, S, S, S) HU crops → (N, D) float32 features, in batches of ``batch_size``."""
        crops = np.asarray(crops_hu, dtype=np.float32)
        if crops.ndim == 3:
            crops = crops[None]
        out = np.empty((len(crops), self.feature_dim), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            # the authors' crop orientation (LAS transposed: y flipped vs LPS), the one PASTA_final.pth was trained on
            x = torch.from_numpy(to_head_orientation(
                slf_normalize(crops[start:start + self.batch_size], self.slf_thresholds, self.slf_values)))
            x = x[:, None].to(self.device)
            out[start:start + len(x)] = self.model.encode(x).float().cpu().numpy()
        return out

    def crop(self, image: sitk.Image, point_lps: Sequence[float]) -> np.ndarray:
        return crop_at_point(image, point_lps, self.crop_size, self.spacing)

    def embed_points(self, image: sitk.Image, points_lps: Iterable[Sequence[float]]) -> np.ndarray:
        """Features of crops around each LPS point of one image, (N, D)."""
        crops = [self.crop(image, p) for p in points_lps]
        if not crops:
            return np.empty((0, self.feature_dim), np.float32)
        return self.embed_crops(np.stack(crops))


def load_embedder(checkpoint: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                  crop_size: int = DEFAULT_CROP_SIZE, batch_size: int = 4, allow_pickle: bool = False,
                  **settings) -> LesionEmbedder:
    """Build the model from a weights file (layout read from the file; default
    :func:`~PASTALib.model.default_weights_path`, MissingWeightsError when absent)."""
    path = weights_path(checkpoint)
    dev = resolve_device(device)
    model, _ = build_model_from_checkpoint(path, allow_pickle=allow_pickle, device="cpu")
    return LesionEmbedder(model, dev, crop_size=crop_size, batch_size=batch_size, **settings)


# --- tables ------------------------------------------------------------------------------------

def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise EmbeddingError(f"input table {path} not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    if missing:
        raise EmbeddingError(f"{path} lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)} "
                             "(lesion centre in LPS mm) plus optional label/endpoint columns")
    if "row_id" in fields or any(f.startswith(FEATURE_PREFIX) for f in fields):
        raise EmbeddingError(f"{path} already has 'row_id' or '{FEATURE_PREFIX}*' columns; pass the original table")
    return fields, rows


def _point(row: dict[str, str], i: int) -> tuple[float, float, float]:
    try:
        point = tuple(float(row[c]) for c in COORD_COLUMNS)
    except (TypeError, ValueError):
        raise EmbeddingError(f"row {i}: coordinates {[row.get(c) for c in COORD_COLUMNS]} are not numbers") from None
    if not all(np.isfinite(point)):
        raise EmbeddingError(f"row {i}: coordinates {point} are not finite")
    return point  # type: ignore[return-value]


def _resolve_image(row: dict[str, str], base: Path) -> Path:
    p = Path(row["image_path"]).expanduser()
    return p if p.is_absolute() else base / p


def _existing(out: Path, fields: list[str], rows: list[dict[str, str]], dim: int) -> set[int]:
    """row_ids already in ``out`` (checked against the input rows)."""
    if not out.is_file() or out.stat().st_size == 0:
        return set()
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        expected = ["row_id", *fields, *(f"{FEATURE_PREFIX}{j}" for j in range(dim))]
        if header != expected:
            raise EmbeddingError(f"{out} exists but its columns do not match this input/model "
                                 f"({len(header)} vs {len(expected)} columns); choose another output or delete it")
        done = set()
        for rec in reader:
            try:
                rid = int(rec["row_id"])
                complete = rid < len(rows) and all(rec.get(f"{FEATURE_PREFIX}{j}") not in (None, "") for j in (0, dim - 1))
            except (TypeError, ValueError):
                complete = False
            if not complete:
                raise EmbeddingError(f"{out} has a truncated or foreign row ({rec.get('row_id')!r}); delete the last "
                                     "line or the file and run again")
            src = rows[rid]
            if src["image_path"] != rec["image_path"] or any(
                    not np.isclose(float(src[c]), float(rec[c])) for c in COORD_COLUMNS):
                raise EmbeddingError(f"{out} row_id {rid} was made from a different input row; use another output path")
            done.add(rid)
    return done


def _truncate_partial_line(out: Path) -> None:
    """Drop a half-written last line (killed mid-write) so appends start on a fresh line."""
    if not out.is_file() or out.stat().st_size == 0:
        return
    with open(out, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)


def _batch_crops(
    embedder: LesionEmbedder, rows: list[dict[str, str]], batch: list[int],
    points: dict[int, tuple[float, float, float]], base: Path,
    cache: tuple[Path | None, sitk.Image | None], image_reader: Callable[[Path], sitk.Image],
) -> tuple[list[np.ndarray], tuple[Path | None, sitk.Image | None]]:
    """Crops of the rows in ``batch``; ``cache`` keeps the last image read (returned updated)."""
    crops = []
    for i in batch:
        path = _resolve_image(rows[i], base)
        if cache[0] != path:
            if not path.exists():
                raise EmbeddingError(f"row {i}: image {path} not found")
            cache = (path, image_reader(path))
        crops.append(embedder.crop(cache[1], points[i]))
    return crops, cache


def embed_table(
    table: str | os.PathLike,
    out: str | os.PathLike,
    embedder: LesionEmbedder,
    *,
    npz: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    progress_lines: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    image_reader: Callable[[Path], sitk.Image] | None = None,
) -> dict:
    """Embed every row of ``table`` into ``out`` (CSV); see the module docstring.

    Rows are processed in input order; consecutive rows of the same image share one read.
    ``resume=False`` overwrites ``out``. Returns counts: total, skipped (already embedded), embedded.
    """
    if image_reader is None:
        from PASTALib.io import read_ct

        image_reader = read_ct
    table, out = Path(table), Path(out)
    fields, rows = _read_rows(table)
    dim = embedder.feature_dim
    header = ["row_id", *fields, *(f"{FEATURE_PREFIX}{j}" for j in range(dim))]
    if resume:
        _truncate_partial_line(out)
        done = _existing(out, fields, rows, dim)
    else:
        done = set()
        out.unlink(missing_ok=True)
    todo = [i for i in range(len(rows)) if i not in done]
    points = {i: _point(rows[i], i) for i in todo}
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.is_file() or out.stat().st_size == 0
    bar = Progress(len(rows), desc="embed", unit="lesion", lines=progress_lines, bar=progress, initial=len(done))
    cache: tuple[Path | None, sitk.Image | None] = (None, None)
    with open(out, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_file:
            writer.writerow(header)
            fh.flush()
        for start in range(0, len(todo), embedder.batch_size):
            batch = todo[start:start + embedder.batch_size]
            crops, cache = _batch_crops(embedder, rows, batch, points, table.parent, cache, image_reader)
            feats = embedder.embed_crops(np.stack(crops))
            for i, f in zip(batch, feats):
                writer.writerow([i, *(rows[i][c] for c in fields), *(f"{v:.7g}" for v in f)])
            fh.flush()
            os.fsync(fh.fileno())
            done_n = len(done) + start + len(batch)
            bar.update(done_n, f"embedded {done_n}/{len(rows)}")
            if on_batch is not None:
                on_batch(done_n, len(rows))
    bar.close()
    if npz is not None:
        write_npz(out, npz)
    return {"total": len(rows), "skipped": len(done), "embedded": len(todo)}


def read_features(path: str | os.PathLike):
    """(table without features as a DataFrame sorted by row_id, features (N, D) float32)."""
    import pandas as pd

    df = pd.read_csv(path).sort_values("row_id").reset_index(drop=True)
    cols = [c for c in df.columns if c.startswith(FEATURE_PREFIX)]
    cols.sort(key=lambda c: int(c[len(FEATURE_PREFIX):]))
    return df.drop(columns=cols), df[cols].to_numpy(np.float32)


def write_npz(csv_path: str | os.PathLike, npz_path: str | os.PathLike) -> Path:
    """The embeddings CSV as ``.npz``: features (N, D) float32, row_id, and each input column."""
    meta, feats = read_features(csv_path)
    arrays = {"features": feats}
    for c in meta.columns:
        values = meta[c].to_numpy()
        arrays[c] = values.astype(str) if values.dtype == object else values
    npz_path = Path(npz_path)
    from PASTALib.io.outputs import atomic_output, verify_zip

    with atomic_output(npz_path, verify_zip, suffix=".npz") as tmp:  # .npz is a zip: CRC-checked before the rename
        np.savez(tmp, **arrays)
    return npz_path
