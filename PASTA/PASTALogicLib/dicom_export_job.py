"""DICOM SEG + SR export in its own process (Slicer 5.10: pydicom 3 without replacing Slicer's).

Slicer 5.10 bundles pydicom 2.4.4; PASTALib's export needs highdicom >= 0.23, which needs
pydicom >= 3. The PASTA panel writes the export inputs (:meth:`SegmentationReportLogic.
dicom_export_inputs`: labels and instances as NRRD, the cards as JSON) and runs
``python -m PASTALogicLib.dicom_export_job`` with PythonSlicer and a PYTHONPATH that starts with
the private folder holding pydicom 3.0.2 / highdicom 0.27.0 (PASTALib.requirements.private_site,
filled by 'Install dependencies'). Prints ``PROGRESS`` lines, ``error: ...`` on a refused input,
and the written files as one JSON line ``RESULT {...}``.

No Slicer or Qt import.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

MODULE = "PASTALogicLib.dicom_export_job"


def write_inputs(work_dir: str | os.PathLike, labels, instances, lesions, source) -> dict[str, str]:
    """Write what :func:`main` reads; returns its arguments (``--labels`` ... ``--source``)."""
    import SimpleITK as sitk

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    paths = {"labels": work / "labels.nrrd", "instances": work / "instances.nrrd", "lesions": work / "lesions.json"}
    sitk.WriteImage(labels, str(paths["labels"]), True)
    sitk.WriteImage(instances, str(paths["instances"]), True)
    paths["lesions"].write_text(json.dumps(list(lesions), ensure_ascii=False), encoding="utf-8")
    return {**{k: str(v) for k, v in paths.items()}, "source": os.fspath(source)}


def command(inputs: dict[str, str], out_dir: str | os.PathLike, python: str | None = None) -> list[str]:
    from PASTASlicerLib.jobs import python_executable

    args = [python or python_executable(), "-m", MODULE]
    for key in ("labels", "instances", "lesions", "source"):
        args += [f"--{key}", inputs[key]]
    return args + ["--out", os.fspath(out_dir)]


def environment(private_site: str | None, env: dict | None = None) -> dict:
    """The job's environment: PASTALib and the helper packages found, ``private_site`` first."""
    from PASTASlicerLib.jobs import pastalib_env

    env = pastalib_env(env, ("PASTALogicLib",))
    if private_site:
        env["PYTHONPATH"] = os.pathsep.join([private_site, env["PYTHONPATH"]])
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    for key in ("labels", "instances", "lesions", "source", "out"):
        parser.add_argument(f"--{key}", required=True)
    args = parser.parse_args(argv)
    import pydicom

    if int(pydicom.__version__.split(".")[0]) < 3:  # checked first: highdicom would fail to import
        print(f"error: the DICOM export needs pydicom 3 (found {pydicom.__version__} from {pydicom.__file__}); "
              "click 'Install dependencies' in the PASTA module.", file=sys.stderr)
        return 2
    print("PROGRESS 0.1 Reading the export inputs", flush=True)
    import highdicom

    from PASTALib.errors import PastaError
    from PASTALib.io import read_image

    from .logic import write_dicom_export

    try:
        lesions = json.loads(Path(args.lesions).read_text(encoding="utf-8"))
        print(f"PROGRESS 0.3 Writing DICOM SEG + SR (highdicom {highdicom.__version__})", flush=True)
        files = write_dicom_export(read_image(args.labels), read_image(args.instances), lesions,
                                   args.source, args.out)
    except PastaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("RESULT " + json.dumps({k: str(v) for k, v in files.items()}), flush=True)
    print("PROGRESS 1.0 DICOM SEG + SR written", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
