"""Draw the extension and module icons (128x128 PNG) with matplotlib.

Run from the repository root: ``python Resources/make_icons.py``. The motif is an axial
CT-like body outline with an organ and a lesion; PASTASynth adds a "spark" (synthesis).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, Ellipse, FancyBboxPatch, Polygon  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEAL, ORANGE, DARK, BONE = "#127a82", "#f28c28", "#1d2b36", "#e8e4da"


def _canvas():
    fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 128)
    ax.set_ylim(0, 128)
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((4, 4), 120, 120, boxstyle="round,pad=0,rounding_size=22", fc=DARK, ec="none"))
    ax.add_patch(Ellipse((64, 62), 100, 74, fc="#5b6b77", ec=BONE, lw=2.0))   # body
    ax.add_patch(Circle((64, 36), 7, fc=BONE, ec="none"))                    # vertebra
    ax.add_patch(Ellipse((44, 70), 40, 30, angle=-15, fc=TEAL, ec="none"))    # liver
    return fig, ax


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, transparent=True)
    plt.close(fig)


def main() -> None:
    fig, ax = _canvas()  # PASTA: segmented lesion with a contour
    ax.add_patch(Circle((50, 72), 9, fc=ORANGE, ec="white", lw=1.6))
    ax.add_patch(Ellipse((88, 66), 16, 20, fc="#7fb3c8", ec="none"))          # kidney/stomach
    _save(fig, ROOT / "PASTA" / "Resources" / "Icons" / "PASTA.png")

    fig, ax = _canvas()  # PASTASynth: lesion plus a four-point spark
    ax.add_patch(Circle((50, 72), 9, fc=ORANGE, ec="none", alpha=0.9))
    cx, cy, r, q = 94, 92, 20, 5
    ax.add_patch(Polygon([(cx, cy + r), (cx + q, cy + q), (cx + r, cy), (cx + q, cy - q), (cx, cy - r),
                          (cx - q, cy - q), (cx - r, cy), (cx - q, cy + q)], fc="white", ec="none"))
    _save(fig, ROOT / "PASTASynth" / "Resources" / "Icons" / "PASTASynth.png")

    fig, ax = _canvas()  # extension: both motifs + wordmark
    ax.add_patch(Circle((50, 72), 9, fc=ORANGE, ec="white", lw=1.6))
    ax.text(64, 10, "PASTA", ha="center", va="bottom", color="white", fontsize=13, fontweight="bold")
    _save(fig, ROOT / "Resources" / "Icons" / "SlicerPASTA.png")


if __name__ == "__main__":
    main()
