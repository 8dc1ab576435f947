"""``BitPlan``: which layer gets which ``QScheme``.

A plan maps a layer's fully qualified name (fqn, as in ``model.named_modules()``) to a
scheme, or to ``None`` to leave the layer in floating point. Resolution order follows
torchao's ``FqnToConfig``:

1. an exact fqn rule;
2. the first ``re:<pattern>`` rule (in insertion order) whose pattern ``re.fullmatch``-es the fqn;
3. the default (which may be ``None``: quantize only what a rule names).

Example::

    plan = BitPlan(default=QScheme(bits=2), rules={
        "re:.*attention.*": QScheme(bits=4),
        "pooler.dense": None,
    })
    plan.resolve("encoder.layer.0.attention.self.query")  # QScheme(bits=4, ...)

Plans are JSON files (``save``/``load``) so every step (analyze, allocate, quantize) can
read what the one before wrote.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import ConfigError
from .jsonfile import read_json, write_json
from .types import Grid, QScheme, ScaleMethod

__all__ = ["BitPlan"]

_REGEX_PREFIX = "re:"
PLAN_FORMAT = "bitsfusion.plan/1"


@dataclass(frozen=True)
class BitPlan:
    """A per-layer quantization plan: exact names, ``re:`` patterns, then a default."""

    default: QScheme | None = None
    rules: Mapping[str, QScheme | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default is not None and not isinstance(self.default, QScheme):
            raise ConfigError(f"BitPlan.default must be a QScheme or None, got {type(self.default).__name__}")
        rules = dict(self.rules)
        compiled: list[tuple[re.Pattern[str], QScheme | None]] = []
        for key, scheme in rules.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"BitPlan rule keys must be non-empty strings, got {key!r}")
            if scheme is not None and not isinstance(scheme, QScheme):
                raise ConfigError(f"BitPlan rule {key!r} must map to a QScheme or None, got {scheme!r}")
            if key.startswith(_REGEX_PREFIX):
                try:
                    compiled.append((re.compile(key[len(_REGEX_PREFIX):]), scheme))
                except re.error as e:
                    raise ConfigError(f"BitPlan rule {key!r} is not a valid regular expression: {e}") from None
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "_patterns", tuple(compiled))

    @classmethod
    def uniform(
        cls,
        bits: int,
        group_size: int | None = 64,
        grid: Grid | str = Grid.SYMMETRIC,
        method: ScaleMethod | str = ScaleMethod.ALS,
        nested: tuple[int, ...] = (),
        skip: tuple[str, ...] = (),
    ) -> "BitPlan":
        """Every supported layer at one scheme, except the fqns/``re:`` patterns in ``skip``."""
        scheme = QScheme(bits=bits, group_size=group_size, grid=grid, method=method, nested=nested)
        return cls(default=scheme, rules={key: None for key in skip})

    def resolve(self, fqn: str) -> QScheme | None:
        """The scheme for layer ``fqn``, or None to keep it in floating point."""
        if fqn in self.rules and not fqn.startswith(_REGEX_PREFIX):
            return self.rules[fqn]
        for pattern, scheme in self._patterns:  # type: ignore[attr-defined]
            if pattern.fullmatch(fqn):
                return scheme
        return self.default

    def explain(self, fqn: str) -> str:
        """Which rule decided ``fqn``: the exact name, the pattern, or 'default'."""
        if fqn in self.rules and not fqn.startswith(_REGEX_PREFIX):
            return fqn
        for key, (pattern, _) in zip(
            [k for k in self.rules if k.startswith(_REGEX_PREFIX)], self._patterns  # type: ignore[attr-defined]
        ):
            if pattern.fullmatch(fqn):
                return key
        return "default"

    def items(self) -> Iterator[tuple[str, QScheme | None]]:
        """The rules in resolution-relevant order (exact names keep insertion order too)."""
        return iter(self.rules.items())

    def with_rules(self, rules: Mapping[str, QScheme | None]) -> "BitPlan":
        """A copy with ``rules`` added (overriding equal keys)."""
        merged = dict(self.rules)
        merged.update(rules)
        return BitPlan(default=self.default, rules=merged)

    # -- JSON ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``format``, ``default``, ``rules``)."""
        return {
            "format": PLAN_FORMAT,
            "default": None if self.default is None else self.default.to_dict(),
            "rules": {k: None if v is None else v.to_dict() for k, v in self.rules.items()},
        }

    @classmethod
    def from_dict(cls, d: Any) -> "BitPlan":
        """Inverse of ``to_dict``; malformed input raises ``ConfigError`` naming the key."""
        if not isinstance(d, dict):
            raise ConfigError(f"a plan must be a JSON object, got {type(d).__name__}")
        fmt = d.get("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise ConfigError(f"unsupported plan format {fmt!r}; this BitsFusion reads {PLAN_FORMAT!r}")
        rules_in = d.get("rules", {})
        if not isinstance(rules_in, dict):
            raise ConfigError("plan 'rules' must be a JSON object mapping layer names to schemes or null")
        rules: dict[str, QScheme | None] = {}
        for key, value in rules_in.items():
            try:
                rules[key] = None if value is None else QScheme.from_dict(value)
            except ConfigError as e:
                raise ConfigError(f"plan rule {key!r}: {e}") from None
        default = d.get("default")
        try:
            default_scheme = None if default is None else QScheme.from_dict(default)
        except ConfigError as e:
            raise ConfigError(f"plan default: {e}") from None
        return cls(default=default_scheme, rules=rules)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON, atomically (temporary file, then rename)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "BitPlan":
        """Read a plan written by ``save`` (or by hand)."""
        d = read_json(path, "plan file")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
