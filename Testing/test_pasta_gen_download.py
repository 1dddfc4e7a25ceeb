"""pasta data pasta-gen-30k against a stand-in Hugging Face Hub on 127.0.0.1 (huggingface_hub pointed
at it with its endpoint setting): the first N cases per type, the `pasta synth generate` layout and
manifest, resume (second run downloads nothing), and the offline error."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

from PASTALib.errors import DownloadError, SpecificationError
from PASTALib.io.manifest import MANIFEST_COLUMNS, read_manifest
from PASTALib.synth.pasta_gen_30k import REPO_ID, download_pasta_gen

SHA = "9bf55d5" + "0" * 33
# The Hub's layout: <Organ>/<Kind>/<n>/ with unpadded case numbers (Lung/Tumor/102).
FILES = {
    f"{folder}/{n}/{name}": f"{folder}/{n}/{name}".encode() * 50
    for folder, numbers in (("Lung/Tumor", (0, 1, 2, 10)), ("Liver/Tumor", (3, 100, 200)), ("Kidney/Cyst", (0,)))
    for n in numbers for name in ("img.nii.gz", "label.nii.gz", "total.nii.gz", "type.json")
}
FILES[".gitattributes"] = b"*.nii.gz filter=lfs\n"


class _Hub(BaseHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _json(self, doc) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, path: str, head: bool) -> None:
        if path not in FILES:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = FILES[path]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", SHA)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _route(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        type(self).requests.append(f"{self.command} {path}")
        api = f"/api/datasets/{REPO_ID}"
        if path == api or path.startswith(f"{api}/revision/"):
            return self._json({"id": REPO_ID, "sha": SHA, "private": False, "disabled": False,
                               "siblings": [{"rfilename": f} for f in sorted(FILES)]})
        if path.startswith(f"{api}/tree/"):
            folder = path[len(f"{api}/tree/"):].split("/", 1)[1].strip("/") if "/" in path[len(f"{api}/tree/"):] else ""
            recursive = "recursive=true" in self.path.lower() or "recursive=1" in self.path
            entries, seen = [], set()
            for f in sorted(FILES):
                if folder and not f.startswith(folder + "/"):
                    continue
                rest = f[len(folder) + 1:] if folder else f
                if "/" in rest and not recursive:
                    sub = f"{folder}/{rest.split('/')[0]}" if folder else rest.split("/")[0]
                    if sub not in seen:
                        seen.add(sub)
                        entries.append({"type": "directory", "path": sub, "oid": "0" * 40})
                else:
                    entries.append({"type": "file", "path": f, "size": len(FILES[f]), "oid": "1" * 40})
            return self._json(entries)
        prefix = f"/datasets/{REPO_ID}/resolve/"
        if path.startswith(prefix):
            return self._file(path[len(prefix):].split("/", 1)[1], head)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self._route(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _Hub.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_subset_in_generate_layout_and_resume(hub, tmp_path):
    out = tmp_path / "pg"
    summary = download_pasta_gen("lung_tumor,liver_tumor", 2, out, endpoint=hub, max_workers=1)
    assert summary["cases"] == 4 and summary["downloaded"] == 4 and summary["revision"] == SHA
    # first two by case number (0, 1 - not "10"), padded like `pasta synth generate`
    for rel, src in (("Lung/Tumor/00000", "Lung/Tumor/0"), ("Lung/Tumor/00001", "Lung/Tumor/1"),
                     ("Liver/Tumor/00003", "Liver/Tumor/3"), ("Liver/Tumor/00100", "Liver/Tumor/100")):
        for name in ("img.nii.gz", "label.nii.gz", "total.nii.gz", "type.json"):
            assert (out / rel / name).read_bytes() == FILES[f"{src}/{name}"]
    assert not (out / "Lung/Tumor/00002").exists() and not (out / "Kidney").exists()
    rows = read_manifest(out)
    assert [r["case_id"] for r in rows] == ["lung_tumor-00000", "lung_tumor-00001", "liver_tumor-00003", "liver_tumor-00100"]
    assert list(rows[0]) == list(MANIFEST_COLUMNS) and {r["status"] for r in rows} == {"ok"}
    assert rows[0]["img"] == "Lung/Tumor/00000/img.nii.gz" and rows[0]["template"] == f"{REPO_ID}@{SHA}"
    assert json.loads((out / "pasta_gen_30k.json").read_text())["revision"] == SHA
    got = [r for r in _Hub.requests if "/resolve/" in r and r.startswith("GET")]
    assert len(got) == 16

    _Hub.requests = []
    again = download_pasta_gen("lung_tumor,liver_tumor", 3, out, endpoint=hub, max_workers=1)
    assert again["downloaded"] == 2 and again["manifest_rows"] == 6  # the 3rd case of each type only
    fetched = sorted({r.split("/resolve/")[1].split("/", 1)[1].rsplit("/", 1)[0] for r in _Hub.requests if "/resolve/" in r and r.startswith("GET")})
    assert fetched == ["Liver/Tumor/200", "Lung/Tumor/2"]
    assert not list((out / ".hf").rglob("*.nii.gz"))  # every downloaded case moved into place


def test_too_few_cases_and_unknown_type(hub, tmp_path):
    with pytest.raises(SpecificationError, match="has 1 kidney_cyst cases"):
        download_pasta_gen("kidney_cyst", 2, tmp_path / "o", endpoint=hub)
    with pytest.raises(Exception, match="lung_tumour|lesion type"):
        download_pasta_gen("lung_tumour", 1, tmp_path / "o", endpoint=hub)


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"cannot download from https://huggingface.co/datasets/LWHYC/PASTA-Gen-30K .*Without network access"):
        download_pasta_gen("lung_tumor", 1, tmp_path / "o", endpoint=f"http://127.0.0.1:{port}")
    assert not (tmp_path / "o" / "manifest.csv").exists()


def test_cli_with_hf_endpoint_environment(hub, tmp_path):
    """The command as a user runs it, with HF_ENDPOINT (huggingface_hub's mirror setting) at the stand-in."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_ENDPOINT=hub, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf_home"))
    out = tmp_path / "pg"
    args = [sys.executable, "-m", "PASTALib", "data", "pasta-gen-30k", "--types", "liver_tumor", "--per-type", "1",
            "--out", str(out), "--progress-lines"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "PROGRESS 1.0000 1 cases in" in result.stdout and result.stdout.strip().endswith(f"1 cases (1 new) in {out}")
    assert (out / "Liver/Tumor/00003/img.nii.gz").read_bytes() == FILES["Liver/Tumor/3/img.nii.gz"]
    bad = subprocess.run(args[:-5] + ["--per-type", "0", "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "error: argument --per-type: must be an integer >= 1 (got '0')" in bad.stderr
