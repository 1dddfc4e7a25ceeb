"""The output side of the hardening policy: nothing ``pasta`` writes can damage an input or leave a
half-written file behind.

* :func:`check_output_not_input` refuses an output that would replace, or be written over, an input.
* :func:`check_writable` finds a read-only folder or a folder-where-a-file-belongs before long work.
* :func:`atomic_output` writes through a temporary file in the same folder, *verifies* it (callers
  pass a check: byte compare, image read-back, zip CRC) and only then renames it into place. Some
  writers (SimpleITK's NIfTI writer) ignore ENOSPC, so an unverified rename could put a truncated
  file where a good one was.
* :func:`folder_lock` keeps a second long job off an output folder (``fcntl.flock``, non-blocking).
* :func:`remove_stale_partials` cleans ``.NAME.partial-PID`` leftovers of killed runs.
* :func:`safe_name` validates any user-given name that becomes a file or folder name.

Torch- and SimpleITK-free at import time (Slicer's process imports :mod:`PASTALib.io` cheaply).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from PASTALib.errors import PastaError

PathLike = str | os.PathLike

LOCK_NAME = ".pasta.lock"
#: ``.NAME.partial-PID`` (optionally followed by a suffix): a staging file or folder of this tool.
PARTIAL_PATTERN = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)(?:[.-].*)?$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


class OutputError(PastaError):
    """An output cannot be written safely (it is an input, not writable, disk full, folder in use)."""


# ----------------------------------------------------------------------------- paths


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts, case-insensitive file systems
    except OSError:
        return False


def check_output_not_input(
    outputs: Iterable[PathLike | None], inputs: Iterable[PathLike | None], *, folders: Iterable[PathLike | None] = ()
) -> None:
    """Raise :class:`OutputError` when writing would replace or delete an input.

    ``outputs`` are the files (or whole folders) the command creates or replaces: each must not be
    an input (symlinks and hard links resolved) nor contain one. ``folders`` are output folders the
    command writes new files into: each must not be an input folder itself. A command writing fixed
    names into a folder passes ``folder / name`` for each name as an output.
    """
    ins = [(Path(i), _resolved(i)) for i in inputs if i is not None and str(i) != ""]
    for given in outputs:
        if given is None:
            continue
        out = _resolved(given)
        for raw, inp in ins:
            if _same(out, inp):
                raise OutputError(
                    f"The output {given} is the input {raw}: writing it would destroy the input. "
                    "Choose a different output path (a new file name or folder)."
                )
            if out in inp.parents:
                raise OutputError(
                    f"The output {given} contains the input {raw}: writing it would replace the input. "
                    "Choose an output outside the input's folder."
                )
    for given in folders:
        if given is None:
            continue
        out = _resolved(given)
        for raw, inp in ins:
            if inp.is_dir() and _same(out, inp):
                raise OutputError(
                    f"The output folder {given} is the input folder {raw}: outputs would mix with (or be read "
                    "back as) inputs. Choose a new, separate output folder."
                )


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _probe_write(folder: Path, target: PathLike) -> None:
    """Create and remove a temporary file in ``folder`` (also right for root, ACLs and read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".pasta-write-test-", dir=folder)
    except OSError as exc:
        raise OutputError(
            f"Cannot write {target}: the folder {folder} is not writable ({exc.strerror or exc}). "
            "Choose an output in a folder you can write to, or fix its permissions (or free disk space)."
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_writable(path: PathLike, *, folder: bool = False) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be written: a file (``folder=False``) whose path
    is not a folder, or an output folder that is not a file; the nearest existing folder must accept
    new files. Creates nothing (call it before long work: a failure costs no computation)."""
    path = Path(path).expanduser()
    if path.is_dir() and not folder:
        raise OutputError(
            f"The output {path} is a folder, but a file is written here. Give a file name, e.g. {path / 'output.nii.gz'}."
        )
    if path.exists() and not path.is_dir() and folder:
        raise OutputError(f"The output folder {path} is an existing file. Give a folder path (a new or existing folder).")
    base = path if folder and path.is_dir() else _existing_ancestor(path.parent if not folder else path)
    if not base.is_dir():
        raise OutputError(f"Cannot write {path}: {base} is a file, not a folder. Choose a path inside a folder.")
    _probe_write(base, path)
    return path


def check_outputs(
    inputs: Iterable[PathLike | None], *, files: Iterable[PathLike | None] = (),
    folders: Iterable[PathLike | None] = (), names: Iterable[str] = (),
) -> None:
    """What every writing command calls before its work: ``files`` (output files) and ``folders``
    (output folders, into which the fixed file ``names`` are written) must be writable and must not
    replace, contain or be an input (:func:`check_output_not_input`, :func:`check_writable`)."""
    inputs, files, folders, names = list(inputs), [f for f in files if f], [f for f in folders if f], list(names)
    for f in files:  # first: "is a folder" says more than "contains the input"
        if Path(f).is_dir():
            check_writable(f)
    check_output_not_input([*files, *(Path(f) / n for f in folders for n in names)], inputs, folders=folders)
    for f in files:
        check_writable(f)
    for f in folders:
        check_writable(f, folder=True)


# ----------------------------------------------------------------------------- verified atomic writes


def _disk_error(path: Path, exc: BaseException) -> OutputError:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"Cannot write {path}: the disk is full ({exc}). Free disk space or choose another "
                           "output folder; the previous file (if any) is unchanged.")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"Cannot write {path}: permission denied ({exc}). Choose a writable output folder.")
    if code == errno.EISDIR:
        return OutputError(f"Cannot write {path}: it is a folder. Give a file name instead.")
    return OutputError(f"Cannot write {path}: {exc}. Check the output folder (free space, permissions); "
                       "the previous file (if any) is unchanged.")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: PathLike) -> None:
    """Flush a written file to disk (errors here are what a full disk reports late)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: PathLike, verify: Callable[[Path], None] | None = None, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; after the block it is fsynced, checked with
    ``verify(tmp)`` (raise anything on a bad file) and renamed onto ``path``.

    On any failure the temporary file is removed, ``path`` keeps its previous content, and an
    :class:`OutputError` names the problem (disk full, permission) and the fix. ``suffix`` keeps the
    extension writers choose their format from (``.nii.gz``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(path.parent, exc) from None
    if path.is_dir():
        raise OutputError(f"Cannot write {path}: it is a folder. Give a file name instead.")
    stem = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
    tmp = path.with_name(f".{stem}.partial-{os.getpid()}-{os.urandom(4).hex()}{suffix}")
    try:
        yield tmp
        try:
            fsync_file(tmp)
            if verify is not None:
                verify(tmp)
        except OutputError:
            raise
        except OSError as exc:
            raise _disk_error(path, exc) from None
        except Exception as exc:  # the check failed: what is on disk is not what was written
            raise OutputError(
                f"Cannot write {path}: the written file failed its check ({type(exc).__name__}: {exc}); "
                "the disk is probably full or failing. Free disk space or choose another output folder; "
                "the previous file (if any) is unchanged."
            ) from None
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise _disk_error(path, exc) from None
        _fsync_dir(path.parent)
    except OSError as exc:  # raised inside the block: the writer itself failed (ENOSPC, EACCES...)
        raise _disk_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes_verified(path: PathLike, data: bytes) -> Path:
    """Atomic, verified write of ``data`` (read back and compared before the rename)."""
    path = Path(path)

    def same_bytes(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise ValueError(f"read back {tmp.stat().st_size} of {len(data)} bytes")

    with atomic_output(path, same_bytes) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(data)
    return path


def verify_zip(path: PathLike) -> None:
    """Check every member's CRC of a zip archive (``torch.save`` writes zip files)."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"member {bad} has a bad CRC")


def verify_image_file(path: PathLike, image) -> None:
    """Check a just-written image file against the in-memory ``image`` (a SimpleITK image): the header
    (size, pixel type) by reading its information, and every byte of the pixel data (a NIfTI .gz stream
    is decompressed to its end, which checks its CRC and length; other formats are read back and
    compared voxel by voxel)."""
    import gzip

    import numpy as np
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if tuple(reader.GetSize()) != tuple(image.GetSize()):
        raise ValueError(f"size {reader.GetSize()} read back, {image.GetSize()} written")
    name = path.name.lower()
    voxels = int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel()
    itemsize = sitk.GetArrayViewFromImage(image).itemsize
    if name.endswith(".nii.gz"):
        available = 0
        with gzip.open(path, "rb") as stream:  # EOFError / BadGzipFile on a truncated stream
            while chunk := stream.read(1 << 22):
                available += len(chunk)
        if available < 348 + voxels * itemsize:
            raise ValueError(f"{available} bytes of image data, expected at least {348 + voxels * itemsize}")
    elif name.endswith(".nii"):
        if path.stat().st_size < 348 + voxels * itemsize:
            raise ValueError(f"{path.stat().st_size} bytes, expected at least {348 + voxels * itemsize}")
    else:
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # a copy: a view dies with its image
        if not np.array_equal(back, sitk.GetArrayViewFromImage(image)):
            raise ValueError("the voxels read back differ from those written")


# ----------------------------------------------------------------------------- locks and leftovers

#: Locks this process holds: path -> (fd, depth). flock belongs to the open file, so a nested
#: ``folder_lock`` of the same folder (finetune -> train) must reuse the held one, not block on it.
_HELD: dict[Path, list[int]] = {}


def _lock_owner(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another run"
    return f"another run ({text})" if text else "another run"


@contextlib.contextmanager
def folder_lock(folder: PathLike, *, name: str = LOCK_NAME, what: str = "output folder",
                clean: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder/name`` for the block, or raise :class:`OutputError` naming the
    process that holds it. Non-blocking; released when the block ends or the process dies (kill -9
    included: the kernel drops ``flock`` locks), so there are no stale locks to clean by hand.
    With ``clean``, the killed runs' ``.NAME.partial-PID`` leftovers in ``folder`` are removed once
    the lock is held (:func:`remove_stale_partials`)."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # removed again if left empty
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(folder, exc) from None
    try:
        with _locked(folder, name, what, clean) as path:
            yield path
    finally:
        for p in created:  # a run refused early leaves no empty folders behind
            try:
                p.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def _locked(folder: Path, name: str, what: str, clean: bool) -> Iterator[Path]:
    import fcntl

    path = (folder / name).resolve()
    if path in _HELD:
        _HELD[path][1] += 1
        try:
            yield path
        finally:
            _HELD[path][1] -= 1
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _disk_error(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"{folder} is in use by {_lock_owner(path)}: two runs on one {what} would corrupt it. "
                "Wait for that run to finish (or stop it), or choose another output folder."
            ) from None
        except OSError as exc:  # a file system without locks (some network mounts): run, but say so
            os.close(fd)
            warnings.warn(f"cannot lock {folder} ({exc.strerror or exc}); make sure no other run uses it",
                          RuntimeWarning, stacklevel=3)
            yield path
            return
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv[:4])}".encode("utf-8", "replace"))
    _HELD[path] = [fd, 1]
    try:
        if clean:
            remove_stale_partials(folder)
        yield path
    finally:
        _HELD.pop(path, None)
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a waiting run then re-creates a fresh file
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (our own pid counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(folder: PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Remove ``.NAME.partial-PID...`` files and folders in ``folder`` whose process is gone (killed
    runs of this tool); ``names`` limits it to those NAMEs. Call it while holding the folder's lock."""
    folder = Path(folder)
    wanted = set(names) if names is not None else None
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for item in folder.iterdir():
        match = PARTIAL_PATTERN.match(item.name)
        if not match or (wanted is not None and match.group("name") not in wanted):
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or pid_alive(pid):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        removed.append(item)
    return removed


# ----------------------------------------------------------------------------- names


def safe_name(name: object, what: str = "name", *, max_length: int = 128) -> str:
    """Return ``name`` if it can be a single file or folder name, else raise :class:`OutputError`.

    Allowed: letters, digits and ``. _ + -``, starting with a letter or digit (no ``/``, ``..``,
    hidden names, control or terminal escape characters, Windows device names), at most
    ``max_length`` characters. Nothing is silently rewritten: two different ids never map to one file.
    """
    text = str(name)
    shown = text.encode("unicode_escape").decode("ascii")
    if not text or len(text) > max_length or not _SAFE_NAME.match(text) or ".." in text \
            or text.split(".")[0].lower() in _WINDOWS_RESERVED:
        raise OutputError(
            f"The {what} {shown!r} cannot be used as a file name: use 1-{max_length} letters, digits, '.', '_', "
            "'+' or '-', starting with a letter or digit (no '/', '..', spaces or control characters). Rename it."
        )
    return text


__all__ = [
    "LOCK_NAME", "OutputError", "atomic_output", "check_output_not_input", "check_outputs", "check_writable", "folder_lock",
    "fsync_file", "pid_alive", "remove_stale_partials", "safe_name", "verify_image_file", "verify_zip",
    "write_bytes_verified",
]
