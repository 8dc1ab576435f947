"""Modules that replace a diffusion UNet's time-embedding layers by tables over the inference timesteps.

A sampler calls a UNet at a fixed, small set of timesteps (50 for DDIM-50). Everything the UNet
computes from the timestep alone (the sinusoidal projection, the time-embedding MLP, and each ResNet
block's ``time_emb_proj`` of it) is therefore a function of which of those timesteps it is, and can be
computed once and looked up (BitsFusion, section 3.2). The lookup is written as three stateless modules,
so the cached UNet stays an ordinary module tree that saves, loads and traces like any other:

* ``TimestepOneHot`` replaces ``time_proj``: timesteps ``[B]`` -> one-hot ``[B, T]`` over the cached
  timesteps (a timestep outside them is an error that names them);
* ``PassThrough`` replaces ``time_embedding``: the one-hot goes on unchanged as the "embedding";
* ``CachedTimeProjection`` replaces each ``time_emb_proj``: the block applies its activation to the
  embedding first, so it receives ``act(onehot)``; ``(act(onehot) - act(0)) / (act(1) - act(0))`` is the
  one-hot again, exactly, and its product with the stored table ``[T, C]`` is the cached row.

``integrations.diffusers.cache_time_embeddings`` builds the tables; these classes only hold and read
them. Each module describes itself by ``cache_entry()`` and is rebuilt empty by ``from_cache_entry``,
which is how ``nn.serialize`` saves a cached UNet's structure in the manifest (``"cached_modules"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FormatError

__all__ = ["TimestepOneHot", "PassThrough", "CachedTimeProjection", "CACHED_MODULES", "cached_module_from_entry"]


class TimestepOneHot(nn.Module):
    """``time_proj`` of a cached UNet: timesteps -> one-hot rows over ``timesteps`` (float32 ``[B, T]``)."""

    def __init__(self, timesteps: torch.Tensor):
        super().__init__()
        self.register_buffer("timesteps", torch.as_tensor(timesteps, dtype=torch.int64).flatten().clone())

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timesteps, device=self.timesteps.device).flatten()
        hit = t.round().to(torch.int64)[:, None] == self.timesteps[None, :]
        found = hit.any(dim=1)
        if not bool(found.all()):
            missing = sorted({int(v) for v in t[~found].round().tolist()})[:5]
            raise ConfigError(
                f"timestep(s) {missing} are not in this UNet's time-embedding cache, which holds the "
                f"{len(self.timesteps)} timesteps {self.timesteps[:4].tolist()}...{self.timesteps[-2:].tolist()}; "
                "sample with the scheduler and step count the cache was built for, or rebuild it with "
                "cache_time_embeddings(unet, scheduler.timesteps)")
        return hit.to(torch.float32)

    def cache_entry(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "timesteps": len(self.timesteps)}

    @classmethod
    def from_cache_entry(cls, entry: dict[str, Any]) -> "TimestepOneHot":
        return cls(torch.zeros(int(entry["timesteps"]), dtype=torch.int64))


class PassThrough(nn.Module):
    """``time_embedding`` of a cached UNet: returns its first argument (the one-hot) unchanged."""

    def forward(self, x: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
        return x

    def cache_entry(self) -> dict[str, Any]:
        return {"type": type(self).__name__}

    @classmethod
    def from_cache_entry(cls, entry: dict[str, Any]) -> "PassThrough":
        return cls()


class CachedTimeProjection(nn.Module):
    """``time_emb_proj`` of a cached ResNet block: ``act(onehot) [B, T]`` -> its stored row ``[B, C]``.

    ``table`` holds the original layer's output (bias included) at each cached timestep, in the dtype
    it was built with (float16 by default: what the artifact stores); ``act0``/``act1`` are the block's
    activation at 0 and 1, which undo it exactly on a one-hot input.
    """

    def __init__(self, table: torch.Tensor, act0: float = 0.0, act1: float = 1.0):
        super().__init__()
        if act1 == act0:
            raise ConfigError("the ResNet block's time activation maps 0 and 1 to the same value; "
                              "its time embedding cannot be cached through a one-hot")
        self.register_buffer("table", table.detach().clone())
        self.act0, self.act1 = float(act0), float(act1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.table.shape[0]:
            raise ConfigError(f"a cached time_emb_proj got an input of width {h.shape[-1]}, its cache holds "
                              f"{self.table.shape[0]} timesteps: the UNet's time_proj must be the TimestepOneHot "
                              "that cache_time_embeddings installed")
        onehot = (h.float() - self.act0) / (self.act1 - self.act0)
        return onehot @ self.table.float()

    def cache_entry(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "shape": list(self.table.shape), "dtype": str(self.table.dtype)[6:],
                "act0": self.act0, "act1": self.act1}

    @classmethod
    def from_cache_entry(cls, entry: dict[str, Any]) -> "CachedTimeProjection":
        dtype = getattr(torch, str(entry.get("dtype", "float16")), None)
        if not isinstance(dtype, torch.dtype):
            raise FormatError(f"cached module dtype {entry.get('dtype')!r} is not a torch dtype; re-save the artifact")
        shape = [int(s) for s in entry["shape"]]
        return cls(torch.zeros(shape, dtype=dtype), float(entry["act0"]), float(entry["act1"]))


CACHED_MODULES: dict[str, type[nn.Module]] = {
    c.__name__: c for c in (TimestepOneHot, PassThrough, CachedTimeProjection)
}


def cached_module_from_entry(entry: Any) -> nn.Module:
    """An empty module of the manifest entry's ``type`` (its buffers filled later by ``load_state_dict``)."""
    if not isinstance(entry, dict) or entry.get("type") not in CACHED_MODULES:
        raise FormatError(f"cached module entry {entry!r} names no module BitsFusion knows "
                          f"({sorted(CACHED_MODULES)}); re-save the artifact with this version")
    try:
        return CACHED_MODULES[entry["type"]].from_cache_entry(entry)  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"cached module entry {entry!r} is malformed ({e}); re-save the artifact") from None
