"""The typed vocabulary of quantization: grids, scale methods and ``QScheme``.

Everything here is frozen and validated on construction, so a scheme that exists is a
scheme every layer below can execute. Schemes round-trip through plain JSON dicts
(``to_dict``/``from_dict``) for plans and artifact manifests.

The maths of each grid, for a code ``c`` of a ``b``-bit scheme (``w ≈ scale * (c - zero)``):

=========== ================ ================================ ====================
grid        codes ``c``      levels ``c - zero``              ``zero``
=========== ================ ================================ ====================
asymmetric  ``0 .. 2^b - 1`` ``c - z``                        per group, stored
symmetric   ``0 .. 2^b - 1`` ``k + 1/2``, ``k=-2^(b-1)..2^(b-1)-1`` ``2^(b-1) - 1/2``
balanced    ``0 .. 2^b``     ``-2^(b-1) .. 2^(b-1)`` (with 0) ``2^(b-1)``
=========== ================ ================================ ====================

Example: a 2-bit symmetric code ``c = 3`` with scale ``0.1`` is ``0.1 * (3 - 1.5) = 0.15``;
a 1-bit balanced code ``c = 0`` with scale ``0.1`` is ``0.1 * (0 - 1) = -0.1``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from .errors import ConfigError

__all__ = ["Grid", "ScaleMethod", "Calibration", "QScheme", "MIN_BITS", "MAX_BITS", "MAX_BALANCED_BITS",
           "MAX_ROTATION", "check_rotation"]

MIN_BITS = 1
MAX_BITS = 8
MAX_BALANCED_BITS = 7
MAX_ROTATION = 4096
"""The largest Hadamard block ``QScheme.rotation`` accepts."""


def check_rotation(rotation: object) -> int:
    """``rotation`` as an int when it is 0 (none) or a power of two in ``2 .. MAX_ROTATION``, else ``ConfigError``."""
    if isinstance(rotation, bool) or not isinstance(rotation, int) or rotation < 0 or rotation > MAX_ROTATION \
            or rotation == 1 or rotation & (rotation - 1):
        raise ConfigError(f"QScheme.rotation must be 0 (none) or a power of two in 2..{MAX_ROTATION} (the Hadamard "
                          f"block size along K, e.g. 128), got {rotation!r}")
    return rotation


class Grid(str, Enum):
    """Integer grids a weight group can be rounded to (see the module docstring)."""

    ASYMMETRIC = "asymmetric"
    SYMMETRIC = "symmetric"
    BALANCED = "balanced"

    def levels(self, bits: int) -> int:
        """Number of distinct codes at ``bits``: ``2^b``, or ``2^b + 1`` for balanced."""
        return (1 << bits) + 1 if self is Grid.BALANCED else 1 << bits

    def constant_zero(self, bits: int) -> float | None:
        """The fixed zero point of the grid at ``bits``, or None when it is stored per group."""
        if self is Grid.SYMMETRIC:
            return (1 << (bits - 1)) - 0.5
        if self is Grid.BALANCED:
            return float(1 << (bits - 1))
        return None

    @property
    def nests(self) -> bool:
        """Whether the top planes of a code form a valid lower-precision code (bit-plane storage)."""
        return self is not Grid.BALANCED

    def info_bits(self, bits: int) -> float:
        """Information per weight as the BitsFusion paper counts it: ``log2(levels)``."""
        return math.log2(self.levels(bits))


class ScaleMethod(str, Enum):
    """How a group's scale (and zero) is chosen.

    - ``minmax``: the group's range maps onto the grid's range;
    - ``mse``: grid search over clipping ratios of the min-max range, keeping the lowest error;
    - ``als``: BitsFusion's alternating least squares, ``q = round(W/s)``, ``s = <W,q>/<q,q>``.
    """

    MINMAX = "minmax"
    MSE = "mse"
    ALS = "als"


class Calibration(str, Enum):
    """Whether (and how) the layer's calibration inputs steer its quantization (output-aware quantizers).

    - ``none``: the weight alone decides (the scale method's fit to ``W``);
    - ``gptq``: second-order error compensation: columns are quantized in order and the error of each is
      spread onto the columns not yet quantized through the inverse of the input Hessian ``H = E[x x^T]``;
    - ``awq``: activation-aware scaling: input channels that carry large activations are scaled up before
      rounding (``W diag(s)`` is quantized, ``1/s`` is stored as the float16 vector ``input_scale [K]``,
      one factor per column of ``K``: per im2col column for a conv);
    - ``awq+gptq``: both, AWQ's scaling first, then GPTQ on ``W diag(s)``.

    Every calibrated scheme needs the layer's ``H`` (``quant.quantize(..., hessian=H)``, float ``[K, K]``,
    the mean of ``x x^T`` over calibration input rows; ``nn.collect_hessians`` computes it).
    """

    NONE = "none"
    GPTQ = "gptq"
    AWQ = "awq"
    AWQ_GPTQ = "awq+gptq"

    @property
    def uses_inputs(self) -> bool:
        """Whether quantizing needs the layer's input statistics."""
        return self is not Calibration.NONE

    @property
    def scales_inputs(self) -> bool:
        """Whether a per-input-channel scale vector is stored (AWQ)."""
        return self in (Calibration.AWQ, Calibration.AWQ_GPTQ)


