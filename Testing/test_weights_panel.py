"""The PASTA panel's Download weights button runs `pasta weights download --progress-lines` through
the module's job runner (BatchJob): progress arrives, the weights land checked and recorded, and
Cancel stops the download leaving no installed file (the partial one resumes next time). Real
subprocesses against a server on 127.0.0.1."""

from __future__ import annotations

import io
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
import torch

from PASTALogicLib.logic import public_weights_installed, weights_download_command
from PASTASlicerLib.jobs import BatchJob
from test_weights_download import GOOD, _Handler, _sha

from PASTALib.weights import recorded_sha256


def _big_checkpoint() -> bytes:
    """The published layout with one 7 MB tensor stored in full, so a download takes several chunks."""
    sd = torch.load(io.BytesIO(GOOD), weights_only=True)
    key = "conv_blocks_context.2.blocks.1.conv.weight"  # (256, 256, 3, 3, 3)
    sd[key] = torch.zeros(sd[key].shape)
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@pytest.fixture()
def server():
    _Handler.files = {"PASTA_final.pth": _big_checkpoint()}
    _Handler.log = []
    _Handler.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.release.set()
    httpd.shutdown()
    httpd.server_close()


def test_download_button_cancel_then_resume(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PASTA_WEIGHTS_DIR", str(tmp_path / "weights"))
    weights = tmp_path / "weights"
    assert not public_weights_installed()
    # Cancel while bytes arrive (the server stalls after 1.5 MB): nothing installed, the partial file kept.
    messages: list[str] = []
    job = BatchJob(weights_download_command(url=f"{server}/stall/PASTA_final.pth"),
                   on_progress=lambda f, m: messages.append(m)).start()
    deadline = time.monotonic() + 120
    while job.poll() == "running" and not any(" MB" in m for m in messages) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()
    assert job.state == "cancelled", job.output_tail
    assert not public_weights_installed()
    parts = list(weights.iterdir())
    assert len(parts) == 1 and parts[0].name.startswith("PASTA_final.pth.unverified.download") and parts[0].suffix == ".part"
    kept = parts[0].stat().st_size
    assert 0 < kept <= 3 << 19  # what arrived before the stall (cancel may come after any chunk)
    # Pressing the button again resumes from the kept bytes and installs the checked file.
    command = weights_download_command(url=f"{server}/PASTA_final.pth")
    assert command[3:6] == ["weights", "download", "--progress-lines"]
    progress: list[float] = []
    job = BatchJob(command, on_progress=lambda f, m: progress.append(f)).start()
    assert job.wait(timeout=120) == "finished", job.output_tail
    assert ("/PASTA_final.pth", f"bytes={kept}-") in _Handler.log
    assert progress[-1] == 1.0 and progress == sorted(progress)
    data = _Handler.files["PASTA_final.pth"]
    assert public_weights_installed() and (weights / "PASTA_final.pth").read_bytes() == data
    assert recorded_sha256(weights / "PASTA_final.pth") == _sha(data)
    assert sorted(p.name for p in weights.iterdir()) == ["PASTA_final.pth", "PASTA_final.pth.sha256"]
