"""Convex sets K given by a linear optimization oracle (LOO): `lmo(g) = argmin_{v in K} <g, v>`.

Projection-free methods touch K only through `lmo`; every call is counted in `calls`. Each set
also answers `contains(x, tol)`, its Euclidean `diameter` and `a_point()` (a feasible start).
The sets apply to a whole tensor (one parameter); tensors of any shape are read as flat vectors,
except for `NuclearBall`, whose points are matrices.

>>> import torch
>>> K = L1Ball(2.0)
>>> K.lmo(torch.tensor([0.5, -3.0, 1.0]))
tensor([0., 2., 0.])
>>> K.calls, K.diameter, K.contains(torch.tensor([1.0, -1.0, 0.0]))
(1, 4.0, True)
>>> Simplex(3).lmo(torch.tensor([0.2, 0.1, 0.3]))
tensor([0., 1., 0.])
>>> Box(-1.0, 2.0, shape=(2,)).lmo(torch.tensor([1.0, -1.0]))
tensor([-1.,  2.])
"""
import abc
import math
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ["ConvexSet", "Simplex", "L1Ball", "L2Ball", "Box", "NuclearBall", "SET_NAMES", "make_set"]

Shape = Tuple[int, ...]


class ConvexSet(abc.ABC):
    """A compact convex set with a linear optimization oracle and a counter of its calls."""

    name = "set"

    def __init__(self, shape: Optional[Sequence[int]] = None):
        self.shape: Optional[Shape] = None if shape is None else tuple(int(s) for s in shape)
        self.calls = 0

    # -- the oracle ------------------------------------------------------------------------------
    def lmo(self, g: torch.Tensor) -> torch.Tensor:
        """argmin_{v in K} <g, v> (a vertex; ties go to the first coordinate). Counts one call."""
        self.calls += 1
        return self._lmo(g)

    @abc.abstractmethod
    def _lmo(self, g: torch.Tensor) -> torch.Tensor:
        """The oracle itself (uncounted)."""

    # -- membership, size, a start -----------------------------------------------------------------
    @abc.abstractmethod
    def contains(self, x: torch.Tensor, tol: float = 1e-9) -> bool:
        """Whether x lies in K up to `tol`."""

    @property
    @abc.abstractmethod
    def diameter(self) -> float:
        """The Euclidean diameter of K."""

    def a_point(self, like: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A point of K shaped like `like` (or the set's own shape), float64 unless `like` says."""
        shape = tuple(like.shape) if like is not None else self.shape
        if shape is None:
            raise ValueError(f"{self.name}: a_point() needs a shape (give shape= or like=)")
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float64
        return self._a_point(shape, dtype)

    def _a_point(self, shape: Shape, dtype) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype)

    def check_shape(self, shape: Sequence[int], what: str = "parameter") -> None:
        """Raises ValueError when a tensor of `shape` cannot live in this set."""
        if self.shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"{what} has shape {tuple(shape)} but the {self.name} set is over shape {self.shape}")

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    def _describe(self) -> str:
        return ""


def _positive(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


class Simplex(ConvexSet):
    """{x >= 0, sum x = radius} in R^d (the probability simplex for radius 1). LOO: radius * e_argmin."""

    name = "simplex"

    def __init__(self, d: int, radius: float = 1.0):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"simplex dimension d must be an integer >= 1, got {d!r}")
        super().__init__((d,))
        self.d, self.radius = d, _positive("simplex radius", radius)

    def check_shape(self, shape, what="parameter"):
        n = math.prod(shape)
        if n != self.d:
            raise ValueError(f"{what} has {n} entries but the simplex is over d={self.d}")

    def _lmo(self, g):
        v = torch.zeros_like(g)
        v.view(-1)[torch.argmin(g.reshape(-1))] = self.radius
        return v

    def contains(self, x, tol=1e-9):
        return bool(x.min() >= -tol) and abs(float(x.sum()) - self.radius) <= tol * max(1.0, self.d)

    @property
    def diameter(self):
        return self.radius * math.sqrt(2.0)

    def a_point(self, like=None):
        shape = tuple(like.shape) if like is not None else self.shape
        self.check_shape(shape)
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float64
        return torch.full(shape, self.radius / self.d, dtype=dtype)

    def _describe(self):
        return f"d={self.d}, radius={self.radius}"


