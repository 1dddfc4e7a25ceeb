"""Read and write CT volumes and label maps (SimpleITK), with errors a user can act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from PASTALib.errors import InputImageError

if TYPE_CHECKING:
    from PASTALib.geometry import Grid

PathLike = str | os.PathLike

#: Extensions written by :func:`write_image` (SimpleITK picks the writer from them).
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

_DICOM_NON_IMAGE_MODALITIES = ("SEG", "RTSTRUCT", "SR", "RTPLAN", "RTDOSE", "PR", "KO")

#: A CT has air, lung or fat: its 1st intensity percentile lies below this (HU).
CT_LOW_PERCENTILE_MAX_HU = -50.0


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".seg.nrrd",) + WRITABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _read_dicom_series(path: Path) -> tuple[sitk.Image, dict[str, str]]:
    """Read the DICOM series in folder ``path`` (or the series a single file belongs to)."""
    folder = path if path.is_dir() else path.parent
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputImageError(
            f"No DICOM series found in {folder}. Point to a folder that holds the .dcm files of one CT series."
        )
    if len(series_ids) > 1 and path.is_dir():
        raise InputImageError(
            f"{folder} holds {len(series_ids)} DICOM series ({', '.join(s or '<empty UID>' for s in series_ids)}). "
            "Put each series in its own folder or pass one file of the series you want."
        )
    series_id = series_ids[0]
    if path.is_file():
        # The series of the given file; empty SeriesInstanceUIDs group into one '' series.
        for sid in series_ids:
            if str(path) in reader.GetGDCMSeriesFileNames(str(folder), sid):
                series_id = sid
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"Cannot decode the DICOM series in {folder}: {exc}".strip()) from None
    tags = {key: reader.GetMetaData(0, key).strip() for key in reader.GetMetaDataKeys(0)}
    modality = tags.get("0008|0060", "").upper()
    if modality in _DICOM_NON_IMAGE_MODALITIES:
        raise InputImageError(
            f"{path} is a DICOM {modality} object, not an image series. "
            "Load the CT series it refers to; segmentations are imported separately."
        )
    return image, tags


def is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as stream:
        header = stream.read(132)
    return len(header) == 132 and header[128:132] == b"DICM"


def _check_nifti_complete(path: Path) -> None:
    """Raise if a NIfTI file is shorter than its header says.

    ITK's NIfTI reader zero-fills a truncated .nii.gz without an error, so the byte count is
    checked here (nibabel parses the header; the gzip stream is decompressed in chunks).
    """
    import gzip

    import nibabel

    try:
        header = nibabel.load(str(path)).header
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        if path.name.lower().endswith(".gz"):
            available = 0
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    available += len(chunk)
        else:
            available = path.stat().st_size
    except (EOFError, OSError, ValueError, nibabel.filebasedimages.ImageFileError) as exc:
        raise InputImageError(f"Cannot read {path}: the file is corrupt or truncated ({exc}). Re-export or re-download it.") from None
    if available < expected:
        raise InputImageError(
            f"Cannot read {path}: the file is corrupt or truncated ({available} of {expected} bytes). "
            "Re-export or re-download it."
        )


def read_image(path: PathLike) -> sitk.Image:
    """Read a 3D scalar image from NIfTI, NRRD, MHA/MHD or a DICOM series (folder or file).

    DICOM tags of the first slice are kept in the image's metadata dictionary.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"Image not found: {path}. Check the path.")
    tags: dict[str, str] = {}
    if path.is_dir() or is_dicom_file(path):
        image, tags = _read_dicom_series(path)
    else:
        if _suffix(path) in (".nii", ".nii.gz"):
            _check_nifti_complete(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise InputImageError(
                f"Cannot read {path}: the file is corrupt, truncated or not an image. "
                "Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd), DICOM series folders. "
                "Re-export or re-download the file."
            ) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector image); "
            "PASTA needs a scalar CT volume in Hounsfield units."
        )
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputImageError(
            f"{path} is {image.GetDimension()}D with size {image.GetSize()}; PASTA needs a 3D volume "
            "(for a single slice or a time series, export the 3D CT series instead)."
        )
    for key, value in tags.items():
        image.SetMetaData(key, value)
    return image


