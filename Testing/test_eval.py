"""PASTALib.eval: metrics against hand-computed values, bootstrap coverage, exact paired tests,
tables, plots and the ``pasta evaluate`` commands."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import stats

from PASTALib.embed.probes import binary_auc_many
from PASTALib.eval import (
    accuracy,
    accuracy_rows,
    auc,
    auc_rows,
    bootstrap_ci,
    bootstrap_mean_ci,
    dice,
    dice_binary,
    macro_f1,
    macro_f1_rows,
    paired_permutation_test,
    plot_fewshot,
    summarize_fewshot,
    wilcoxon_test,
    write_table,
)


# --- metrics ------------------------------------------------------------------------------------

def test_dice_hand_values_and_empty_convention() -> None:
    pred = np.array([[1, 1, 0], [0, 2, 2]])
    ref = np.array([[1, 0, 0], [0, 2, 0]])
    # label 1: |P|=2, |R|=1, |P∩R|=1 → 2/3 ; label 2: same
    assert dice(pred, ref) == pytest.approx({1: 2 / 3, 2: 2 / 3})
    # label 3 absent from both: 1.0 by default, NaN on request; present in one only: 0
    assert dice(pred, ref, [3])[3] == 1.0
    assert np.isnan(dice(pred, ref, [3], empty=float("nan"))[3])
    assert dice_binary(np.ones(4), np.zeros(4)) == 0.0
    assert dice_binary(np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0])) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="shape"):
        dice(pred, ref[:1])


def test_auc_accuracy_f1_hand_values() -> None:
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) → 3/4
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts 1/2
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1], [0.2, 0.3])
    y, p = [0, 1, 1, 0], [0, 1, 0, 0]
    assert accuracy(y, p) == pytest.approx(0.75)
    # class 0: P=2/3 R=1 → F1 0.8 ; class 1: P=1 R=1/2 → F1 2/3 ; macro 0.7333
    assert macro_f1(y, p) == pytest.approx((0.8 + 2 / 3) / 2)
    # multi-class one-vs-rest equals the mean of the three binary AUCs
    rng = np.random.default_rng(1)
    yy = np.repeat([0, 1, 2], 10)
    scores = rng.dirichlet(np.ones(3), size=30) + np.eye(3)[yy] * 0.3
    scores /= scores.sum(axis=1, keepdims=True)
    expected = np.mean([auc((yy == c).astype(int), scores[:, c]) for c in range(3)])
    assert auc(yy, scores) == pytest.approx(expected)


def test_row_wise_metrics_equal_sklearn() -> None:
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    scores = np.round(rng.normal(size=(5, 40)) + y, 1)  # rounding creates ties
    assert np.allclose(binary_auc_many(y, scores), [roc_auc_score(y, s) for s in scores])
    ys = rng.integers(0, 2, (6, 40))
    ys[0] = 1  # one class only → NaN
    aucs = auc_rows(ys, scores[:1].repeat(6, 0))
    assert np.isnan(aucs[0]) and np.allclose(aucs[1:], [roc_auc_score(r, scores[0]) for r in ys[1:]])
    y3, p3 = rng.integers(0, 3, (8, 30)), rng.integers(0, 3, (8, 30))
    p3[0] = 0
    assert np.allclose(macro_f1_rows(y3, p3), [f1_score(a, b, average="macro", zero_division=0) for a, b in zip(y3, p3)])
    assert np.allclose(accuracy_rows(y3, p3), [accuracy(a, b) for a, b in zip(y3, p3)])


# --- bootstrap --------------------------------------------------------------------------------

def test_bootstrap_needs_explicit_generator_and_is_reproducible() -> None:
    x = np.arange(20.0)
    with pytest.raises(TypeError, match="Generator"):
        bootstrap_ci(np.mean, x, rng=0)  # type: ignore[arg-type]
    a = bootstrap_ci(np.mean, x, rng=np.random.default_rng(5))
    b = bootstrap_ci(np.mean, x, rng=np.random.default_rng(5))
    assert (a.low, a.high) == (b.low, b.high) and a.n_resamples == 1000 and a.estimate == pytest.approx(9.5)
    assert a.low < 9.5 < a.high
    # the vectorised mean CI and the generic one agree closely
    c = bootstrap_mean_ci(x, rng=np.random.default_rng(5))
    assert abs(c.low - a.low) < 1.0 and abs(c.high - a.high) < 1.0
    # scipy's BCa path runs too
    d = bootstrap_ci(np.mean, x, rng=np.random.default_rng(5), method="BCa")
    assert d.low < 9.5 < d.high and d.method == "BCa"


def test_bootstrap_redraws_resamples_with_one_class() -> None:
    y = np.array([0] * 18 + [1] * 2)
    s = np.linspace(0, 1, 20)
    ci = bootstrap_ci(auc, y, s, rng=np.random.default_rng(0), n_resamples=300)
    assert ci.n_redrawn > 0  # P(no positive in a resample) = 0.9^20 ≈ 12 %
    assert 0 <= ci.low <= ci.high <= 1


def test_bootstrap_mean_ci_coverage() -> None:
    """200 simulated datasets (n=40, exponential, true mean 1): the 95 % percentile CI covers the
    mean in 90–99 % of them. 500 replicates per CI here instead of 1,000 to keep the test fast."""
    rng = np.random.default_rng(2024)
    covered = 0
    for _ in range(200):
        x = rng.exponential(1.0, 40)
        ci = bootstrap_mean_ci(x, rng=rng, n_resamples=500)
        covered += ci.low <= 1.0 <= ci.high
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_bootstrap_auc_coverage() -> None:
    """200 datasets of 40 negatives ~ N(0,1) and 40 positives ~ N(1,1): true AUC = Φ(1/√2) = 0.760.
    Percentile CI (500 replicates each instead of 1,000, row-wise rank AUC) covers it 90–99 % of the time."""
    true_auc = stats.norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(7)
    y = np.r_[np.zeros(40, int), np.ones(40, int)]

    covered = 0
    for _ in range(200):
        s = np.r_[rng.normal(0, 1, 40), rng.normal(1, 1, 40)]
        ci = bootstrap_ci(auc, y, s, rng=rng, n_resamples=500, batch_statistic=auc_rows)
        covered += ci.low <= true_auc <= ci.high
    assert 0.90 <= covered / 200 <= 0.99, covered


# --- paired tests ---------------------------------------------------------------------------

DIFFS = np.array([0.30, -0.10, 0.50, 0.20, 0.70, -0.40, 0.60, 0.15])


def _all_sign_flips(n: int) -> np.ndarray:
    return np.array(list(itertools.product([1, -1], repeat=n)), dtype=float)


def test_wilcoxon_exact_p_by_enumeration() -> None:
    a = 0.5 + DIFFS
    b = np.full_like(a, 0.5)
    ranks = stats.rankdata(np.abs(DIFFS))
    observed = ranks[DIFFS > 0].sum()
    null = (_all_sign_flips(len(DIFFS)) > 0) @ ranks  # W+ under every sign assignment
    p_exact = np.mean(null >= observed)
    res = wilcoxon_test(a, b, alternative="greater")
    assert res.statistic == observed
    assert res.p_value == pytest.approx(p_exact)
    assert res.p_value == pytest.approx(stats.wilcoxon(a, b, alternative="greater", method="exact").pvalue)
    assert wilcoxon_test(b, a, alternative="greater").p_value > 0.5


def test_permutation_p_exact_small_and_close_for_larger_n() -> None:
    a = 0.5 + DIFFS
    b = np.full_like(a, 0.5)
    null = (_all_sign_flips(len(DIFFS)) * DIFFS).mean(axis=1)
    p_exact = np.mean(null >= DIFFS.mean() - 1e-12)
    res = paired_permutation_test(a, b, rng=np.random.default_rng(0))
    assert res.p_value == pytest.approx(p_exact)  # 2^8 < 10,000: scipy enumerates every sign flip
    assert "exact" in res.detail
    # n = 16: 10,000 random permutations vs the exact value from all 65,536 sign flips
    rng = np.random.default_rng(3)
    d = rng.normal(0.1, 0.3, 16)
    flips = _all_sign_flips(16)
    p16 = np.mean((flips * d).mean(axis=1) >= d.mean() - 1e-12)
    res16 = paired_permutation_test(d, np.zeros(16), rng=np.random.default_rng(1))
    assert abs(res16.p_value - p16) < 0.01
    assert "10000 permutations" in res16.detail


# --- tables, plots, CLI ----------------------------------------------------------------------

def test_tables_and_fewshot_plot(tmp_path: Path) -> None:
    rows = [{"metric": "AUC", "estimate": 0.8123, "ci_low": 0.7, "ci_high": 0.9, "note": "<b>&"}]
    paths = write_table(rows, tmp_path / "res", title="T")
    assert pd.read_csv(paths["csv"])["estimate"].iloc[0] == pytest.approx(0.8123)
    md = paths["md"].read_text()
    assert md.splitlines()[0] == "| metric | estimate | ci_low | ci_high | note |" and "0.812" in md
    assert "&lt;b&gt;&amp;" in paths["html"].read_text()

    rng = np.random.default_rng(0)
    df = pd.DataFrame([dict(method=m, K=k, repeat=r, value=min(0.9, 0.3 + 0.1 * np.log2(k) + off) + rng.normal(0, 0.03))
                       for m, off in (("PASTA", 0.1), ("scratch", 0.0)) for k in (1, 2, 4, 8, 16) for r in range(5)])
    summary = summarize_fewshot(df, rng=np.random.default_rng(0))
    assert len(summary) == 10 and (summary["low"] <= summary["mean"]).all() and (summary["mean"] <= summary["high"]).all()
    png = plot_fewshot(summary, tmp_path / "few.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def _run_cli(*argv: str) -> int:
    from PASTALib.cli import evaluate

    parser = argparse.ArgumentParser(prog="pasta")
    evaluate.add_parser(parser.add_subparsers(dest="group"))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_evaluate_commands(tmp_path: Path, capsys) -> None:
    # seg: two cases, labels 1 and 2
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir(), ref_dir.mkdir()
    for i, shift in enumerate((0, 1)):
        ref = np.zeros((8, 8, 8), np.uint8)
        ref[2:6, 2:6, 2:6] = 1
        ref[0, 0, :4] = 2
        pred = np.roll(ref, shift, axis=0)
        sitk.WriteImage(sitk.GetImageFromArray(ref), str(ref_dir / f"case{i}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(pred), str(pred_dir / f"case{i}.nrrd"))
    assert _run_cli("evaluate", "seg", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(tmp_path / "seg")) == 0
    per_case = pd.read_csv(tmp_path / "seg_per_case.csv")
    d1 = per_case[(per_case.case == "case1") & (per_case.label == 1)]["dsc"].iloc[0]
    assert d1 == pytest.approx(2 * 48 / 128)  # 4x4x4 cube shifted by one slice: overlap 3x4x4
    assert (tmp_path / "seg.md").is_file() and (tmp_path / "seg.html").is_file()

    # cls
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    pd.DataFrame({"case": range(80), "label": y, "score": y * 0.5 + rng.uniform(0, 1, 80)}).to_csv(tmp_path / "p.csv", index=False)
    assert _run_cli("evaluate", "cls", "--csv", str(tmp_path / "p.csv"), "--out", str(tmp_path / "cls")) == 0
    cls = pd.read_csv(tmp_path / "cls.csv")
    assert list(cls.metric) == ["AUC", "ACC", "F1_macro"] and (cls.ci_low < cls.estimate).all()

    # compare (paired by case)
    base = rng.uniform(0.6, 0.8, 12)
    pd.DataFrame({"case": range(12), "dsc": base + 0.05 + rng.normal(0, 0.01, 12)}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"case": range(12)[::-1], "dsc": base[::-1]}).to_csv(tmp_path / "b.csv", index=False)
    assert _run_cli("evaluate", "compare", "--a", str(tmp_path / "a.csv"), "--b", str(tmp_path / "b.csv"),
                    "--out", str(tmp_path / "cmp")) == 0
    cmp_ = pd.read_csv(tmp_path / "cmp.csv")
    assert list(cmp_.test) == ["wilcoxon", "permutation"] and (cmp_.p_value < 0.001).all()

    # fewshot
    pd.DataFrame([dict(method="m", K=k, value=0.1 * k ** 0.5 + 0.01 * r) for k in (1, 2, 4, 8, 16) for r in range(3)]
                 ).to_csv(tmp_path / "few.csv", index=False)
    assert _run_cli("evaluate", "fewshot", "--csv", str(tmp_path / "few.csv"), "--plot", str(tmp_path / "few.png")) == 0
    assert (tmp_path / "few.png").stat().st_size > 0
    assert "| method | K |" in capsys.readouterr().out


def test_cli_seg_missing_prediction_is_an_error(tmp_path: Path) -> None:
    from PASTALib.eval.tasks import EvaluationError

    (tmp_path / "p").mkdir(), (tmp_path / "r").mkdir()
    img = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8))
    sitk.WriteImage(img, str(tmp_path / "r" / "a.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / "p" / "b.nii.gz"))
    with pytest.raises(EvaluationError, match="without a prediction"):
        _run_cli("evaluate", "seg", "--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r"))


def test_eval_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, PASTALib.eval, PASTALib.embed.probes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
