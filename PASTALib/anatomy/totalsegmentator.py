"""Organ masks from TotalSegmentator (optional extra ``PASTALib[totalsegmentator]``).

TotalSegmentator downloads its weights on first use. PASTA must also run on machines
without internet, so we check that the weights are installed *before* calling it: when they are
missing, TotalSegmentator's own download runs only on the user's request (``allow_download``,
``--allow-download``) and never in offline mode (``offline`` / ``--offline`` / ``PASTA_OFFLINE=1``);
otherwise, or when the download fails, MissingWeightsError gives the offline installation steps.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

import SimpleITK as sitk

from PASTALib.anatomy.organs import OrganMasks, resample_labels_to
from PASTALib.anatomy.totalseg_classes import TOTAL_CLASSES
from PASTALib.errors import MissingWeightsError

#: nnU-Net datasets of the ``total`` task (TotalSegmentator v2): full resolution (1.5 mm,
#: five part models), ``--fast`` (3 mm) and the 6 mm model used to crop for ``roi_subset``.
TOTAL_DATASETS_FULL = (291, 292, 293, 294, 295)
TOTAL_DATASET_FAST = 297
TOTAL_DATASET_ROI_CROP = 298

_INSTALL_HINT = 'pip install "PASTALib[totalsegmentator]"'
OFFLINE_ENV = "PASTA_OFFLINE"
#: What TotalSegmentator fetches (from its GitHub releases) when its weights are missing. Approximate:
#: nnU-Net checkpoints of this size; the exact figure depends on the TotalSegmentator version.
DOWNLOAD_SIZE = {False: "about 1.5 GB, five 1.5 mm models", True: "about 0.2 GB, one 3 mm model"}

logger = logging.getLogger(__name__)


def offline_mode(offline: bool | None = None) -> bool:
    """``offline`` when given, else whether ``$PASTA_OFFLINE`` is set to 1/true/yes/on."""
    if offline is not None:
        return bool(offline)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def totalsegmentator_weights_dir() -> Path:
    """Where TotalSegmentator looks for weights (same rule as ``totalsegmentator.config``).

    ``TOTALSEG_WEIGHTS_PATH`` if set, else ``$TOTALSEG_HOME_DIR/nnunet/results``, else
    ``~/.totalsegmentator/nnunet/results`` (``/tmp`` as home inside containers without one).
    """
    if "TOTALSEG_WEIGHTS_PATH" in os.environ:
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if "TOTALSEG_HOME_DIR" in os.environ:
        home = Path(os.environ["TOTALSEG_HOME_DIR"])
    else:
        user_home = Path.home()
        home = (Path("/tmp") if str(user_home) == "/" else user_home) / ".totalsegmentator"
    return home / "nnunet" / "results"


def required_datasets(fast: bool, roi_subset: Sequence[str] | None = None) -> list[int]:
    """nnU-Net dataset ids a ``total`` run needs."""
    ids = [TOTAL_DATASET_FAST] if fast else list(TOTAL_DATASETS_FULL)
    if roi_subset:
        ids.append(TOTAL_DATASET_ROI_CROP)
    return ids


def _dataset_installed(weights_dir: Path, dataset_id: int) -> bool:
    for folder in weights_dir.glob(f"Dataset{dataset_id}_*"):
        if any(p.stat().st_size > 0 for p in folder.rglob("checkpoint_final.pth")):
            return True
    return False


def missing_datasets(fast: bool = False, roi_subset: Sequence[str] | None = None) -> list[int]:
    """nnU-Net datasets of the run that are not installed in :func:`totalsegmentator_weights_dir`."""
    weights_dir = totalsegmentator_weights_dir()
    return [d for d in required_datasets(fast, roi_subset) if not _dataset_installed(weights_dir, d)]


def _offline_steps(fast: bool, missing: Sequence[int], why: str) -> str:
    weights_dir = totalsegmentator_weights_dir()
    names = ", ".join(f"Dataset{d}_*" for d in missing)
    return (
        f"TotalSegmentator weights for task 'total'{' --fast' if fast else ''} are not installed in "
        f"{weights_dir} (missing {names}); {why} To install offline: "
        f"on a machine with internet run `totalseg_download_weights -t {'total_fast' if fast else 'total'}` "
        f"and copy its ~/.totalsegmentator/nnunet/results folder to {weights_dir} "
        "(or set TOTALSEG_HOME_DIR / TOTALSEG_WEIGHTS_PATH to where you put it), "
        "or import a weights zip with `totalseg_import_weights -i <weights.zip>`. "
        "Alternatively pass an organ label map (--labels) or use the classical lung mask for chest CT."
    )


def check_totalsegmentator_weights(fast: bool = False, roi_subset: Sequence[str] | None = None, *,
                                   allow_download: bool = False, offline: bool | None = None) -> Path:
    """Return the weights folder when TotalSegmentator may run: its weights are installed, or they
    are missing and the user allowed its download (and is not offline). Otherwise raise
    MissingWeightsError with the offline steps (and, when online, how to allow the download)."""
    weights_dir = totalsegmentator_weights_dir()
    missing = missing_datasets(fast, roi_subset)
    if not missing:
        return weights_dir
    size = DOWNLOAD_SIZE[bool(fast)]
    if offline_mode(offline):
        why = (f"offline mode is set ({OFFLINE_ENV}=1 or --offline), so TotalSegmentator may not download "
               f"them ({size}).")
        raise MissingWeightsError(_offline_steps(fast, missing, why))
    if not allow_download:
        why = (f"PASTA does not let TotalSegmentator download them ({size}) unless asked: on a machine with "
               "internet run again with --allow-download (in Slicer: tick 'Allow download' beside Run TotalSegmentator).")
        raise MissingWeightsError(_offline_steps(fast, missing, why))
    logger.warning("TotalSegmentator will download its weights for task 'total'%s (%s) into %s",
                " --fast" if fast else "", size, weights_dir)
    return weights_dir


def _import_python_api() -> ModuleType:
    """Import ``totalsegmentator.python_api`` lazily (it pulls in torch and nnU-Net)."""
    try:
        return importlib.import_module("totalsegmentator.python_api")
    except ModuleNotFoundError as exc:
        missing = exc.name or "totalsegmentator"
        what = "TotalSegmentator is not installed" if missing.split(".")[0] == "totalsegmentator" else (
            f"TotalSegmentator cannot be imported (missing dependency {missing!r})"
        )
        raise MissingWeightsError(
            f"{what}. Install it with: {_INSTALL_HINT} (then install its weights), "
            "or pass an organ label map (--labels) instead."
        ) from None


def run_totalsegmentator(
    ct: sitk.Image | str | os.PathLike,
    *,
    fast: bool = False,
    device: Literal["cpu", "cuda", "gpu", "mps"] = "cpu",
    roi_subset: Sequence[str] | None = None,
    quiet: bool = True,
    allow_download: bool = False,
    offline: bool | None = None,
) -> OrganMasks:
    """Segment the ``total`` classes of a CT with TotalSegmentator and return them on the CT grid.

    Checks the package and the weights first (MissingWeightsError with install steps). Missing
    weights are downloaded by TotalSegmentator only with ``allow_download`` and not ``offline``
    (default: ``$PASTA_OFFLINE``); a failed download gives the offline steps.
    """
    python_api = _import_python_api()
    check_totalsegmentator_weights(fast, roi_subset, allow_download=allow_download, offline=offline)
    downloading = bool(missing_datasets(fast, roi_subset))

    from PASTALib.io import read_ct, read_label

    image = ct if isinstance(ct, sitk.Image) else read_ct(ct)
    with tempfile.TemporaryDirectory(prefix="pasta_totalseg_") as tmp:
        in_path = Path(tmp) / "ct.nii.gz"
        out_path = Path(tmp) / "total.nii.gz"
        sitk.WriteImage(image, str(in_path))
        try:
            python_api.totalsegmentator(
                input=str(in_path),
                output=str(out_path),
                ml=True,  # one multi-label file with the `total` ids
                fast=fast,
                roi_subset=list(roi_subset) if roi_subset else None,
                device="gpu" if device == "cuda" else device,
                quiet=quiet,
            )
        except Exception as exc:  # noqa: BLE001 - any failure while its weights are still missing is the download's
            still_missing = missing_datasets(fast, roi_subset) if downloading else []
            if not still_missing:
                raise
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise MissingWeightsError(_offline_steps(
                fast, still_missing, f"TotalSegmentator's download failed ({type(exc).__name__}: {first}).")) from None
        labels = read_label(out_path)
    # NIfTI round trip can move the header by float rounding: put the labels back on the CT grid
    labels = resample_labels_to(labels, image)
    return OrganMasks(labels, dict(TOTAL_CLASSES), source="TotalSegmentator total" + (" --fast" if fast else ""))