@dataclass(frozen=True)
class QScheme:
    """How one layer's weight ``W[N, K]`` is quantized and stored.

    Args:
        bits: stored bits per code, 1..8 (the balanced grid stores ``log2(2^b+1)`` bits of information).
        group_size: weights sharing one scale along ``K``; ``None`` means one group per output
            channel (per-channel). The last group of a row is shorter when ``K % group_size != 0``.
        grid: the integer grid (see ``Grid``).
        method: how scales are initialised (see ``ScaleMethod``).
        nested: lower precisions ``b' < bits`` this layer can also run at from its top ``b'`` bit-planes;
            each costs one extra scale (and, for the asymmetric grid, zero) per group. Not allowed
            with the balanced grid, whose codes do not nest.
        calibration: an output-aware quantizer that uses the layer's calibration inputs (see ``Calibration``).
        rotation: 0, or the block size ``B`` (a power of two) of the randomised Hadamard rotation of the
            layer's input space: ``W R^T`` is quantized and stored, and the input is rotated at run time
            (``quant.rotation``). Not combined with AWQ, which transforms the input space too.
    """

    bits: int
    group_size: int | None = 64
    grid: Grid = Grid.SYMMETRIC
    method: ScaleMethod = ScaleMethod.ALS
    nested: tuple[int, ...] = field(default=())
    calibration: Calibration = Calibration.NONE
    rotation: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ConfigError(f"QScheme.bits must be an int in {MIN_BITS}..{MAX_BITS}, got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ConfigError(f"QScheme.bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if self.group_size is not None:
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
                raise ConfigError(
                    f"QScheme.group_size must be a positive int or None (per-channel), got {self.group_size!r}"
                )
        try:
            object.__setattr__(self, "grid", Grid(self.grid))
        except ValueError:
            raise ConfigError(
                f"QScheme.grid must be one of {[g.value for g in Grid]}, got {self.grid!r}"
            ) from None
        try:
            object.__setattr__(self, "method", ScaleMethod(self.method))
        except ValueError:
            raise ConfigError(
                f"QScheme.method must be one of {[m.value for m in ScaleMethod]}, got {self.method!r}"
            ) from None
        try:
            object.__setattr__(self, "calibration", Calibration(self.calibration))
        except ValueError:
            raise ConfigError(
                f"QScheme.calibration must be one of {[c.value for c in Calibration]}, got {self.calibration!r}"
            ) from None
        if self.grid is Grid.BALANCED and self.bits > MAX_BALANCED_BITS:
            raise ConfigError(
                f"the balanced grid goes up to {MAX_BALANCED_BITS} bits ({(1 << MAX_BALANCED_BITS) + 1} levels, "
                f"codes must fit a byte); use the symmetric or asymmetric grid at {self.bits} bits"
            )
        nested = tuple(sorted(set(int(b) for b in self.nested)))
        if nested and not self.grid.nests:
            raise ConfigError("the balanced grid does not nest: use nested=() or the symmetric/asymmetric grid")
        for b in nested:
            if not MIN_BITS <= b < self.bits:
                raise ConfigError(f"QScheme.nested precisions must be in 1..{self.bits - 1}, got {b}")
        object.__setattr__(self, "nested", nested)
        check_rotation(self.rotation)
        if self.rotation and self.calibration.scales_inputs:
            raise ConfigError(f"QScheme.rotation={self.rotation} does not combine with {self.calibration.value} "
                              "calibration (both transform the input space); use rotation=0 or calibration='gptq'")

    @property
    def levels(self) -> int:
        """Number of distinct codes."""
        return self.grid.levels(self.bits)

    @property
    def has_zeros(self) -> bool:
        """Whether a zero point is stored per group (asymmetric grid)."""
        return self.grid is Grid.ASYMMETRIC

    @property
    def precisions(self) -> tuple[int, ...]:
        """Every precision this layer can run at, ascending (nested ones, then ``bits``)."""
        return (*self.nested, self.bits)

    def n_groups(self, k: int) -> int:
        """Groups per row for a reduction dimension ``k``."""
        if k < 1:
            raise ConfigError(f"reduction dimension K must be >= 1, got {k}")
        return 1 if self.group_size is None else -(-k // self.group_size)

    def effective_group_size(self, k: int) -> int:
        """The group length along ``K`` (``k`` itself when per-channel)."""
        return k if self.group_size is None else self.group_size

    def replace(self, **changes: Any) -> "QScheme":
        """A copy with ``changes`` applied (and validated)."""
        d = asdict(self)
        d.update(changes)
        return QScheme(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``rotation`` only when set, so an unrotated scheme reads as it did before
        rotations existed (and an older reader refuses a rotated one by its unknown key, never misreads it)."""
        d: dict[str, Any] = {
            "bits": self.bits,
            "group_size": self.group_size,
            "grid": self.grid.value,
            "method": self.method.value,
            "nested": list(self.nested),
            "calibration": self.calibration.value,
        }
        if self.rotation:
            d["rotation"] = self.rotation
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "QScheme":
        """Inverse of ``to_dict``; unknown or missing keys raise ``ConfigError``."""
        if not isinstance(d, dict):
            raise ConfigError(f"a scheme must be a JSON object, got {type(d).__name__}")
        known = {"bits", "group_size", "grid", "method", "nested", "calibration", "rotation"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown scheme keys {sorted(unknown)}; allowed: {sorted(known)}")
        if "bits" not in d:
            raise ConfigError("a scheme needs 'bits'")
        nested = d.get("nested", ())
        if not isinstance(nested, (list, tuple)):
            raise ConfigError(f"scheme 'nested' must be a list of ints, got {nested!r}")
        return cls(
            bits=d["bits"],
            group_size=d.get("group_size", 64),
            grid=d.get("grid", Grid.SYMMETRIC),
            method=d.get("method", ScaleMethod.ALS),
            nested=tuple(nested),
            calibration=d.get("calibration", Calibration.NONE),
            rotation=d.get("rotation", 0),
        )

    def __str__(self) -> str:
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        n = f"+{','.join(map(str, self.nested))}" if self.nested else ""
        c = "" if self.calibration is Calibration.NONE else f"/{self.calibration.value}"
        r = f"/rot{self.rotation}" if self.rotation else ""
        return f"{self.grid.value[:4]}{self.bits}{n}/{g}/{self.method.value}{c}{r}"
