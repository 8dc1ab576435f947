"""A small random diffusers UNet with every Stable Diffusion layer type, and a matching DDIM scheduler."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tiny_unet import make_unet  # noqa: E402


@pytest.fixture
def unet():
    return make_unet()


@pytest.fixture
def ddim():
    s = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    s.set_timesteps(10)
    return s


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(3)
    return torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 4, 16, generator=g)