def check_is_ct(image: sitk.Image, source: str = "image") -> None:
    """Raise InputImageError unless ``image`` looks like a CT in Hounsfield units.

    DICOM Modality (0008|0060) decides when present; otherwise the intensities must include
    air, lung or fat: CT's 1st percentile is far below 0 HU, MR magnitude images are >= ~0.
    """
    if image.HasMetaDataKey("0008|0060"):
        modality = image.GetMetaData("0008|0060").strip().upper()
        if modality and modality != "CT":
            raise InputImageError(
                f"{source} is a DICOM {modality} series (Modality tag); PASTA works on CT only. Load the CT series."
            )
    values = sitk.GetArrayViewFromImage(image)
    sample = values.ravel()[:: max(1, values.size // 2_000_000)]
    low, high = np.percentile(sample, [1.0, 99.0])
    if high - low < 10.0:
        raise InputImageError(
            f"{source} intensities span only {low:.3g}..{high:.3g}: it looks normalised, not in Hounsfield units. "
            "Load the original CT (air about -1000 HU, soft tissue 0-100 HU)."
        )
    if low > CT_LOW_PERCENTILE_MAX_HU:
        raise InputImageError(
            f"{source} does not look like a CT in Hounsfield units: its 1st-percentile intensity is {low:.0f}, "
            f"but a CT always contains air, lung or fat below {CT_LOW_PERCENTILE_MAX_HU:.0f} HU (air is about -1000 HU). "
            "This is probably an MR or PET volume, or a CT stored with an offset (subtract the offset, e.g. 1024, to get HU). "
            "PASTA works on CT only."
        )


def read_ct(path: PathLike, *, check_modality: bool = True) -> sitk.Image:
    """Read a CT volume in HU as int16 (or float32 when values do not fit int16)."""
    image = read_image(path)
    if check_modality:
        check_is_ct(image, source=str(path))
    pixel = image.GetPixelID()
    if pixel not in (sitk.sitkInt16, sitk.sitkFloat32):
        lo_hi = sitk.MinimumMaximumImageFilter()
        lo_hi.Execute(image)
        integral = pixel in (sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32, sitk.sitkInt64, sitk.sitkUInt64)
        fits = -32768 <= lo_hi.GetMinimum() and lo_hi.GetMaximum() <= 32767
        image = sitk.Cast(image, sitk.sitkInt16 if integral and fits else sitk.sitkFloat32)
    return image


def read_label(path: PathLike) -> sitk.Image:
    """Read an integer label map as uint16 (Slicer .seg.nrrd: segments' label values, one layer)."""
    image = read_image(path)
    pixel = image.GetPixelIDValue()
    if pixel in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(image)
        if not np.array_equal(values, np.round(values)):
            raise InputImageError(
                f"{path} has non-integer values, so it is not a label map. Pass an integer label image."
            )
    if sitk.GetArrayViewFromImage(image).min() < 0:
        raise InputImageError(f"{path} has negative values, so it is not a label map.")
    return sitk.Cast(image, sitk.sitkUInt16)


def write_image(image: sitk.Image, path: PathLike, *, compress: bool = True) -> Path:
    """Write ``image`` atomically and verified (temporary file, read-back check, rename): never leaves a
    half-written or truncated file, and a full disk raises OutputError with the old file intact."""
    from PASTALib.io.outputs import OutputError, atomic_output, verify_image_file

    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITABLE_SUFFIXES:
        raise InputImageError(f"Cannot write {path}: use one of {', '.join(WRITABLE_SUFFIXES)}.")
    with atomic_output(path, lambda tmp: verify_image_file(tmp, image), suffix=suffix) as partial:
        try:
            sitk.WriteImage(image, str(partial), useCompression=compress)
        except RuntimeError as exc:  # ITK reports write errors (ENOSPC, EACCES) as RuntimeError
            raise OutputError(f"Cannot write {path}: {str(exc).strip().splitlines()[-1]}. Free disk space or "
                              "choose a writable output folder; the previous file (if any) is unchanged.") from None
    return path


def image_to_array(image: sitk.Image) -> np.ndarray:
    """Voxel array in ITK index order (x, y, z); a copy, safe to modify."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0).copy()


def array_to_image(array: np.ndarray, reference: "sitk.Image | Grid") -> sitk.Image:
    """Image from an (x, y, z) array with the geometry of ``reference`` (an image or a geometry Grid)."""
    size = tuple(reference.GetSize()) if isinstance(reference, sitk.Image) else tuple(reference.size)
    if tuple(array.shape) != size:
        raise ValueError(f"array shape {array.shape} differs from reference size {size}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    if isinstance(reference, sitk.Image):
        image.CopyInformation(reference)
    else:
        image.SetOrigin(reference.origin)
        image.SetSpacing(reference.spacing)
        image.SetDirection(reference.direction)
    return image
