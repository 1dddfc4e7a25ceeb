"""Training data: PASTA-Gen style case folders, a foreground-oversampling patch sampler with an
exactly restorable state, and lesion-centred crops with attribute targets.

A case is a folder holding the CT (``img.nii.gz``, or ``ct.nii.gz`` / ``image.nii.gz``; 1 mm
canonical, HU), the label map (``label.nii.gz`` or ``labels.nii.gz``; organs 1-10, lesions 11-25)
and, for stage 2, ``report.json``: one structured report, a list of them, or ``{"lesions": [...]}``;
each report gives ``label_value``, optionally ``centre_mm`` (LPS) and the attribute wordings.
Arrays are used in SimpleITK's (z, y, x) order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from PASTALib.anatomy.organs import label_locations
from PASTALib.layout import CASE_IMAGE_NAME, CASE_LABEL_NAME, CASE_REPORT_NAME, CASE_TYPE_NAME, LABELS_NAME
from PASTALib.model.attributes import encode_attributes
from PASTALib.model.preprocess import slf_normalize, to_head_orientation
from PASTALib.train.common import TrainingError

IMAGE_NAMES = (CASE_IMAGE_NAME, "ct.nii.gz", "image.nii.gz")
LABEL_NAMES = (CASE_LABEL_NAME, LABELS_NAME)
REPORT_NAMES = (CASE_REPORT_NAME, CASE_TYPE_NAME)
LESION_LABELS = tuple(range(11, 26))
PAD_HU = -1024.0


@dataclass(frozen=True)
class CaseRecord:
    name: str
    image_path: Path
    label_path: Path
    report_path: Path | None


def discover_cases(root: str | Path) -> list[CaseRecord]:
    """Every sub-folder (any depth) of ``root`` holding a CT and a label map, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"data folder {root} does not exist")
    cases = []
    for label_name in LABEL_NAMES:
        for label_path in sorted(root.rglob(label_name)):
            folder = label_path.parent
            image = next((folder / n for n in IMAGE_NAMES if (folder / n).is_file()), None)
            if image is None or any(c.label_path.parent == folder for c in cases):
                continue
            report = next((folder / n for n in REPORT_NAMES if (folder / n).is_file()), None)
            cases.append(CaseRecord(str(folder.relative_to(root)) or folder.name, image, label_path, report))
    cases.sort(key=lambda c: c.name)
    with_label = {c.label_path.parent for c in cases}
    unlabelled = sorted({p.parent for n in IMAGE_NAMES for p in root.rglob(n)} - with_label)
    if unlabelled:
        names = [str(f.relative_to(root)) or f.name for f in unlabelled]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise TrainingError(
            f"case {shown} under {root} has a CT but no label map ({' or '.join(LABEL_NAMES)}): training needs "
            "one per case (organs 1-10, lesions 11-25; `pasta synth` writes both). Add the label map or move "
            "the folder out of --data."
        )
    if not cases:
        raise TrainingError(
            f"no cases found under {root}: expected case folders each with {IMAGE_NAMES[0]} (or ct.nii.gz) and "
            f"{LABEL_NAMES[0]} (organs 1-10, lesions 11-25), e.g. the output of `pasta synth`"
        )
    return cases


@dataclass
class LoadedCase:
    record: CaseRecord
    image: np.ndarray  # float32 HU, (z, y, x)
    label: np.ndarray  # uint8, (z, y, x)
    reference: sitk.Image  # geometry (for mm → index)
    class_voxels: dict[int, np.ndarray] = field(default_factory=dict)  # label value → (N, 3) voxel indices


def load_case(record: CaseRecord, max_voxels_per_class: int = 20000, seed: int = 0) -> LoadedCase:
    from PASTALib.io import read_image, read_label

    image = read_image(record.image_path)
    label = read_label(record.label_path)
    if image.GetSize() != label.GetSize():
        raise TrainingError(f"{record.name}: image size {image.GetSize()} differs from label size {label.GetSize()}")
    img = sitk.GetArrayFromImage(image).astype(np.float32)
    lab = sitk.GetArrayFromImage(label)
    if lab.min() < 0 or lab.max() > 255:
        raise TrainingError(f"{record.name}: label values must be 0-255 (organs 1-10, lesions 11-25)")
    lab = lab.astype(np.uint8)
    locations = label_locations(lab, max_per_label=max_voxels_per_class, rng=np.random.default_rng(seed))
    voxels = {value: idx.astype(np.int32) for value, idx in locations.items()}
    return LoadedCase(record, img, lab, image, voxels)


