"""Measure a ``SensitivityTable``: the output loss of quantizing one layer at a time.

For every quantizable layer (a type with a registered quantized module: Linear, Conv2d) and
every candidate scheme, the layer's weight is replaced by its quantize-dequantize image
(calibrated schemes get the layer's input Hessian from the reference pass), the calibration
batches are run, and the loss against the float outputs is recorded. ``OutputProbe`` replays
the part of the model a layer cannot influence, so a cell costs one pass of the rest of the
model. Each cell also records the relative weight error and the proxies of ``analysis.proxies``.

``run(model, batch) -> Tensor`` maps a batch to the output quality is judged on (for MiniLM:
the pooled, normalised sentence embeddings); ``loss(ref, cand) -> float`` is one of ``LOSSES``
or any callable. With ``path`` the table is saved after every cell and an existing file is
resumed: a rerun after an interruption measures only the missing cells.

Example::

    table = measure_sensitivity(model, spec.calibration(8), default_candidates(grid="asymmetric"),
                                run=spec.run, loss="mse", path="/tmp/sens.json")
    table.loss["encoder.layer.0.attention.self.query"]["asym2/g64/als"]   # 3.1e-06
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.qmodule import registered_float_types
from ..quant import relative_error
from ..types import MAX_BALANCED_BITS, Calibration, Grid, QScheme, ScaleMethod
from .probe import OutputProbe, weight_view
from .progress import cell_progress
from .proxies import PROXIES, proxy_correlation
from .table import LayerInfo, SensitivityTable, scheme_key

__all__ = ["LOSSES", "DEFAULT_BITS", "measure_sensitivity", "batches_digest", "default_run", "default_candidates",
           "quantizable_layers", "resolve_loss"]

Loss = Callable[[torch.Tensor, torch.Tensor], float]
DEFAULT_BITS = (1, 2, 3, 4, 5, 6, 8)


def _mse(ref: torch.Tensor, cand: torch.Tensor) -> float:
    return float(torch.mean((ref.float() - cand.float()) ** 2))


def _one_minus_cosine(ref: torch.Tensor, cand: torch.Tensor) -> float:
    r, c = ref.float().flatten(1), cand.float().flatten(1)
    return float(1.0 - torch.nn.functional.cosine_similarity(r, c, dim=-1).mean())


def _kl(ref: torch.Tensor, cand: torch.Tensor) -> float:
    p = torch.log_softmax(ref.float(), dim=-1)
    q = torch.log_softmax(cand.float(), dim=-1)
    return float(torch.sum(p.exp() * (p - q), dim=-1).mean())


LOSSES: dict[str, Loss] = {"mse": _mse, "cosine": _one_minus_cosine, "kl": _kl}


def _proxy_name(loss: str | Loss) -> str | None:
    """``"proxy:hawq" -> "hawq"``; None for a measured loss; ConfigError for an unknown proxy."""
    if not isinstance(loss, str) or not loss.startswith("proxy:"):
        return None
    name = loss.split(":", 1)[1]
    if name not in PROXIES:
        raise ConfigError(f"unknown proxy {name!r} in loss {loss!r}; use one of "
                          f"{[f'proxy:{p}' for p in PROXIES]}")
    return name


def resolve_loss(loss: str | Loss) -> tuple[str, Loss]:
    """``(name, function)`` for a name in ``LOSSES`` or a callable ``(ref, cand) -> float``."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}, a proxy "
                              f"({', '.join('proxy:' + p for p in PROXIES)}) or pass a callable")
        return loss, LOSSES[loss]
    if not callable(loss):
        raise ConfigError(f"loss must be a name in {sorted(LOSSES)} or a callable, got {type(loss).__name__}")
    return getattr(loss, "__name__", "custom"), loss


def default_run(model: nn.Module, batch: Any) -> torch.Tensor:
    """Call the model on a batch (dict -> kwargs, tuple -> args) and take its first tensor output."""
    out = model(**batch) if isinstance(batch, dict) else model(*batch) if isinstance(batch, tuple) else model(batch)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError("cannot find a tensor in the model output: pass run=(model, batch) -> Tensor")


