"""The bundled diffusion model's parts: the digits data, the class-conditional UNet, its conditioner, its judge.

``digits`` (``zoo/digits.py``) is a class-conditional diffusers ``UNet2DConditionModel`` trained on
scikit-learn's bundled 8x8 handwritten digits (1,797 images). It has every layer type of Stable
Diffusion's UNet at a size this machine trains in half an hour:

* ``conv_in`` / ``conv_out`` (3x3), ResNet blocks (two 3x3 convs, ``time_emb_proj``, 1x1 shortcuts),
  down/up-sampling convs;
* ``Transformer2DModel`` blocks: ``proj_in``/``proj_out``, self-attention ``attn1`` and cross-attention
  ``attn2`` (``to_q/to_k/to_v/to_out.0``), GEGLU feed-forward ``ff.net.0.proj`` / ``ff.net.2``;
* the time-embedding MLP ``time_embedding.linear_1/2`` (sinusoidal ``time_proj`` in front).

Conditioning is through cross-attention, as SD's text: a ``ClassConditioner`` turns a label (0-9, or
``NULL_CLASS`` = 10 for "no condition") into ``TOKENS`` learned 64-d tokens. Training drops the label
to ``NULL_CLASS`` 10% of the time, so sampling can use classifier-free guidance.

The judge is ``DigitClassifier``, a small CNN trained on the same training split; its 64-d penultimate
features are where the Frechet distance is measured. Both models are seeded and their training
scripts are ``scripts/train_digits_unet.py`` and ``scripts/train_digits_classifier.py``.

Images are ``float32 [n, 1, 8, 8]`` in [-1, 1] (pixel / 8 - 1; sklearn's pixels are 0..16).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["IMAGE", "CLASSES", "NULL_CLASS", "TOKENS", "COND_DIM", "UNET_CONFIG", "SCHEDULER_CONFIG",
           "ClassConditioner", "DigitClassifier", "build_unet", "load_digits_split", "weights_path",
           "load_trained", "load_classifier"]

IMAGE = 8
CLASSES = 10
NULL_CLASS = CLASSES  # the "unconditional" label classifier-free guidance steers away from
TOKENS = 4  # cross-attention tokens per label (one token would make attention a constant)
COND_DIM = 64
TEST_FRACTION = 0.2
SPLIT_SEED = 0

# Stable Diffusion's block types, at 32/64/64 channels on 8x8 -> 4x4 -> 2x2 (1.49 M parameters).
UNET_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": COND_DIM,
    "attention_head_dim": 2,
    "norm_num_groups": 32,
}

# The noise schedule the model was trained with (diffusers DDPMScheduler arguments).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
}


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ConfigError("the bundled model 'digits' needs diffusers: pip install 'bitsfusion[models]'") from None
    return diffusers


def build_unet(config: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialised ``UNet2DConditionModel`` of ``UNET_CONFIG`` (or ``config``), float32."""
    diffusers = _diffusers()
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    return diffusers.UNet2DConditionModel(**(config or UNET_CONFIG))


class ClassConditioner(nn.Module):
    """Label -> ``TOKENS`` cross-attention tokens, float32 ``[n, TOKENS, COND_DIM]``; label 10 = no condition."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding((CLASSES + 1) * TOKENS, COND_DIM)
        nn.init.normal_(self.tokens.weight, std=1.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        idx = labels.long()[:, None] * TOKENS + torch.arange(TOKENS, device=labels.device)
        return self.tokens(idx)


class DigitClassifier(nn.Module):
    """A small CNN on 8x8 digits: ``forward`` -> logits ``[n, 10]``, ``features`` -> ``[n, 64]``.

    The features are the 64-d layer before its ReLU (the head reads ``relu(features)``): pre-activation
    values are closer to Gaussian and never constant, so the Frechet distance's covariances are full rank.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 64)
        self.head = nn.Linear(64, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


@functools.cache
def load_digits_split() -> dict[str, torch.Tensor]:
    """sklearn's digits as ``{"train_x", "train_y", "test_x", "test_y"}``: images [-1, 1], stratified 80/20.

    The split is fixed (seed 0): the UNet, the classifier and every evaluation use the same one,
    and nothing trains on the 360 test images.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ConfigError("the bundled model 'digits' needs scikit-learn: pip install 'bitsfusion[models]'") from None
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(data.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    train_idx, test_idx = train_test_split(idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                           stratify=y.numpy())
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return {"train_x": x[train_idx], "train_y": y[train_idx], "test_x": x[test_idx], "test_y": y[test_idx]}


def weights_path(name: str) -> Path:
    """``zoo/data/<name>.safetensors`` inside the installed package."""
    return Path(str(resources.files("bitsfusion.zoo") / "data" / f"{name}.safetensors"))


def _read(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = weights_path(name)
    if not path.is_file():
        raise ConfigError(f"the bundled weights {path} are missing; train them with scripts/train_{name}.py")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def load_trained() -> tuple[nn.Module, ClassConditioner]:
    """The trained UNet (EMA weights, float32, eval mode) and its conditioner, from ``digits_unet.safetensors``."""
    tensors, meta = _read("digits_unet")
    unet = build_unet(json.loads(meta["unet_config"]) if "unet_config" in meta else None)
    cond = ClassConditioner()
    unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    cond.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("cond.")})
    return unet.eval(), cond.eval()


def load_classifier() -> DigitClassifier:
    """The judge, from ``digits_classifier.safetensors`` (eval mode)."""
    tensors, _ = _read("digits_classifier")
    clf = DigitClassifier()
    clf.load_state_dict(tensors)
    return clf.eval()
