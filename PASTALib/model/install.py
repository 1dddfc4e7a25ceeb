"""Installing ``PASTA_final.pth``: download (or import a file brought by hand), check it against the
published layout, place it atomically in the weights folder and record its SHA-256 beside it.

The structural check is the strict loader's own comparison (:func:`load_pasta_checkpoint`'s key and
shape report) against a full-size :class:`PastaUNet` built on the meta device, with the file
memory-mapped: every one of the 104 tensors must be there with the published shape, and checking
a 1 GB file costs neither its size in memory nor a full read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from PASTALib.download import ProgressCallback, download_file, partial_files, sha256_file
from PASTALib.errors import CheckpointError, DownloadError, MissingWeightsError
from PASTALib.model.checkpoint import (
    _mismatch_report,
    describe_state_dict,
    load_state_dict_file,
)
from PASTALib.model.unet import PastaUNet, UNetConfig
from PASTALib.weights import (
    WEIGHTS_FILENAME,
    WEIGHTS_PAGE,
    checksum_path,
    default_weights_path,
    recorded_sha256,
    weights_url,
)

logger = logging.getLogger(__name__)
SEG_KEY = "seg_outputs.0.weight"


@dataclass
class InstallResult:
    path: Path
    sha256: str
    action: str  # "downloaded" | "imported" | "recorded" (file already in place) | "already installed"
    layout: str = ""

    def summary(self) -> str:
        return f"{self.action}: {self.path} (SHA-256 {self.sha256}){' - ' + self.layout if self.layout else ''}"


def _layout_problems(path: Path) -> tuple[str, list[str], int | None]:
    """(what the file looks like, differences from the published layout, segmentation classes)."""
    sd = load_state_dict_file(path, mmap=True)
    if SEG_KEY not in sd:
        return describe_state_dict(sd), [f"no {SEG_KEY}"], None
    classes = int(sd[SEG_KEY].shape[0])
    with torch.device("meta"):
        expected = PastaUNet(UNetConfig(num_seg_classes=classes)).state_dict()
    problems = _mismatch_report(expected, sd)
    return describe_state_dict(sd), problems, classes if not problems else None


def verify_published_layout(path: str | os.PathLike) -> str:
    """Check that ``path`` holds the published PASTA layout (every key and shape; the number of
    segmentation classes is read from the file). Returns a one-line description; raises
    CheckpointError naming the first differences otherwise."""
    path = Path(path)
    # The memory-mapped tensors are released when _layout_problems returns, before any error is
    # raised, so the caller can delete or rename the file (Windows refuses that on a mapped file).
    looks_like, problems, classes = _layout_problems(path)
    if problems:
        raise CheckpointError(
            f"{path} does not have the published PASTA layout (it looks like {looks_like}):\n  "
            + "\n  ".join(problems) + f"\nDownload the file linked at {WEIGHTS_PAGE}, or use the file as a "
            "fine-tuned/trained checkpoint (--checkpoint) instead of installing it."
        )
    return f"published layout, {len(_published_keys())} tensors, {classes} segmentation classes"


def _published_keys() -> list[str]:
    with torch.device("meta"):
        return list(PastaUNet(UNetConfig()).state_dict())


def _record(path: Path, digest: str) -> None:
    record = checksum_path(path)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, record)


def _place(candidate: Path, dest: Path, digest: str, action: str) -> InstallResult:
    """Verify ``candidate`` (deleting it if it fails), then rename it to ``dest`` and record ``digest``."""
    try:
        layout = verify_published_layout(candidate)
    except CheckpointError:
        candidate.unlink(missing_ok=True)
        raise
    os.replace(candidate, dest)
    _record(dest, digest)
    logger.info("%s %s (SHA-256 %s)", action, dest, digest)
    return InstallResult(dest, digest, action, layout)


def installed(dest: str | os.PathLike | None = None) -> InstallResult | None:
    """The install at ``dest`` (default location) when the file and its SHA-256 record are there."""
    dest = Path(dest) if dest else default_weights_path()
    digest = recorded_sha256(dest)
    if dest.is_file() and digest:
        return InstallResult(dest, digest, "already installed")
    return None


def download_weights(
    *,
    url: str | None = None,
    dest: str | os.PathLike | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    force: bool = False,
) -> InstallResult:
    """Download ``PASTA_final.pth`` (authors' Drive file, or ``url`` / ``$PASTA_WEIGHTS_URL``) into the
    weights folder. Nothing happens when it is installed already (file + SHA-256 record) unless
    ``force``; a file put there by hand is checked and recorded instead of downloaded again."""
    dest = Path(dest) if dest else default_weights_path()
    url = url or weights_url()
    if not force:
        done = installed(dest)
        if done is not None:
            return done
        if dest.is_file():
            digest = sha256_file(dest)
            if sha256 and digest != sha256.lower():
                raise CheckpointError(f"{dest} has SHA-256 {digest}, expected {sha256.lower()}; delete it or run "
                                      "`pasta weights download --force`")
            layout = verify_published_layout(dest)
            _record(dest, digest)
            return InstallResult(dest, digest, "recorded", layout)
    incoming = dest.with_name(dest.name + ".unverified")
    got = download_file(url, incoming, sha256=sha256, timeout=timeout, progress=progress, cancel=cancel,
                        manual=f"run `pasta weights import FILE` (it installs it at {dest})")
    return _place(got.path, dest, got.sha256, "downloaded")


def import_weights(source: str | os.PathLike, *, dest: str | os.PathLike | None = None,
                   progress: ProgressCallback | None = None) -> InstallResult:
    """Install a ``PASTA_final.pth`` brought in by hand: copy it beside the destination (hashing as
    it goes), check the layout, rename into place and record the SHA-256. The source is left alone."""
    source = Path(source).expanduser()
    dest = Path(dest) if dest else default_weights_path()
    if not source.is_file():
        raise MissingWeightsError(f"{source} does not exist or is not a file; give the path of the downloaded "
                                  f"{WEIGHTS_FILENAME} (link: {WEIGHTS_PAGE})")
    if dest.exists() and source.resolve() == dest.resolve():
        layout = verify_published_layout(dest)
        digest = sha256_file(dest)
        _record(dest, digest)
        return InstallResult(dest, digest, "recorded", layout)
    layout = verify_published_layout(source)  # fail before copying a wrong 1 GB file
    dest.parent.mkdir(parents=True, exist_ok=True)
    incoming = dest.with_name(dest.name + ".importing")
    total = source.stat().st_size
    digest = hashlib.sha256()
    done = 0
    try:
        with open(source, "rb") as src, open(incoming, "wb") as out:
            for block in iter(lambda: src.read(1 << 22), b""):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        incoming.unlink(missing_ok=True)
        raise DownloadError(f"cannot copy {source} to {incoming}: {exc}") from None
    result = _place(incoming, dest, digest.hexdigest(), "imported")
    result.layout = layout
    return result


def leftovers(dest: str | os.PathLike | None = None) -> list[Path]:
    """Partial downloads beside the weights (kept so the next download resumes)."""
    dest = Path(dest) if dest else default_weights_path()
    return partial_files(dest.with_name(dest.name + ".unverified.download"))


__all__ = ["InstallResult", "download_weights", "import_weights", "installed", "leftovers", "verify_published_layout"]