def default_candidates(
    bits: Sequence[int] = DEFAULT_BITS,
    *,
    grid: Grid | str = Grid.ASYMMETRIC,
    method: ScaleMethod | str = ScaleMethod.ALS,
    group_size: int | None = 64,
    group_sizes: Sequence[int | None] | None = None,
    calibrations: Sequence[Calibration | str] = (Calibration.NONE,),
    rotations: Sequence[int] = (0,),
) -> list[QScheme]:
    """One scheme per (rotation, calibration, group size, bits); on the balanced grid bits above 7 become 7.

    ``group_sizes`` (e.g. ``(64, 128, None)``, None = per channel) lets group sizes compete: a larger
    group costs fewer bits of float16 scales and zeros (asymmetric 2-bit: 2.50 stored bits per weight
    at 64, 2.25 at 128, ~2.05 per channel), so the allocator can spend those bits where they matter.
    When given it replaces ``group_size``. ``rotations`` (e.g. ``(0, 128)``) adds the rotated schemes
    (``QScheme.rotation``, the Hadamard block): rotation helps some layers and hurts others, so the table
    measures both and the allocator picks per layer.
    """
    grid = Grid(grid)
    if grid is Grid.BALANCED:
        bits = [min(b, MAX_BALANCED_BITS) for b in bits]
    groups = list(dict.fromkeys(group_sizes)) if group_sizes is not None else [group_size]
    if not groups:
        raise ConfigError("default_candidates: group_sizes is empty; give at least one (None = per channel)")
    rots = list(dict.fromkeys(rotations))
    if not rots:
        raise ConfigError("default_candidates: rotations is empty; give at least one (0 = no rotation)")
    out: list[QScheme] = []
    for rot in rots:
        for cal in calibrations:
            for g in groups:
                for b in sorted(set(bits)):
                    out.append(QScheme(bits=b, group_size=g, grid=grid, method=method, calibration=cal,
                                       rotation=rot))
    return out


def quantizable_layers(model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None) -> list[LayerInfo]:
    """Every module of a registered float type (optionally filtered), in ``named_modules`` order."""
    types = registered_float_types()
    layers = []
    for name, mod in model.named_modules():
        if name and type(mod) in types and (include is None or include(name, mod)):
            layers.append(LayerInfo(name, type(mod).__name__, tuple(weight_view(mod).shape)))  # type: ignore[arg-type]
    if not layers:
        raise ConfigError("the model has no quantizable layers (Linear, Conv2d) matching the filter")
    return layers


