"""Downloading one file: progress, resume, timeout, SHA-256, atomic placement (torch-free).

The transfer is gdown's (``gdown.download``): it resolves Google Drive links (the confirmation page
of large files) and fetches any other http(s) URL the same way, resumes a partial
``<name>XXXXXXXX.part`` file with an HTTP Range request, hashes while writing and takes a cancel
event. This module adds what every PASTA download needs around it: the destination appears only
complete (rename from the staging name), an optional expected SHA-256, and errors that say what to
fetch by hand when the machine has no network.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PASTALib.errors import DownloadError

#: progress(bytes_done, bytes_total_or_None)
ProgressCallback = Callable[[int, "int | None"], None]
DEFAULT_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass
class Downloaded:
    path: Path
    sha256: str
    size: int


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_files(dest: str | os.PathLike) -> list[Path]:
    """gdown's partial files of ``dest`` (``<name>`` + 8 characters + ``.part``), kept for resume."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    return sorted(p for p in dest.parent.iterdir()
                  if p.name.startswith(dest.name) and p.name.endswith(".part") and len(p.name) == len(dest.name) + 13)


def offline_hint(url: str, manual: str) -> str:
    return f"Without network access: download {url} by hand (e.g. in a browser on another machine), then {manual}."


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = 2,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    manual: str = "put the file in place by hand",
) -> Downloaded:
    """Download ``url`` to ``dest``; a partial download from an earlier run is resumed.

    ``dest`` appears only complete (and, with ``sha256``, only with that checksum: a mismatch deletes
    the download and raises). On a network failure the partial file stays for the next run to resume.
    ``timeout``: seconds without a byte before giving up (then ``retries`` resumed attempts).
    ``manual``: the by-hand step for the error message (e.g. ``run `pasta weights import FILE```).
    """
    import gdown  # imported here: only downloads need it
    import requests
    from gdown.exceptions import DownloadCancelled, FileURLRetrievalError
    from gdown.exceptions import DownloadError as GdownDownloadError

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.with_name(dest.name + ".download")  # gdown's own rename target; ours follows the check
    hasher = hashlib.sha256()
    hint = offline_hint(url, manual)
    try:
        try:
            gdown.download(url=url, output=str(staging), quiet=True, resume=True, use_cookies=False,
                           progress=progress, hasher=hasher, timeout=timeout, retries=retries, cancel=cancel)
        except GdownDownloadError as exc:  # retries exhausted: explain the network error underneath
            if isinstance(exc.__cause__, requests.exceptions.RequestException):
                raise exc.__cause__ from None
            raise
    except DownloadCancelled:
        raise DownloadError(f"download of {url} cancelled; the partial file is kept and the next run resumes it") from None
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else exc
        raise DownloadError(f"{url}: the server answered {status}. {hint}") from None
    except requests.exceptions.RequestException as exc:
        # requests reports a read timeout inside the body as a ConnectionError("... Read timed out")
        if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc):
            raise DownloadError(f"{url}: no data for {timeout:g} s (timeout); the partial file is kept, run the "
                                f"command again to resume. {hint}") from None
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            raise DownloadError(f"{url}: the connection broke during the transfer; the partial file is kept, run the "
                                f"command again to resume. {hint}") from None
        first = str(exc).splitlines()[0][:200]
        raise DownloadError(f"cannot reach {url} ({type(exc).__name__}: {first}). {hint}") from None
    except FileURLRetrievalError as exc:
        first = " ".join(str(exc).split())[:300]
        raise DownloadError(f"Google Drive did not hand out {url}: {first}. {hint}") from None
    except GdownDownloadError as exc:
        first = " ".join(str(exc).split())[:300]
        raise DownloadError(f"download of {url} failed: {first}. Run the command again to resume. {hint}") from None
    except OSError as exc:
        raise DownloadError(f"cannot write {staging}: {exc}") from None
    # A resumed download that had already finished is skipped by gdown without hashing: hash it here.
    digest = hasher.hexdigest() if hasher.digest() != hashlib.sha256().digest() else sha256_file(staging)
    if sha256 is not None and digest != sha256.lower():
        staging.unlink(missing_ok=True)
        raise DownloadError(f"{url}: checksum mismatch (SHA-256 {digest}, expected {sha256.lower()}); the "
                            f"download was deleted. Run the command again; if it persists the source changed. {hint}")
    os.replace(staging, dest)
    return Downloaded(dest, digest, dest.stat().st_size)
