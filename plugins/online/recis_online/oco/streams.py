"""Streams of convex losses with a known comparator sequence, for regret measurement.

A stream has T rounds over points shaped `shape` in a set K; `grad(t, x)` is the gradient of the
round-t loss f_t at x, `losses(X)` the losses of a whole played sequence X (T x shape) at once,
`comparators()` the comparator sequence u_1..u_T (in K), `best_fixed(start, end)` the best single
point of K on rounds [start, end) in hindsight, and `grad_bound` a bound G on ||grad f_t|| over K.

- `DriftingLeastSquares`: f_t(x) = ||x - u_t||^2, u_t piecewise constant with S switches (at
  fractions of T drawn from the seed, so every T of a seed has the same schedule), plus an optional
  random walk of step `drift` inside segments (projected onto K). u_t minimises f_t over K, so
  dynamic regret = sum f_t(x_t) and P_T = sum ||u_t - u_{t-1}||.
- `SwitchingLogistic`: f_t(x) = log(1 + exp(-b_t <a_t, x>)), a_t ~ N(0, I_d), b_t = sign(<w_s, a_t>)
  flipped with probability `label_noise`, the true direction w_s switching S times. The per-round
  minimiser over K is degenerate (it runs to K's boundary along b_t a_t), so the comparator is
  defined per segment: u_t = argmin_{x in K} sum_{t' in segment(t)} f_t'(x), the segment's best
  point in hindsight (computed by accelerated projected gradient to a small tolerance). Dynamic
  regret against it is the regret against the best comparator that switches only at the S
  switch times; P_T = sum of its S jumps.

Streams use the exact projection (`projections.py`) to build comparators; the learners never see it.
"""
import math
from typing import Optional, Sequence

import torch

from .projections import project
from .sets import ConvexSet

__all__ = ["DriftingLeastSquares", "SwitchingLogistic", "switch_times"]

F64 = torch.float64


def switch_times(T: int, switches: int, generator: torch.Generator, fractions: Optional[torch.Tensor] = None):
    """Sorted distinct rounds in [1, T) where the comparator switches (from fractions of T)."""
    if fractions is None:
        fractions = torch.rand(switches, generator=generator, dtype=F64)
    times = sorted({min(T - 1, max(1, int(f * T))) for f in fractions.tolist()})
    return times


def _segments(T, times):
    bounds = [0] + list(times) + [T]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


class _Stream:
    K: ConvexSet

    def start(self) -> torch.Tensor:
        """The first point every learner plays: K.a_point()."""
        return self.K.a_point(like=torch.zeros(self.shape, dtype=F64))

    def path_length(self) -> float:
        U = self.comparators()
        return float(torch.linalg.vector_norm((U[1:] - U[:-1]).reshape(U.shape[0] - 1, -1), dim=1).sum())


