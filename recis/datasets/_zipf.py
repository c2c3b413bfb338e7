"""Zipf-distributed ranks over 1..n: P(k) proportional to k**-a.

The first `head` ranks are exact: their cumulative masses are tabulated and each draw lands on
the rank whose interval holds it. The tail uses the continuous inverse of the integral of x**-a
with a half-unit continuity correction, whose error in P(k) is about a(a+1)/(24 k**2) relative
(below 1e-7 past the default head of 4096 ranks). Memory is O(head) whatever n is.

Inversion without a binary search: a guide table (Chen and Asau's indexed search) maps each of
`16 * head` equal slices of the head's mass to the rank where the slice starts; a few vectorised
comparison steps against the cumulative table then settle each draw on its exact rank (as many
steps as the most rank boundaries in one slice, usually one or two).
"""
import numpy as np

DEFAULT_HEAD = 4096
_GUIDE_PER_RANK = 16
_MAX_STEPS = 6


class TruncatedZipf:
    """Inverse-CDF sampler of ranks 1..n with P(k) ~ k**-a (a >= 0).

    >>> z = TruncatedZipf(10, 1.0)
    >>> z.ranks(np.array([0.0, 0.3, 0.999])).tolist()
    [1, 1, 10]
    """

    def __init__(self, n: int, a: float, head: int = DEFAULT_HEAD):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Zipf cardinality must be a positive int, got {n!r}")
        if not a >= 0:
            raise ValueError(f"Zipf exponent must be >= 0, got {a!r}")
        self.n, self.a, self.head = n, float(a), min(n, head)
        self._log = abs(self.a - 1.0) < 1e-12
        # _cum[k] = P-mass (unnormalised) of ranks 1..k, for k = 0..head
        self._cum = np.r_[0.0, np.cumsum(np.arange(1, self.head + 1, dtype=np.float64) ** -self.a)]
        self._head_mass = float(self._cum[-1])
        cells = _GUIDE_PER_RANK * self.head
        self._guide_scale = cells / self._head_mass
        edges = np.arange(cells + 1, dtype=np.float64) / self._guide_scale
        # the rank at each slice's start, erring low (rounding may put t a few ulps outside)
        self._guide = np.searchsorted(self._cum, edges[:-1] * (1 - 1e-12), side="right")
        past = np.searchsorted(self._cum, edges[1:] * (1 + 1e-12), side="right")
        self._steps = int(np.max(np.minimum(past, self.head) - self._guide))
        self._below_head = np.nextafter(self._head_mass, 0.0)
        self._g0 = float(self._g(self.head + 0.5))
        tail = float(self._g(n + 0.5)) - self._g0 if n > self.head else 0.0
        self.total = self._head_mass + tail

    def _g(self, x):
        """An antiderivative of x**-a."""
        return np.log(x) if self._log else np.power(x, 1.0 - self.a) / (1.0 - self.a)

    def _g_inv(self, y):
        if self._log:
            return np.exp(y)
        base = np.maximum(y * (1.0 - self.a), 0.0)  # <= 0 only far below rank 1
        with np.errstate(divide="ignore", over="ignore"):
            return np.power(base, 1.0 / (1.0 - self.a))

    def ranks(self, u: np.ndarray) -> np.ndarray:
        """Ranks (int64 in 1..n) for uniforms `u` in [0, 1); non-decreasing in u."""
        t = np.asarray(u, dtype=np.float64) * self.total
        if self.n == self.head:
            return self._head_ranks(np.minimum(t, self._below_head, out=t))
        head = self._head_ranks(np.minimum(t, self._below_head))
        x = self._g_inv(self._g0 + (t - self._head_mass))
        tail = np.clip(np.floor(x + 0.5), self.head + 1, self.n).astype(np.int64)
        return np.where(t < self._head_mass, head, tail)

    def _head_ranks(self, t: np.ndarray) -> np.ndarray:
        """The exact rank k with _cum[k-1] <= t < _cum[k] of every t < head mass."""
        cell = (t * self._guide_scale).astype(np.int64)
        r = self._guide[np.minimum(cell, len(self._guide) - 1, out=cell)]
        if self._steps <= _MAX_STEPS:
            for _ in range(self._steps):
                r += t >= self._cum[r]
            return r
        return np.searchsorted(self._cum, t, side="right")  # very steep: the table can't guide

    def pmf(self, k: np.ndarray) -> np.ndarray:
        """The probability the sampler gives each rank in `k`."""
        k = np.asarray(k, dtype=np.float64)
        kk = np.maximum(k, 1.0)
        tail = self._g(kk + 0.5) - self._g(kk - 0.5)
        return np.where(k <= self.head, kk ** -self.a, tail) / self.total
