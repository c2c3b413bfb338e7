"""Soft logic over entity scores: t-norm ANDs (product, Gödel min, Łukasiewicz), their dual ORs,
per-entity weights and masks.

Scores `p` are probabilities in [0, 1] of shape [..., n]; `mask` (bool, same shape) marks the
real entities (padding is ignored: AND() = 1, OR() = 0). A weight w in [0, 1] softens an entity
before the t-norm: AND sees 1 - w (1 - p) (w = 0 ignores it, w = 1 is the plain score), and OR,
its dual, sees w p.

>>> import torch
>>> p = torch.tensor([0.9, 0.5])
>>> [round(float(soft_and(p, tnorm=t)), 3) for t in TNORMS]
[0.45, 0.5, 0.4]
>>> round(float(soft_or(p)), 3), round(float(soft_and(p, weights=torch.tensor([1.0, 0.0]))), 3)
(0.95, 0.9)
"""
from typing import Optional

import torch

__all__ = ["TNORMS", "soft_and", "soft_or", "check_tnorm"]

TNORMS = ("product", "godel", "lukasiewicz")


def check_tnorm(tnorm: str) -> str:
    if tnorm not in TNORMS:
        raise ValueError(f"tnorm must be one of {TNORMS}, got {tnorm!r}")
    return tnorm


def _prepare(p: torch.Tensor, mask: Optional[torch.Tensor], weights: Optional[torch.Tensor]):
    if mask is not None and mask.shape != p.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, scores have {tuple(p.shape)}")
    if weights is not None:
        weights = torch.broadcast_to(weights.to(p.dtype), p.shape)
    return mask, weights


def soft_and(p: torch.Tensor, mask: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None,
             tnorm: str = "product") -> torch.Tensor:
    """AND over the last dimension with the t-norm `tnorm` ([..., n] -> [...])."""
    check_tnorm(tnorm)
    mask, weights = _prepare(p, mask, weights)
    if weights is not None:
        p = 1 - weights * (1 - p)
    if mask is not None:
        p = torch.where(mask, p, torch.ones_like(p))  # 1 is neutral for every t-norm
    if p.shape[-1] == 0:
        return torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    if tnorm == "product":
        return p.prod(-1)
    if tnorm == "godel":
        return p.amin(-1)
    return torch.clamp((p - 1).sum(-1) + 1, min=0.0)


def soft_or(p: torch.Tensor, mask: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None,
            tnorm: str = "product") -> torch.Tensor:
    """OR over the last dimension: the dual 1 - AND(1 - p) of `soft_and` with the same t-norm
    (probabilistic sum, max, bounded sum)."""
    mask, weights = _prepare(p, mask, weights)
    if weights is not None:
        p = weights * p
    return 1 - soft_and(1 - p, mask, None, tnorm)
