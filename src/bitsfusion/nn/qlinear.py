"""``QLinear``: ``nn.Linear`` with a packed weight, run through ``kernels.dispatch.linear``.

``dispatch.linear`` runs the native kernels (``bitsfusion._C``) when they can take the call and falls back
to ``kernels.reference.linear`` otherwise (no extension, autograd, a weight layout the kernels lack).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..kernels import dispatch
from ..types import QScheme
from .qmodule import QModule, register_qmodule

__all__ = ["QLinear"]


@register_qmodule(nn.Linear)
class QLinear(QModule):
    """``y = x @ W'^T + bias``, ``W'`` the ``[out_features, in_features]`` weight at ``active_bits``.

    Input float ``[..., in_features]``, output ``[..., out_features]`` in the input's dtype. The
    bias stays a float parameter (default float32). An AWQ scheme adds the buffer ``input_scale``
    (float16 ``[in_features]``), folded into ``W'`` (``W'[:, k] *= input_scale[k]``) at every precision.

    Run-time options (plain attributes, not saved in the artifact): ``exact = True`` keeps this layer off
    the int8 kernels (fp32 tables and activations: ``lut32`` / ``dequant``), for layers whose quality
    int8 activations would hurt; ``kernel`` forces a kernel name of ``kernels.dispatch.KERNEL_CHOICES``
    (None: ``$BITSFUSION_KERNEL`` or the choice by shape); ``activation`` (None or ``"gelu"``) applies that
    function to ``y`` inside the kernel, set by ``nn.fuse_activations_`` when it removes the model's
    own activation module after this layer.
    """

    exact: bool = False
    kernel: str | None = None
    activation: str | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        scheme: QScheme,
        weight_error: float | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_packed(scheme, (self.out_features, self.in_features), weight_error, device)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def _float_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        assert isinstance(module, nn.Linear)
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}

    @staticmethod
    def weight_matrix(module: nn.Module) -> torch.Tensor:
        assert isinstance(module, nn.Linear)
        return module.weight

    def module_kwargs(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.linear(x, self.packed, self.bias, self._active_bits, kernel=self.kernel, exact=self.exact,
                               activation=self.activation)

    def extra_repr(self) -> str:
        act = "" if self.activation is None else f", activation={self.activation}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._scheme_repr()}{act}")
