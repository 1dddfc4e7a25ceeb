"""Read and write CT volumes and label maps (SimpleITK), with errors a user can act on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from PASTALib.errors import InputImageError

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


def _raw_nifti_zooms(raw: bytes) -> np.ndarray | None:
    """pixdim[1:ndim+1] as stored in the header bytes ``raw`` (nibabel's load and ITK both replace a
    0 by 1 mm), or None when ``raw`` is not a NIfTI-1/2 header."""
    import nibabel

    for order in "<>":
        size = int(np.frombuffer(raw[:4], f"{order}i4")[0]) if len(raw) >= 4 else 0
        if size in (348, 540) and len(raw) >= size:
            header_class = nibabel.Nifti1Header if size == 348 else nibabel.Nifti2Header
            header = header_class(raw[:size], check=False)  # the fixed header only, not extensions
            ndim = int(np.clip(header["dim"][0], 1, 3))  # a 2D file may leave pixdim[3] at 0: refused as 2D later
            return np.asarray(header["pixdim"][1:1 + ndim], float)
    return None


def _scan_nifti_data(path: Path, opener: Any, offset: int, dtype: np.dtype, expected: int) -> tuple[int, int]:
    """Stream the file in chunks: (bytes available, non-finite voxels among the data when float)."""
    non_finite = 0
    with opener(path, "rb") as stream:
        available = len(stream.read(offset))
        while chunk := stream.read(dtype.itemsize << 20):
            if dtype.kind == "f":  # the voxels of this chunk (not bytes after the data)
                data = chunk[: max(0, min(len(chunk), expected - available))]
                values = np.frombuffer(data[: len(data) - len(data) % dtype.itemsize], dtype)
                non_finite += values.size - int(np.count_nonzero(np.isfinite(values)))
            available += len(chunk)
    return available, non_finite


def _check_nifti_complete(path: Path) -> None:
    """Raise if a NIfTI file is shorter than its header says, stores a zero voxel size, or holds
    NaN/inf voxels.

    ITK's NIfTI reader zero-fills a truncated .nii.gz, reads NaN as 0 and a zero pixdim as 1 mm,
    all without an error, so the header and the data bytes are checked here (nibabel parses the
    header; the data is streamed in chunks, and scanned for non-finite values when it is float).
    """
    import gzip

    import nibabel

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            zooms = _raw_nifti_zooms(stream.read(540))
        if zooms is not None and (not np.all(np.isfinite(zooms)) or np.any(zooms == 0)):
            # Checked before nibabel.load, which would log and "fix" the header.
            raise InputImageError(
                f"{path} has voxel spacing {tuple(zooms.tolist())} mm in its header (pixdim); spacing must be "
                "finite and > 0. Fix the header or re-export the image."
            )
        proxy = nibabel.load(str(path)).dataobj  # its offset is the file's (the image's header copy says 0)
        dtype, offset = proxy.dtype, int(proxy.offset)
        expected = offset + int(np.prod(proxy.shape)) * dtype.itemsize
        non_finite = 0
        if dtype.kind == "f" or opener is gzip.open:
            available, non_finite = _scan_nifti_data(path, opener, offset, dtype, expected)
        else:
            available = path.stat().st_size
    except (EOFError, OSError, ValueError, nibabel.filebasedimages.ImageFileError) as exc:
        raise InputImageError(f"Cannot read {path}: the file is corrupt or truncated ({exc}). Re-export or re-download it.") from None
    if available < expected:
        raise InputImageError(
            f"Cannot read {path}: the file is corrupt or truncated ({available} of {expected} bytes). "
            "Re-export or re-download it."
        )
    if non_finite:
        raise InputImageError(
            f"{path} has {non_finite} NaN or infinite voxel value(s); PASTA needs finite intensities. "
            "Re-export the image (or replace NaN by the background value)."
        )


def _check_readable(path: Path) -> None:
    """Raise InputImageError unless ``path`` exists and this process may read it."""
    if not path.exists():
        raise InputImageError(f"Image not found: {path}. Check the path.")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise InputImageError(f"Cannot read {path}: permission denied. Make it readable (chmod u+r) or copy it.")
    if path.is_file() and path.stat().st_size == 0:
        raise InputImageError(f"Cannot read {path}: the file is empty. Re-export or re-download it.")


def _check_nrrd_complete(path: Path) -> None:
    """Raise if a raw-encoded NRRD (attached data) is shorter than its header says.

    ITK reads gzip-encoded NRRDs through zlib (a truncated stream is an error), but a raw one
    is read with fread and the missing tail would be left as it is in memory."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    end = head.find(b"\n\n")
    if not head.startswith(b"NRRD") or end < 0:
        return  # ITK's reader reports what is wrong
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    if fields.get("encoding", "raw") != "raw" or "data file" in fields or "datafile" in fields:
        return
    itemsize = {"char": 1, "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1,
                "uint8_t": 1, "short": 2, "int16": 2, "int16_t": 2, "ushort": 2, "unsigned short": 2, "uint16": 2,
                "uint16_t": 2, "int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4,
                "uint32_t": 4, "float": 4, "double": 8, "longlong": 8, "int64": 8, "int64_t": 8, "ulonglong": 8,
                "uint64": 8, "uint64_t": 8}.get(fields.get("type", "").lower())
    try:
        count = int(np.prod([int(v) for v in fields.get("sizes", "").split()]))
    except ValueError:
        return
    if itemsize is None or not count:
        return
    expected, available = end + 2 + count * itemsize, path.stat().st_size
    if available < expected:
        raise InputImageError(
            f"Cannot read {path}: the file is corrupt or truncated ({available} of {expected} bytes). "
            "Re-export or re-download it."
        )