def crop_with_padding(array: np.ndarray, centre: Sequence[int], size: Sequence[int], pad_value: float) -> np.ndarray:
    """Crop ``size`` around ``centre`` (start = centre - size//2), padding outside the array."""
    out = np.full(tuple(size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for c, s, n in zip(centre, size, array.shape):
        start = int(c) - s // 2
        a0, a1 = max(start, 0), min(start + s, n)
        if a1 <= a0:
            return out
        src.append(slice(a0, a1))
        dst.append(slice(a0 - start, a1 - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


class PatchSampler:
    """Random patches with nnU-Net style foreground oversampling.

    Each patch: a uniformly drawn case; with probability ``fg_fraction`` centred on a random voxel
    of a random class present in the case (lesion classes drawn with probability
    ``lesion_priority`` when the case has any), else a uniformly random centre. Optional random
    flips. All randomness comes from one numpy Generator whose state is saved in checkpoints.
    """

    def __init__(self, cases: Sequence[LoadedCase], patch_size: Sequence[int], *, fg_fraction: float = 0.33,
                 lesion_priority: float = 0.5, flip: bool = True,
                 seed: int | np.random.SeedSequence = 0) -> None:
        if not cases:
            raise TrainingError("no training cases")
        self.cases = list(cases)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.fg_fraction = float(fg_fraction)
        self.lesion_priority = float(lesion_priority)
        self.flip = flip
        self.rng = np.random.default_rng(seed)
        self.drawn = 0

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
        self.drawn = int(state["drawn"])

    def _centre(self, case: LoadedCase, force_fg: bool) -> np.ndarray:
        if force_fg and case.class_voxels:
            classes = sorted(case.class_voxels)
            lesions = [c for c in classes if c in LESION_LABELS]
            if lesions and self.rng.random() < self.lesion_priority:
                classes = lesions
            cls = classes[int(self.rng.integers(len(classes)))]
            vox = case.class_voxels[cls]
            return vox[int(self.rng.integers(len(vox)))]
        # uniform: the patch may hang over the border by up to half its size (as nnU-Net)
        return np.array([int(self.rng.integers(0, n)) for n in case.image.shape])

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, 1, *patch) float32 HU and (B, 1, *patch) uint8 labels; the last third of a batch is
        always foreground-forced when fg_fraction > 0 (nnU-Net's oversample_foreground_percent)."""
        images, labels = [], []
        n_fg = int(round(self.fg_fraction * batch_size))
        for b in range(batch_size):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            force = b >= batch_size - n_fg if batch_size > 1 else self.rng.random() < self.fg_fraction
            centre = self._centre(case, force)
            img = crop_with_padding(case.image, centre, self.patch_size, PAD_HU)
            lab = crop_with_padding(case.label, centre, self.patch_size, 0)
            if self.flip:
                for axis in range(3):
                    if self.rng.random() < 0.5:
                        img, lab = np.flip(img, axis), np.flip(lab, axis)
            images.append(np.ascontiguousarray(img)[None])
            labels.append(np.ascontiguousarray(lab)[None])
        self.drawn += batch_size
        return np.stack(images), np.stack(labels)


def lesion_label_values(case: LoadedCase) -> list[int]:
    """Lesion label values (11-25) present in the case's label map."""
    return sorted(v for v in case.class_voxels if v in LESION_LABELS)


class IterationPatchBatches(torch.utils.data.IterableDataset):
    """Stage-1 batches for iterations ``start .. stop-1`` for a torch DataLoader with worker processes.

    Why this keeps the GPU fed: patch cropping, flips and the SLF map run in ``num_workers`` forked
    processes (the volumes are shared copy-on-write, nothing is re-read from disk) while the GPU runs
    the previous steps; the loader keeps ``prefetch_factor`` batches per worker queued, and with
    ``pin_memory`` the host->device copy is asynchronous (``non_blocking``). The main process only
    launches kernels.

    Why it stays exactly resumable: batch ``i`` is drawn by a PatchSampler seeded from
    ``(seed, rank, i)`` alone, so it does not depend on which worker made it, on how many workers
    there are, or on what was drawn before; resuming at iteration ``k`` just starts at ``k``. Workers
    take iterations round-robin (worker w: start+w, start+w+n, ...) and the DataLoader returns them
    round-robin, i.e. in iteration order (checked via the index yielded with each batch).
    """

    def __init__(self, cases: Sequence[LoadedCase], patch_size: Sequence[int], batch_size: int, *, seed: int,
                 rank: int, start: int, stop: int, slf_values: Sequence[float],
                 normalize: Callable[[np.ndarray], np.ndarray] | None = None, **sampler_kw: Any) -> None:
        super().__init__()
        self.cases, self.patch_size, self.batch_size = list(cases), tuple(patch_size), int(batch_size)
        self.seed, self.rank, self.start, self.stop = int(seed), int(rank), int(start), int(stop)
        self.slf_values, self.sampler_kw = tuple(slf_values), sampler_kw
        self.normalize = normalize  # picklable (PASTALib.model.preprocess); None: the SLF map of slf_values

    def batch(self, iteration: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        from PASTALib.model.preprocess import slf_normalize

        seq = np.random.SeedSequence([self.seed, self.rank, int(iteration)])
        sampler = PatchSampler(self.cases, self.patch_size, seed=seq, **self.sampler_kw)
        img, lab = sampler.sample(self.batch_size)
        normalized = self.normalize(img) if self.normalize is not None else slf_normalize(img, values=self.slf_values)
        x = torch.from_numpy(np.ascontiguousarray(normalized, dtype=np.float32))
        return iteration, x, torch.from_numpy(lab.astype(np.int64))

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid, n = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(self.start + wid, self.stop, n):
            yield self.batch(i)


# --- stage 2: lesions with attribute targets ---------------------------------------------------

@dataclass(frozen=True)
class LesionSample:
    case: str
    label_value: int
    centre_index: tuple[int, int, int]  # (z, y, x) voxel of the lesion centre
    targets: tuple[int, ...]  # 5 option indices (IGNORE_INDEX where unknown)
    report: dict


def read_reports(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path} is not a readable report file ({type(exc).__name__}: {str(exc)[:120]}); "
                            "export the report again or remove it from the training folder") from None
    if isinstance(data, dict) and isinstance(data.get("lesions"), list):
        data = data["lesions"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise TrainingError(f"{path}: expected a report object, a list of them or {{'lesions': [...]}}")
    return data


def lesion_samples(case: LoadedCase) -> list[LesionSample]:
    """One sample per report in the case's report.json; the centre is ``centre_mm`` (LPS) when given,
    else the centroid of the report's ``label_value`` voxels."""
    rec = case.record
    if rec.report_path is None:
        return []
    out = []
    for i, report in enumerate(read_reports(rec.report_path)):
        try:
            targets = tuple(encode_attributes(report))
        except ValueError as exc:
            raise TrainingError(f"{rec.report_path} (lesion {i}): {exc}") from None
        value = int(report.get("label_value", 0))
        if "centre_mm" in report:
            ijk = case.reference.TransformPhysicalPointToIndex([float(v) for v in report["centre_mm"]])
            centre = (int(ijk[2]), int(ijk[1]), int(ijk[0]))
        else:
            mask = case.label == value if value else np.isin(case.label, LESION_LABELS)
            if not mask.any():
                raise TrainingError(f"{rec.report_path} (lesion {i}): label {value} not found in {rec.label_path.name}")
            centre = tuple(int(round(v)) for v in np.argwhere(mask).mean(axis=0))
        out.append(LesionSample(rec.name, value, centre, targets, report))
    return out


def lesion_crop(case: LoadedCase, sample: LesionSample, size: Sequence[int], jitter: Sequence[int] = (0, 0, 0),
                slf_values: Sequence[float] | None = None) -> np.ndarray:
    """(1, *size) SLF-normalised crop centred on the lesion (+ jitter voxels), in the authors' crop orientation
    (LAS transposed, y flipped vs LPS: PASTALib.model.preprocess.to_head_orientation) as the attribute head sees it."""
    centre = np.asarray(sample.centre_index) + np.asarray(jitter)
    crop = crop_with_padding(case.image, centre, size, PAD_HU)
    kw = {} if slf_values is None else {"values": tuple(slf_values)}
    return to_head_orientation(slf_normalize(crop, **kw))[None]
