"""``PackedWeight``: one layer's quantized weight in its stored form, as named tensors.

It holds exactly the tensors a quantized module registers as buffers and an artifact saves
as ``{fqn}.{suffix}``. For a scheme of ``b`` bits, ``n_groups`` groups per row and a weight
``[N, K]`` (``tensor_specs`` is the single source of these names, dtypes and shapes):

================ ======= ================================ =====================================
suffix           dtype   shape                            holds
================ ======= ================================ =====================================
``qweight``      uint8   ``[b, N, ceil(K/8)]``            bit-planes, MSB first (sym., asym.)
``qweight``      uint8   ``[N, ceil(K/d) * w]``           base-``L`` words (balanced grid)
``scales``       float16 ``[N, n_groups]``                scale per group at ``b`` bits
``zeros``        float16 ``[N, n_groups]``                zero point per group (asym. only)
``scales_b{b'}`` float16 ``[N, n_groups]``                scale at nested precision ``b'``
``zeros_b{b'}``  float16 ``[N, n_groups]``                zero at ``b'`` (asym. only)
``input_scale``  float16 ``[K]``                          ``1/s`` per column (AWQ schemes only)
================ ======= ================================ =====================================

Running at ``b' < b`` reads only the first ``b'`` planes (``codes(b') == codes() >> (b - b')``)
with that precision's scales and zeros, so one stored weight serves every precision in
``scheme.precisions``. Suffixes contain no dots, so they are valid ``nn.Module`` buffer names.

An activation-aware scheme (``scheme.calibration.scales_inputs``: ``awq``, ``awq+gptq``) stores its
codes in the scaled basis ``W diag(s)`` and ``input_scale = 1/s``; every precision shares it, and
``dequantize`` multiplies column ``k`` by ``input_scale[k]`` (see ``quant.codes``), so the weight
it returns is in the original basis. A rotated scheme (``scheme.rotation``) stores the codes of ``W R^T``
and nothing more (``R`` is a function of the scheme, ``quant.rotation``); ``dequantize`` rotates back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, FormatError
from ..quant.codes import QuantizedWeight, dequantize_codes
from ..quant.rotation import unrotate
from ..types import QScheme
from .basepack import base_row_bytes, pack_base, unpack_base
from .bitplanes import bitplanes_shape, pack_bitplanes, unpack_bitplanes

__all__ = ["PackedWeight", "TensorSpec"]

TensorSpec = tuple[torch.dtype, tuple[int, ...]]
Nested = dict[int, tuple[torch.Tensor, torch.Tensor | None]]


def _check_shape(shape: object) -> tuple[int, int]:
    ok = (
        isinstance(shape, (tuple, list, torch.Size))
        and len(shape) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    )
    if not ok:
        raise ConfigError(f"a packed weight's shape must be (N, K) with two positive ints, got {shape!r}")
    return int(shape[0]), int(shape[1])  # type: ignore[index]


def _check_tensors(scheme: QScheme, shape: tuple[int, int], tensors: Mapping[str, object]) -> None:
    """FormatError naming the first tensor that is missing, unexpected, or of the wrong dtype/shape."""
    specs = PackedWeight.tensor_specs(scheme, shape)
    for suffix in specs:
        if suffix not in tensors:
            raise FormatError(
                f"missing: a {scheme} weight of shape {list(shape)} needs {sorted(specs)}", tensor=suffix
            )
    for suffix in tensors:
        if suffix not in specs:
            raise FormatError(
                f"unexpected: a {scheme} weight of shape {list(shape)} stores only {sorted(specs)}",
                tensor=suffix,
            )
    for suffix, (dtype, spec_shape) in specs.items():
        t = tensors[suffix]
        if not isinstance(t, torch.Tensor):
            raise FormatError(f"must be a torch.Tensor, got {type(t).__name__}", tensor=suffix)
        if t.dtype != dtype:
            raise FormatError(f"wrong dtype: expected {dtype}, got {t.dtype}", tensor=suffix)
        if tuple(t.shape) != spec_shape:
            raise FormatError(
                f"wrong shape: a {scheme} weight of shape {list(shape)} needs {list(spec_shape)}, "
                f"got {list(t.shape)}",
                tensor=suffix,
            )


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A layer's packed codes plus the scales (and zeros) of every precision it stores.

    Attributes:
        scheme: how the weight was quantized.
        shape: ``(N, K)`` of the unpacked weight.
        qweight: uint8 bit-planes ``[bits, N, ceil(K/8)]`` (symmetric, asymmetric grids) or
            base-``L`` words ``[N, row_bytes]`` (balanced grid); see the module docstring.
        scales: float16 ``[N, n_groups]``.
        zeros: float16 ``[N, n_groups]`` on the asymmetric grid, else None.
        nested: ``{b': (scales, zeros | None)}`` for each ``b'`` in ``scheme.nested``.
        input_scale: float16 ``[K]`` when ``scheme.calibration.scales_inputs``, else None.

    Every field is validated on construction (``FormatError`` naming the tensor at fault).
    """

    scheme: QScheme
    shape: tuple[int, int]
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None
    nested: Nested = field(default_factory=dict)
    input_scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, QScheme):
            raise ConfigError(f"scheme must be a QScheme, got {type(self.scheme).__name__}")
        object.__setattr__(self, "shape", _check_shape(self.shape))
        object.__setattr__(self, "nested", {int(b): self.nested[b] for b in sorted(self.nested)})
        _check_tensors(self.scheme, self.shape, self._named())

    @staticmethod
    def tensor_specs(scheme: QScheme, shape: tuple[int, int]) -> dict[str, TensorSpec]:
        """``{suffix: (dtype, shape)}`` of every tensor a ``scheme`` weight of ``shape`` stores.

        Example: ``QScheme(4, group_size=64, grid="asymmetric", nested=(2,))`` at ``(3, 100)``
        gives ``qweight`` uint8 ``(4, 3, 13)``, and ``scales``, ``zeros``, ``scales_b2``,
        ``zeros_b2`` float16 ``(3, 2)``; with ``calibration="awq"`` also ``input_scale`` float16 ``(100,)``.
        """
        n, k = _check_shape(shape)
        if scheme.grid.nests:
            qshape: tuple[int, ...] = bitplanes_shape(scheme.bits, n, k)
        else:
            qshape = (n, base_row_bytes(k, scheme.levels))
        group = (n, scheme.n_groups(k))
        specs: dict[str, TensorSpec] = {"qweight": (torch.uint8, qshape), "scales": (torch.float16, group)}
        if scheme.has_zeros:
            specs["zeros"] = (torch.float16, group)
        for b in scheme.nested:
            specs[f"scales_b{b}"] = (torch.float16, group)
            if scheme.has_zeros:
                specs[f"zeros_b{b}"] = (torch.float16, group)
        if scheme.calibration.scales_inputs:
            specs["input_scale"] = (torch.float16, (k,))
        return specs

    def _named(self) -> dict[str, object]:
        out: dict[str, object] = {"qweight": self.qweight, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        for b, (s, z) in self.nested.items():
            out[f"scales_b{b}"] = s
            if z is not None:
                out[f"zeros_b{b}"] = z
        if self.input_scale is not None:
            out["input_scale"] = self.input_scale
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by suffix, exactly the keys of ``tensor_specs`` (no copies)."""
        return self._named()  # type: ignore[return-value]  # validated as tensors in __post_init__

    @classmethod
    def from_tensors(
        cls, scheme: QScheme, shape: tuple[int, int], tensors: Mapping[str, torch.Tensor]
    ) -> "PackedWeight":
        """Rebuild from ``tensors()`` output (e.g. loaded from an artifact).

        Raises ``FormatError(..., tensor=suffix)`` for the first tensor that is missing,
        unexpected, or of the wrong dtype or shape for ``tensor_specs(scheme, shape)``.
        """
        shape = _check_shape(shape)
        _check_tensors(scheme, shape, tensors)
        nested: Nested = {b: (tensors[f"scales_b{b}"], tensors.get(f"zeros_b{b}")) for b in scheme.nested}
        return cls(scheme, shape, tensors["qweight"], tensors["scales"], tensors.get("zeros"), nested,
                   tensors.get("input_scale"))

    @classmethod
    def empty(
        cls, scheme: QScheme, shape: tuple[int, int], device: torch.device | str | None = None
    ) -> "PackedWeight":
        """All-zero tensors of the right dtypes and shapes, to load stored values into."""
        specs = cls.tensor_specs(scheme, shape)
        zeros = {s: torch.zeros(sh, dtype=dt, device=device) for s, (dt, sh) in specs.items()}
        return cls.from_tensors(scheme, shape, zeros)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight) -> "PackedWeight":
        """Pack a ``QuantizedWeight``: bit-planes when the grid nests, base-``L`` words if not.

        Scales and zeros are kept as they are (float16, no copy). Raises ``ConfigError`` when
        the codes are out of range or a scale/zero does not match the scheme.
        """
        scheme = qw.scheme
        if scheme.grid.nests:
            qweight = pack_bitplanes(qw.codes, scheme.bits)
        else:
            qweight = pack_base(qw.codes, scheme.levels)
        if set(qw.nested) != set(scheme.nested):
            raise ConfigError(
                f"the QuantizedWeight holds nested precisions {sorted(qw.nested)}, its scheme {scheme} "
                f"says {list(scheme.nested)}"
            )
        try:
            return cls(scheme, qw.shape, qweight, qw.scales, qw.zeros, dict(qw.nested), qw.input_scale)
        except FormatError as e:
            raise ConfigError(f"the QuantizedWeight does not match its scheme {scheme}: {e}") from None

    def to_quantized(self) -> QuantizedWeight:
        """The lossless inverse of ``from_quantized`` (codes unpacked; scales shared, not copied)."""
        return QuantizedWeight(self.codes(), self.scales, self.zeros, self.scheme, dict(self.nested),
                               self.input_scale)

    def _precision(self, active_bits: int | None) -> int:
        if active_bits is None:
            return self.scheme.bits
        if active_bits not in self.scheme.precisions:
            raise ConfigError(
                f"this {self.scheme} weight can run at {list(self.scheme.precisions)} bits, not {active_bits!r}; "
                f"store more precisions with QScheme(nested=...)"
            )
        return active_bits

    def codes(self, active_bits: int | None = None) -> torch.Tensor:
        """``[N, K]`` codes at ``active_bits`` (default: all bits): ``codes() >> (bits - active_bits)``.

        uint8, except int16 for the 8-bit balanced grid, whose codes run to 256
        (``basepack.code_dtype``).
        """
        b = self._precision(active_bits)
        k = self.shape[1]
        if self.scheme.grid.nests:
            return unpack_bitplanes(self.qweight, k, b)
        return unpack_base(self.qweight, k, self.scheme.levels)

    def scale_zero(self, active_bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scales and zeros (None unless asymmetric) of precision ``active_bits`` (default: all bits)."""
        b = self._precision(active_bits)
        return (self.scales, self.zeros) if b == self.scheme.bits else self.nested[b]

    def dequantize(self, active_bits: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W_hat[N, K]`` as ``dtype``: ``scale * (code - zero)`` at precision ``active_bits``, times
        ``input_scale[k]`` per column when stored, rotated back for a rotated scheme (the original basis)."""
        b = self._precision(active_bits)
        scales, zeros = self.scale_zero(b)
        scheme = self.scheme.replace(bits=b, nested=())
        rot = self.scheme.rotation
        out = dequantize_codes(self.codes(b), scales, zeros, scheme, dtype=torch.float32 if rot else dtype,
                               input_scale=self.input_scale)
        return unrotate(out, rot).to(dtype) if rot else out

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor (planes or words, scales, zeros, nested scales and zeros, input_scale)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())