def _check_values_and_grid(image: sitk.Image, path: Path) -> None:
    """Raise InputImageError for NaN/inf voxels or a spacing/direction no scanner writes."""
    spacing = np.asarray(image.GetSpacing(), float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputImageError(
            f"{path} has voxel spacing {tuple(spacing.tolist())} mm; spacing must be finite and > 0. "
            "Fix the header (pixdim / space directions) or re-export the image."
        )
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), float)
    if not np.all(np.isfinite(direction)) or not np.all(np.isfinite(origin)) or abs(np.linalg.det(direction)) < 1e-6:
        raise InputImageError(
            f"{path} has an invalid orientation (origin {tuple(origin.tolist())}, direction not a rotation). "
            "Fix the header (qform/sform) or re-export the image."
        )
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(image)
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InputImageError(
                f"{path} has {bad} NaN or infinite voxel value(s); PASTA needs finite intensities. "
                "Re-export the image (or replace NaN by the background value)."
            )


def read_image(path: PathLike, *, allow_single_slice: bool = False) -> sitk.Image:
    """Read a 3D scalar image from NIfTI, NRRD, MHA/MHD or a DICOM series (folder or file).

    The one checked reader of PASTALib: the file must exist and be readable, hold all its bytes
    (ITK zero-fills truncated NIfTI/NRRD), be 3D scalar with finite values, a positive finite
    spacing and a valid orientation; otherwise InputImageError names the file and the fix.
    ``allow_single_slice`` accepts a 3D image one voxel thick (a mask contoured on one slice).
    DICOM tags of the first slice are kept in the image's metadata dictionary.
    """
    path = Path(path)
    _check_readable(path)
    tags: dict[str, str] = {}
    if path.is_dir() or is_dicom_file(path):
        image, tags = _read_dicom_series(path)
    else:
        if _suffix(path) in (".nii", ".nii.gz"):
            _check_nifti_complete(path)
        elif _suffix(path) in (".nrrd", ".seg.nrrd"):
            _check_nrrd_complete(path)
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
    if image.GetDimension() != 3 or min(image.GetSize()) < (1 if allow_single_slice else 2):
        raise InputImageError(
            f"{path} is {image.GetDimension()}D with size {image.GetSize()}; PASTA needs a 3D volume "
            "(for a single slice or a time series, export the 3D CT series instead)."
        )
    _check_values_and_grid(image, path)
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
