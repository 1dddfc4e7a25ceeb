"""Long jobs (PASTALib CLI commands, the modules' runners) as subprocesses, with progress and cancel.

:class:`BatchJob` runs a command in its own process group (``start_new_session=True``),
reads its output on a background thread into a queue, and :meth:`BatchJob.poll` hands the
parsed ``PROGRESS <fraction> <message>`` lines to a callback. The thread never touches Qt:
in Slicer the widget calls :meth:`poll` from a ``qt.QTimer`` on the GUI thread. Cancel
kills the whole process tree (``os.killpg``: the CLI and every child it started).

Pure Python: no Slicer, Qt or PASTALib import.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

_PROGRESS = re.compile(r"^PROGRESS\s+(?P<value>[0-9.]+)(?P<unit>%|/(?P<total>[0-9]+))?\s*(?P<message>.*)$")

#: Windows process creation flags (``subprocess`` defines them only on Windows): a new process
#: group, so that cancel can kill the tree, and no console window (Slicer's own launcher hides
#: it too: slicer.util.launchConsoleProcess, v5.12.3 Base/Python/slicer/util.py).
CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)

ProgressCallback = Callable[[float, str], None]
LineCallback = Callable[[str], None]


def parse_progress(line: str) -> tuple[float, str] | None:
    """``(fraction 0..1, message)`` from ``PROGRESS 0.4 msg`` / ``PROGRESS 40% msg`` / ``PROGRESS 4/10 msg``."""
    match = _PROGRESS.match(line.strip())
    if not match:
        return None
    try:
        value = float(match["value"])
    except ValueError:
        return None
    if match["unit"] == "%":
        value /= 100.0
    elif match["total"]:
        value /= max(float(match["total"]), 1.0)
    return min(max(value, 0.0), 1.0), match["message"].strip()


def popen_platform_kwargs(os_name: str | None = None) -> dict:
    """Popen keyword arguments per platform: own process group (cancel kills the whole tree);
    on Windows also no console window per subprocess."""
    if (os_name or os.name) == "nt":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def pastalib_env(env: dict | None = None, packages: Sequence[str] = ()) -> dict:
    """Environment where ``python -m PASTALib`` and ``python -m <package>.<runner>`` find this
    PASTALib, PASTASlicerLib and ``packages`` (their folders prepended to PYTHONPATH). Installed,
    all of them sit in Slicer's qt-scripted-modules folder; in a source tree the module helper
    packages (PASTASynthLib, PASTALogicLib) sit in their module's folder."""
    env = dict(os.environ if env is None else env)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    roots = []
    for package in ("PASTALib", *packages):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            roots.append(str(Path(spec.origin).resolve().parents[1]))
    roots.append(str(Path(__file__).resolve().parents[1]))  # the folder holding PASTASlicerLib
    for root in dict.fromkeys(reversed(roots)):
        if root not in parts:
            parts.insert(0, root)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def python_executable() -> str:
    """The Python that runs the CLI: Slicer's ``PythonSlicer`` inside Slicer (its
    ``sys.executable`` is the application), else this interpreter."""
    import shutil

    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def nodes_in_scene(scene, *nodes) -> bool:
    """True when every node is still in ``scene``. A job's finish handler checks the nodes it
    writes into: closing the scene (or deleting the CT) while the job ran leaves them detached,
    and touching them then would raise or write into nothing."""
    if scene is None:
        return False
    for node in nodes:
        if node is None or node.GetScene() is not scene or not scene.IsNodePresent(node):
            return False
    return True


def cli_command(*args: str, python: str | None = None) -> list[str]:
    """``[python, -m, PASTALib, *args]``."""
    return [python or python_executable(), "-m", "PASTALib", *map(str, args)]


class BatchJob:
    """One subprocess with streamed progress; start(), poll() periodically, cancel().

    States: ``"idle"`` -> ``"running"`` -> ``"finished"`` | ``"failed"`` | ``"cancelled"``.
    """

    def __init__(self, command: Sequence[str], *, on_progress: ProgressCallback | None = None,
                 on_line: LineCallback | None = None, cwd: str | os.PathLike | None = None,
                 env: dict | None = None, keep_lines: int = 200):
        self.command = [str(c) for c in command]
        self.on_progress = on_progress
        self.on_line = on_line
        self.cwd = cwd
        # ``python -m package.runner``: the runner's package must be found too
        runner = self.command[self.command.index("-m") + 1] if "-m" in self.command[:-1] else None
        self.env = pastalib_env(env, () if runner is None else (runner.partition(".")[0],))
        self.process: subprocess.Popen | None = None
        self.fraction = 0.0
        self.message = ""
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._cancelled = False
        self._eof = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> BatchJob:
        if self.process is not None:
            raise RuntimeError("This job was already started")
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", bufsize=1, cwd=self.cwd, env=self.env,
            **popen_platform_kwargs())
        self._reader = threading.Thread(target=self._read, name="pasta-batch-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\r\n"))
        self._queue.put(None)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and (self.process.poll() is None or not self._eof)

    @property
    def state(self) -> str:
        if self.process is None:
            return "idle"
        if self._cancelled:
            return "cancelled"
        if self.running:
            return "running"
        return "finished" if self.process.returncode == 0 else "failed"

    def poll(self) -> str:
        """Deliver queued output to the callbacks (call on the GUI thread); returns the state."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                if self.process is not None:
                    self.process.wait()
                break
            self.lines.append(line)
            progress = parse_progress(line)
            if progress is not None:
                self.fraction, self.message = progress
                if self.on_progress is not None:
                    self.on_progress(*progress)
            elif self.on_line is not None:
                self.on_line(line)
        return self.state

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until the job ends (tests and the Python console; the GUI uses a QTimer)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == "running":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(self.command[:5])}... still running after {timeout} s")
            time.sleep(interval)
        return self.state

    def cancel(self, grace: float = 3.0) -> None:
        """Terminate the process and all its children (SIGTERM, then SIGKILL after ``grace`` s).

        Children left behind by a process that already ended are killed too (same group).
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            self._cancelled = True
        if os.name == "posix":
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            # Children that ignored SIGTERM (or outlived the parent) go too.
            self._signal_group(signal.SIGKILL)
        elif self.process.poll() is None:  # Windows: taskkill /T kills the tree
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, check=False,
                           creationflags=CREATE_NO_WINDOW)
        self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=grace)
        self.poll()

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)  # pgid == pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    @property
    def output_tail(self) -> str:
        return "\n".join(self.lines)