def measure_sensitivity(
    model: nn.Module,
    batches: Sequence[Any],
    candidates: Sequence[QScheme],
    *,
    run: Callable[[nn.Module, Any], torch.Tensor] = default_run,
    loss: str | Loss = "mse",
    include: Callable[[str, nn.Module], bool] | None = None,
    path: str | Path | None = None,
    progress: bool = True,
    on_cell: Callable[[str, QScheme, float], None] | None = None,
    meta: dict[str, Any] | None = None,
    hessian_batches: Sequence[Any] | None = None,
    proxies: bool = True,
) -> SensitivityTable:
    """Fill a table for every quantizable layer x candidate; resume from ``path`` when it exists.

    ``hessian_batches``: batches the input Hessians (calibrated schemes, proxies) come from, when
    they should not be the loss ``batches`` (more tokens for the Hessians, fewer passes per cell);
    None takes them from ``batches``. Both sets are in the table's calibration digest.

    ``loss="proxy:input_weighted"`` (or ``"proxy:hawq"``) fills the cells with that proxy instead of a
    measured loss: no pass of the model per cell, only the reference pass for the Hessians, for models
    too large to measure. The objective is then a sum of layer-local errors, blind to how each layer's
    error travels to the output; a measured table of a smaller model (its ``proxy_spearman``) tells how
    well the proxy ranks cells (MiniLM: 0.88-0.89).

    ``proxies=False`` records no proxies beside a measured loss, so no input Hessian is accumulated
    unless a calibrated candidate (GPTQ, AWQ) needs it: a float64 ``[K, K]`` per layer is what bounds
    memory on a large model (Stable Diffusion 1.5's UNet: 56 GB over its 282 layers).

    ``on_cell(layer, scheme, loss)`` is called after each cell is recorded (and saved), e.g. to
    stop early by raising. ``meta`` is stored in the table (the model's source, say).
    """
    if not batches:
        raise ConfigError("measure_sensitivity needs at least one calibration batch")
    if not candidates:
        raise ConfigError("measure_sensitivity needs at least one candidate scheme")
    proxy = _proxy_name(loss)
    metric, loss_fn = (f"proxy:{proxy}", LOSSES["mse"]) if proxy is not None else resolve_loss(loss)
    model.eval()
    layers = quantizable_layers(model, include)
    table = _start_table(path, metric, candidates, layers)
    digest = batches_digest(batches if hessian_batches is None else [batches, hessian_batches])
    if table.meta.get("calibration_sha256", digest) != digest:
        raise ConfigError(f"{path}: was measured on other calibration batches (their SHA-256 differs); "
                          "delete it or choose another path")
    table.meta.update(meta or {}, calibration_sha256=digest)
    todo = table.missing()
    if not todo:
        return table
    prior, started = float(table.meta.get("seconds", 0.0)), time.perf_counter()
    with cell_progress(progress, len(todo), "sensitivity") as advance:
        advance("reference pass: outputs, layer inputs, replay check", 0)
        need_h = proxies or proxy is not None or any(s.calibration is not Calibration.NONE for s in candidates)
        probe = OutputProbe(model, batches, [i.name for i in layers], run=run, loss=loss_fn,
                            hessian_batches=hessian_batches, moments=need_h)
        table.meta.update(batches=len(batches), replay=probe.replay.enabled,
                          hessian_batches=len(batches if hessian_batches is None else hessian_batches))
        for name, scheme in todo:
            w = weight_view(model.get_submodule(name)).float()
            img = probe.image(name, scheme)
            h = probe.hessian(name)
            cell_proxies = {p: f(w, img, h) for p, f in PROXIES.items()} if h is not None and need_h else {}
            if proxy is not None and proxy not in cell_proxies:
                raise ConfigError(f"layer {name!r}: no input Hessian, so no {proxy} proxy (grouped or padded conv); "
                                  "skip the layer or measure a loss (mse, cosine, kl)")
            cell = cell_proxies[proxy] if proxy is not None else probe.loss({name: img})
            table.set(name, scheme, cell, relative_error(w, img), cell_proxies)
            _save_progress(table, path, prior, started)
            advance(f"{name} {scheme_key(scheme)}")
            if on_cell is not None:
                on_cell(name, scheme, cell)
    if proxy is None and need_h:
        table.meta["proxy_spearman"] = proxy_correlation(table.loss, table.proxies)
    _save_progress(table, path, prior, started)
    return table


def batches_digest(batches: Sequence[Any]) -> str:
    """SHA-256 over every tensor in the batches (dicts by key order, tuples/lists in order), as hex.

    Recorded in the table so a resumed run cannot mix cells measured on other calibration data.
    """
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                feed(obj[k])
        elif isinstance(obj, (tuple, list)):
            for o in obj:
                feed(o)
        else:
            h.update(repr(obj).encode())

    feed(list(batches))
    return h.hexdigest()


def _save_progress(table: SensitivityTable, path: str | Path | None, prior: float, started: float) -> None:
    table.meta["seconds"] = prior + time.perf_counter() - started
    if path is not None:
        table.save(path)


def _start_table(
    path: str | Path | None, metric: str, schemes: Sequence[QScheme], layers: list[LayerInfo]
) -> SensitivityTable:
    fresh = SensitivityTable(metric=metric, schemes=list(schemes), layers={i.name: i for i in layers})
    if path is None or not Path(path).exists():
        return fresh
    old = SensitivityTable.load(path)
    if old.metric != metric or [scheme_key(s) for s in old.schemes] != [scheme_key(s) for s in schemes]:
        raise ConfigError(
            f"{path}: holds a table for another metric or candidate list "
            f"({old.metric}: {', '.join(scheme_key(s) for s in old.schemes)}); delete it or choose another path"
        )
    if old.layers != fresh.layers:
        raise ConfigError(f"{path}: holds a table for another model (layers differ); choose another path")
    return old
