"""``SensitivityTable``: layer x scheme -> loss of model-output quality, saved as JSON.

Cell ``(layer, scheme)`` is the quality lost (by ``metric``) when *only* that layer is
quantized with that scheme and everything else stays float. The table also records each
layer's shape and parameter count so allocation can price every option exactly, and
the weight error of each cell (a cheap proxy). Writes are atomic and the table can be
saved after every layer, so an interrupted analysis resumes where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError
from ..jsonfile import read_json, write_json
from ..types import QScheme

__all__ = ["LayerInfo", "SensitivityTable", "scheme_key"]

TABLE_FORMAT = "bitsfusion.sensitivity/1"


def scheme_key(scheme: QScheme) -> str:
    """The stable string naming a scheme in tables and reports (e.g. ``symm4/g64/als``)."""
    return str(scheme)


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable layer: its fqn, module type, weight view ``[N, K]`` and parameter count."""

    name: str
    kind: str
    shape: tuple[int, int]

    @property
    def params(self) -> int:
        """Weights in the layer, ``N * K``."""
        return self.shape[0] * self.shape[1]


@dataclass
class SensitivityTable:
    """Measured losses per (layer, scheme): ``loss[layer][scheme_key]``; ``weight_error`` alike.

    ``proxies[name][layer][scheme_key]`` holds cheap proxy values (see ``analysis.proxies``);
    ``baseline`` is the loss of the float model against itself (0 unless the run is
    non-deterministic); ``meta`` records how the table was made (model, batches, seconds, replay).
    """

    metric: str
    schemes: list[QScheme]
    layers: dict[str, LayerInfo] = field(default_factory=dict)
    loss: dict[str, dict[str, float]] = field(default_factory=dict)
    weight_error: dict[str, dict[str, float]] = field(default_factory=dict)
    proxies: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    baseline: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def scheme(self, key: str) -> QScheme:
        """The candidate scheme named ``key`` (``scheme_key``); KeyError when it is not a candidate."""
        for s in self.schemes:
            if scheme_key(s) == key:
                return s
        raise KeyError(key)

    def missing(self) -> list[tuple[str, QScheme]]:
        """Cells not yet measured, in layer order."""
        return [(n, s) for n in self.layers for s in self.schemes if scheme_key(s) not in self.loss.get(n, {})]

    def is_complete(self) -> bool:
        """Whether every (layer, scheme) cell is measured."""
        return not self.missing()

    def set(
        self, layer: str, scheme: QScheme, loss: float, weight_error: float, proxies: dict[str, float] | None = None
    ) -> None:
        """Record one cell: measured ``loss``, relative ``weight_error`` and any proxy values (name -> value)."""
        key = scheme_key(scheme)
        self.loss.setdefault(layer, {})[key] = float(loss)
        self.weight_error.setdefault(layer, {})[key] = float(weight_error)
        for name, value in (proxies or {}).items():
            self.proxies.setdefault(name, {}).setdefault(layer, {})[key] = float(value)

    def cell(self, layer: str, scheme: QScheme | str) -> float:
        """The measured loss of one cell; ConfigError naming the cell when it was not measured."""
        key = scheme if isinstance(scheme, str) else scheme_key(scheme)
        try:
            return self.loss[layer][key]
        except KeyError:
            raise ConfigError(f"the sensitivity table has no cell ({layer!r}, {key!r}); "
                              "rerun `bitsfusion analyze` with that layer and scheme") from None

    def uniform_loss(self, scheme: QScheme | str) -> float:
        """Predicted loss (sum of cells) of the plan giving every layer ``scheme``."""
        return float(sum(self.cell(n, scheme) for n in self.layers))

    def rows(self) -> Iterable[tuple[str, str, float, float]]:
        """(layer, scheme key, loss, weight error) for every measured cell."""
        for name, cells in self.loss.items():
            for key, value in cells.items():
                yield name, key, value, self.weight_error.get(name, {}).get(key, float("nan"))

    def merged(self, other: "SensitivityTable") -> "SensitivityTable":
        """A table with both tables' candidates and cells (e.g. GPTQ candidates measured in a second run).

        Both must judge the same layers by the same metric; a cell present in both is taken from
        ``other``. ``meta`` is ``self``'s, with ``seconds`` summed.
        """
        if other.metric != self.metric or other.layers != self.layers:
            raise ConfigError("can only merge sensitivity tables of the same layers and metric "
                              f"(got {self.metric!r} and {other.metric!r})")
        keys = {scheme_key(s) for s in self.schemes}
        out = SensitivityTable(self.metric, [*self.schemes, *(s for s in other.schemes if scheme_key(s) not in keys)],
                               dict(self.layers), baseline=self.baseline, meta=dict(self.meta))
        for src in (self, other):
            for name, key, loss, err in src.rows():
                out.loss.setdefault(name, {})[key] = loss
                out.weight_error.setdefault(name, {})[key] = err
            for proxy, cells in src.proxies.items():
                for name, row in cells.items():
                    out.proxies.setdefault(proxy, {}).setdefault(name, {}).update(row)
        out.meta["seconds"] = float(self.meta.get("seconds", 0.0)) + float(other.meta.get("seconds", 0.0))
        return out

    # -- JSON ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``format`` ``bitsfusion.sensitivity/1``)."""
        return {
            "format": TABLE_FORMAT,
            "metric": self.metric,
            "baseline": self.baseline,
            "schemes": [s.to_dict() for s in self.schemes],
            "layers": {n: {"kind": i.kind, "shape": list(i.shape)} for n, i in self.layers.items()},
            "loss": self.loss,
            "weight_error": self.weight_error,
            "proxies": self.proxies,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: object = "table") -> "SensitivityTable":
        """Inverse of ``to_dict``; ConfigError naming ``source`` on anything malformed."""
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            raise ConfigError(f"{source}: not a BitsFusion sensitivity table (expected format {TABLE_FORMAT!r})")
        try:
            schemes = [QScheme.from_dict(s) for s in d["schemes"]]
            layers = {
                n: LayerInfo(n, str(v["kind"]), (int(v["shape"][0]), int(v["shape"][1])))
                for n, v in d["layers"].items()
            }
            return cls(
                metric=str(d["metric"]),
                schemes=schemes,
                layers=layers,
                loss={n: {k: float(x) for k, x in c.items()} for n, c in d.get("loss", {}).items()},
                weight_error={n: {k: float(x) for k, x in c.items()} for n, c in d.get("weight_error", {}).items()},
                proxies={
                    p: {n: {k: float(x) for k, x in c.items()} for n, c in layers_.items()}
                    for p, layers_ in d.get("proxies", {}).items()
                },
                baseline=float(d.get("baseline", 0.0)),
                meta=dict(d.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"{source}: malformed sensitivity table ({type(e).__name__}: {e})") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Atomic write (temporary file, then rename)."""
        return write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SensitivityTable":
        """Read a table written by ``save``; ConfigError when missing or malformed."""
        d = read_json(path, "sensitivity table", "run `bitsfusion analyze` first")
        return cls.from_dict(d, source=Path(path))
