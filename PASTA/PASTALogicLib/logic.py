"""SegmentationReportLogic: MRML side of PASTA segmentation, reports and few-shot data.

Whole-CT inference and fine-tuning are long jobs: the widget runs them as a subprocess of
the library CLI (``python -m PASTALib.cli.main ...``) and reads ``PROGRESS`` lines with
:func:`parse_progress`. Everything else (importing predictions, exporting annotated
training cases) happens here on nodes of the injected scene.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from PASTASynthLib import mrml
from PASTASynthLib.mrml import MRMLLogicBase

#: Name of the manifest the fine-tuning command reads in a few-shot training folder.
FEWSHOT_MANIFEST = "pasta_fewshot.json"

_PROGRESS = re.compile(r"^PROGRESS\s+(?P<value>[0-9.]+)(?P<unit>%|/(?P<total>[0-9]+))?\s*(?P<message>.*)$")


def parse_progress(line: str) -> tuple[float, str] | None:
    """``(fraction 0..1, message)`` from a CLI line ``PROGRESS 0.4 msg`` / ``40%`` / ``4/10``."""
    match = _PROGRESS.match(line.strip())
    if not match:
        return None
    value = float(match["value"])
    if match["unit"] == "%":
        value /= 100.0
    elif match["total"]:
        value /= max(float(match["total"]), 1.0)
    return min(max(value, 0.0), 1.0), match["message"].strip()


def cli_command(subcommand: str, *args: str, python: str | None = None) -> list[str]:
    """Argument list running the PASTALib CLI with Slicer's (or this) Python."""
    return [python or sys.executable, "-m", "PASTALib.cli.main", subcommand, *map(str, args)]


class SegmentationReportLogic(MRMLLogicBase):
    """Load CTs, import PASTA predictions as segments, export few-shot training cases."""

    def load_ct(self, path: str | os.PathLike, name: str | None = None):
        return mrml.load_volume(self.context, path, name)

    def import_prediction(self, label_map, ct_node, names: Mapping[int, str],
                          colors: Mapping[int, Sequence[float]] | None = None,
                          name: str | None = None):
        """Segmentation node from a predicted label map (file path, SimpleITK or numpy)."""
        if isinstance(label_map, (str, os.PathLike)):
            import SimpleITK as sitk

            label_map = sitk.ReadImage(os.fspath(label_map))
        return mrml.segmentation_from_label_map(self.context, label_map, ct_node, names, colors,
                                                name or f"{ct_node.GetName()} PASTA")

    @staticmethod
    def save_reports(reports: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
        """Write the per-lesion structured reports as JSON (UTF-8, stable key order)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(list(reports), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    # -- few-shot training cases --------------------------------------------------------

    def export_training_case(self, ct_node, segmentation_node, folder: str | os.PathLike,
                             case_id: str, label_values: Mapping[str, int]) -> dict:
        """Write one annotated case for fine-tuning and record it in the folder manifest.

        Layout (nnU-Net style, what ``pasta finetune`` reads): ``imagesTr/<case>_0000.nii.gz``,
        ``labelsTr/<case>.nii.gz`` on the CT grid, segment named ``n`` -> ``label_values[n]``,
        and ``pasta_fewshot.json`` listing cases and the label names.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", case_id):
            raise ValueError(f"Case id {case_id!r} may only use letters, digits, '_', '-', '.'")
        import SimpleITK as sitk

        from PASTASynthLib.logic import SynthesisLogic

        names = mrml.segment_names(segmentation_node)
        unknown = sorted(set(names) - set(label_values))
        if unknown:
            raise ValueError(f"No label value for segment(s) {unknown}; known: {sorted(label_values)}")
        folder = Path(folder)
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        image_path = folder / "imagesTr" / f"{case_id}_0000.nii.gz"
        label_path = folder / "labelsTr" / f"{case_id}.nii.gz"
        synth_logic = SynthesisLogic(context=self.context)
        sitk.WriteImage(mrml.volume_to_sitk(ct_node), str(image_path), True)
        labels = synth_logic.segmentation_to_sitk(segmentation_node, ct_node, label_values)
        sitk.WriteImage(labels, str(label_path), True)

        manifest = self.read_manifest(folder)
        manifest["labels"] = {**manifest.get("labels", {}), **{n: int(v) for n, v in label_values.items()}}
        cases = [c for c in manifest.get("cases", []) if c["id"] != case_id]
        entry = {"id": case_id, "image": str(image_path.relative_to(folder)),
                 "label": str(label_path.relative_to(folder)), "segments": names}
        manifest["cases"] = cases + [entry]
        (folder / FEWSHOT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return entry

    @staticmethod
    def read_manifest(folder: str | os.PathLike) -> dict:
        path = Path(folder) / FEWSHOT_MANIFEST
        if not path.is_file():
            return {"format": "pasta-fewshot/1", "labels": {}, "cases": []}
        return json.loads(path.read_text(encoding="utf-8"))

    def list_training_cases(self, folder: str | os.PathLike) -> list[str]:
        return [c["id"] for c in self.read_manifest(folder).get("cases", [])]
