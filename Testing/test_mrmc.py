"""Obuchowski-Rockette / Hillis MRMC analysis against published output for the Van Dyke data.

Reference numbers: OR-DBM MRMC 2.51 (Iowa), trapezoidal AUC, jackknife covariance, as shipped in
github.com/dpc10ster/RJafroc (commit 44b0e39e, inst/Iowa/VanDyke.txt). The ratings
(Testing/vandyke_mrmc_ratings.csv) come from the same repository; provenance is in the file header.
"""

from pathlib import Path

import numpy as np
import pytest

from PASTALib.eval.mrmc import delong_covariance, jackknife_covariance, or_hillis, trapezoidal_auc

DATA = Path(__file__).with_name("vandyke_mrmc_ratings.csv")


@pytest.fixture(scope="module")
def vandyke():
    table = np.genfromtxt(DATA, delimiter=",", skip_header=6)
    truth = table[:, 1].astype(bool)
    ratings = table[:, 2:].T.reshape(2, 5, -1)  # modality x reader x case
    assert ratings.shape == (2, 5, 114) and truth.sum() == 45
    return ratings, truth


@pytest.fixture(scope="module")
def published_jackknife(vandyke):
    return or_hillis(*vandyke, covariance="jackknife")


def test_reader_aucs_match_published(published_jackknife):
    published = [[0.91964573, 0.85877617, 0.90386473, 0.97310789, 0.82979066],
                 [0.94782609, 0.90531401, 0.92173913, 0.99935588, 0.92995169]]
    np.testing.assert_allclose(published_jackknife["reader_fom"], published, atol=5e-9)


def test_or_covariances_match_published(published_jackknife):
    c = published_jackknife["covariances"]
    np.testing.assert_allclose([c["var_error"], c["cov1"], c["cov2"], c["cov3"]],
                               [0.00080229, 0.00034661, 0.00034407, 0.00023903], atol=5e-9)


@pytest.mark.parametrize("modality, auc, se, df, ci, cov2", [
    (0, 0.89703704, 0.03317360, 12.74, (0.82522360, 0.96885048), 0.00048396),
    (1, 0.94083736, 0.02156637, 12.71, (0.89413783, 0.98753689), 0.00020419),
])
def test_single_modality_matches_published(published_jackknife, modality, auc, se, df, ci, cov2):
    """Part (c) of the published random-reader random-case analysis: each modality on its own."""
    m = published_jackknife["modalities"][modality]
    assert m["fom"] == pytest.approx(auc, abs=5e-9)
    assert m["se"] == pytest.approx(se, abs=5e-9)
    assert m["df"] == pytest.approx(df, abs=5e-3)
    np.testing.assert_allclose(m["ci"], ci, atol=5e-9)
    assert m["cov2"] == pytest.approx(cov2, abs=5e-9)
    assert m["p"] < 1e-6  # AUC far above 0.5


def test_single_modality_alone_equals_its_part_of_the_two_modality_run(vandyke, published_jackknife):
    ratings, truth = vandyke
    alone = or_hillis(ratings[0], truth)  # (readers, cases): one modality, as a reader study has
    assert alone["modalities"][0]["ci"] == pytest.approx(published_jackknife["modalities"][0]["ci"], abs=1e-12)
    assert "global_test" not in alone


def test_two_modality_difference_matches_published(published_jackknife):
    g, d = published_jackknife["global_test"], published_jackknife["differences"][0]
    assert g["F"] == pytest.approx(4.46, abs=5e-3) and g["ddf"] == pytest.approx(15.26, abs=5e-3)
    assert g["p"] == pytest.approx(0.0517, abs=5e-5)
    assert g["error_term"] == pytest.approx(0.00107626, abs=5e-9)
    assert d["difference"] == pytest.approx(-0.04380032, abs=5e-9)
    assert d["se"] == pytest.approx(0.02075, abs=5e-6)
    np.testing.assert_allclose(d["ci"], (-0.08796, 0.00036), atol=5e-6)


def test_delong_close_to_jackknife(vandyke, published_jackknife):
    """DeLong and jackknife estimate the same covariance (they differ by O(1/n)): within 3 % here."""
    delong = or_hillis(*vandyke, covariance="delong")
    for key, value in published_jackknife["covariances"].items():
        assert delong["covariances"][key] == pytest.approx(value, rel=0.03)
    assert delong["global_test"]["p"] == pytest.approx(0.0517, abs=2e-3)


def test_delong_single_reader_variance_by_hand():
    """3 abnormal, 2 normal: structural components worked out by hand."""
    scores = np.array([[[3.0, 5.0, 2.0, 1.0, 2.0]]])
    truth = np.array([True, True, True, False, False])
    # psi rows (abnormal vs normal 1, 2): [1, 1], [1, 1], [1, 0.5] -> V10 = 1, 1, 0.75; V01 = 1, 0.833..
    v10, v01 = np.array([1, 1, 0.75]), np.array([1.0, 2.5 / 3])
    expected = np.var(v10, ddof=1) / 3 + np.var(v01, ddof=1) / 2
    assert delong_covariance(scores, truth)[0, 0] == pytest.approx(expected)
    assert trapezoidal_auc(scores[0, 0], truth) == pytest.approx(2.75 / 3)


def test_jackknife_ignores_missing_and_incomplete_design_is_flagged():
    rng = np.random.default_rng(0)
    truth = np.repeat([True, False], 10)
    ratings = rng.integers(1, 6, (3, 20)).astype(float) + truth
    ratings[2, :4] = np.nan  # the third reader has not rated 4 real cases yet
    out = or_hillis(ratings, truth)
    assert np.isfinite(out["modalities"][0]["ci"]).all()
    assert any("incomplete design" in n for n in out["notes"])
    assert jackknife_covariance(ratings[None], truth).shape == (3, 3)


@pytest.mark.parametrize("ratings, truth, reason", [
    (np.array([[1.0, 2, 3]]), [True, False, True], "at least 2 readers"),
    (np.array([[1.0, 2, 3], [2, 3, 4]]), [True, True, True], "both classes"),
    (np.array([[1.0, np.nan, 3], [2, 3, 4]]), [True, False, True], "not yet rated cases of both classes"),
])
def test_undefined_analysis_says_why(ratings, truth, reason):
    out = or_hillis(ratings, np.array(truth))
    assert np.isnan(out["modalities"][0]["p"]) and any(reason in n for n in out["notes"])


def test_identical_ratings_are_a_clear_error_not_a_division_by_zero():
    from PASTALib.eval.mrmc import or_hillis

    ratings = np.full((2, 3, 6), 3.0)  # 2 modalities x 3 readers x 6 cases, every rating the same
    truth = np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="do not vary"):
        or_hillis(ratings, truth)
