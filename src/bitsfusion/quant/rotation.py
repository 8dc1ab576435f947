"""Incoherence rotation of a layer's input space: a randomised block Hadamard transform (``QScheme.rotation``).

A linear layer ``y = x W^T`` computes the same function as ``y = (x R^T) (W R^T)^T`` for any orthogonal ``R``.
Quantizing ``W' = W R^T`` instead of ``W`` spreads every weight row's outliers (and every input's outlier
channels) over the whole block, so the groups a scale covers hold near-Gaussian values and fewer levels are
wasted on a few large weights (QuIP, Chee et al. 2023; QuaRot, Ashkboos et al. 2024). The price is one
transform of the activations per call, ``x' = x R^T``: ``log2(B)`` additions per element with the fast
Walsh-Hadamard transform, against the layer's ``N`` multiply-adds per element.

``R`` here is block diagonal: each block of ``B`` consecutive columns (``B = scheme.rotation``, a power of
two) is ``H_B diag(s) / sqrt(B)``, ``H_B`` the Sylvester Hadamard matrix (``H_1 = [1]``, ``H_2m =
[[H_m, H_m], [H_m, -H_m]]``) and ``s`` fixed pseudo-random signs (``signs``; a function of the column index
alone, so nothing is stored: an artifact's rotation is its scheme). When ``K`` is not a multiple of ``B`` the
last ``K % B`` columns are left as they are (identity); with ``K < B`` nothing is rotated.

Everything stored (codes, scales, zeros) is of ``W'``; ``QuantizedWeight.dequantize`` and
``PackedWeight.dequantize`` return ``W' R`` (the layer's own basis), and the native kernels take ``x R^T``
(``kernels.native`` rotates ``x`` before the call). The squared error is the same in both bases (``R`` is
orthogonal), and GPTQ sees the rotated Hessian ``R H R^T``.

Measured on all-MiniLM-L6-v2 (the exact 3.0-bit allocation of the unrotated sensitivity table, GPTQ, mean
embedding cosine to fp32 on the 1000 shared sentences): 0.9641 unrotated, 0.9710-0.9717 with ``B = 128``
(0.9713 with 64; a dense random orthogonal ``R`` 0.9736); after 800 steps of distillation 0.9836 unrotated,
0.9867 with ``B = 128``. At 2.0 bits the same plan lost (0.8736 unrotated, 0.8586 rotated): whether a layer
gains is for the sensitivity analysis to measure, a rotated scheme being one more candidate.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import ConfigError
from ..types import MAX_ROTATION, check_rotation

__all__ = ["signs", "hadamard", "rotate", "unrotate", "rotate_hessian", "check_block", "MAX_ROTATION"]

_SEED = np.uint64(0x5EED_B175_F051_0A11)


@functools.lru_cache(maxsize=64)
def _signs_cpu(k: int) -> torch.Tensor:
    # splitmix64 of the column index: a fixed sequence, independent of torch's and numpy's generators
    z = np.arange(k, dtype=np.uint64) + _SEED
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    bit = (z >> np.uint64(63)).astype(np.float32)
    return torch.from_numpy(1.0 - 2.0 * bit)


def signs(k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The float32 ``[k]`` vector of +-1 that ``R``'s blocks multiply column ``j`` by (the same for every
    layer and artifact: column ``j``'s sign does not depend on ``k``)."""
    if k < 0:
        raise ValueError(f"signs: k must be >= 0, got {k}")
    s = _signs_cpu(int(k))
    return s if device is None or torch.device(device).type == "cpu" else s.to(device)


@functools.lru_cache(maxsize=16)
def _hadamard_cpu(block: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / block ** 0.5


def hadamard(block: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The normalised Sylvester Hadamard matrix ``H_B / sqrt(B)`` (float32 ``[B, B]``, symmetric, orthogonal)."""
    check_block(block)
    h = _hadamard_cpu(int(block))
    return h if device is None or torch.device(device).type == "cpu" else h.to(device)


def check_block(block: object) -> int:
    """``block`` as an int when it is a power of two in ``2 .. MAX_ROTATION``, else ``ConfigError``."""
    if check_rotation(block) == 0:
        raise ConfigError("a rotation block must be a power of two >= 2; 0 means no rotation")
    return block  # type: ignore[return-value]


def _apply(t: torch.Tensor, block: int, inverse: bool) -> torch.Tensor:
    check_block(block)
    k = int(t.shape[-1])
    nb = k // block
    if nb == 0:
        return t
    dtype = t.dtype
    tf = t.to(torch.float32)
    main = tf[..., : nb * block]
    s = signs(nb * block, tf.device)
    h = hadamard(block, tf.device)
    lead = main.shape[:-1]
    if inverse:  # y R = (y H / sqrt(B)) * s, block by block
        out = (main.reshape(-1, nb, block) @ h).reshape(*lead, nb * block) * s
    else:  # x R^T = (x * s) H / sqrt(B)
        out = ((main * s).reshape(-1, nb, block) @ h).reshape(*lead, nb * block)
    if nb * block < k:
        out = torch.cat([out, tf[..., nb * block:]], dim=-1)
    return out.to(dtype)


def rotate(t: torch.Tensor, block: int) -> torch.Tensor:
    """``t R^T`` along the last dimension (``t`` float ``[..., K]``, computed in float32, returned in ``t``'s
    dtype): an input row ``x`` becomes the rotated ``x'``; a weight ``W [N, K]`` becomes the ``W'`` that is
    quantized. Differentiable."""
    return _apply(t, block, inverse=False)


def unrotate(t: torch.Tensor, block: int) -> torch.Tensor:
    """``t R`` along the last dimension, the inverse of ``rotate``: a stored-basis weight back in the layer's."""
    return _apply(t, block, inverse=True)


def rotate_hessian(h: torch.Tensor, block: int) -> torch.Tensor:
    """``R H R^T`` for a symmetric ``H [K, K]`` (the Hessian of the rotated inputs ``x R^T``)."""
    if h.dim() != 2 or h.shape[0] != h.shape[1]:
        raise ConfigError(f"rotate_hessian needs a square [K, K] matrix, got shape {list(h.shape)}")
    return rotate(rotate(h, block).transpose(0, 1), block).transpose(0, 1).contiguous()
