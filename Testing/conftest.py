"""Shared fixtures: the real CT data in ../shared/data (never copied into the project), and a tiny
PASTA model trained once per session on lesions synthesized into the real CT, with its
`pasta segment` output (used by test_infer.py and test_pasta_logic.py).

Cost control (2 shared cores): the test model works at a 3 mm canonical grid (``spacing_mm=3``; the
default is the paper's 1 mm) with 32³ windows and 5 stages. Heavy imports stay inside the fixtures.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PASTA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; the suite needs it (CI clones the repo beside ../shared)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"Test data not found at {SHARED_DATA}; set PASTA_SHARED_DATA to ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ts_data(shared_data: Path) -> Path:
    """TotalSegmentator example CTs and label maps."""
    return shared_data / "totalsegmentator"


# --- the trained test model and its `pasta segment` output (session-scoped: trained once) ---------

SPACING = 3.0
PATCH = 32
ITERATIONS = 300


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



@pytest.fixture(scope="session")
def case(ts_data, tmp_path_factory):
    """A crop of example_ct (3 mm, RAS) around liver and kidneys with a large hypodense liver tumour and a
    right kidney cyst; training cases (same crop, other seeds + this one) in canonical 3 mm LPS."""
    import numpy as np
    import SimpleITK as sitk

    from PASTALib.anatomy import OrganMasks
    from PASTALib.geometry import to_canonical
    from PASTALib.io import read_ct, read_label, write_image
    from PASTALib.synth import LesionSpec, synthesize_lesion

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
        for spec in (
            LesionSpec(lesion_type="liver_tumor", size_mm=(45, 45, 40), shape="Round-like", density="Hypodense",
                       heterogeneity="Homogeneous", margin="Well-defined margin", invasion=False, seed=seed),
            LesionSpec(lesion_type="kidney_cyst", size_mm=(30, 30, 30), side="right", seed=seed + 100),
        ):
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
    patch sampler and SLF input map; weighted CE (lesions ×10), Adam. Saved as a plain state dict."""
    import numpy as np
    import torch

    from PASTALib.model import PastaUNet, UNetConfig
    from PASTALib.model.preprocess import slf_normalize
    from PASTALib.train import PatchSampler, discover_cases, load_case

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = [load_case(r) for r in discover_cases(case.data)]
    sampler = PatchSampler(cases, (PATCH,) * 3, fg_fraction=0.5, lesion_priority=0.9, flip=False, seed=0)
    model = PastaUNet(UNetConfig.tiny(num_stages=5, base_channels=8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    weight = torch.ones(model.config.num_seg_classes)
    weight[11:] = 10.0
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    for _ in range(ITERATIONS):
        img, lab = sampler.sample(2)
        logits = model(torch.from_numpy(slf_normalize(img))).segmentation[0]
        loss = loss_fn(logits, torch.from_numpy(lab[:, 0].astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
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
