"""Write study volumes in ONE byte-identical NIfTI layout, so file metadata cannot reveal a case's origin.

Every study file is written here from a fresh header: same dtype per role (int16 HU image,
uint8 mask), same qform/sform codes, scaling 1/0, units mm, and empty descrip / aux_file /
intent / db_name fields. The gzip stream carries no file name and mtime 0 (Python's
``gzip.open`` would store both). With a fixed lesion-centred crop the whole 352-byte
header is identical across cases; only the voxel data differ.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np

#: NIfTI xform code used for both qform and sform of every study file (1 = scanner anatomical).
XFORM_CODE = 1
#: Byte offset of scl_slope (then scl_inter) in a NIfTI-1 header.
_SCL_OFFSET = 112


def lps_affine(spacing: float, origin_lps: np.ndarray) -> np.ndarray:
    """NIfTI (RAS) affine of an LPS, identity-direction grid with isotropic ``spacing``."""
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    return affine


def nifti_bytes(array_xyz: np.ndarray, spacing: float, origin_lps: np.ndarray) -> bytes:
    """Uncompressed .nii bytes of an (x, y, z) array with a normalised header."""
    header = nib.Nifti1Header()
    header.set_data_dtype(array_xyz.dtype)
    image = nib.Nifti1Image(np.asarray(array_xyz), None, header)
    affine = lps_affine(spacing, origin_lps)
    image.set_qform(affine, code=XFORM_CODE)
    image.set_sform(affine, code=XFORM_CODE)
    h = image.header
    h.set_xyzt_units("mm", "sec")
    h.set_slope_inter(1.0, 0.0)
    for field in ("descrip", "aux_file", "intent_name", "db_name", "data_type"):
        h[field] = b""
    h["intent_code"] = 0
    h["intent_p1"] = h["intent_p2"] = h["intent_p3"] = 0
    h["cal_min"] = h["cal_max"] = 0
    h["glmin"] = h["glmax"] = 0
    h["toffset"] = 0
    h["slice_code"] = h["slice_start"] = h["slice_end"] = 0
    h["slice_duration"] = 0
    h["dim_info"] = 0
    data = bytearray(image.to_bytes())
    # nibabel writes scl_slope/scl_inter as NaN for unscaled integers; store an explicit 1/0 (identity).
    struct.pack_into("<ff", data, _SCL_OFFSET, 1.0, 0.0)
    return bytes(data)


def write_nifti(path: Path, array_xyz: np.ndarray, spacing: float, origin_lps: np.ndarray, mtime: float) -> Path:
    """Write a deterministic .nii.gz atomically and stamp it with ``mtime`` (same for all study files)."""
    data = gzip.compress(nifti_bytes(array_xyz, spacing, origin_lps), compresslevel=6, mtime=0)
    write_bytes(path, data, mtime)
    return path


def write_bytes(path: Path, data: bytes, mtime: float) -> None:
    """Atomic write (temporary file + rename) with a fixed modification time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    os.utime(path, (mtime, mtime))
