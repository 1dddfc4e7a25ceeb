"""The refinement network and noise schedule, built from MONAI's diffusion components."""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

from PASTALib.refine.config import RefinerConfig

#: Input channels: noisy CT (normalised) + organ mask condition; output: predicted noise.
IN_CHANNELS = 2
OUT_CHANNELS = 1


def build_model(config: RefinerConfig) -> DiffusionModelUNet:
    """3D conditional DDPM UNet (organ mask concatenated to the noisy image)."""
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=IN_CHANNELS,
        out_channels=OUT_CHANNELS,
        channels=config.channels,
        attention_levels=(False,) * config.levels,
        num_res_blocks=config.num_res_blocks,
        norm_num_groups=config.norm_num_groups,
        num_head_channels=config.channels[-1],  # one head in the mid-block attention
        use_flash_attention=True,  # torch SDPA: the mid-block attention never materialises N x N
    )


def build_scheduler(config: RefinerConfig) -> DDPMScheduler:
    """DDPM schedule (T = num_train_timesteps, epsilon prediction, x0 clipped to [-1, 1])."""
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, schedule=config.schedule,
                         prediction_type="epsilon", clip_sample=True)


def set_refine_timesteps(scheduler: DDPMScheduler, steps: int) -> torch.Tensor:
    """Timesteps ``steps-1, ..., 0``: partial noising to ``steps-1`` then one DDPM step each.

    ``DDPMScheduler.set_timesteps`` spreads its steps over all T (it is meant for sampling from
    pure noise); refinement starts close to the data, so the chain is the last ``steps`` steps.
    """
    scheduler.num_inference_steps = steps
    scheduler.timesteps = torch.arange(steps - 1, -1, -1, dtype=torch.long)
    return scheduler.timesteps
