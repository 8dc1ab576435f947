"""Training checkpoints: safetensors + JSON in one directory, replaced atomically, never unpickled.

A checkpoint directory holds ``trainer.json`` (step, history, best score, configuration; JSON),
``params.safetensors`` (the trainable parameters by name), ``optimizer.safetensors`` (every tensor of
the optimizer's state, keyed ``state.{index}.{name}``; its param groups and non-tensor entries are in
``trainer.json``) and, once an evaluation has scored, ``best.safetensors`` (the trainable parameters at
the best score). It is written to a temporary directory and swapped in with ``pack.io.swap_in_dir``, so
a run killed at any moment leaves the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch as st
import torch

from ..errors import FormatError
from ..pack.io import recover_dir, write_dir_atomically

__all__ = ["save_checkpoint", "load_checkpoint", "Checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "bitsfusion.distill-checkpoint/1"
TRAINER, PARAMS, OPTIMIZER, BEST = "trainer.json", "params.safetensors", "optimizer.safetensors", "best.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """What ``load_checkpoint`` read: the trainer JSON, the trainable parameters, the optimizer state dict,
    and the parameters at the best validation (None before any)."""

    trainer: dict[str, Any]
    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    best: dict[str, torch.Tensor] | None


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = t
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    st.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    path: str | os.PathLike[str], trainer: dict[str, Any], params: dict[str, torch.Tensor],
    optimizer: dict[str, Any], best: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically (replacing an older checkpoint there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path, clean_stale=True)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)

    def write(tmp: Path) -> None:
        _write_tensors(tmp / PARAMS, params)
        _write_tensors(tmp / OPTIMIZER, opt_tensors)
        if best is not None:
            _write_tensors(tmp / BEST, best)
        body = {"format": CHECKPOINT_FORMAT, **trainer, "optimizer": opt_meta}
        with open(tmp / TRAINER, "w", encoding="utf-8") as f:
            f.write(json.dumps(body, indent=1, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    return write_dir_atomically(path, write)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none; ``FormatError`` when it is damaged."""
    path = Path(path)
    recover_dir(path, clean_stale=False)
    if not path.exists():
        return None
    fix = f"delete {path} to start over, or point --out elsewhere"
    try:
        trainer = json.loads((path / TRAINER).read_text(encoding="utf-8"))
        if not isinstance(trainer, dict) or trainer.get("format") != CHECKPOINT_FORMAT:
            raise FormatError(f"{path / TRAINER} is not a {CHECKPOINT_FORMAT} checkpoint; {fix}")
        params = st.load_file(str(path / PARAMS))
        optimizer = _unflatten_optimizer(st.load_file(str(path / OPTIMIZER)), trainer.pop("optimizer"))
        best = st.load_file(str(path / BEST)) if (path / BEST).exists() else None
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError, JSON, KeyError, safetensors' own SafetensorError, ...
        raise FormatError(f"the checkpoint {path} is damaged ({type(e).__name__}: {e}); {fix}") from None
    return Checkpoint(trainer=trainer, params=params, optimizer=optimizer, best=best)
