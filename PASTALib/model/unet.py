"""The PASTA 3D UNet (generic nnU-Net v1 style) with the attribute head, state-dict compatible
with the public ``PASTA_final.pth``.

The building blocks are written out explicitly instead of using MONAI's ``DynUNet`` /
``BasicUNet``: the checkpoint's key names (``conv_blocks_context.0.blocks.0.conv.weight``,
``conv_blocks_context.5.0.blocks.0...``, ``tu.N``, ``conv_blocks_localization.N.M.blocks.0...``,
``seg_outputs.N``, ``head.N``) fix the module tree, and no MONAI network produces it. Only
plain torch layers (Conv3d, InstanceNorm3d, LeakyReLU, ConvTranspose3d, Linear) are used, so the
full-size model can be built on the meta device to check the layout without allocating memory.

Layout (defaults = the published model): 6 stages with 64,128,256,512,1024,1024 channels.
Stage ``d`` (0..4) is ``conv_blocks_context[d]`` = two conv→InstanceNorm(affine)→LeakyReLU(0.01)
blocks, the first with stride 2 for d ≥ 1. Stage 5 (bottleneck) is
``conv_blocks_context[5]`` = Sequential of two one-block stacks, the first with stride 2.
Decoder step ``u`` (0..4): ``tu[u]`` ConvTranspose3d(k2, s2, no bias) → concatenate the skip of
stage ``4-u`` → ``conv_blocks_localization[u]`` (two one-block stacks) → ``seg_outputs[u]``
(1×1×1 conv, no bias). The encoder feature is the global average pool of stage 4
(1/16 resolution, not the bottleneck), fed to ``head`` (Linear→LeakyReLU→Linear→LeakyReLU→Linear).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from PASTALib.model.attributes import NUM_ATTRIBUTE_LOGITS


@dataclass(frozen=True)
class UNetConfig:
    """Settings of :class:`PastaUNet`. The defaults are the published PASTA model (~241M params)."""

    in_channels: int = 1
    num_seg_classes: int = 26  # background + organs 1-10 + lesions 11-25 (PASTA-Gen labels)
    base_channels: int = 64
    max_channels: int = 1024
    num_stages: int = 6  # including the bottleneck; num_stages-1 downsamplings
    num_attribute_logits: int = NUM_ATTRIBUTE_LOGITS  # 14 = [5, 3, 2, 2, 2]
    head_hidden: tuple[int, int] = (512, 256)
    negative_slope: float = 1e-2
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_stages < 3:
            raise ValueError("num_stages must be ≥ 3 (the feature is taken from stage num_stages-2)")
        for name in ("in_channels", "num_seg_classes", "base_channels", "max_channels", "num_attribute_logits"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of every stage, e.g. (64, 128, 256, 512, 1024, 1024)."""
        return tuple(min(self.base_channels * 2**d, self.max_channels) for d in range(self.num_stages))

    @property
    def feature_channels(self) -> int:
        """Channels of the encoder feature (the stage before the bottleneck)."""
        return self.stage_channels[-2]

    @property
    def divisor(self) -> int:
        """Spatial input sizes must be multiples of this (2 ** number of downsamplings)."""
        return 2 ** (self.num_stages - 1)

    @property
    def feature_stride(self) -> int:
        """Resolution of the feature stage relative to the input (16 for the published model)."""
        return 2 ** (self.num_stages - 2)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["head_hidden"] = list(self.head_hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "head_hidden" in known:
            known["head_hidden"] = tuple(known["head_hidden"])
        return cls(**known)

    @classmethod
    def tiny(cls, **overrides) -> "UNetConfig":
        """A small variant for CPU tests: the published topology (6 stages, inputs divisible by 32)
        with channels 4, 8, 16, 32, 32, 32."""
        params = dict(base_channels=4, max_channels=32, num_stages=6, head_hidden=(32, 16))
        params.update(overrides)
        return cls(**params)


class ConvNormNonlin(nn.Module):
    """conv(bias) → InstanceNorm3d(affine) → LeakyReLU; attribute names are the checkpoint's."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=True)
        self.instnorm = nn.InstanceNorm3d(cout, eps=cfg.norm_eps, affine=True)
        self.lrelu = nn.LeakyReLU(cfg.negative_slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrelu(self.instnorm(self.conv(x)))


class StackedConvLayers(nn.Module):
    """``num_convs`` ConvNormNonlin in ``self.blocks``; only the first may be strided."""

    def __init__(self, cin: int, cout: int, num_convs: int, first_stride: int, cfg: UNetConfig) -> None:
        super().__init__()
        layers = [ConvNormNonlin(cin, cout, first_stride, cfg)]
        layers += [ConvNormNonlin(cout, cout, 1, cfg) for _ in range(num_convs - 1)]
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class PastaOutput(NamedTuple):
    """Result of :meth:`PastaUNet.forward`."""

    #: deep-supervision logits, full resolution first: shapes (B, S, D/2**i, H/2**i, W/2**i), i = 0..4
    segmentation: list[torch.Tensor]
    #: (B, 14) attribute logits grouped [5, 3, 2, 2, 2]
    attribute_logits: torch.Tensor
    #: (B, 1024) encoder feature (global average pool of stage 4)
    feature: torch.Tensor


class PastaUNet(nn.Module):
    """PASTA segmentation UNet + attribute head. See the module docstring for the layout."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        self.config = cfg
        ch = cfg.stage_channels
        n_down = cfg.num_stages - 1

        context: list[nn.Module] = []
        cin = cfg.in_channels
        for d in range(n_down):
            context.append(StackedConvLayers(cin, ch[d], 2, 1 if d == 0 else 2, cfg))
            cin = ch[d]
        context.append(nn.Sequential(
            StackedConvLayers(cin, ch[-1], 1, 2, cfg),
            StackedConvLayers(ch[-1], ch[-1], 1, 1, cfg),
        ))
        self.conv_blocks_context = nn.ModuleList(context)

        tu, loc, seg = [], [], []
        below = ch[-1]
        for u in range(n_down):
            skip = ch[n_down - 1 - u]
            tu.append(nn.ConvTranspose3d(below, skip, kernel_size=2, stride=2, bias=False))
            loc.append(nn.Sequential(
                StackedConvLayers(2 * skip, skip, 1, 1, cfg),
                StackedConvLayers(skip, skip, 1, 1, cfg),
            ))
            seg.append(nn.Conv3d(skip, cfg.num_seg_classes, kernel_size=1, bias=False))
            below = skip
        self.tu = nn.ModuleList(tu)
        self.conv_blocks_localization = nn.ModuleList(loc)
        self.seg_outputs = nn.ModuleList(seg)

        h1, h2 = cfg.head_hidden
        self.head = nn.Sequential(
            nn.Linear(cfg.feature_channels, h1),
            nn.LeakyReLU(cfg.negative_slope),
            nn.Linear(h1, h2),
            nn.LeakyReLU(cfg.negative_slope),
            nn.Linear(h2, cfg.num_attribute_logits),
        )

    # -- helpers ---------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected input (B, {cfg.in_channels}, D, H, W), got {tuple(x.shape)}")
        if any(s % cfg.divisor for s in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be a multiple of {cfg.divisor} "
                f"({cfg.num_stages - 1} stride-2 downsamplings); pad the patch first"
            )

    def _encode(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        skips = []
        for d in range(upto):
            x = self.conv_blocks_context[d](x)
            skips.append(x)
        return skips

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        # Pooled in fp32 even under bf16/fp16 autocast: features of different cases differ by ~1 %,
        # and rounding the pooled value to bf16 (0.4 % steps) is a sizeable part of that spread once
        # the features are standardised. A no-op for fp32 inputs (the authors' computation).
        return x.float().mean(dim=(2, 3, 4))

    # -- public API ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *, deep_supervision: bool = True) -> PastaOutput:
        """Segmentation (deep supervision, full resolution first), attribute logits and feature."""
        self._check_input(x)
        n_down = self.config.num_stages - 1
        skips = self._encode(x, n_down)
        feature = self._pool(skips[-1])
        y = self.conv_blocks_context[-1](skips[-1])
        outs = []
        for u in range(n_down):
            y = self.tu[u](y)
            y = torch.cat((y, skips[-(u + 1)]), dim=1)
            y = self.conv_blocks_localization[u](y)
            if deep_supervision or u == n_down - 1:
                outs.append(self.seg_outputs[u](y))
        return PastaOutput(outs[::-1], self.head(feature), feature)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution segmentation logits (B, S, D, H, W) only."""
        return self.forward(x, deep_supervision=False).segmentation[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder feature (B, feature_channels): global average pool of stage num_stages-2.

        Runs the encoder only (no bottleneck, no decoder), as the public classification code.
        Inputs must be multiples of ``feature_stride`` (16) here.
        """
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected input (B, {cfg.in_channels}, D, H, W), got {tuple(x.shape)}")
        return self._pool(self._encode(x, cfg.num_stages - 1)[-1])

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute logits (B, 14) from the encoder only."""
        return self.head(self.encode(x))

    def segmentation_parameters(self) -> list[nn.Parameter]:
        """Everything except the attribute head (frozen in stage 2)."""
        return [p for n, p in self.named_parameters() if not n.startswith("head.")]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
