"""Scenario checks run by pytest (slicer-core) and by PASTASynthTest.runTest (in Slicer).

Each scenario takes an :class:`~PASTASlicerLib.mrml.MRMLContext` and file paths, raises
``AssertionError`` with a clear message on failure and returns what it built.
:func:`make_synthetic_abdomen` writes a small CT + organ labels so the scenarios also run
where no test data is installed (inside Slicer); the MRML-layer scenarios are in
``PASTASlicerLib.scenarios``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from PASTASlicerLib import mrml
from PASTASlicerLib import scenarios as slicer_scenarios
from PASTASlicerLib.mrml import LPS_TO_RAS, MRMLContext

from .logic import SynthesisLogic


def run_all(ctx: MRMLContext, work_dir, ct_path=None, label_path=None, names=None) -> None:
    """Every scenario (the shared MRML layer's first); synthetic data unless a CT + label map are given."""
    work_dir = Path(work_dir)
    slicer_scenarios.run_all(ctx, work_dir, ct_path, label_path, names)
    abdomen = make_synthetic_abdomen(work_dir / "abdomen")
    run_synthesis(ctx, *abdomen, work_dir)


# ---------------------------------------------------------------------------------------
# Lesion synthesis through the logic (PASTA-Gen panel)
# ---------------------------------------------------------------------------------------

#: TotalSegmentator "total" ids of the synthetic abdomen (and of the real-data test subset).
TOTALSEG_SYNTH_ORGANS = {5: "liver", 2: "kidney_right", 3: "kidney_left", 52: "aorta",
                         63: "inferior_vena_cava", 31: "vertebrae_L1"}


def make_synthetic_abdomen(folder: str | os.PathLike) -> tuple[Path, Path, dict[int, str]]:
    """Write a small contrast-enhanced abdomen (``abdomen_ct.nii.gz``) with TotalSegmentator
    ids (``abdomen_labels.nii.gz``): liver, kidneys, aorta, IVC, a vertebra; slightly oblique,
    anisotropic. Big enough to hold a liver tumour and a kidney cyst (runs inside Slicer
    where no test data is installed)."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    shape = (40, 80, 96)  # k, j, i
    spacing = np.array([1.6, 1.6, 2.5])  # i, j, k
    kk, jj, ii = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)

    def ellipsoid(ci, cj, ck, ri, rj, rk):  # centre in voxels, radii in mm
        return (((ii - ci) * spacing[0] / ri) ** 2 + ((jj - cj) * spacing[1] / rj) ** 2
                + ((kk - ck) * spacing[2] / rk) ** 2) <= 1.0

    labels = np.zeros(shape, np.uint8)
    body = (((ii - 48) / 46) ** 2 + ((jj - 40) / 37) ** 2) <= 1.0
    ct = np.where(body, -90.0, -1000.0)
    organs = [  # (value, mask, HU)
        (5, ellipsoid(30, 30, 22, 45, 36, 42), 105.0),
        (2, ellipsoid(33, 58, 15, 22, 20, 32), 170.0),
        (3, ellipsoid(66, 58, 15, 22, 20, 32), 170.0),
        (52, (((ii - 52) * 1.6) ** 2 + ((jj - 50) * 1.6) ** 2) <= 8.0 ** 2, 210.0),
        (63, (((ii - 43) * 1.6) ** 2 + ((jj - 49) * 1.6) ** 2) <= 7.0 ** 2, 170.0),
        (31, ellipsoid(52, 66, 20, 16, 12, 40), 350.0),
    ]
    for value, mask, hu in organs:
        labels[mask] = value
        ct[mask] = hu
    ct = (ct + rng.normal(0, 10, shape)).round().astype(np.int16)
    angle = np.deg2rad(8)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    paths = []
    for array, name in ((ct, "abdomen_ct.nii.gz"), (labels, "abdomen_labels.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing.tolist())
        image.SetOrigin((-75.0, -60.0, -40.0))
        image.SetDirection(direction.ravel().tolist())
        path = folder / name
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths[0], paths[1], dict(TOTALSEG_SYNTH_ORGANS)


def organ_point_ras(label_path, value: int) -> tuple[float, float, float]:
    """RAS of the voxel deepest inside label ``value`` (a markups point "inside the organ")."""
    import SimpleITK as sitk
    from scipy import ndimage

    image = sitk.ReadImage(str(label_path))
    mask = sitk.GetArrayFromImage(image) == value
    assert mask.any(), f"label {value} is not in {label_path}"
    # Padded: the image border counts as outside (an organ cut by the field of view).
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=tuple(reversed(image.GetSpacing())))[1:-1, 1:-1, 1:-1]
    k, j, i = np.unravel_index(int(np.argmax(depth)), mask.shape)
    lps = image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
    return (-lps[0], -lps[1], lps[2])


def load_case(ctx: MRMLContext, ct_path, label_path, names: dict[int, str], name: str = "CT"):
    """CT volume node + organ segmentation node (one segment per listed label value)."""
    import SimpleITK as sitk

    logic = SynthesisLogic(context=ctx)
    ct = logic.load_ct(ct_path, name)
    segmentation = mrml.segmentation_from_label_map(ctx, sitk.ReadImage(str(label_path)), ct, names,
                                                     name=f"{name} organs")
    return ct, segmentation


def add_point(ctx: MRMLContext, ras, name: str = "Lesion centre"):
    node = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.AddControlPoint(*[float(v) for v in ras])
    return node


def _mtimes(node) -> tuple[int, int]:
    return node.GetMTime(), node.GetImageData().GetMTime()


def _segment_points_lps(ctx: MRMLContext, segmentation, segment_id: str, volume) -> tuple[np.ndarray, np.ndarray]:
    """(LPS mm of the segment's voxel centres, one voxel's LPS extent)."""
    mask = mrml.segment_mask(ctx, segmentation, segment_id, volume)
    kji = np.argwhere(mask)
    ijk1 = np.c_[kji[:, ::-1], np.ones(len(kji))]
    m = mrml.ijk_to_ras_matrix(volume)
    ras = ijk1 @ m[:3].T
    lps = ras * np.array([-1.0, -1.0, 1.0])
    voxel_extent = np.abs(LPS_TO_RAS @ m[:3, :3]).sum(axis=1)
    return lps, voxel_extent


def scenario_synthesize(ctx: MRMLContext, ct_node, segmentation, lesion_type: str, *,
                        location=None, size_mm=None, seed: int = 0, expect_type_name: str,
                        expect_organ_name: str, expect_code: str):
    """Apply one synthesis through the logic and check every output against the library.

    New volume on the input grid, input untouched (voxels and MTime), changes only inside
    the lesion's box, segments named + coloured with SNOMED CT terminology, lesion voxels
    equal to the library's label, report node schema-valid with location/size matching the
    segment.
    """
    import json

    import SimpleITK as sitk

    from PASTALib.report.schema import validate_report

    logic = SynthesisLogic(context=ctx)
    before = mrml.array_from_volume(ct_node)
    mtimes = _mtimes(ct_node)
    nodes_before = ctx.scene.GetNumberOfNodes()
    spec = {"lesion_type": lesion_type, "seed": seed}
    if size_mm is not None:
        spec["size_mm"] = list(size_mm)
    out = logic.synthesize(ct_node, segmentation, spec, location)

    # Input never modified.
    assert _mtimes(ct_node) == mtimes, "the input CT node was modified (MTime changed)"
    assert np.array_equal(mrml.array_from_volume(ct_node), before), "the input CT voxels changed"
    # New volume, same grid.
    volume = out.volume_node
    assert volume is not ct_node and volume.GetScene() is ctx.scene
    assert volume.GetName() == f"{ct_node.GetName()} + {expect_type_name}", volume.GetName()
    assert np.allclose(mrml.ijk_to_ras_matrix(volume), mrml.ijk_to_ras_matrix(ct_node), atol=1e-6), "IJKToRAS differs"
    after = mrml.array_from_volume(volume)
    assert after.shape == before.shape and after.dtype == before.dtype
    changed = after != before
    assert changed.any(), "the new volume equals the input (no lesion)"
    (x0, x1), (y0, y1), (z0, z1) = out.result.changed_box
    outside = changed.copy()
    outside[z0:z1, y0:y1, x0:x1] = False
    assert not outside.any(), f"{int(outside.sum())} voxels changed outside the lesion's neighbourhood"

    # Segments: named, coloured, terminology.
    seg = out.segmentation_node.GetSegmentation()
    assert sorted(mrml.segment_names(out.segmentation_node)) == sorted([expect_organ_name, expect_type_name])
    lesion_segment = seg.GetSegment(out.lesion_segment_id)
    organ_segment = seg.GetSegment(out.organ_segment_id)
    assert lesion_segment.GetName() == expect_type_name and organ_segment.GetName() == expect_organ_name
    lesion_term, organ_term = lesion_segment.GetTerminology(), organ_segment.GetTerminology()
    assert "SCT^49755003^Morphologically Altered Structure" in lesion_term, lesion_term
    assert expect_code in lesion_term, f"{expect_code} not in {lesion_term}"
    assert "SCT^123037004^Anatomical Structure" in organ_term, organ_term
    organ_code = mrml.terminology_for(expect_organ_name)[1]
    assert "^".join(organ_code) in organ_term and "^".join(organ_code) in lesion_term, "organ / region code"
    for segment, name in ((lesion_segment, expect_type_name), (organ_segment, expect_organ_name)):
        expected_rgb = np.array(mrml.color_for(name)) / 255.0
        assert np.allclose(segment.GetColor(), expected_rgb, atol=1e-3), f"{name} colour {segment.GetColor()}"

    # Lesion voxels == library label.
    labels = sitk.GetArrayFromImage(out.result.labels)
    lesion_value = int(out.result.report.label_value)
    counts = mrml.segment_voxel_counts(ctx, out.segmentation_node, volume)
    assert counts[expect_type_name] == int(np.count_nonzero(labels == lesion_value)), (
        f"lesion segment {counts[expect_type_name]} voxels, library label {int(np.count_nonzero(labels == lesion_value))}")
    organ_value = int(mrml_organ_value(lesion_value))
    assert counts[expect_organ_name] == int(np.count_nonzero(labels == organ_value)), "organ segment voxel count"

    # Report node: referenced, schema-valid, matches the segment.
    report_node = out.segmentation_node.GetNodeReference("PASTAReport")
    assert report_node is not None and report_node is out.report_node, "report node not referenced"
    assert out.volume_node.GetNodeReference("PASTAReport") is report_node
    report = json.loads(report_node.GetText())
    validate_report(report)
    assert report == json.loads(json.dumps(out.report)), "report node JSON differs from the returned report"
    assert report_node.GetAttribute("PASTA.ReportText") == report["text"]
    points, voxel_extent = _segment_points_lps(ctx, out.segmentation_node, out.lesion_segment_id, volume)
    centre = points.mean(axis=0)
    assert np.allclose(centre, report["centre_mm"], atol=0.05), f"report centre {report['centre_mm']} vs segment {centre}"
    extents = points.max(axis=0) - points.min(axis=0) + voxel_extent
    zxy = np.array([extents[2], extents[0], extents[1]])
    assert np.all(np.abs(zxy - np.array(report["size_zxy_mm"])) <= 0.51), f"size {report['size_zxy_mm']} vs segment {zxy}"
    if location is not None:
        lps = logic.location_lps(location)
        assert np.linalg.norm(np.array(lps) - centre) <= max(extents) / 2, "lesion not at the requested point"
    assert ctx.scene.GetNumberOfNodes() > nodes_before
    return out


def mrml_organ_value(lesion_value: int) -> int:
    from PASTALib.labels import LesionType

    return int(LesionType(lesion_value).organ)


def scenario_errors_leave_scene_unchanged(ctx: MRMLContext, ct_node, segmentation, *, inside_ras,
                                          missing_type: str = "pancreas_tumor") -> list[str]:
    """Invalid requests raise PastaError with a message and add/modify nothing."""
    from PASTALib.errors import (
        AnatomyError,
        LesionFitError,
        PastaError,
        SpecificationError,
    )

    logic = SynthesisLogic(context=ctx)
    outside = add_point(ctx, (float(inside_ras[0]) + 400.0, float(inside_ras[1]), float(inside_ras[2])), "far away")
    inside = add_point(ctx, inside_ras, "inside")
    requests = [
        ({"lesion_type": "liver_tumor", "shape": "Wall thickening"}, None, SpecificationError, "not possible"),
        ({"lesion_type": "liver_tumor", "density": "Glowing"}, None, SpecificationError, "Allowed values"),
        ({"lesion_type": "liver_cyst", "invasion": True}, None, SpecificationError, "benign"),
        ({"lesion_type": "liver_tumor", "size_mm": [30, 30, 30]}, outside, LesionFitError, "outside the liver"),
        ({"lesion_type": "liver_tumor", "size_mm": [119, 119, 119]}, inside, LesionFitError, "does not fit"),
        ({"lesion_type": missing_type}, None, AnatomyError, "not found"),
        ({"lesion_type": "liver_tumor", "size_mm": [500, 500, 500]}, inside, SpecificationError, "out of range"),
    ]
    messages = []
    before_nodes = ctx.scene.GetNumberOfNodes()
    ids_before = [ctx.scene.GetNthNode(i).GetID() for i in range(before_nodes)]
    mtimes = _mtimes(ct_node)
    for spec, location, error, needle in requests:
        for call in (logic.synthesize, logic.preview):
            try:
                call(ct_node, segmentation, spec, location)
            except PastaError as exc:
                assert isinstance(exc, error), f"{spec}: {type(exc).__name__} ({exc}), expected {error.__name__}"
                assert str(exc) and needle in str(exc), f"{spec}: unclear message {exc!r}"
                messages.append(str(exc))
            else:
                raise AssertionError(f"{spec} at {location}: no error")
            assert ctx.scene.GetNumberOfNodes() == before_nodes, f"{spec}: the scene changed"
    assert [ctx.scene.GetNthNode(i).GetID() for i in range(before_nodes)] == ids_before
    assert _mtimes(ct_node) == mtimes, "the input CT node was modified"
    ctx.remove_node(outside)
    ctx.remove_node(inside)
    return messages


def scenario_preview_apply_undo(ctx: MRMLContext, ct_node, segmentation, location=None) -> None:
    """Preview = one crop volume, replaced per call, removed on Apply; Undo removes outputs."""
    from PASTALib.report.schema import validate_report

    logic = SynthesisLogic(context=ctx)
    n0 = ctx.scene.GetNumberOfNodes()
    spec = {"lesion_type": "liver_cyst", "seed": 3}
    first = logic.preview(ct_node, segmentation, spec, location)
    validate_report(first.report)
    n1 = ctx.scene.GetNumberOfNodes()
    assert n1 > n0 and logic.preview_node() is first.volume_node
    crop = mrml.array_from_volume(first.volume_node)
    (x0, x1), (y0, y1), (z0, z1) = first.box
    assert crop.shape == (z1 - z0, y1 - y0, x1 - x0), f"preview is not the changed crop: {crop.shape}"
    assert crop.size < mrml.array_from_volume(ct_node).size
    # The crop sits exactly where it came from: its IJK origin maps to voxel (x0, y0, z0).
    m_in, m_crop = mrml.ijk_to_ras_matrix(ct_node), mrml.ijk_to_ras_matrix(first.volume_node)
    assert np.allclose(m_crop[:3, 3], (m_in @ [x0, y0, z0, 1])[:3], atol=1e-4), "preview crop misplaced"
    second = logic.preview(ct_node, segmentation, dict(spec, seed=4), location)
    assert ctx.scene.GetNumberOfNodes() == n1, "preview was not replaced"
    assert second.volume_node is first.volume_node
    logic.clear_preview()  # Cancel
    assert ctx.scene.GetNumberOfNodes() == n0 and logic.preview_node() is None
    logic.preview(ct_node, segmentation, spec, location)
    out = logic.synthesize(ct_node, segmentation, spec, location)  # Apply removes the preview
    assert logic.preview_node() is None
    assert ctx.scene.GetNumberOfNodes() > n0
    logic.remove_outputs(out)  # Undo
    assert ctx.scene.GetNumberOfNodes() == n0, "Undo left nodes behind"


def scenario_batch_job_cancel(work_dir) -> None:
    """BatchJob streams PROGRESS lines to a callback; cancel kills the process tree."""
    import sys
    import time

    from PASTASlicerLib.jobs import BatchJob, parse_progress

    assert parse_progress("PROGRESS 0.25 loading") == (0.25, "loading")
    assert parse_progress("PROGRESS 40% inference") == (0.4, "inference")
    assert parse_progress("PROGRESS 3/4 case") == (0.75, "case")
    assert parse_progress("loss 0.3") is None

    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('CHILD', child.pid, flush=True)\n"
        "for i in range(1, 4):\n"
        "    print(f'PROGRESS {i / 10} case {i}', flush=True)\n"
        "print('not a progress line', flush=True)\n"
        "time.sleep(60)\n"
    )
    seen: list[tuple[float, str]] = []
    other: list[str] = []
    job = BatchJob([sys.executable, "-c", script], on_progress=lambda f, m: seen.append((f, m)),
                   on_line=other.append, cwd=work_dir).start()
    deadline = time.monotonic() + 30
    while not any("not a progress" in line for line in other):
        assert job.poll() == "running", f"stand-in job ended early: {job.output_tail}"
        assert time.monotonic() < deadline, f"no output from the stand-in job: {job.output_tail}"
        time.sleep(0.05)
    assert seen == [(0.1, "case 1"), (0.2, "case 2"), (0.3, "case 3")], seen
    assert job.fraction == 0.3 and job.message == "case 3"
    child = int(next(line.split()[1] for line in other if line.startswith("CHILD")))
    parent = job.pid
    job.cancel(grace=2.0)
    assert job.state == "cancelled" and not job.running
    for pid in (parent, child):
        assert _gone(pid), f"process {pid} survived cancel"


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True when ``pid`` no longer runs (a zombie awaiting its reaper counts as gone)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    return False


def run_synthesis(ctx: MRMLContext, ct_path, label_path, names: dict[int, str], work_dir) -> None:
    """Every synthesis scenario on one case (liver tumour at a point, kidney cyst sampled)."""
    ct, segmentation = load_case(ctx, ct_path, label_path, names)
    liver_value = next(v for v, n in names.items() if n == "liver")
    liver_ras = organ_point_ras(label_path, liver_value)
    point = add_point(ctx, liver_ras)
    scenario_synthesize(ctx, ct, segmentation, "liver_tumor", location=point, size_mm=(24, 22, 26), seed=1,
                        expect_type_name="Liver tumor", expect_organ_name="Liver", expect_code="SCT^108369006^Neoplasm")
    scenario_synthesize(ctx, ct, segmentation, "kidney_cyst", seed=2, expect_type_name="Kidney cyst",
                        expect_organ_name="Kidney", expect_code="SCT^441457006^Cyst")
    scenario_errors_leave_scene_unchanged(ctx, ct, segmentation, inside_ras=liver_ras)
    scenario_preview_apply_undo(ctx, ct, segmentation, point)
    if os.name == "posix":
        scenario_batch_job_cancel(work_dir)


# ---------------------------------------------------------------------------------------
# Blinded reader study panel (ReaderStudyLogic)
# ---------------------------------------------------------------------------------------

#: A report whose five attributes the readers rate (both origins get one: no origin leak).
READER_STUDY_REPORT = {"shape": "Irregular", "density": "Hyperdense", "heterogeneity": "Heterogeneous",
                       "surface": "Ill-defined margin", "invasion": "Close relationship with adjacent structures"}


def make_tiny_study(root, n: int = 3, *, allow_changes: bool = False, readers=("reader A",), seed: int = 5):
    """A 2n-case lung-tumour study on small synthetic volumes (fast; runs inside Slicer too).

    Real cases are ``real_<i>.nrrd`` files, synthetic ones synthesizer folders (``ct.nii.gz``,
    ``label.nii.gz``, ``report.json``), so the origin shows in every source path: the blinding
    checks look for exactly these. Returns ``(study_dir, key_dir)``.
    """
    import json

    import SimpleITK as sitk

    from PASTALib.review import StudySettings, add_reader, create_study, real_case, synthetic_case

    root = Path(root)
    sources = root / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    real, synthetic = [], []
    for i in range(2 * n):
        hu = rng.normal(-800, 30, (20, 24, 24)).astype(np.int16)
        lo = rng.integers(6, 10, 3)
        hu[lo[0]:lo[0] + 5, lo[1]:lo[1] + 6, lo[2]:lo[2] + 5] += 850
        mask = np.zeros(hu.shape, np.uint8)
        mask[lo[0]:lo[0] + 5, lo[1]:lo[1] + 6, lo[2]:lo[2] + 5] = 1
        image, label = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(mask)
        for im in (image, label):
            im.SetSpacing((0.8, 0.8, 2.0) if i < n else (1.0, 1.0, 1.0))
            im.SetOrigin((-10.0 * i, 5.0 * i, -100.0))
        if i < n:
            sitk.WriteImage(image, str(sources / f"real_{i}.nrrd"))
            sitk.WriteImage(label, str(sources / f"real_{i}_mask.nrrd"))
            real.append(real_case(sources / f"real_{i}.nrrd", sources / f"real_{i}_mask.nrrd", "lung_tumor",
                                  dict(READER_STUDY_REPORT)))
        else:
            folder = sources / f"synthetic_{i}"
            folder.mkdir(exist_ok=True)
            sitk.WriteImage(image, str(folder / "ct.nii.gz"))
            sitk.WriteImage(label * 11, str(folder / "label.nii.gz"))
            (folder / "report.json").write_text(json.dumps({"lesion_type": "lung_tumor", **READER_STUDY_REPORT}))
            synthetic.append(synthetic_case(folder))
    study, key = root / "study", root / "study_key"
    create_study(real, synthetic, study, key, settings=StudySettings(seed=seed, fov_mm=24, allow_changes=allow_changes))
    for reader in readers:
        add_reader(study, reader)
    return study, key


def forbidden_strings(study_dir, key_dir) -> list[str]:
    """What must never appear in the scene: source paths and file names, the key, the study
    folder and its case ids (file paths), and the origin words."""
    import json

    key = json.loads((Path(key_dir) / "key.json").read_text(encoding="utf-8"))
    found = {str(Path(key_dir)), str(Path(key_dir).resolve()), str(Path(study_dir).resolve()), "key.json",
             "image.nii.gz", "mask.nii.gz"}
    for case_id, case in key["cases"].items():
        found.add(case_id)
        for p in (case["image"], case["mask"]):
            path = Path(p)
            found.update({str(path), path.name, path.parent.name})
    return sorted(s for s in found if s)


_ORIGIN_WORDS = ("synthetic", "synthesis", "synthesized", "real", "pasta-gen", "fake")


def scene_leaks(ctx: MRMLContext, forbidden) -> list[str]:
    """Every node's name, description and attributes, plus the scene as saved (XML), that
    contain a forbidden string or an origin word."""
    import re

    scene = ctx.scene
    texts = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        texts.append((f"{node.GetID()} name", node.GetName() or ""))
        texts.append((f"{node.GetID()} description", node.GetDescription() or ""))
        for name in node.GetAttributeNames() or ():
            texts.append((f"{node.GetID()} attribute {name}", f"{name}={node.GetAttribute(name)}"))
        if node.IsA("vtkMRMLStorageNode"):  # the saved XML makes file names relative (or empty)
            files = [node.GetFileName() or "", node.GetURI() or ""]
            files += [node.GetNthFileName(i) or "" for i in range(node.GetNumberOfFileNames())]
            texts.append((f"{node.GetID()} file names", " ".join(files)))
    scene.SetSaveToXMLString(1)
    scene.Commit()
    texts.append(("scene XML", scene.GetSceneXMLString() or ""))
    scene.SetSaveToXMLString(0)
    words = re.compile(r"\b(" + "|".join(map(re.escape, _ORIGIN_WORDS)) + r")\b", re.I)
    leaks = []
    for where, text in texts:
        for needle in forbidden:
            for at in _find_all(text, needle):
                leaks.append(f"{where} contains {needle!r}: ...{text[max(0, at - 40):at + len(needle) + 40]}...")
        for match in words.finditer(text):
            at = match.start()
            leaks.append(f"{where} contains the word {match.group(0)!r}: ...{text[max(0, at - 40):match.end() + 40]}...")
    return leaks


def _find_all(text: str, needle: str) -> list[int]:
    found, at = [], text.find(needle)
    while at >= 0:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def _lesion_centroid_ras(ctx: MRMLContext, shown) -> np.ndarray:
    mask = mrml.segment_mask(ctx, shown.segmentation_node, mrml.segment_ids(shown.segmentation_node)[0],
                             shown.volume_node)
    kji = np.argwhere(mask)
    assert len(kji), f"{shown.title}: the lesion segment is empty"
    m = mrml.ijk_to_ras_matrix(shown.volume_node)
    return (np.c_[kji[:, ::-1], np.ones(len(kji))] @ m[:3].T).mean(axis=0)


def scenario_reader_study_blinding(ctx: MRMLContext, study_dir, key_dir, reader: str):
    """Open as a registered reader and walk every case: neutral names only, nothing in the
    scene names a source file, the origin, the study folder or the key; lesion-centred; the
    node count stays constant; close removes every case node. Returns the titles seen."""
    from .reader_study import LESION_SEGMENT_NAME, ReaderStudyLogic

    forbidden = forbidden_strings(study_dir, key_dir)
    nodes_before = _node_ids(ctx.scene)
    # Inside Slicer the scene already holds the application's own nodes: only new leaks count.
    baseline = set(scene_leaks(ctx, forbidden))
    logic = ReaderStudyLogic(ctx)
    view = logic.open(study_dir, reader)
    assert view is not None and view.position == 1, f"a new reader starts at case 1, not {view}"
    assert _node_ids(ctx.scene) == nodes_before, "open() alone must not add nodes"
    shown = logic.show_current()
    n_shown = ctx.scene.GetNumberOfNodes()
    assert n_shown > len(nodes_before)
    titles = []
    answered, total = logic.progress()
    assert (answered, total) == (0, shown.total), (answered, total)
    while shown is not None:
        expected = f"Case {shown.position} of {shown.total}"
        titles.append(expected)
        assert shown.title == expected and shown.volume_node.GetName() == expected, shown.volume_node.GetName()
        assert shown.segmentation_node.GetName() == f"{expected} lesion", shown.segmentation_node.GetName()
        assert mrml.segment_names(shown.segmentation_node) == [LESION_SEGMENT_NAME]
        for node in logic.case_nodes():
            assert not node.GetDescription(), f"{node.GetName()} has a description"
            assert not (node.GetAttributeNames() or ()), f"{node.GetName()} has attributes {node.GetAttributeNames()}"
            assert not getattr(node, "GetNumberOfStorageNodes", lambda: 0)(), f"{node.GetName()} has a storage node"
        leaks = [leak for leak in scene_leaks(ctx, forbidden) if leak not in baseline]
        assert not leaks, f"{expected}: the scene reveals the case: " + "; ".join(leaks[:10])
        centroid = _lesion_centroid_ras(ctx, shown)
        spacing = np.array(shown.volume_node.GetSpacing())
        assert np.all(np.abs(centroid - np.array(shown.centre_ras)) <= spacing + 1e-6), (
            f"{expected}: lesion at RAS {centroid}, view centre {shown.centre_ras}")
        assert ctx.scene.GetNumberOfNodes() == n_shown, (
            f"{expected}: {ctx.scene.GetNumberOfNodes()} nodes, {n_shown} with the first case (previous case left behind?)")
        shown = logic.next()
    assert len(titles) == total and len(set(titles)) == total
    assert logic.case_nodes() == [] and _node_ids(ctx.scene) == nodes_before, "past the last case no case is shown"
    back = logic.previous()
    assert back is not None and back.position == total and ctx.scene.GetNumberOfNodes() == n_shown
    logic.close()
    assert _node_ids(ctx.scene) == nodes_before, "close() left case nodes in the scene"
    return titles


def scenario_reader_study_resume(ctx: MRMLContext, study_dir, reader: str, n_answers: int = 3) -> dict:
    """Rate a few cases through the logic, close, reopen with a NEW logic (a restart): it resumes
    at the first unanswered case and the database holds exactly the answers given."""
    from PASTALib.review import ReaderSession

    from .reader_study import ReaderStudyLogic

    logic = ReaderStudyLogic(ctx)
    logic.open(study_dir, reader)
    shown = logic.show_current()
    given: dict[str, dict] = {}
    for i in range(n_answers):
        assert shown is not None and shown.answer is None
        attributes = {a: 1 + (i + j) % 5 for j, a in enumerate(shown.attributes[:3])}
        realism = 1 + (2 * i) % 5
        reason = f"reason {i}" if i % 2 == 0 else None
        answer = logic.rate(realism, attributes, reason)
        assert answer.case_id == shown.case_id and answer.realism == realism and answer.attributes == attributes
        assert answer.seconds is not None and answer.seconds >= 0, "reading time not measured"
        given[shown.case_id] = {"realism": realism, "attributes": attributes, "reason": reason}
        assert logic.progress() == (i + 1, shown.total), logic.progress()
        shown = logic.next()
    logic.close()

    restarted = ReaderStudyLogic(ctx)
    view = restarted.open(study_dir, reader)
    assert view is not None and view.position == n_answers + 1, f"resumed at {view}, not case {n_answers + 1}"
    shown = restarted.show_current()
    assert shown.position == n_answers + 1 and shown.answer is None
    assert shown.title == f"Case {n_answers + 1} of {shown.total}"
    assert restarted.progress() == (n_answers, shown.total)
    first = restarted.previous()  # going back shows the saved answer, locked unless changes are allowed
    assert first.answer is not None and first.answer.realism == given[first.case_id]["realism"]
    assert first.locked == (not restarted.allow_changes)
    restarted.close()

    with ReaderSession(study_dir, reader) as session:
        saved = session.answers()
        assert session.first_unanswered() == n_answers
    assert set(saved) == set(given), f"database answers {sorted(saved)} vs given {sorted(given)}"
    for case_id, expected in given.items():
        got = saved[case_id]
        assert (got.realism, got.attributes, got.reason) == (expected["realism"], expected["attributes"],
                                                              expected["reason"]), (case_id, got, expected)
        assert got.revision == 1 and got.seconds is not None
    return given


def scenario_reader_study_errors(ctx: MRMLContext, study_dir, reader: str) -> list[str]:
    """Unknown reader, locked answer, out-of-range rating and a tampered case come through as
    PASTALib errors with their messages; unknown reader and locked/invalid answers change
    neither the scene nor the database."""
    from PASTALib.review import (
        AnswerLockedError,
        RatingRangeError,
        ReaderSession,
        ReviewError,
        StudyTamperedError,
        UnknownReaderError,
    )

    from .reader_study import ReaderStudyLogic

    messages = []
    logic = ReaderStudyLogic(ctx)
    ids = _node_ids(ctx.scene)
    for name in ("not registered", ""):
        try:
            logic.open(study_dir, name)
        except (UnknownReaderError, ReviewError) as exc:
            messages.append(str(exc))
        else:
            raise AssertionError(f"reader {name!r} opened the study")
        assert _node_ids(ctx.scene) == ids, "a failed open changed the scene"
        assert not logic.is_open
    assert _has_all(messages[0], "Unknown reader 'not registered'", "add-reader"), messages[0]
    assert "reader name" in messages[1], messages[1]

    logic.open(study_dir, reader)
    shown = logic.show_current()
    if shown.answer is None:
        logic.rate(3)
    # An unknown reader while a study is open: the open study and its case stay as they are.
    ids = _node_ids(ctx.scene)
    try:
        logic.open(study_dir, "someone else")
    except UnknownReaderError:
        pass
    else:
        raise AssertionError("an unknown reader opened the study")
    assert _node_ids(ctx.scene) == ids and logic.shown is shown and logic.is_open

    with ReaderSession(study_dir, reader) as session:
        before = session.answers()
    mtimes = [n.GetMTime() for n in logic.case_nodes()]
    if not logic.allow_changes:
        try:
            logic.rate(5, reason="changed my mind")
        except AnswerLockedError as exc:
            messages.append(str(exc))
            assert "does not allow changing answers" in str(exc), str(exc)
        else:
            raise AssertionError("a second answer was accepted in a study that does not allow changes")
    for bad in (0, 6, 2.5):
        try:
            logic.rate(bad)
        except RatingRangeError as exc:
            messages.append(str(exc))
            assert "from 1 to 5" in str(exc), str(exc)
        except AnswerLockedError:
            pass  # a locked case refuses before the range check
        else:
            raise AssertionError(f"realism {bad} was accepted")
    assert _node_ids(ctx.scene) == ids and [n.GetMTime() for n in logic.case_nodes()] == mtimes, \
        "a refused answer changed the scene"
    with ReaderSession(study_dir, reader) as session:
        assert session.answers() == before, "a refused answer changed the database"

    # A case file changed after creation: StudyTamperedError, and no stale case stays on screen.
    nxt = logic.next()
    assert nxt is not None
    image = Path(study_dir) / "cases" / nxt.case_id / "image.nii.gz"
    original = image.read_bytes()
    try:
        image.write_bytes(original + b"\0")
        logic.previous()
        try:
            logic.next()
        except StudyTamperedError as exc:
            messages.append(str(exc))
            assert "modified after the study was created" in str(exc), str(exc)
        else:
            raise AssertionError("a tampered case was shown")
        assert logic.case_nodes() == [] and logic.shown is None
        try:
            logic.rate(4)
        except ReviewError as exc:
            assert "No case is shown" in str(exc), str(exc)
        else:
            raise AssertionError("rated a case that is not on screen")
    finally:
        image.write_bytes(original)
    assert logic.show_current() is not None  # restored: the case shows again
    logic.close()
    return messages


def _has_all(message: str, *needles: str) -> bool:
    return all(n in message for n in needles)


def run_reader_study(ctx: MRMLContext, work_dir) -> None:
    """Every reader-study scenario on a tiny generated study (Slicer's runTest and pytest)."""
    study, key = make_tiny_study(Path(work_dir) / "reader_study", n=3, readers=("reader A", "reader B"))
    scenario_reader_study_blinding(ctx, study, key, "reader A")
    scenario_reader_study_resume(ctx, study, "reader B", n_answers=2)
    scenario_reader_study_errors(ctx, study, "reader B")
