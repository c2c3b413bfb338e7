"""Exact Euclidean projections onto the sets of `sets.py`.

Used ONLY by the projected-OGD baseline (`ProjectedOGD`), by the regret streams to build their
comparators, and by tests. BOGD_IP and its ensembles never call these: they touch K through its
linear optimization oracle alone.

>>> import torch
>>> from recis_online.oco.sets import L1Ball, Simplex
>>> project(Simplex(3), torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))
tensor([0.3333, 0.3333, 0.3333], dtype=torch.float64)
>>> project(L1Ball(1.0), torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64))
tensor([1., 0., -0.], dtype=torch.float64)
"""
import torch

from .sets import Box, ConvexSet, L1Ball, L2Ball, NuclearBall, Simplex

__all__ = ["project_simplex", "project_l1_ball", "project_l2_ball", "project_box", "project_nuclear_ball", "project"]


def project_simplex(x: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """argmin_{v >= 0, sum v = radius} ||v - x|| by sorting (Held, Wolfe, Crowder; Duchi et al. 2008)."""
    flat = x.reshape(-1)
    mu, _ = torch.sort(flat, descending=True)
    cumsum = torch.cumsum(mu, 0) - radius
    idx = torch.arange(1, flat.numel() + 1, dtype=x.dtype, device=x.device)
    rho = int(torch.nonzero(mu - cumsum / idx > 0).max())
    theta = cumsum[rho] / (rho + 1)
    return torch.clamp(flat - theta, min=0).reshape(x.shape)


def project_l1_ball(x: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """argmin_{||v||_1 <= radius} ||v - x||: x itself inside, else sign(x) * simplex projection of |x|."""
    if float(x.abs().sum()) <= radius:
        return x.clone()
    return torch.sign(x) * project_simplex(x.abs(), radius)


def project_l2_ball(x: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    n = float(torch.linalg.vector_norm(x))
    return x.clone() if n <= radius else x * (radius / n)


def project_box(x: torch.Tensor, lo, hi) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype)), torch.as_tensor(hi, dtype=x.dtype))


def project_nuclear_ball(x: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """SVD, then the singular values projected onto {s >= 0, sum s <= radius}."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    if float(s.sum()) <= radius:
        return x.clone()
    s = project_simplex(s, radius)
    return (u * s) @ vh


def project(K: ConvexSet, x: torch.Tensor) -> torch.Tensor:
    """The exact Euclidean projection of x onto K."""
    if isinstance(K, Simplex):
        return project_simplex(x, K.radius)
    if isinstance(K, L1Ball):
        return project_l1_ball(x, K.radius)
    if isinstance(K, L2Ball):
        return project_l2_ball(x, K.radius)
    if isinstance(K, Box):
        return project_box(x, K.lo.to(x.dtype), K.hi.to(x.dtype))
    if isinstance(K, NuclearBall):
        return project_nuclear_ball(x, K.radius)
    raise TypeError(f"no exact projection for {type(K).__name__}")
