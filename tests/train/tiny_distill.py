"""A tiny teacher/student pair and data for the Distiller tests (also run under ``accelerate launch``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

import bitsfusion as bf
from bitsfusion.train import prepare
from bitsfusion.train.losses import relative_mse


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(24, 48), nn.GELU())
        self.block2 = nn.Sequential(nn.Linear(48, 48), nn.GELU())
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x)))


def pair(scheme: bf.QScheme | None = None, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    teacher = Tiny().eval()
    student = copy.deepcopy(teacher)
    prepare(student, bf.BitPlan(default=scheme or bf.QScheme(bits=2, group_size=16, grid="asymmetric")),
            progress=False)
    return teacher, student


def data(n: int = 12, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 24, generator=g) for _ in range(n)]


def forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch)


def loss(s: torch.Tensor, t: torch.Tensor, _batch: object) -> torch.Tensor:
    return relative_mse(s, t)


def held_out_score(teacher: nn.Module, student: nn.Module) -> float:
    x = torch.randn(256, 24, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        return 1.0 - float(relative_mse(student(x), teacher(x)))