class L1Ball(ConvexSet):
    """{||x||_1 <= radius}. LOO: -radius * sign(g_i) e_i at i = argmax |g_i|."""

    name = "l1_ball"

    def __init__(self, radius: float = 1.0, shape: Optional[Sequence[int]] = None):
        super().__init__(shape)
        self.radius = _positive("l1_ball radius", radius)

    def _lmo(self, g):
        v = torch.zeros_like(g)
        flat = g.reshape(-1)
        i = torch.argmax(flat.abs())
        v.view(-1)[i] = -self.radius * torch.sign(flat[i])
        return v

    def contains(self, x, tol=1e-9):
        return float(x.abs().sum()) <= self.radius * (1 + tol) + tol

    @property
    def diameter(self):
        return 2.0 * self.radius

    def _describe(self):
        return f"radius={self.radius}"


class L2Ball(ConvexSet):
    """{||x||_2 <= radius}. LOO: -radius * g / ||g|| (0 for g = 0)."""

    name = "l2_ball"

    def __init__(self, radius: float = 1.0, shape: Optional[Sequence[int]] = None):
        super().__init__(shape)
        self.radius = _positive("l2_ball radius", radius)

    def _lmo(self, g):
        n = torch.linalg.vector_norm(g)
        return torch.zeros_like(g) if n == 0 else -self.radius * g / n

    def contains(self, x, tol=1e-9):
        return float(torch.linalg.vector_norm(x)) <= self.radius * (1 + tol) + tol

    @property
    def diameter(self):
        return 2.0 * self.radius

    def _describe(self):
        return f"radius={self.radius}"


class Box(ConvexSet):
    """{lo <= x <= hi} (scalars or tensors of the parameter's shape). LOO: lo where g > 0, else hi."""

    name = "box"

    def __init__(self, lo: Union[float, torch.Tensor] = -1.0, hi: Union[float, torch.Tensor] = 1.0,
                 shape: Optional[Sequence[int]] = None):
        lo_t = torch.as_tensor(lo, dtype=torch.float64)
        hi_t = torch.as_tensor(hi, dtype=torch.float64)
        if shape is None and lo_t.dim() > 0:
            shape = tuple(lo_t.shape)
        super().__init__(shape)
        if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()):
            raise ValueError("box bounds lo and hi must be finite")
        if not bool((lo_t < hi_t).all()):
            raise ValueError(f"box needs lo < hi everywhere, got lo={lo!r}, hi={hi!r}")
        self.lo, self.hi = lo_t, hi_t

    def _bounds(self, like):
        return self.lo.to(like.dtype).expand_as(like), self.hi.to(like.dtype).expand_as(like)

    def _lmo(self, g):
        lo, hi = self._bounds(g)
        return torch.where(g > 0, lo, hi)

    def contains(self, x, tol=1e-9):
        lo, hi = self._bounds(x)
        return bool((x >= lo - tol).all() and (x <= hi + tol).all())

    @property
    def diameter(self):
        if self.shape is None:
            raise ValueError("box: the diameter needs the shape (give shape= or tensor bounds)")
        return float(torch.linalg.vector_norm((self.hi - self.lo).expand(self.shape)))

    def _a_point(self, shape, dtype):
        return ((self.lo + self.hi) / 2).to(dtype).expand(shape).clone()

    def _describe(self):
        return f"lo={self.lo.tolist()}, hi={self.hi.tolist()}"


