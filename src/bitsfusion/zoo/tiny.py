"""``tiny``: a small seeded vision transformer with random weights, for tests and examples.

Every layer type the toolkit meets in real models is here, so a quantize report shows both
quantized layers and skipped ones with their reasons::

    stem   Conv2d(3, 16, 3x3)          weight [16, 27]   -> quantized (K = 3*3*3)
    patch  Conv2d(16, 64, 4x4, /4)     weight [64, 256]  -> quantized
    pos    Embedding(16, 64)                             -> float (no quantized module)
    norm   LayerNorm(64)                                 -> float
    fc1    Linear(64, 128), fc2 Linear(128, 64), head Linear(64, 10) -> quantized

``forward(x: float32 [B, 3, 16, 16]) -> logits float32 [B, 10]``. Weights are PyTorch's
default initialisation drawn under ``seed`` (the global RNG is left untouched), so two
builds are bit-identical. It is also the example of a user factory:
``bitsfusion quantize bitsfusion.zoo.tiny:build_tiny ...`` (a plain ``nn.Module`` with an
``example_inputs`` method) or ``bitsfusion.zoo.tiny:tiny_spec`` (a full ``ModelSpec``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.metrics import cosine_stats, output_mse, sqnr_db
from .registry import ModelSpec, register_model

__all__ = ["TinyNet", "build_tiny", "tiny_spec", "tiny_inputs"]

IMAGE = 16
EVAL_SEED = 1234
CALIBRATION_SEED = 4321


class TinyNet(nn.Module):
    """Conv stem, 4x4 patches as 16 tokens with learned positions, one pre-norm MLP block, a linear head."""

    def __init__(self, width: int = 64, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.patch = nn.Conv2d(16, width, 4, stride=4)
        self.pos = nn.Embedding((IMAGE // 4) ** 2, width)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, classes)
        self.register_buffer("positions", torch.arange((IMAGE // 4) ** 2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(F.gelu(self.stem(x)))  # [B, width, 4, 4]
        t = h.flatten(2).transpose(1, 2) + self.pos(self.positions)  # [B, 16, width]
        t = t + self.fc2(F.gelu(self.fc1(self.norm(t))))
        return self.head(t.mean(dim=1))

    def example_inputs(self, n: int = 8) -> torch.Tensor:
        """``n`` fixed images ``[n, 3, 16, 16]`` (seeded): what a generic evaluator feeds the model."""
        return tiny_inputs(n, EVAL_SEED)


def tiny_inputs(n: int, seed: int) -> torch.Tensor:
    """``n`` standard-normal images float32 ``[n, 3, 16, 16]`` drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, IMAGE, IMAGE, generator=g)


def build_tiny(seed: int = 0) -> TinyNet:
    """A ``TinyNet`` in eval mode, float32, its weights drawn under ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyNet()
    return model.eval()


def _run(model: nn.Module, batch: Any) -> torch.Tensor:
    with torch.inference_mode():
        return model(batch).float()


def _calibration(n: int) -> list[torch.Tensor]:
    """``n`` batches of 8 random images, disjoint in seed from the evaluation images."""
    return list(tiny_inputs(8 * n, CALIBRATION_SEED).split(8)) if n > 0 else []


def _evaluate(reference: nn.Module, candidate: nn.Module) -> dict[str, float]:
    """Logit quality on 64 fixed images: mean and 5th-percentile cosine, MSE, SQNR (dB)."""
    x = tiny_inputs(64, EVAL_SEED)
    ref, cand = _run(reference, x), _run(candidate, x)
    cos = cosine_stats(ref, cand)
    return {"mean_cos": cos["mean"], "p5_cos": cos["p5"], "mse": output_mse(ref, cand), "sqnr_db": sqnr_db(ref, cand)}


@register_model("tiny")
def tiny_spec() -> ModelSpec:
    """The ``tiny`` spec: random seeded weights, judged by its logits on fixed random images."""
    return ModelSpec(
        name="tiny",
        description="TinyNet: seeded random conv + transformer-block toy model (tests, examples)",
        build=build_tiny,
        calibration=_calibration,
        evaluate=_evaluate,
        run=_run,
        default_skip=(),
    )
