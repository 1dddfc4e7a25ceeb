"""README screenshots (scripts/make_screenshots.py): the module panel rendered from its real .ui
beside VTK views of a real synthesized lesion.

Each check runs the script in a subprocess (a QApplication must not leak into other tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_screenshots.py"
PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("PySide6")
pytest.importorskip("vtk")


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def test_synthesis_panel_screenshot(tmp_path, ts_data):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_screenshots as ms
    finally:
        sys.path.remove(str(REPO / "scripts"))
    proc = _run([str(SCRIPT), "--panel", "synthesis", "--out-dir", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / ms.PANELS["synthesis"]
    assert path.is_file() and path.stat().st_size <= ms.MAX_BYTES
    rgb = np.asarray(PIL.open(path).convert("RGB")).astype(float)
    height, width, _ = rgb.shape
    assert width == ms.WIDTH and ms.MIN_HEIGHT <= height <= ms.MAX_HEIGHT

    panel = rgb[:, : ms.PANEL_WIDTH - 10].mean(axis=2)
    views = rgb[:, ms.PANEL_WIDTH + 10:]
    # The panel: a light Qt background with text and widgets drawn on it (an empty or failed .ui
    # would leave a blank column: the .ui alone has ~40 labelled widgets).
    assert np.median(panel) > 200, "panel background is not the light Qt window colour"
    dark = (panel < 110).mean()
    assert 0.01 < dark < 0.25, f"panel text coverage {dark:.3f}"
    rows_with_text = ((panel < 110).sum(axis=1) > 3).mean()
    assert rows_with_text > 0.3, f"only {rows_with_text:.2f} of the panel rows hold text"

    # The views: CT slices (many grey levels), the liver tumour segment in red, the 3D view's
    # blue gradient background; an empty render would be uniform.
    grey = views.mean(axis=2)
    assert grey.std() > 40 and len(np.unique(grey.round())) > 60
    r, g, b = views[..., 0], views[..., 1], views[..., 2]
    lesion = (r > 150) & (g < 90) & (b < 90)
    assert lesion.sum() > 200, f"{lesion.sum()} lesion-red pixels in the views"
    top_right = views[20: height // 2 - 10, views.shape[1] // 2 + 10:]
    blueish = (top_right[..., 2] > top_right[..., 0] + 25).mean()
    assert blueish > 0.3, f"3D view background: {blueish:.2f} blue pixels"


_LOAD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import make_screenshots as ms
ms._qt()
widget, ui = ms.load_ui(ms.Path(sys.argv[2]))
print(json.dumps({name: [type(w).__name__, w.getText() if hasattr(w, "getText") else w.getValue(),
                         w.isCollapsed() if hasattr(w, "isCollapsed") else None]
                  for name, w in ui.items() if type(w).__name__ in ("CollapsibleButton", "SliderWidget")}))
"""


def _expected(ui: Path) -> dict:
    """What the .ui XML says for every collapsible button (text, collapsed) and slider widget (value)."""
    out = {}
    for w in ET.parse(ui).getroot().iter("widget"):
        props = {p.get("name"): p for p in w.findall("property")}
        if w.get("class") == "ctkCollapsibleButton":
            collapsed = props.get("collapsed") is not None and props["collapsed"].findtext("bool") == "true"
            out[w.get("name")] = ["CollapsibleButton", props["text"].findtext("string"), collapsed]
        elif w.get("class") == "ctkSliderWidget":
            out[w.get("name")] = ["SliderWidget", float(props["value"].findtext("double")), None]
    return out


def test_ui_loads_with_stand_ins_and_broken_ui_fails(tmp_path):
    """Slicer classes become stand-ins carrying the .ui's values; a broken .ui stops the script."""
    ui = REPO / "PASTASynth" / "Resources" / "UI" / "PASTASynth.ui"
    proc = _run(["-c", _LOAD, str(REPO / "scripts"), str(ui)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = _expected(ui)
    assert any(v[0] == "SliderWidget" for v in expected.values()) and any(v[2] for v in expected.values())
    assert loaded == expected
    broken = tmp_path / "PASTASynth.ui"
    broken.write_text(ui.read_text(encoding="utf-8").replace("</widget>", "", 1), encoding="utf-8")
    proc = _run(["-c", _LOAD, str(REPO / "scripts"), str(broken)])
    assert proc.returncode != 0 and "error: PASTASynth.ui" in proc.stderr, proc.stderr[-2000:]
