#!/usr/bin/env python
"""Render the PASTASynth screenshot: ``python scripts/make_screenshots.py``.

Runs the module logic headless on Slicer's MRML core (PyPI slicer-core) exactly as the
panel does (CT node + organ segmentation node + markups point -> new CT, organ + lesion
segmentation, report node), then renders from the MRML nodes, offscreen with VTK (EGL /
OSMesa; matplotlib when VTK cannot open an offscreen context):

* top: axial, coronal, sagittal slices of the synthetic CT through the lesion, lesion and
  organ segments outlined in their segment colours, radiological orientation (patient
  right on the image left, anterior / superior up);
* bottom: the input and the synthetic CT zoomed on the lesion, and the structured report.

Data: the TotalSegmentator example CT with its organ labels from ../shared/data (liver
tumour at the deepest liver point); without ../shared the chest CT shipped with slicerio
and the classical lung mask (lung tumour). Output: Resources/Screenshots/pastasynth.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "PASTASynth")]

WINDOW, LEVEL = 400.0, 40.0  # soft-tissue window
SIZE = (1500, 1000)
WRAP = 54  # report panel characters per line


def build_case(seed: int):
    """(ctx, logic, input CT node, SynthesisOutput, title) via the module logic."""
    from PASTASynthLib import mrml, scenarios
    from PASTASynthLib.logic import SynthesisLogic

    ctx = mrml.MRMLContext.headless()
    logic = SynthesisLogic(context=ctx)
    shared = Path(os.environ.get("PASTA_SHARED_DATA", REPO.parent / "shared" / "data")) / "totalsegmentator"
    if (shared / "example_ct.nii.gz").is_file():
        label_path = shared / "example_seg_fast_force_split.nii.gz"
        ct, organs = scenarios.load_case(ctx, shared / "example_ct.nii.gz", label_path,
                                         scenarios.TOTALSEG_SYNTH_ORGANS, name="Abdomen CT")
        point = scenarios.add_point(ctx, scenarios.organ_point_ras(label_path, 5))
        spec = {"lesion_type": "liver_tumor", "size_mm": [34, 30, 32], "shape": "Irregular",
                "density": "Hypodense", "heterogeneity": "Heterogeneous", "margin": "Well-defined margin",
                "seed": seed}
        source = "TotalSegmentator example CT (organs: TotalSegmentator labels), point placed in the liver"
    else:
        import slicerio

        ct = logic.load_ct(Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd", "Chest CT")
        organs = logic.lung_mask_segmentation(ct)
        point = None
        spec = {"lesion_type": "lung_tumor", "size_mm": [30, 28, 30], "seed": seed}
        source = "slicerio CTChest4 (organs: classical lung mask), location sampled"
    output = logic.synthesize(ct, organs, spec, point)
    return ctx, logic, ct, output, source


def canonical_arrays(ctx, ct_node, output):
    """Input CT, synthetic CT, lesion and organ masks as canonical LPS arrays [x, y, z] (1.5 mm)."""
    import SimpleITK as sitk
    from PASTASynthLib import mrml

    from PASTALib.geometry.canonical import to_canonical

    volume = output.volume_node
    synthetic, mapping = to_canonical(mrml.volume_to_sitk(volume), is_label=False, spacing=1.5)
    original, _ = to_canonical(mrml.volume_to_sitk(ct_node), mapping, is_label=False, spacing=1.5)
    masks = []
    for segment_id in (output.lesion_segment_id, output.organ_segment_id):
        mask = mrml.segment_mask(ctx, output.segmentation_node, segment_id, volume).astype(np.float32)
        image = sitk.GetImageFromArray(mask)
        image.CopyInformation(mrml.volume_to_sitk(volume))
        masks.append(to_canonical(image, mapping, is_label=False, spacing=1.5)[0])
    arrays = [sitk.GetArrayFromImage(i).transpose(2, 1, 0).astype(np.float32) for i in (original, synthetic, *masks)]
    centre = np.asarray(mapping.canonical.lps_to_index(output.report["centre_mm"])).round().astype(int)
    return arrays, np.clip(centre, 0, np.array(arrays[0].shape) - 1), 1.5


def planes(arrays, centre):
    """Per view: (name, [2D arrays rows x cols with row 0 at the TOP], axis labels)."""
    x, y, z = centre
    out = []
    # Axial: columns = x (patient right -> left, i.e. R on the image left), rows = y (anterior on top).
    out.append(("Axial", [a[:, :, z].T for a in arrays], ("R", "L", "A", "P")))
    # Coronal: columns = x, rows = z flipped (superior on top).
    out.append(("Coronal", [a[:, y, :].T[::-1] for a in arrays], ("R", "L", "S", "I")))
    # Sagittal: columns = y (anterior on the left), rows = z flipped.
    out.append(("Sagittal", [a[x, :, :].T[::-1] for a in arrays], ("A", "P", "S", "I")))
    return out


def to_gray(hu: np.ndarray) -> np.ndarray:
    low = LEVEL - WINDOW / 2
    return (np.clip((hu - low) / WINDOW, 0, 1) * 255).astype(np.uint8)


def zoom_box(shape, centre_rc, half: int):
    r0 = int(np.clip(centre_rc[0] - half, 0, max(0, shape[0] - 2 * half)))
    c0 = int(np.clip(centre_rc[1] - half, 0, max(0, shape[1] - 2 * half)))
    return slice(r0, r0 + 2 * half), slice(c0, c0 + 2 * half)


def panels(arrays, centre, output):
    """Five image panels (title, gray, [(mask, rgb)], corner labels) + report lines."""
    seg = output.segmentation_node.GetSegmentation()
    lesion_rgb = seg.GetSegment(output.lesion_segment_id).GetColor()
    organ_rgb = seg.GetSegment(output.organ_segment_id).GetColor()
    result = []
    views = planes(arrays, centre)
    for name, (orig, synth, lesion, organ), labels in views:
        result.append((f"{name} (synthetic)", to_gray(synth), [(organ, organ_rgb, 1.5), (lesion, lesion_rgb, 2.5)], labels))
    name, (orig, synth, lesion, organ), labels = views[0]
    rows, cols = np.nonzero(lesion > 0.5)
    rc = (int(rows.mean()), int(cols.mean())) if rows.size else (orig.shape[0] // 2, orig.shape[1] // 2)
    box = zoom_box(orig.shape, rc, 32)
    result.append(("Input CT, zoomed", to_gray(orig[box]), [], labels))
    result.append(("Synthetic CT, zoomed", to_gray(synth[box]), [(lesion[box], lesion_rgb, 3.0)], labels))
    return result


def report_lines(output, source: str) -> list[str]:
    report = output.report
    spec = output.result.spec
    lines = [
        f"Structured report ({report['lesion_type']}, seed {report['seed']})",
        f"Enhancement:   {report['enhancement']}",
        f"Location:      {report['location']}",
        f"Size (Z×X×Y):  {report['size']}",
        f"Shape:         {report['shape']}",
        f"Density:       {report['density']}  ({report['mean_hu']:.0f} HU vs organ {report['organ_mean_hu']:.0f} HU)",
        f"Heterogeneity: {report['heterogeneity']}",
        f"Surface:       {report['surface']}",
        f"Invasion:      {report['invasion']}",
        "",
        f"Centre (LPS):  {', '.join(f'{v:.1f}' for v in report['centre_mm'])} mm",
        f"Requested:     {' x '.join(f'{v:g}' for v in spec.size_mm)} mm (x, y, z)",
        "",
    ]
    lines += [f"Nodes:         '{output.volume_node.GetName()}'", f"               '{output.segmentation_node.GetName()}'",
              f"               '{output.report_node.GetName()}'", ""]
    lines += [f"Data: {source}"]
    wrapped = lines[:1]
    for line in lines[1:]:
        wrapped += textwrap.wrap(line, WRAP, subsequent_indent=" " * 15) or [""]
    return wrapped


# -- VTK offscreen ---------------------------------------------------------------------------


def _vtk_image(gray: np.ndarray, spacing: float):
    import vtk
    import vtk.util.numpy_support as vtk_np

    flipped = np.ascontiguousarray(gray[::-1])  # VTK rows go up
    image = vtk.vtkImageData()
    image.SetDimensions(flipped.shape[1], flipped.shape[0], 1)
    image.SetSpacing(spacing, spacing, 1.0)
    image.GetPointData().SetScalars(vtk_np.numpy_to_vtk(flipped.ravel(), deep=True,
                                                        array_type=vtk.VTK_UNSIGNED_CHAR))
    return image


def _vtk_float_image(mask: np.ndarray, spacing: float):
    import vtk
    import vtk.util.numpy_support as vtk_np

    flipped = np.ascontiguousarray(mask[::-1], dtype=np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(flipped.shape[1], flipped.shape[0], 1)
    image.SetSpacing(spacing, spacing, 1.0)
    image.GetPointData().SetScalars(vtk_np.numpy_to_vtk(flipped.ravel(), deep=True, array_type=vtk.VTK_FLOAT))
    return image


def _text(vtk, text: str, size: int, position, color=(1, 1, 1), bold=False, justify="left", mono=False):
    actor = vtk.vtkTextActor()
    actor.SetInput(text)
    prop = actor.GetTextProperty()
    prop.SetFontSize(size)
    prop.SetColor(*color)
    prop.SetBold(bold)
    if mono:
        prop.SetFontFamilyToCourier()
    prop.SetJustification({"left": 0, "center": 1, "right": 2}[justify])
    actor.SetPosition(float(position[0]), float(position[1]))  # viewport pixels of its renderer
    return actor


def render_vtk(items, lines, title: str, spacing: float, path: Path) -> None:
    import vtk

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*SIZE)
    window.SetMultiSamples(0)
    w, h = SIZE
    header = 50 / h
    viewports = [(0, 0.5, 1 / 3, 1 - header), (1 / 3, 0.5, 2 / 3, 1 - header), (2 / 3, 0.5, 1, 1 - header),
                 (0, 0, 1 / 3, 0.5), (1 / 3, 0, 2 / 3, 0.5)]
    for (label, gray, contours, corners), viewport in zip(items, viewports):
        renderer = vtk.vtkRenderer()
        renderer.SetViewport(*viewport)
        renderer.SetBackground(0, 0, 0)
        image_actor = vtk.vtkImageActor()
        image_actor.GetMapper().SetInputData(_vtk_image(gray, spacing))
        image_actor.InterpolateOn()
        renderer.AddActor(image_actor)
        for mask, rgb, width in contours:
            contour = vtk.vtkContourFilter()
            contour.SetInputData(_vtk_float_image(mask, spacing))
            contour.SetValue(0, 0.5)
            mapper = vtk.vtkPolyDataMapper()
            mapper.SetInputConnection(contour.GetOutputPort())
            mapper.ScalarVisibilityOff()
            actor = vtk.vtkActor()
            actor.SetMapper(mapper)
            actor.GetProperty().SetColor(*rgb)
            actor.GetProperty().SetLineWidth(width)
            actor.SetPosition(0, 0, 0.5)
            renderer.AddActor(actor)
        camera = renderer.GetActiveCamera()
        camera.ParallelProjectionOn()
        rows, cols = gray.shape
        cx, cy = (cols - 1) * spacing / 2, (rows - 1) * spacing / 2
        camera.SetFocalPoint(cx, cy, 0)
        camera.SetPosition(cx, cy, 1000)
        camera.SetViewUp(0, 1, 0)
        vw, vh = (viewport[2] - viewport[0]) * w, (viewport[3] - viewport[1]) * h
        camera.SetParallelScale(max(rows * spacing / 2, cols * spacing / 2 * vh / vw) * 1.02)
        renderer.ResetCameraClippingRange()
        renderer.AddViewProp(_text(vtk, label, 18, (8, vh - 26), bold=True))
        left, right, top, bottom = corners
        renderer.AddViewProp(_text(vtk, left, 18, (8, vh / 2), color=(1, 0.85, 0.2), bold=True))
        renderer.AddViewProp(_text(vtk, right, 18, (vw - 8, vh / 2), color=(1, 0.85, 0.2), bold=True, justify="right"))
        renderer.AddViewProp(_text(vtk, top, 18, (vw / 2, vh - 50), color=(1, 0.85, 0.2), bold=True, justify="center"))
        renderer.AddViewProp(_text(vtk, bottom, 18, (vw / 2, 6), color=(1, 0.85, 0.2), bold=True, justify="center"))
        window.AddRenderer(renderer)
    # Report panel.
    renderer = vtk.vtkRenderer()
    renderer.SetViewport(2 / 3, 0, 1, 0.5)
    renderer.SetBackground(0.12, 0.12, 0.14)
    vw, vh = w / 3, 0.5 * h
    y = vh - 34
    for i, line in enumerate(lines):
        renderer.AddViewProp(_text(vtk, line, 15 if i else 19, (14, y), bold=i == 0, mono=i > 0,
                                   color=(1, 1, 1) if i else (1, 0.85, 0.2)))
        y -= 28 if i == 0 else 19
    window.AddRenderer(renderer)
    top = vtk.vtkRenderer()
    top.SetViewport(0, 1 - header, 1, 1)
    top.SetBackground(0.12, 0.12, 0.14)
    top.AddViewProp(_text(vtk, title, 22, (14, 14), bold=True))
    window.AddRenderer(top)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    window.Finalize()


def render_matplotlib(items, lines, title: str, spacing: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(SIZE[0] / 100, SIZE[1] / 100), dpi=100, facecolor="black")
    for ax, (label, gray, contours, corners) in zip(axes.ravel(), items):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        for mask, rgb, width in contours:
            ax.contour(mask, levels=[0.5], colors=[rgb], linewidths=width)
        ax.set_title(label, color="white", loc="left", fontsize=13)
        left, right, top, bottom = corners
        for text, xy, ha in ((left, (0.01, 0.5), "left"), (right, (0.99, 0.5), "right"),
                             (top, (0.5, 0.97), "center"), (bottom, (0.5, 0.02), "center")):
            ax.text(*xy, text, color="#ffd933", transform=ax.transAxes, ha=ha, fontsize=13, weight="bold")
        ax.axis("off")
    ax = axes.ravel()[5]
    ax.axis("off")
    ax.text(0.02, 0.98, "\n".join(lines), color="white", family="monospace", fontsize=10, va="top",
            transform=ax.transAxes)
    fig.suptitle(title, color="white", fontsize=15, x=0.01, ha="left")
    fig.savefig(path, facecolor="black")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "Resources" / "Screenshots" / "pastasynth.png"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backend", choices=("auto", "vtk", "matplotlib"), default="auto")
    args = parser.parse_args(argv)

    ctx, _logic, ct, output, source = build_case(args.seed)
    arrays, centre, spacing = canonical_arrays(ctx, ct, output)
    items = panels(arrays, centre, output)
    lines = report_lines(output, source)
    lesion_name = output.segmentation_node.GetSegmentation().GetSegment(output.lesion_segment_id).GetName()
    title = f"PASTASynth: {lesion_name} inserted into the {output.report['location'].lower()}; input CT unchanged"
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = args.backend
    if backend in ("auto", "vtk"):
        try:
            render_vtk(items, lines, title, spacing, path)
            backend = "vtk"
        except Exception as exc:  # no offscreen OpenGL context in this VTK build
            if args.backend == "vtk":
                raise
            print(f"VTK offscreen rendering failed ({exc}); using matplotlib", file=sys.stderr)
            backend = "matplotlib"
    if backend == "matplotlib":
        render_matplotlib(items, lines, title, spacing, path)
    print(f"wrote {path} ({backend}): {output.report['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
