"""Reading and writing CT volumes, label maps and Slicer segmentations."""

from PASTALib.io.image import (
    check_is_ct,
    read_ct,
    read_image,
    read_label,
    write_image,
)
from PASTALib.io.files import write_json_atomic, write_text_atomic
from PASTALib.io.segmentation import ijk_to_lps, write_segmentation

__all__ = [
    "check_is_ct",
    "ijk_to_lps",
    "read_ct",
    "read_image",
    "read_label",
    "write_image",
    "write_json_atomic",
    "write_segmentation",
    "write_text_atomic",
]
