"""The classifier network (PASTA encoder + a linear or the attribute head), its init, loss and inference."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from PASTALib.finetune.classify.config import BUNDLE_FORMAT, DEFAULT_DETECTION_WEIGHTS, ClassifyConfig, ClassifyError
from PASTALib.model.unet import PastaUNet, UNetConfig
from PASTALib.weights import weights_path


def encoder_only(config: UNetConfig, *, keep_head: bool, device: str | torch.device = "cpu") -> PastaUNet:
    """A PastaUNet holding only what ``encode`` uses (stages 0..num_stages-2) and, if asked, the
    attribute head: the published model's decoder is ~3/4 of its parameters and never runs here.
    Built on the meta device, then allocated on ``device`` and given torch's default initialisation
    (``device="meta"`` checks a layout without allocating)."""
    with torch.device("meta"):
        unet = PastaUNet(config)
    n_down = config.num_stages - 1
    unet.conv_blocks_context = nn.ModuleList(list(unet.conv_blocks_context)[:n_down])
    unet.tu, unet.conv_blocks_localization, unet.seg_outputs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
    if not keep_head:
        unet.head = nn.Identity()
    unet = unet.to_empty(device=device)
    for module in unet.modules():
        if module is not unet and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return unet


class PastaClassifier(nn.Module):
    """PASTA encoder → 1024-d feature (GAP of stage 4) → linear head (``num_classes``) or the
    attribute head (``num_classes=None``, 14 grouped logits).

    The new linear head may read the feature standardised with fixed per-channel statistics of the
    training fold (buffers ``feature_mean`` / ``feature_std``, set by :meth:`fit_feature_scaler`;
    identity otherwise): StandardScaler + linear, the usual linear probe (as PASTALib.embed's
    logistic-regression probe). Why: the pooled stage-4 feature follows InstanceNorm + LeakyReLU,
    so it varies by only ~1% between cases (measured 0.9% on a 12-case version of the test cohort)
    and a fresh head on the raw feature barely moves in a short run. It is the default for the
    frozen encoder only: when the encoder trains, its features drift away from statistics fixed at
    the start, and dividing by a ~1% spread amplifies that drift (measured on the same cohort:
    out-of-fold AUC 0.47 with the encoder training vs 1.0 frozen). The attribute head keeps the raw
    feature it was pretrained on."""

    def __init__(self, config: UNetConfig, num_classes: int | None, *, freeze_encoder: bool = False,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.config = config
        self.unet = encoder_only(config, keep_head=num_classes is None, device=device)
        with torch.device(device):
            self.classifier = nn.Linear(config.feature_channels, num_classes) if num_classes else None
            self.register_buffer("feature_mean", torch.zeros(config.feature_channels))
            self.register_buffer("feature_std", torch.ones(config.feature_channels))
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            for p in self.encoder_parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def fit_feature_scaler(self, features: torch.Tensor) -> None:
        """Set the head's input standardisation from (N, C) features of the training cases."""
        features = features.float()
        self.feature_mean.copy_(features.mean(0))
        std = features.std(0) if len(features) > 1 else torch.ones_like(self.feature_std)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if not n.startswith("head.")]

    def head_parameters(self) -> list[nn.Parameter]:
        if self.classifier is not None:
            return list(self.classifier.parameters())
        return list(self.unet.head.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                feature = self.unet.encode(x)
        else:
            feature = self.unet.encode(x)
        return self.head_logits(feature)

    def head_logits(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits from encoder features (B, C)."""
        if self.classifier is None:
            return self.unet.head(feature)
        return self.classifier((feature.float() - self.feature_mean) / self.feature_std)


def seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def read_init(init: str | None) -> tuple[UNetConfig, dict[str, torch.Tensor] | None, str]:
    """(network layout, state dict or None for scratch, description) of ``init``.

    None → :func:`~PASTALib.model.default_weights_path` (MissingWeightsError says where to get the file)."""
    from PASTALib.model.checkpoint import (
        CheckpointError,
        describe_state_dict,
        infer_config,
        load_state_dict_file,
    )

    if init is not None and str(init).strip().lower() == "scratch":
        return UNetConfig(), None, "scratch"
    path = weights_path(init)
    sd = load_state_dict_file(path)
    if not any(k.startswith("conv_blocks_context.") for k in sd):
        raise CheckpointError(f"{path} is {describe_state_dict(sd)}; --init needs PASTA weights (or 'scratch')")
    cfg = infer_config(sd)
    if cfg.in_channels != 1:
        raise CheckpointError(f"{path} has {cfg.in_channels} input channels; classification feeds one CT channel")
    return cfg, sd, str(path.resolve())


def load_init(model: PastaClassifier, sd: dict[str, torch.Tensor]) -> list[str]:
    """Copy the encoder (and, for the attribute head, ``head.*``) from a PASTA state dict.
    Returns the model keys left at their initialisation (the new head; a head missing in the file)."""
    from PASTALib.model.checkpoint import CheckpointError

    own = model.state_dict()
    wanted = {k for k in own if k.startswith("unet.")}
    source = {f"unet.{k}": v for k, v in sd.items() if f"unet.{k}" in wanted}
    missing = sorted(k for k in wanted if k not in source and not k.startswith("unet.head."))
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in source.items()
              if tuple(v.shape) != tuple(own[k].shape)]
    if missing or shapes:
        raise CheckpointError("the init weights do not fit the encoder: " + "; ".join(
            ([f"missing {missing[:5]}"] if missing else []) + shapes[:5]))
    model.load_state_dict(source, strict=False)
    return sorted(k for k in own if k not in source)


def build_classifier(unet_config: UNetConfig, num_classes: int | None, *, init_state: dict[str, torch.Tensor] | None,
                     seed: int, freeze_encoder: bool = False) -> tuple[PastaClassifier, list[str]]:
    """A PastaClassifier with seeded initialisation (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PastaClassifier(unet_config, num_classes, freeze_encoder=freeze_encoder)
    fresh = load_init(model, init_state) if init_state is not None else sorted(model.state_dict())
    return model, fresh


# --- loss -------------------------------------------------------------------------------------

def class_weight_vector(cfg: ClassifyConfig, num_classes: int, train_targets: Sequence[int]) -> list[float] | None:
    """The cross-entropy class weights of a fold (None: unweighted)."""
    weights = cfg.class_weights
    if weights is None and cfg.task == "detection":
        weights = DEFAULT_DETECTION_WEIGHTS
    if weights is None:
        return None
    if weights == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        y = np.asarray(train_targets)
        missing = sorted(set(range(num_classes)) - set(y.tolist()))
        if missing:
            raise ClassifyError(f"class(es) {missing} are absent from a training fold; 'balanced' weights need every class")
        return [float(w) for w in compute_class_weight("balanced", classes=np.arange(num_classes), y=y)]
    weights = [float(w) for w in weights]
    if len(weights) != num_classes:
        raise ClassifyError(f"--class-weights has {len(weights)} value(s) but the task has {num_classes} classes")
    return weights


def make_loss(task: str, weights: Sequence[float] | None, device: torch.device | str = "cpu"
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (weighted when ``weights``) for detection / roi; grouped cross-entropy over the
    five attribute groups for the attributes task. Logits are taken in float32."""
    if task == "attributes":
        from PASTALib.model.attributes import grouped_cross_entropy

        return lambda logits, target: grouped_cross_entropy(logits.float(), target)
    w = torch.tensor(list(weights), dtype=torch.float32, device=device) if weights is not None else None
    ce = nn.CrossEntropyLoss(weight=w)
    return lambda logits, target: ce(logits.float(), target)


# --- inference --------------------------------------------------------------------------------

def crop_batch(x: np.ndarray, device: torch.device, slf_values: Sequence[float]) -> torch.Tensor:
    from PASTALib.model.preprocess import SLF_THRESHOLDS_HU, slf_normalize, to_head_orientation

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device, non_blocking=True)
    # LPS crops → the authors' LAS-transposed orientation, the one PASTA_final.pth's encoder/head was trained on
    return to_head_orientation(slf_normalize(t, SLF_THRESHOLDS_HU, tuple(slf_values)))[:, None]


@torch.inference_mode()
def predict_logits(model: PastaClassifier, crops: np.ndarray, *, device: torch.device, batch_size: int,
                   amp: bool, slf_values: Sequence[float]) -> np.ndarray:
    """(N, outputs) float32 logits of HU crops (N, S, S, S)."""
    from PASTALib.train.common import amp_dtype, autocast

    model.eval()
    dtype = amp_dtype(device, amp)
    out = []
    for start in range(0, len(crops), batch_size):
        x = crop_batch(crops[start:start + batch_size], device, slf_values)
        with autocast(device, dtype):
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, 0), np.float32)


@torch.inference_mode()
def encode_features(model: PastaClassifier, crops: np.ndarray, *, device: torch.device, batch_size: int,
                    amp: bool, slf_values: Sequence[float]) -> np.ndarray:
    """(N, C) float32 encoder features (GAP of the feature stage) of HU crops (N, S, S, S)."""
    from PASTALib.train.common import amp_dtype, autocast

    was_training = model.training
    model.eval()
    dtype = amp_dtype(device, amp)
    out = []
    for start in range(0, len(crops), batch_size):
        with autocast(device, dtype):
            out.append(model.unet.encode(crop_batch(crops[start:start + batch_size], device, slf_values)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def load_classifier(model_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[PastaClassifier, dict]:
    """(model on ``device`` in eval mode, bundle metadata) of a ``fold_i/model.pth``."""
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ClassifyError(f"model {path} not found; train one with `pasta classify train` (OUT/fold_i/model.pth)")
    from PASTALib.model.checkpoint import read_checkpoint

    bundle = read_checkpoint(path)
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ClassifyError(f"{path} is not a classifier model written by `pasta classify train` "
                            "(for PASTA weights use --init of `pasta classify train`)")
    cfg = UNetConfig.from_dict(bundle["unet_config"])
    with torch.random.fork_rng(devices=[]):
        model = PastaClassifier(cfg, bundle["num_classes"])
    model.load_state_dict(bundle["state_dict"])
    from PASTALib.runtime import resolve_device

    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    meta = {k: v for k, v in bundle.items() if k != "state_dict"}
    return model.to(dev).eval(), meta
