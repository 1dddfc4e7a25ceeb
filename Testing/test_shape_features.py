"""Shape features and the classifier two-sample test on shapes whose answers are known."""
import numpy as np
import pytest

from PASTALib.eval.shape_features import SIZE_FREE, outline_gain, reader_outline, resample_mask, shape_features
from PASTALib.eval.two_sample import c2st_auc


def _ellipsoid(a: float, b: float, c: float) -> np.ndarray:
    z, y, x = np.mgrid[-30:31, -30:31, -30:31]
    return (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1


def test_sphere_and_ellipsoid_features_match_geometry():
    sphere = shape_features(_ellipsoid(20, 20, 20), (1, 1, 1))
    assert sphere["sphericity"] > 0.9 and sphere["elongation"] > 0.99 and sphere["flatness"] > 0.99
    assert sphere["equivalent_diameter_mm"] == pytest.approx(40, rel=0.02)
    ellipsoid = shape_features(_ellipsoid(25, 15, 8), (1, 1, 1))
    assert ellipsoid["elongation"] == pytest.approx(15 / 25, abs=0.02)  # sqrt of variance ratio = axis ratio
    assert ellipsoid["flatness"] == pytest.approx(8 / 25, abs=0.02)
    assert ellipsoid["sphericity"] < sphere["sphericity"] - 0.1
    assert ellipsoid["max_diameter_mm"] == pytest.approx(50, abs=1.5)


def test_solidity_sees_a_notch_and_only_the_largest_component_counts():
    ball = _ellipsoid(20, 20, 20)
    notched = ball.copy()
    notched[30:, 30:, 30:] = False  # an eighth cut away
    with_speck = notched.copy()
    with_speck[0:2, 0:2, 0:2] = True
    full, cut = shape_features(ball, (1, 1, 1)), shape_features(notched, (1, 1, 1))
    assert cut["solidity"] < full["solidity"] - 0.05
    assert shape_features(with_speck, (1, 1, 1)) == pytest.approx(cut)
    with pytest.raises(ValueError, match="empty"):
        shape_features(np.zeros((4, 4, 4), bool), (1, 1, 1))


def test_resampling_to_thick_slices_keeps_volume_and_adds_staircase():
    ball = _ellipsoid(20, 20, 20)
    thick = resample_mask(ball, (1, 1, 1), (2.5, 0.7, 0.7))
    assert thick.shape == (24, 87, 87)
    f_thin, f_thick = shape_features(ball, (1, 1, 1)), shape_features(thick, (2.5, 0.7, 0.7))
    assert f_thick["volume_mm3"] == pytest.approx(f_thin["volume_mm3"], rel=0.05)
    assert f_thick["sphericity"] < f_thin["sphericity"]


def test_c2st_is_chance_for_one_distribution_and_high_for_two():
    rng = np.random.default_rng(3)
    same = c2st_auc(rng.normal(size=(80, 3)), rng.normal(size=(80, 3)), list("abc"), rng=rng, n_resamples=200,
                    n_estimators=100)
    shifted = c2st_auc(rng.normal(size=(80, 3)), rng.normal(size=(80, 3)) + [2, 0, 0], list("abc"), rng=rng,
                       n_resamples=200, n_estimators=100)
    assert same.auc.low < 0.5 < same.auc.high + 0.1 and same.auc.estimate < 0.65
    assert shifted.auc.estimate > 0.85 and shifted.auc.low > 0.75
    assert max(shifted.feature_importance, key=shifted.feature_importance.get) == "a"
    assert set(SIZE_FREE) <= set(shape_features(_ellipsoid(10, 9, 8), (1, 1, 1)))


def test_reader_outline_closes_pixel_notches_and_holes_per_slice_only():
    """A traced outline bridges a one-pixel notch and has no holes; it never joins slices (readers draw each
    slice on its own) and leaves a mask that is already a closed outline unchanged (gain 0)."""
    z, y, x = np.mgrid[:5, :21, :21]
    disk = (y - 10) ** 2 + (x - 10) ** 2 <= 49
    closed = np.broadcast_to(disk, (5, 21, 21)).copy()
    closed[0] = False  # an empty slice stays empty
    assert np.array_equal(reader_outline(closed), closed) and outline_gain(closed) == 0.0
    notched = closed.copy()
    notched[2, 10, 4:9] = False  # a 1-pixel slit from inside the edge towards the centre
    notched[3, 10, 10] = False  # a one-voxel hole
    assert np.array_equal(reader_outline(notched), closed)
    assert outline_gain(notched) > 0.0
    assert np.array_equal(reader_outline(notched, radius_px=0), notched)


def test_reader_outline_is_decided_from_the_real_masks():
    import pandas as pd

    from PASTALib.eval.realism import drawn_outlines

    real = pd.DataFrame({"equivalent_diameter_mm": [4.0, 12.0, 15.0, 20.0], "outline_gain": [0.2, 0.0, 0.001, 0.0]})
    assert drawn_outlines(real)  # the small lesion's gain does not count
    voxelwise = real.assign(outline_gain=[0.0, 0.03, 0.04, 0.02])
    assert not drawn_outlines(voxelwise)
    assert not drawn_outlines(real[real["equivalent_diameter_mm"] < 10])  # nothing large enough to tell
