"""``QConv2d``: ``nn.Conv2d`` with a packed weight, run natively as im2col + ``kernels.dispatch.linear``.

With ``groups == 1``, a 1x1 kernel or at most ``IM2COL_MAX_PATCHES`` output positions, and a call the
native kernels can take, the input is unfolded (``F.unfold``, after
padding it for ``'same'``) to ``[B * L, in*kh*kw]`` patches and multiplied by the packed weight with
``kernels.dispatch.linear`` (its kernel choice by rows: int8-activation GEMM for many patches). Otherwise
(grouped or depthwise convs, autograd, no extension, ``$BITSFUSION_KERNEL=reference``) it runs
``kernels.reference.conv2d``.

The weight ``[out, in/groups, kh, kw]`` is quantized viewed as ``[N, K] = [out, in/groups*kh*kw]``:
groups of ``group_size`` run along the flattened ``(channel, kh, kw)`` axis of one output
channel. Only ``padding_mode='zeros'`` is supported (the reflect/replicate/circular modes pad
the input in Python before the op; no kernel here does that yet).

An AWQ scheme's ``input_scale`` (float16 ``[in/groups*kh*kw]``) has one factor per im2col column
``(c, i, j)`` of that view, folded into the dequantised weight before it is viewed back to 4-D.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedLayer
from ..kernels import dispatch, reference
from ..types import QScheme
from .qmodule import QModule, register_qmodule

__all__ = ["QConv2d"]

# Above this many output positions (batch x H' x W') a k x k conv (k > 1) stays on the reference: measured on
# the development machine (one thread, 4 bits, group 64): 640->640 3x3 on 16x16 (256 patches) im2col + int8
# 32 ms vs reference 149 ms; 320->320 3x3 on 32x32 (1024) 115 ms vs 50 ms; on 64x64 457 ms vs 211 ms. A 1x1
# conv unfolds to no more data than its input and always runs natively (320->1280 on 32x32: 9 ms vs 23 ms).
IM2COL_MAX_PATCHES = 512


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
    dtype; ``padding`` is two ints or ``'same'``/``'valid'``. ``exact`` and ``kernel``: as ``QLinear``'s.
    """

    exact: bool = False
    kernel: str | None = None

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

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        if self.padding == "same":
            return h, w  # (stride 1: PyTorch allows 'same' only then)
        ph, pw = (0, 0) if self.padding == "valid" else self.padding  # type: ignore[misc]
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def _native_reason(self, x: torch.Tensor) -> str | None:
        if self.groups != 1:
            return f"groups={self.groups}: the native path is im2col for groups=1"
        if x.dim() != 4:
            return f"input of shape {list(x.shape)} is not [B, C, H, W]"
        rows = x.shape[0] * math.prod(self._out_hw(x.shape[2], x.shape[3]))
        if self.kernel_size != (1, 1) and rows > IM2COL_MAX_PATCHES:
            return f"{rows} patches > {IM2COL_MAX_PATCHES}: unfolding them costs more than the int8 GEMM saves"
        if dispatch.requested_kernel(self.kernel) == "reference":
            return "reference kernel requested"
        return dispatch.fallback_reason(x, self.packed, self.bias)

    def _im2col_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.unfold`` patches ``[B, L, K]`` times the packed weight, viewed back to ``[B, out, H', W']``."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        if self.padding == "same":
            th, tw = dh * (kh - 1), dw * (kw - 1)
            x = F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2))
            pad = (0, 0)
        else:
            pad = (0, 0) if self.padding == "valid" else self.padding
        b, _, h, w = x.shape
        h_out = (h + 2 * pad[0] - dh * (kh - 1) - 1) // sh + 1  # type: ignore[index]
        w_out = (w + 2 * pad[1] - dw * (kw - 1) - 1) // sw + 1  # type: ignore[index]
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=pad, stride=self.stride)
        y = dispatch.linear(cols.transpose(1, 2), self.packed, self.bias, self._active_bits, kernel=self.kernel,
                            exact=self.exact)  # [B, L, out]
        return y.transpose(1, 2).reshape(b, self.out_channels, h_out, w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._native_reason(x) is None:
            return self._im2col_forward(x)
        return reference.conv2d(x, self.packed, self.bias, self._active_bits, self.weight_shape,  # type: ignore[arg-type]
                                self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, {self._scheme_repr()}")
