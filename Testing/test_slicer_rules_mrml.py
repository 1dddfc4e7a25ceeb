"""load_volume on the stable slicer-core (5.12.4): the four-argument AddArchetypeVolume that Slicer
5.10/5.12 have loads a real CT and refuses a non-image with a clear error (the five-argument
overload with a message collection only exists in 5.13; see test_slicer_rules_api.py)."""

from __future__ import annotations

import SimpleITK as sitk
import numpy as np
import pytest


def test_slicer_core_is_the_stable_line():
    slicer = pytest.importorskip("slicer")
    from importlib.metadata import version

    assert version("slicer-core").startswith("5.12."), version("slicer-core")
    assert slicer.vtkSlicerVolumesLogic is not None


def test_load_volume_reads_a_real_ct(ctx, ts_data):
    from PASTASlicerLib import mrml

    path = ts_data / "example_ct_sm.nii.gz"
    node = mrml.load_volume(ctx, path, "ct")
    image = sitk.ReadImage(str(path))
    array = mrml.volume_to_sitk(node)
    assert node.GetName() == "ct" and node.IsA("vtkMRMLScalarVolumeNode")
    assert array.GetSize() == image.GetSize()
    np.testing.assert_allclose(array.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(array), sitk.GetArrayViewFromImage(image))


def test_load_volume_refuses_a_non_image(ctx, tmp_path):
    from PASTASlicerLib import mrml

    bogus = tmp_path / "notes.nrrd"
    bogus.write_text("this is not an image\n")
    before = ctx.scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")
    with pytest.raises(OSError, match="Could not load volume .*notes.nrrd: no volume reader accepted the file"):
        mrml.load_volume(ctx, bogus)
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode") == before
    with pytest.raises(FileNotFoundError):
        mrml.load_volume(ctx, tmp_path / "missing.nii.gz")