class NuclearBall(ConvexSet):
    """{X : ||X||_* <= radius} over matrices. LOO: -radius * u v^T for the top singular pair (u, v)
    of G, by power iteration on the Gram matrix A = G^T G (or G G^T, the smaller) from a seeded
    start v0 (`seed`), accelerated by repeated squaring: after j squarings v = A^(2^j) v0 / ||.||,
    i.e. 2^j power-iteration steps for j small matrix products. It stops when v moves less than
    `tol` or after `power_iters` squarings (at most 2^power_iters steps). Each squaring costs
    O(n^3) for n the smaller side (meant for heads of modest size). The Frobenius diameter is
    2 * radius."""

    name = "nuclear_ball"

    def __init__(self, radius: float = 1.0, shape: Optional[Sequence[int]] = None, power_iters: int = 40,
                 tol: float = 1e-10, seed: int = 0):
        super().__init__(shape)
        if self.shape is not None and len(self.shape) != 2:
            raise ValueError(f"nuclear_ball is a set of matrices, got shape {self.shape}")
        self.radius = _positive("nuclear_ball radius", radius)
        if isinstance(power_iters, bool) or not isinstance(power_iters, int) or power_iters < 1:
            raise ValueError(f"nuclear_ball power_iters must be an integer >= 1, got {power_iters!r}")
        self.power_iters, self.tol, self.seed = power_iters, _positive("nuclear_ball tol", tol), int(seed)
        self.power_steps = 0  # squarings done (all calls)

    def check_shape(self, shape, what="parameter"):
        if len(shape) != 2:
            raise ValueError(f"{what} has shape {tuple(shape)}; nuclear_ball needs a matrix (2 dimensions)")
        super().check_shape(shape, what)

    def top_singular_pair(self, g: torch.Tensor):
        """(u, sigma, v) with g v = sigma u, by power iteration (not counted as an oracle call)."""
        wide = g.shape[0] < g.shape[1]
        h = g.T if wide else g  # power iteration on the smaller Gram matrix h^T h
        gen = torch.Generator().manual_seed(self.seed)
        v0 = torch.randn(h.shape[1], generator=gen, dtype=torch.float64).to(g.dtype)
        a = h.T @ h
        scale = torch.linalg.matrix_norm(a)
        if scale == 0:
            return torch.zeros(g.shape[0], dtype=g.dtype), scale, torch.zeros(g.shape[1], dtype=g.dtype)
        a = a / scale
        v = a @ v0
        v = v / torch.linalg.vector_norm(v)
        for _ in range(self.power_iters):
            a = a @ a
            a = a / torch.linalg.matrix_norm(a)
            self.power_steps += 1
            w = a @ v0
            w = w / torch.linalg.vector_norm(w)
            moved = float(torch.linalg.vector_norm(w - v))
            v = w
            if moved <= self.tol:
                break
        hv = h @ v
        sigma = torch.linalg.vector_norm(hv)
        u = hv / sigma if sigma > 0 else torch.zeros_like(hv)
        return (v, sigma, u) if wide else (u, sigma, v)

    def _lmo(self, g):
        u, sigma, v = self.top_singular_pair(g)
        if sigma == 0:
            return torch.zeros_like(g)
        return -self.radius * torch.outer(u, v)

    def contains(self, x, tol=1e-9):
        return float(torch.linalg.svdvals(x).sum()) <= self.radius * (1 + tol) + tol

    @property
    def diameter(self):
        return 2.0 * self.radius

    def state_dict(self):
        return {"calls": self.calls, "power_steps": self.power_steps}

    def load_state_dict(self, state):
        self.calls, self.power_steps = int(state["calls"]), int(state.get("power_steps", 0))

    def _describe(self):
        return f"radius={self.radius}, power_iters={self.power_iters}, tol={self.tol}, seed={self.seed}"


SET_NAMES = ("simplex", "l1_ball", "l2_ball", "box", "nuclear_ball")


def make_set(name: str, shape: Sequence[int], radius: float = 1.0, lo=-1.0, hi=1.0, power_iters: int = 40,
             power_tol: float = 1e-10, seed: int = 0) -> ConvexSet:
    """The set `name` (one of SET_NAMES) for a tensor of `shape`.

    >>> make_set("l2_ball", (3,), radius=2.0)
    L2Ball(radius=2.0)
    >>> make_set("ball", (3,))
    Traceback (most recent call last):
    ...
    ValueError: unknown set 'ball' (sets: simplex, l1_ball, l2_ball, box, nuclear_ball)
    """
    shape = tuple(int(s) for s in shape)
    if name == "simplex":
        return Simplex(math.prod(shape), radius)
    if name == "l1_ball":
        return L1Ball(radius, shape)
    if name == "l2_ball":
        return L2Ball(radius, shape)
    if name == "box":
        return Box(lo, hi, shape)
    if name == "nuclear_ball":
        return NuclearBall(radius, shape, power_iters, power_tol, seed)
    raise ValueError(f"unknown set {name!r} (sets: {', '.join(SET_NAMES)})")
