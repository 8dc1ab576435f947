"""A small random diffusers UNet with every Stable Diffusion layer type (shared by the integration tests)."""

from __future__ import annotations

import torch

TINY_UNET = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1, "cross_attention_dim": 16, "attention_head_dim": 2, "norm_num_groups": 8,
}


def make_unet(seed: int = 0, **overrides):
    """A seeded ``UNet2DConditionModel`` of ``TINY_UNET`` (~0.1 M parameters), eval mode."""
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(**{**TINY_UNET, **overrides})
    return unet.eval()
