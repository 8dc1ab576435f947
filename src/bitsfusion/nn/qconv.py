"""``QConv2d``: ``nn.Conv2d`` with a packed weight, run through ``kernels.reference.conv2d``.

The weight ``[out, in/groups, kh, kw]`` is quantized viewed as ``[N, K] = [out, in/groups*kh*kw]``:
groups of ``group_size`` run along the flattened ``(channel, kh, kw)`` axis of one output
channel. Only ``padding_mode='zeros'`` is supported (the reflect/replicate/circular modes pad
the input in Python before the op; no kernel here does that yet).

An AWQ scheme's ``input_scale`` (float16 ``[in/groups*kh*kw]``) has one factor per im2col column
``(c, i, j)`` of that view, folded into the dequantised weight before it is viewed back to 4-D.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import UnsupportedLayer
from ..kernels import reference
from ..types import QScheme
from .qmodule import QModule, register_qmodule

__all__ = ["QConv2d"]


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 2:
        raise ValueError(f"QConv2d {name} must be an int or two ints, got {v!r}")
    return t  # type: ignore[return-value]


@register_qmodule(nn.Conv2d)
class QConv2d(QModule):
    """``F.conv2d(x, W'.view(out, in/groups, kh, kw), bias, stride, padding, dilation, groups)``.

    Input float ``[B, in_channels, H, W]``, output ``[B, out_channels, H', W']`` in the input's
    dtype; ``padding`` is two ints or ``'same'``/``'valid'``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        scheme: QScheme,
        weight_error: float | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"QConv2d groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"QConv2d padding must be ints, 'same' or 'valid', got {padding!r}")
            self.padding: tuple[int, int] | str = padding
        else:
            self.padding = _pair(padding, "padding")
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self._init_packed(scheme, shape, weight_error, device)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def _float_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        assert isinstance(module, nn.Conv2d)
        if module.padding_mode != "zeros":
            raise UnsupportedLayer(f"Conv2d with padding_mode={module.padding_mode!r}: QConv2d supports only "
                                   f"padding_mode='zeros'; keep this layer float with a plan rule (its fqn: None)")
        return {"in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                "dilation": module.dilation, "groups": module.groups, "bias": module.bias is not None}

    @staticmethod
    def weight_matrix(module: nn.Module) -> torch.Tensor:
        assert isinstance(module, nn.Conv2d)
        return module.weight.reshape(module.weight.shape[0], -1)

    def module_kwargs(self) -> dict[str, Any]:
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": padding,
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference.conv2d(x, self.packed, self.bias, self._active_bits, self.weight_shape,  # type: ignore[arg-type]
                                self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, {self._scheme_repr()}")
