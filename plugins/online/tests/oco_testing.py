"""Helpers of the OCO tests: random points of each set (half from the interior, half extreme
points) and each set's support function computed independently of the oracles under test."""
import itertools

import torch

from recis_online.oco.sets import Box, L1Ball, L2Ball, NuclearBall, Simplex

F64 = torch.float64
SHAPES = {"simplex": (8,), "l1_ball": (8,), "l2_ball": (8,), "box": (6,), "nuclear_ball": (5, 4)}


def make(name):
    shape = SHAPES[name]
    return {"simplex": lambda: Simplex(8), "l1_ball": lambda: L1Ball(1.5, shape), "l2_ball": lambda: L2Ball(1.5, shape),
            "box": lambda: Box(-0.5, 1.0, shape), "nuclear_ball": lambda: NuclearBall(1.5, shape)}[name]()


def random_points(K, n, gen):
    """n points of K: even indices interior (random mixtures), odd ones extreme points."""
    out = []
    for i in range(n):
        extreme = i % 2 == 1
        if isinstance(K, Simplex):
            if extreme:
                z = torch.zeros(K.d, dtype=F64)
                z[torch.randint(K.d, (1,), generator=gen)] = K.radius
            else:
                z = -torch.log(torch.rand(K.d, generator=gen, dtype=F64))
                z = K.radius * z / z.sum()
        elif isinstance(K, L1Ball):
            d = K.shape[0]
            if extreme:
                z = torch.zeros(d, dtype=F64)
                z[torch.randint(d, (1,), generator=gen)] = K.radius * (1 if torch.rand(1, generator=gen) < 0.5 else -1)
            else:
                z = torch.randn(d, generator=gen, dtype=F64)
                z = z / z.abs().sum() * K.radius * float(torch.rand(1, generator=gen, dtype=F64))
        elif isinstance(K, L2Ball):
            z = torch.randn(K.shape, generator=gen, dtype=F64)
            r = K.radius if extreme else K.radius * float(torch.rand(1, generator=gen, dtype=F64))
            z = z / torch.linalg.vector_norm(z) * r
        elif isinstance(K, Box):
            u = torch.rand(K.shape, generator=gen, dtype=F64)
            if extreme:
                u = (u > 0.5).to(F64)
            z = K.lo + (K.hi - K.lo) * u
        elif isinstance(K, NuclearBall):
            if extreme:
                u = torch.randn(K.shape[0], generator=gen, dtype=F64)
                v = torch.randn(K.shape[1], generator=gen, dtype=F64)
                z = K.radius * torch.outer(u / u.norm(), v / v.norm())
            else:
                z = torch.randn(K.shape, generator=gen, dtype=F64)
                z = z / torch.linalg.svdvals(z).sum() * K.radius * float(torch.rand(1, generator=gen, dtype=F64))
        out.append(z)
    return out


def support_min(K, g):
    """min_{v in K} <g, v>, from the set's description (vertex enumeration or singular values)."""
    if isinstance(K, Simplex):
        return K.radius * float(g.min())
    if isinstance(K, L1Ball):
        return -K.radius * float(g.abs().max())
    if isinstance(K, L2Ball):
        return -K.radius * float(torch.linalg.vector_norm(g))
    if isinstance(K, Box):
        corners = itertools.product(*[(float(K.lo), float(K.hi))] * g.numel())
        return min(float((g.reshape(-1) * torch.tensor(c, dtype=F64)).sum()) for c in corners)
    if isinstance(K, NuclearBall):
        return -K.radius * float(torch.linalg.svdvals(g)[0])
    raise TypeError(K)
