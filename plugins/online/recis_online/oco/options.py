"""The options of the online optimizers, as validated dataclasses (one per optimizer), and the
defaults they derive from the horizon T, the diameter D of K and the gradient bound G.

Every [I] choice of methods.md §11 is an option here:
- `block` B: default ceil(sqrt(T)) [I];
- `eps` (infeasible-projection tolerance): default D^2 / sqrt(T) [I];
- `eta` (BOGD_IP step): default D / (G T^(3/4)) [I]; the ensembles' `eta_min` has the same default;
- `gamma` (the infeasible projection's pull of y toward x): 2/3 [I];
- `experts` N (ensemble size): default ceil(1/2 log2(1 + 4T/7)) + 1 [I], step sizes eta_min * 2^(i-1);
- `meta_lr` (Hedge rate): default sqrt(8 / (T/B)) / (B G D) [I]; Hedge prior 1/(i(i+1)) [I];
- `on_infeasible_start`: project (warn, Frank-Wolfe eps-approximate projection) or raise.
- the adaptive ensemble: an instance of scale k steps eta_scale * D / (G (2^k B)^(3/4)) [I]; it
  starts at the point played [I]; AdaNormalHedge with a uniform prior [I] on block regrets
  normalised by ||g_m|| D [I] (see `learners.BOGDIPAdaptive`).

>>> BOGDIPOptions(set="ball")
Traceback (most recent call last):
...
ValueError: bogd_ip.set must be one of simplex, l1_ball, l2_ball, box, nuclear_ball, got 'ball'
>>> BOGDIPOptions(horizon=1024).resolve(diameter=2.0)
{'eta': 0.01104854345603980..., 'block': 32, 'eps': 0.125}
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from recis.config_utils import bounded, check_types

from .sets import SET_NAMES

__all__ = ["BOGDIPOptions", "EnsembleOptions", "AdaptiveOptions", "ProjectedOGDOptions", "INFEASIBLE_START"]

INFEASIBLE_START = ("project", "raise")


@dataclass
class _SetOptions:
    set: str = "l2_ball"
    radius: float = bounded(1.0, gt=0)
    lo: float = bounded(-1.0)
    hi: float = bounded(1.0)
    horizon: Optional[int] = bounded(None, ge=1)
    grad_bound: float = bounded(1.0, gt=0)
    on_infeasible_start: str = "project"
    power_iters: int = bounded(40, ge=1)
    power_tol: float = bounded(1e-10, gt=0)
    seed: int = bounded(0, ge=0)

    where = "online optimizer"

    def __post_init__(self):
        check_types(self, self.where)
        if self.set not in SET_NAMES:
            raise ValueError(f"{self.where}.set must be one of {', '.join(SET_NAMES)}, got {self.set!r}")
        if self.on_infeasible_start not in INFEASIBLE_START:
            raise ValueError(f"{self.where}.on_infeasible_start must be one of {', '.join(INFEASIBLE_START)}, "
                             f"got {self.on_infeasible_start!r}")
        if self.set == "box" and not self.lo < self.hi:
            raise ValueError(f"{self.where}: box needs lo < hi, got lo={self.lo}, hi={self.hi}")

    def set_kwargs(self) -> dict:
        return dict(radius=self.radius, lo=self.lo, hi=self.hi, power_iters=self.power_iters,
                    power_tol=self.power_tol, seed=self.seed)

    def _need_horizon(self, option: str):
        if self.horizon is None:
            raise ValueError(f"{self.where}: give {option} or horizon (T) to derive it from")
        return self.horizon


@dataclass
class _BlockOptions(_SetOptions):
    block: Optional[int] = bounded(None, ge=1)
    eps: Optional[float] = bounded(None, gt=0)
    gamma: float = bounded(2.0 / 3.0, gt=0, le=1)
    max_oracle_calls: int = bounded(100000, ge=1)

    def _block_eps(self, diameter: float):
        block = self.block if self.block is not None else math.ceil(math.sqrt(self._need_horizon("block")))
        eps = self.eps if self.eps is not None else diameter ** 2 / math.sqrt(self._need_horizon("eps"))
        return block, eps

    def _eta_default(self, diameter: float) -> float:
        return diameter / (self.grad_bound * self._need_horizon("eta") ** 0.75)


@dataclass
class BOGDIPOptions(_BlockOptions):
    eta: Optional[float] = bounded(None, gt=0)

    where = "bogd_ip"

    def resolve(self, diameter: float) -> dict:
        block, eps = self._block_eps(diameter)
        eta = self.eta if self.eta is not None else self._eta_default(diameter)
        return {"eta": eta, "block": block, "eps": eps}


@dataclass
class EnsembleOptions(_BlockOptions):
    eta_min: Optional[float] = bounded(None, gt=0)
    experts: Optional[int] = bounded(None, ge=1)
    meta_lr: Optional[float] = bounded(None, gt=0)

    where = "bogd_ip_ensemble"

    def resolve(self, diameter: float) -> dict:
        block, eps = self._block_eps(diameter)
        eta_min = self.eta_min if self.eta_min is not None else self._eta_default(diameter)
        n = self.experts
        if n is None:
            n = math.ceil(0.5 * math.log2(1 + 4 * self._need_horizon("experts") / 7)) + 1
        meta_lr = self.meta_lr
        if meta_lr is None:
            blocks = max(1.0, self._need_horizon("meta_lr") / block)
            meta_lr = math.sqrt(8.0 / blocks) / (block * self.grad_bound * diameter)
        return {"etas": [eta_min * 2.0 ** i for i in range(n)], "block": block, "eps": eps, "meta_lr": meta_lr}


@dataclass
class AdaptiveOptions(_BlockOptions):
    eta_scale: float = bounded(1.0, gt=0)
    max_scale: Optional[int] = bounded(None, ge=0)

    where = "bogd_ip_adaptive"

    def resolve(self, diameter: float) -> dict:
        """An instance of scale k lives 2^k blocks (tau = 2^k B rounds) and steps
        eta_k = eta_scale * D / (G tau^(3/4)) [I] (BOGD_IP's step tuned to its own interval)."""
        block, eps = self._block_eps(diameter)
        max_scale = self.max_scale
        if max_scale is None and self.horizon is not None:
            max_scale = max(0, int(math.floor(math.log2(max(1, self.horizon // block)))))
        return {"block": block, "eps": eps, "max_scale": max_scale,
                "eta0": self.eta_scale * diameter / self.grad_bound}


@dataclass
class ProjectedOGDOptions(_SetOptions):
    eta: Optional[float] = bounded(None, gt=0)

    where = "projected_ogd"

    def resolve(self, diameter: float) -> dict:
        """Default step D / (G sqrt(T)) (the classic static-regret tuning)."""
        eta = self.eta if self.eta is not None else diameter / (self.grad_bound * math.sqrt(self._need_horizon("eta")))
        return {"eta": eta}


def option_names(cls) -> list:
    return [f.name for f in dataclasses.fields(cls)]