class DriftingLeastSquares(_Stream):
    """f_t(x) = ||x - u_t||^2 (see the module doc)."""

    def __init__(self, K: ConvexSet, T: int, shape: Sequence[int], switches: int = 4, seed: int = 0,
                 drift: float = 0.0, spread: float = 1.0, switch_at: Optional[Sequence[float]] = None):
        """`switch_at`: fractions of T where u switches (default: `switches` fractions from the seed)."""
        if switch_at is not None:
            switches = len(switch_at)
        self.K, self.T, self.shape, self.switches = K, int(T), tuple(shape), int(switches)
        gen = torch.Generator().manual_seed(seed)
        fractions = torch.rand(switches, generator=gen, dtype=F64)
        if switch_at is not None:
            fractions = torch.tensor(list(switch_at), dtype=F64)
        centre = K.a_point(like=torch.zeros(self.shape, dtype=F64))
        # one comparator per segment: a random point pushed out, projected (often on K's boundary)
        anchors = [project(K, centre + spread * K.diameter * torch.randn(self.shape, generator=gen, dtype=F64)
                           / math.sqrt(max(1, centre.numel()) ** 0.5))
                   for _ in range(switches + 1)]
        self.times = switch_times(self.T, switches, gen, fractions)
        U = torch.empty((self.T,) + self.shape, dtype=F64)
        for s, (a, b) in enumerate(_segments(self.T, self.times)):
            U[a:b] = anchors[s]
        if drift > 0:
            steps = torch.randn((self.T,) + self.shape, generator=gen, dtype=F64) * drift
            u = U[0].clone()
            for t in range(self.T):
                if t in self.times or t == 0:
                    u = U[t].clone()
                u = project(K, u + steps[t])
                U[t] = u
        self.U = U

    @property
    def grad_bound(self) -> float:
        return 2.0 * self.K.diameter

    def grad(self, t: int, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * (x - self.U[t])

    def losses(self, X: torch.Tensor) -> torch.Tensor:
        return ((X - self.U) ** 2).reshape(self.T, -1).sum(1)

    def loss_at(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """f_t(x) for t in [start, end) at one fixed x."""
        return ((x - self.U[start:end]) ** 2).reshape(end - start, -1).sum(1)

    def comparators(self) -> torch.Tensor:
        return self.U

    def best_fixed(self, start: int, end: int) -> torch.Tensor:
        """argmin_{x in K} sum ||x - u_t||^2 = Proj_K(mean u_t) (exact)."""
        return project(self.K, self.U[start:end].mean(0))


class SwitchingLogistic(_Stream):
    """Online logistic regression with S switches of the true direction (see the module doc)."""

    def __init__(self, K: ConvexSet, T: int, d: int, switches: int = 4, seed: int = 0, label_noise: float = 0.05,
                 scale: float = 1.0, solver_iters: int = 400):
        self.K, self.T, self.shape, self.switches = K, int(T), (int(d),), int(switches)
        gen = torch.Generator().manual_seed(seed)
        fractions = torch.rand(switches, generator=gen, dtype=F64)
        directions = [torch.randn(d, generator=gen, dtype=F64) for _ in range(switches + 1)]
        self.times = switch_times(self.T, switches, gen, fractions)
        self.A = torch.randn(self.T, d, generator=gen, dtype=F64) * scale
        flips = torch.rand(self.T, generator=gen, dtype=F64) < label_noise
        b = torch.empty(self.T, dtype=F64)
        self.solver_iters = solver_iters
        self.segments = _segments(self.T, self.times)
        for s, (lo, hi) in enumerate(self.segments):
            b[lo:hi] = torch.sign(self.A[lo:hi] @ directions[s])
        b[b == 0] = 1.0
        self.b = torch.where(flips, -b, b)
        self._U = None

    @property
    def grad_bound(self) -> float:
        return float(torch.linalg.vector_norm(self.A, dim=1).max())

    def grad(self, t: int, x: torch.Tensor) -> torch.Tensor:
        m = self.b[t] * (self.A[t] @ x)
        return -self.b[t] * torch.sigmoid(-m) * self.A[t]

    def losses(self, X: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(-self.b * (self.A * X).sum(1))

    def loss_at(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return torch.nn.functional.softplus(-self.b[start:end] * (self.A[start:end] @ x))

    def best_fixed(self, start: int, end: int) -> torch.Tensor:
        """argmin_{x in K} sum_{t in [start, end)} f_t(x), by FISTA with the exact projection."""
        A, b = self.A[start:end], self.b[start:end]
        L = 0.25 * float(torch.linalg.matrix_norm(A, ord=2)) ** 2 + 1e-12
        x = z = self.start()
        tk = 1.0
        for _ in range(self.solver_iters):
            m = b * (A @ z)
            g = -(A.T @ (b * torch.sigmoid(-m)))
            x_new = project(self.K, z - g / L)
            t_new = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
            z = x_new + ((tk - 1) / t_new) * (x_new - x)
            x, tk = x_new, t_new
        return x

    def comparators(self) -> torch.Tensor:
        if self._U is None:
            U = torch.empty(self.T, self.shape[0], dtype=F64)
            for lo, hi in self.segments:
                U[lo:hi] = self.best_fixed(lo, hi)
            self._U = U
        return self._U
