"""``set_active_bits(model, bits)``: run every quantized layer of a model at a lower precision.

A layer stored at ``b`` bits runs at ``min(bits, b)``: its top planes with that precision's
scales (``QModule.set_active_bits``); a fake-quant layer in training (``train.qat``) likewise.
Nothing is repacked or copied, so switching back and forth
is free. All layers are checked before any is switched: either every layer switches or none.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..types import MAX_BITS, MIN_BITS
from .precision import SwitchablePrecision

__all__ = ["set_active_bits", "active_bits_of"]


def set_active_bits(model: nn.Module, bits: int) -> dict[str, int]:
    """Run every quantized layer of ``model`` at ``min(bits, its stored bits)``; returns ``{fqn: bits now active}``.

    Quantized layers are ``QModule``s and the fake-quant layers of training (``SwitchablePrecision``).

    ``ConfigError`` when ``bits`` is not in 1..8, when the model holds no quantized layer, or when
    a layer does not store the precision it would need, naming the layer and its precisions
    (quantize with ``QScheme(nested=...)`` to store them).
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"active bits must be an int in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    layers = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, SwitchablePrecision)]
    if not layers:
        raise ConfigError("the model has no quantized layers: run quantize_ (or load an artifact) first")
    wanted = {fqn: min(bits, m.scheme.bits) for fqn, m in layers}
    missing = [(fqn, m) for fqn, m in layers if wanted[fqn] not in m.scheme.precisions]
    if missing:
        fqn, m = missing[0]
        more = f" (and {len(missing) - 1} more layers)" if len(missing) > 1 else ""
        raise ConfigError(f"layer '{fqn}' ({m.scheme}) stores precisions {list(m.scheme.precisions)}, not "
                          f"{wanted[fqn]}{more}; quantize with QScheme(nested=({wanted[fqn]},)) to run it at "
                          f"{wanted[fqn]} bits")
    for fqn, m in layers:
        m.set_active_bits(wanted[fqn])
    return wanted


def active_bits_of(model: nn.Module) -> dict[str, int]:
    """``{fqn: active bits}`` of every quantized layer."""
    return {fqn: m.active_bits for fqn, m in model.named_modules() if isinstance(m, SwitchablePrecision)}
