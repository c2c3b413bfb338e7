"""The online learners on one tensor, as pure state machines: `init(x0) -> state` and
`step(state, grad)` (one round). The state is a plain dict of tensors, numbers and lists, so an
optimizer stores it per parameter and checkpoints it whole. All state tensors are float64.

- `BOGDIP` (methods.md §11): blocked OGD with infeasible projections. The point x_m is played for
  the B rounds of block m; at the block's end (x_{m+1}, y_{m+1}) = O_IP(K, x_m, y_m - eta g_m, eps)
  with g_m the sum of the block's gradients.
- `BOGDIPEnsemble`: N BOGD_IP experts with step sizes eta_i = eta_min 2^(i-1) fed the same
  gradients (those at the played point: one gradient per round, linear surrogate); Hedge on the
  block-linearized losses <g_m, x^i_m> with prior 1/(i(i+1)); plays sum_i w_i x^i_m (in K by
  convexity, so no projection).
- `BOGDIPAdaptive`: geometric covering intervals over blocks (at block m an instance of scale k
  starts for every k with 2^k | m, living 2^k blocks, at the point played at the time, stepping
  eta_0 / (2^k B)^(3/4)); AdaNormalHedge (Luo & Schapire 2015) as the sleeping-experts meta over the
  awake instances, on the block regrets r_i = <g_m, x_m - x^i_m> / (||g_m|| D) in [-1, 1] [I].
  At block m, floor(log2 m) + 1 instances are awake.
- `ProjectedOGD`: x <- Proj_K(x - eta g) every round (the exact projection; the baseline).
"""
import math
from typing import List

import torch

from .infeasible import infeasible_projection
from .projections import project
from .sets import ConvexSet

__all__ = ["BOGDIP", "BOGDIPEnsemble", "BOGDIPAdaptive", "ProjectedOGD", "ada_normal_hedge_weight"]

F64 = torch.float64


class _Blocked:
    """What the BOGD_IP family shares: blocks of B rounds, one accumulated gradient, the infeasible
    projection with its oracle-call counters."""

    def __init__(self, K: ConvexSet, block: int, eps: float, gamma: float = 2.0 / 3.0, max_oracle_calls: int = 100000):
        self.K, self.block, self.eps, self.gamma, self.max_oracle_calls = K, int(block), float(eps), float(gamma), int(max_oracle_calls)

    def _base_state(self, x0: torch.Tensor) -> dict:
        return {"round": 0, "block_index": 1, "position": 0, "grad_sum": torch.zeros_like(x0, dtype=F64),
                "oracle_calls": 0, "fw_rounds": 0, "y_moves": 0, "oracle_calls_last_block": 0}

    def _ip(self, state: dict, x: torch.Tensor, y: torch.Tensor):
        x, y, stats = infeasible_projection(self.K, x, y, self.eps, self.gamma, self.max_oracle_calls)
        state["oracle_calls"] += stats["oracle_calls"]
        state["fw_rounds"] += stats["fw_rounds"]
        state["y_moves"] += stats["y_moves"]
        state["oracle_calls_last_block"] += stats["oracle_calls"]
        return x, y

    def step(self, state: dict, grad: torch.Tensor) -> bool:
        """One round with the gradient at the played point; True when a block ended."""
        state["round"] += 1
        state["grad_sum"].add_(grad.to(F64))
        state["position"] += 1
        if state["position"] < self.block:
            return False
        state["oracle_calls_last_block"] = 0
        self._end_block(state, state["grad_sum"])
        state["grad_sum"] = torch.zeros_like(state["grad_sum"])
        state["position"] = 0
        state["block_index"] += 1
        return True

    def played(self, state: dict) -> torch.Tensor:
        return state["x"]


class BOGDIP(_Blocked):
    """Blocked OGD with infeasible projections, step size `eta`."""

    def __init__(self, K, eta: float, block: int, eps: float, gamma: float = 2.0 / 3.0, max_oracle_calls: int = 100000):
        super().__init__(K, block, eps, gamma, max_oracle_calls)
        self.eta = float(eta)

    def init(self, x0: torch.Tensor) -> dict:
        state = self._base_state(x0)
        state["x"] = x0.to(F64).clone()
        state["y"] = state["x"].clone()
        return state

    def _end_block(self, state, g):
        state["x"], state["y"] = self._ip(state, state["x"], state["y"] - self.eta * g)


