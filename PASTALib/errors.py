"""Exceptions raised for bad input. Every message names the problem and the fix."""

import pickle
import zipfile


class PastaError(Exception):
    """Base class for errors a user can act on (message says what to do)."""


class InputImageError(PastaError):
    """The image file is missing, corrupt, not 3D, or not a CT."""


class AnatomyError(PastaError):
    """An organ is missing, too small, or not healthy."""


class SpecificationError(PastaError):
    """A lesion attribute or setting has a value that is not allowed."""


class LesionFitError(PastaError):
    """The requested lesion does not fit in the organ at the requested place."""


class MissingWeightsError(PastaError):
    """Model weights (PASTA or TotalSegmentator) are not installed."""


class CheckpointError(PastaError):
    """A weights file is corrupt or does not fit the model; the message says what it probably is."""


class CorruptFileError(PastaError):
    """A state or table file (manifest.csv, case.json, a checkpoint) is unreadable; the message names it
    and how to recover (delete it, or rerun without resuming)."""


class DownloadError(PastaError):
    """A download failed (no network, timeout, checksum mismatch); the message says what to do by hand."""


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0))}


def printable(text: object) -> str:
    """``text`` safe to print on a terminal: control characters other than newline and tab
    (escape sequences, carriage returns, bells) written as ``\\xNN``, so a file or reader name
    cannot rewrite the screen."""
    return str(text).translate(_CONTROL)


#: What ``torch.load`` (or unpickling a checkpoint's data.pkl) raises on a truncated, garbage or foreign file:
#: unpickling random bytes can fail with almost any of these (an IndexError from an empty pickle stack, a
#: KeyError from an unknown opcode). Torch-free here so the Slicer side's checkpoint reader shares it.
UNREADABLE_TORCH_FILE: tuple[type[BaseException], ...] = (
    pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
    AttributeError, ImportError, IndexError, KeyError,
)
