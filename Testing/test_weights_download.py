"""pasta weights download / import over real HTTP (a server on 127.0.0.1 in the test): resume with
Range, timeout, checksum failure, no partial destination, second run a no-op, the published-layout
check, and the offline error message."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from PASTALib.cli.main import main
from PASTALib.download import download_file, partial_files
from PASTALib.errors import CheckpointError, DownloadError
from PASTALib.model import PastaUNet, UNetConfig
from PASTALib.model.install import installed, verify_published_layout
from PASTALib.weights import checksum_path, recorded_sha256


def _published_layout_bytes(num_seg_classes: int = 14, shapes=None) -> bytes:
    """A checkpoint with every key of the published layout. Each tensor is a stride-0 view of one
    element, so torch.save stores one number per tensor: the file is a few kB but loads with the
    published shapes (``shapes`` maps a shape to another to build a wrong layout)."""
    with torch.device("meta"):
        layout = PastaUNet(UNetConfig(num_seg_classes=num_seg_classes)).state_dict()
    sd = {}
    for key, t in layout.items():
        shape = shapes(tuple(t.shape)) if shapes else tuple(t.shape)
        sd[key] = torch.zeros((), dtype=t.dtype).expand(shape)
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


GOOD = _published_layout_bytes()
TINY = _published_layout_bytes(shapes=lambda s: (1,) * len(s))  # right keys, tiny shapes


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    release = threading.Event()

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.files:
            self.send_error(404)
            return
        data = self.files[name]
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        if self.path.startswith("/cut/") and not rng:
            self.wfile.write(body[: len(body) // 2])  # connection drops half way
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.startswith("/stall/"):
            self.wfile.write(body[: 3 << 19])  # three of gdown's 512 kB chunks
            self.wfile.flush()
            self.release.wait(10)  # no more bytes: the client's timeout must fire
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    _Handler.files = {"PASTA_final.pth": GOOD, "tiny.pth": TINY, "blob.bin": bytes(range(256)) * 16000}
    _Handler.log = []
    _Handler.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_file_resumes_after_a_dropped_connection(server, tmp_path):
    blob = _Handler.files["blob.bin"]
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match="resume"):
        download_file(f"{server}/cut/blob.bin", dest, retries=0, timeout=5)
    assert not dest.exists()  # never a half file under the final name
    parts = partial_files(tmp_path / "blob.bin.download")
    kept = parts[0].stat().st_size if len(parts) == 1 else -1
    assert 0 < kept <= len(blob) // 2  # the whole chunks received before the drop
    got = download_file(f"{server}/cut/blob.bin", dest, sha256=_sha(blob), retries=0, timeout=5)
    assert _Handler.log[-1] == ("/cut/blob.bin", f"bytes={kept}-")  # only the rest was fetched
    assert dest.read_bytes() == blob and got.sha256 == _sha(blob) and got.size == len(blob)
    assert not partial_files(tmp_path / "blob.bin.download")


def test_download_file_checksum_mismatch_deletes_the_download(server, tmp_path):
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match="checksum mismatch.*deleted"):
        download_file(f"{server}/blob.bin", dest, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_file_timeout_keeps_partial_for_resume(server, tmp_path):
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match=r"no data for 0.5 s \(timeout\).*Without network access: download .*/stall/blob.bin by hand"):
        download_file(f"{server}/stall/blob.bin", dest, timeout=0.5, retries=0)
    assert not dest.exists()
    assert [p.stat().st_size for p in partial_files(tmp_path / "blob.bin.download")] == [3 << 19]


def test_weights_download_installs_records_and_second_run_is_noop(server, tmp_path, capsys):
    dest = tmp_path / "w" / "PASTA_final.pth"
    rc = main(["weights", "download", "--url", f"{server}/PASTA_final.pth", "--dest", str(dest), "--progress-lines", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert dest.read_bytes() == GOOD
    assert recorded_sha256(dest) == _sha(GOOD)
    assert checksum_path(dest).read_text() == f"{_sha(GOOD)}  PASTA_final.pth\n"  # sha256sum -c format
    progress = [float(line.split()[1]) for line in out.splitlines() if line.startswith("PROGRESS")]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress) and len(progress) >= 3
    result = json.loads(out[out.index("{"):])
    assert result["action"] == "downloaded" and "104 tensors, 14 segmentation classes" in result["layout"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["PASTA_final.pth", "PASTA_final.pth.sha256"]
    n_requests = len(_Handler.log)
    assert main(["weights", "download", "--url", f"{server}/PASTA_final.pth", "--dest", str(dest)]) == 0
    assert "already installed" in capsys.readouterr().out
    assert len(_Handler.log) == n_requests  # nothing fetched
    assert installed(dest).sha256 == _sha(GOOD)


def test_weights_download_wrong_layout_is_refused_and_removed(server, tmp_path, capsys):
    dest = tmp_path / "PASTA_final.pth"
    rc = main(["weights", "download", "--url", f"{server}/tiny.pth", "--dest", str(dest)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not have the published PASTA layout" in err
    assert "shape mismatch (104)" in err and "conv_blocks_context.0.blocks.0.conv.weight: file (1, 1, 1, 1, 1) vs model (64, 1, 3, 3, 3)" in err
    assert list(tmp_path.iterdir()) == []  # nothing installed, nothing left


def test_weights_download_offline_says_what_to_fetch_by_hand(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on: like a machine without network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "PASTA_final.pth"
    rc = main(["weights", "download", "--url", f"http://127.0.0.1:{port}/PASTA_final.pth", "--dest", str(dest), "--timeout", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"error: cannot reach http://127.0.0.1:{port}/PASTA_final.pth")
    assert "download http://127.0.0.1" in err and "run `pasta weights import FILE`" in err and str(dest) in err
    assert not dest.exists()


def test_weights_import_copies_checks_and_records(tmp_path, capsys):
    src = tmp_path / "Downloads" / "PASTA_final.pth"
    src.parent.mkdir()
    src.write_bytes(GOOD)
    dest = tmp_path / "w" / "PASTA_final.pth"
    assert main(["weights", "import", str(src), "--dest", str(dest)]) == 0
    assert "imported:" in capsys.readouterr().out
    assert dest.read_bytes() == GOOD and src.exists() and recorded_sha256(dest) == _sha(GOOD)

    bad = tmp_path / "Downloads" / "other.pth"
    bad.write_bytes(TINY)
    dest2 = tmp_path / "w2" / "PASTA_final.pth"
    assert main(["weights", "import", str(bad), "--dest", str(dest2)]) == 2
    assert "does not have the published PASTA layout" in capsys.readouterr().err
    assert not dest2.parent.exists() or list(dest2.parent.iterdir()) == []

    html = tmp_path / "Downloads" / "page.pth"
    html.write_text("<!DOCTYPE html><html>Google Drive - Virus scan warning</html>")
    assert main(["weights", "import", str(html), "--dest", str(dest2)]) == 2
    assert "text/HTML file, not a PyTorch checkpoint" in capsys.readouterr().err


def test_cli_prints_library_notices_on_stderr_only_with_verbose(tmp_path, capsys):
    """The library logs (model.install: 'imported PATH (SHA-256 ...)'); the CLI shows it on stderr as the
    plain message with -v, not by default nor with -q; stdout is the same in all three; the handler is
    removed after each command (no duplicate lines, nothing left on the PASTALib logger)."""
    import logging

    src = tmp_path / "PASTA_final.pth"
    src.write_bytes(GOOD)
    runs = {}
    for flags in ([], ["-v"], ["-v"], ["-q"]):
        dest = tmp_path / f"w{len(runs)}" / "PASTA_final.pth"
        assert main([*flags, "weights", "import", str(src), "--dest", str(dest)]) == 0
        captured = capsys.readouterr()
        runs[len(runs)] = (captured.out.replace(str(dest), "DEST"), captured.err.replace(str(dest), "DEST"))
    assert len({out for out, _ in runs.values()}) == 1 and "imported:" in runs[0][0]
    notice = f"imported DEST (SHA-256 {_sha(GOOD)})\n"
    assert runs[1][1] == notice and runs[2][1] == notice  # one line, the second command's too
    assert runs[0][1] == "" and runs[3][1] == ""
    assert logging.getLogger("PASTALib").handlers == [] and logging.getLogger("PASTALib").level == logging.NOTSET


def test_verify_published_layout_counts_seg_classes_from_the_file(tmp_path):
    path = tmp_path / "m.pth"
    path.write_bytes(_published_layout_bytes(num_seg_classes=26))
    assert verify_published_layout(path) == "published layout, 104 tensors, 26 segmentation classes"
    sd = torch.load(io.BytesIO(GOOD), weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("head.")}, path)  # a segmentation-only model
    with pytest.raises(CheckpointError, match=r"without the attribute head\):\n  missing in file \(6\): head.0.weight"):
        verify_published_layout(path)


def test_default_source_is_the_authors_drive_file(monkeypatch):
    """The URL is the Drive file the PASTA README links, in the form gdown resolves through Drive's
    download confirmation (the part that cannot run without internet)."""
    from gdown.parse_url import parse_url

    from PASTALib.weights import WEIGHTS_DRIVE_ID, WEIGHTS_URL, weights_url

    monkeypatch.delenv("PASTA_WEIGHTS_URL", raising=False)
    assert weights_url() == WEIGHTS_URL
    assert parse_url(WEIGHTS_URL) == (WEIGHTS_DRIVE_ID, True)
    assert WEIGHTS_DRIVE_ID == "1A_PjIAqKg0y_Z986HSfTsYKLhc99EMkD"  # github.com/LWHYC/PASTA README, "Google Drive"
    monkeypatch.setenv("PASTA_WEIGHTS_URL", "https://mirror.example/PASTA_final.pth")
    assert weights_url() == "https://mirror.example/PASTA_final.pth"