class BOGDIPEnsemble(_Blocked):
    """Hedge over BOGD_IP experts with step sizes `etas` (see the module doc)."""

    def __init__(self, K, etas: List[float], block: int, eps: float, meta_lr: float, gamma: float = 2.0 / 3.0,
                 max_oracle_calls: int = 100000):
        super().__init__(K, block, eps, gamma, max_oracle_calls)
        self.etas, self.meta_lr = [float(e) for e in etas], float(meta_lr)

    def prior(self) -> torch.Tensor:
        """w_i proportional to 1/(i(i+1)), i = 1..N, normalised."""
        i = torch.arange(1, len(self.etas) + 1, dtype=F64)
        p = 1.0 / (i * (i + 1))
        return p / p.sum()

    def init(self, x0):
        state = self._base_state(x0)
        x0 = x0.to(F64)
        state["expert_x"] = [x0.clone() for _ in self.etas]
        state["expert_y"] = [x0.clone() for _ in self.etas]
        state["log_weights"] = torch.log(self.prior())
        state["etas"] = list(self.etas)
        state["x"] = x0.clone()
        return state

    def weights(self, state) -> torch.Tensor:
        return torch.softmax(state["log_weights"], 0)

    def _end_block(self, state, g):
        losses = torch.stack([(g * x).sum() for x in state["expert_x"]])  # <g_m, x^i_m>
        lw = state["log_weights"] - self.meta_lr * losses
        state["log_weights"] = lw - torch.logsumexp(lw, 0)
        for i, eta in enumerate(self.etas):
            state["expert_x"][i], state["expert_y"][i] = self._ip(state, state["expert_x"][i], state["expert_y"][i] - eta * g)
        w = self.weights(state)
        state["x"] = sum(w[i] * x for i, x in enumerate(state["expert_x"]))


def ada_normal_hedge_weight(R: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """AdaNormalHedge's w(R, C) = 1/2 (Phi(R+1, C+1) - Phi(R-1, C+1)), Phi(R, C) = exp([R]_+^2 / (3C)).

    >>> ada_normal_hedge_weight(torch.tensor([0.0, -1.0]), torch.tensor([0.0, 1.0]))
    tensor([0.1978, 0.0000])
    """
    def phi(r, c):
        return torch.exp(torch.clamp(r, min=0) ** 2 / (3 * c))

    return 0.5 * (phi(R + 1, C + 1) - phi(R - 1, C + 1))


class BOGDIPAdaptive(_Blocked):
    """Geometric covering intervals of BOGD_IP instances under AdaNormalHedge (see the module doc).
    `max_scale` caps k (None: no cap)."""

    def __init__(self, K, eta0: float, block: int, eps: float, max_scale=None, gamma: float = 2.0 / 3.0,
                 max_oracle_calls: int = 100000):
        super().__init__(K, block, eps, gamma, max_oracle_calls)
        self.eta0, self.max_scale = float(eta0), max_scale

    def eta_of(self, scale: int) -> float:
        return self.eta0 / (2 ** scale * self.block) ** 0.75

    def _start(self, state, m: int, at: torch.Tensor):
        k = 0
        while m % (2 ** k) == 0 and (self.max_scale is None or k <= self.max_scale):
            state["instances"].append({"x": at.clone(), "y": at.clone(), "scale": k, "start": m,
                                       "end": m + 2 ** k - 1, "R": 0.0, "C": 0.0})
            k += 1

    def init(self, x0):
        state = self._base_state(x0)
        state["instances"] = []
        state["x"] = x0.to(F64).clone()
        state["max_alive"] = 0
        self._start(state, 1, state["x"])
        self._play(state)
        return state

    def weights(self, state) -> torch.Tensor:
        inst = state["instances"]
        w = ada_normal_hedge_weight(torch.tensor([i["R"] for i in inst], dtype=F64),
                                    torch.tensor([i["C"] for i in inst], dtype=F64))
        total = w.sum()
        return w / total if total > 0 else torch.full_like(w, 1.0 / len(inst))

    def _play(self, state):
        w = self.weights(state)
        state["x"] = sum(w[i] * inst["x"] for i, inst in enumerate(state["instances"]))
        state["max_alive"] = max(state["max_alive"], len(state["instances"]))

    def _end_block(self, state, g):
        m = state["block_index"]
        gnorm = float(torch.linalg.vector_norm(g))
        scale = gnorm * self.K.diameter
        for inst in state["instances"]:
            if scale > 0:
                r = float((g * (state["x"] - inst["x"])).sum()) / scale
                inst["R"] += r
                inst["C"] += abs(r)
            inst["x"], inst["y"] = self._ip(state, inst["x"], inst["y"] - self.eta_of(inst["scale"]) * g)
        state["instances"] = [i for i in state["instances"] if i["end"] > m]
        self._start(state, m + 1, state["x"])
        self._play(state)


class ProjectedOGD:
    """x <- Proj_K(x - eta g) each round, with the exact Euclidean projection (the baseline)."""

    def __init__(self, K: ConvexSet, eta: float):
        self.K, self.eta = K, float(eta)

    def init(self, x0):
        return {"round": 0, "x": x0.to(F64).clone(), "projections": 0}

    def step(self, state, grad):
        state["round"] += 1
        state["x"] = project(self.K, state["x"] - self.eta * grad.to(F64))
        state["projections"] += 1
        return True

    def played(self, state):
        return state["x"]
