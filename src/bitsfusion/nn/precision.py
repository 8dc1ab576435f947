"""``SwitchablePrecision``: a layer that stores several precisions and runs at one of them.

Packed layers (``QModule``) and the fake-quant layers of quantisation-aware training
(``bitsfusion.train.qat``) both run at ``active_bits``, one of ``scheme.precisions``, chosen per instance
and never saved in the state. ``nn.set_active_bits`` switches every such layer of a model, so one call
moves a packed model or a model in training to another precision.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..types import QScheme

__all__ = ["SwitchablePrecision"]


class SwitchablePrecision:
    """Mixin: ``scheme`` (set by the subclass) and ``_active_bits`` (initially ``scheme.bits``)."""

    scheme: QScheme
    _active_bits: int

    @property
    def active_bits(self) -> int:
        """The precision ``forward`` runs at (default: every stored bit)."""
        return self._active_bits

    def set_active_bits(self, bits: int) -> None:
        """Run at ``bits``, one of ``scheme.precisions``: a different prefix of planes, nothing repacked."""
        if isinstance(bits, bool) or bits not in self.scheme.precisions:
            raise ConfigError(f"this {type(self).__name__} ({self.scheme}) can run at "
                              f"{list(self.scheme.precisions)} bits, not {bits!r}; quantize with "
                              f"QScheme(nested=...) to store more precisions")
        self._active_bits = int(bits)
