"""The infeasible projection of Garber & Kretzu by Frank-Wolfe, using only K's linear oracle
(methods.md §11).

`infeasible_projection(K, x0, y0, eps)` returns (x, y, stats) with
- x in K (a convex combination of x0 and oracle outputs),
- ||x - y||^2 <= 3 eps,
- ||y - z|| <= ||y0 - z|| for every z in K.

Loop: Frank-Wolfe on min_{x in K} 1/2 ||x - y||^2 from the current x (exact line search) until the
duality gap <x - y, x - v> <= eps (v = lmo(x - y)). Then every z in K has <x - y, x - z> <= eps,
so if ||x - y||^2 > 3 eps the step y <- y - gamma (y - x) brings y closer to all of K
(||y' - z||^2 <= ||y - z||^2 - (2 gamma - gamma^2) ||x - y||^2 + 2 gamma eps < ||y - z||^2 for
gamma in (0, 1]); else (x, y) is returned. gamma = 2/3 is the [I] default.

>>> import torch
>>> from recis_online.oco.sets import L2Ball
>>> K = L2Ball(1.0)
>>> x, y, stats = infeasible_projection(K, torch.zeros(2, dtype=torch.float64), torch.tensor([3.0, 4.0], dtype=torch.float64), 1e-3)
>>> K.contains(x), float(((x - y) ** 2).sum()) <= 3e-3, stats["oracle_calls"] == K.calls
(True, True, True)
"""
from typing import Dict, Tuple

import torch

from .sets import ConvexSet

__all__ = ["frank_wolfe_projection", "infeasible_projection"]


def _frank_wolfe(K: ConvexSet, x: torch.Tensor, y: torch.Tensor, eps: float, budget: int) -> Tuple[torch.Tensor, int]:
    """Frank-Wolfe on 1/2||x - y||^2 over K from x until the duality gap is <= eps.
    Returns (x, oracle calls made); raises RuntimeError past `budget` calls."""
    calls = 0
    while True:
        grad = x - y
        v = K.lmo(grad)
        calls += 1
        d = v - x
        gap = -float((grad * d).sum())  # <x - y, x - v>
        if gap <= eps:
            return x, calls
        if calls >= budget:
            raise RuntimeError(f"Frank-Wolfe did not reach duality gap {eps:g} in {budget} oracle calls "
                               f"(gap {gap:g}); raise max_oracle_calls or eps")
        sigma = min(1.0, gap / float((d * d).sum()))
        x = x + sigma * d


def frank_wolfe_projection(K: ConvexSet, y: torch.Tensor, eps: float, x0: torch.Tensor = None,
                           max_oracle_calls: int = 100000) -> Tuple[torch.Tensor, int]:
    """An eps-approximate projection of y onto K by Frank-Wolfe from x0 (default K.a_point()):
    ||x - Proj_K(y)||^2 <= 2 eps (strong convexity; the duality gap bounds the suboptimality).
    Returns (x, oracle calls)."""
    x0 = K.a_point(like=y) if x0 is None else x0
    return _frank_wolfe(K, x0, y, eps, max_oracle_calls)


def infeasible_projection(K: ConvexSet, x0: torch.Tensor, y0: torch.Tensor, eps: float, gamma: float = 2.0 / 3.0,
                          max_oracle_calls: int = 100000) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, int]]:
    """(x, y, stats): x in K near y, y no further than y0 from any point of K (see the module doc).
    x0 must be a point of K (the warm start). stats: oracle_calls, fw_rounds (Frank-Wolfe runs),
    y_moves (times y moved toward K)."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    x, y = x0, y0
    stats = {"oracle_calls": 0, "fw_rounds": 0, "y_moves": 0}
    while True:
        x, calls = _frank_wolfe(K, x, y, eps, max_oracle_calls - stats["oracle_calls"])
        stats["oracle_calls"] += calls
        stats["fw_rounds"] += 1
        if float(((x - y) ** 2).sum()) <= 3 * eps:
            return x, y, stats
        y = y - gamma * (y - x)
        stats["y_moves"] += 1
