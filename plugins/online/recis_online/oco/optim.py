"""BOGD_IP, its two ensembles and projected OGD as `torch.optim.Optimizer`s over constrained
parameters. One `step()` is one round: each parameter with a gradient advances its learner by the
gradient at the point it played, then holds the learner's next point.

Each parameter is constrained on its own to a copy of K (`set`, with `radius` or `lo`/`hi`)
over its shape (`nuclear_ball`: a matrix parameter). Options are checked by name (see
`options.py`); the [I] defaults derive from `horizon` (T), K's diameter and `grad_bound` (G).

- A parameter that starts outside K: `on_infeasible_start="project"` warns and replaces it by a
  Frank-Wolfe eps-approximate projection (LOO calls only: ||x - Proj_K(p)||^2 <= 2 eps; exact for
  `projected_ogd`), `"raise"` refuses it with a ValueError naming it.
- A NaN/Inf gradient raises FloatingPointError naming the round and the parameter, before any
  parameter or state changes.
- `state_dict()` holds each learner's full state (experts' x/y, weights, block position,
  accumulated gradient, oracle-call counters), in float64; `load_state_dict` restores it exactly
  (no cast to the parameter's dtype), so a resumed run continues bitwise.

>>> import torch
>>> w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
>>> opt = BOGDIP([w], set="l1_ball", radius=1.0, eta=0.5, block=2, eps=1e-4)
>>> for _ in range(4):
...     w.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
...     opt.step()
>>> float(w.detach().abs().sum()) <= 1.0 + 1e-9, opt.state[w]["block_index"], opt.state[w]["oracle_calls"] > 0
(True, 3, True)
>>> BOGDIP([w], set="l1_ball", radius=1.0, eta=0.5, block=2, eps=1e-4, learning_rate=1)
Traceback (most recent call last):
...
TypeError: BOGDIP.__init__() got an unexpected keyword argument 'learning_rate'
"""
import copy
import dataclasses
import warnings
from typing import Optional

import torch

from recis.config_utils import Range

from . import learners
from .infeasible import frank_wolfe_projection
from .options import AdaptiveOptions, BOGDIPOptions, EnsembleOptions, ProjectedOGDOptions
from .projections import project
from .sets import make_set

__all__ = ["BOGDIP", "BOGDIPEnsemble", "BOGDIPAdaptive", "ProjectedOGD"]


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.detach().clone().to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return copy.deepcopy(value)


class _OnlineOptimizer(torch.optim.Optimizer):
    optimizer_kind = "dense"  # read by recis.optim.registry
    rules = {"eps": Range(gt=0)}  # recis.optim.hyper.check_options: our eps is a tolerance > 0
    options_class = None

    def __init__(self, params, options: dict):
        opts = self.options_class(**options)
        self._learners = {}
        self._option_names = list(options)
        super().__init__(params, dataclasses.asdict(opts))

    def add_param_group(self, param_group):
        """Adds a group (its own options override the defaults) and sets up a learner for each
        of its parameters (an infeasible start is handled here, per `on_infeasible_start`)."""
        super().add_param_group(param_group)
        gi = len(self.param_groups) - 1
        group = self.param_groups[gi]
        group_opts = self.options_class(**{k: group[k] for k in self._option_names})
        for pi, p in enumerate(group["params"]):
            self._setup(p, group_opts, self._param_name(gi, pi))

    def _param_name(self, gi: int, pi: int) -> str:
        names = self.param_groups[gi].get("param_names")
        if names:
            return f"'{names[pi]}'"
        p = self.param_groups[gi]["params"][pi]
        return f"param_groups[{gi}].params[{pi}] (shape {tuple(p.shape)})"

    def _setup(self, p, opts, name):
        try:
            K = make_set(opts.set, p.shape, **opts.set_kwargs())
        except ValueError as e:
            raise ValueError(f"parameter {name}: {e}") from None
        K.check_shape(p.shape, f"parameter {name}")
        learner = self._make_learner(K, opts.resolve(K.diameter), opts)
        x0 = p.detach().to(torch.float64)
        if not K.contains(x0, 1e-9):
            if opts.on_infeasible_start == "raise":
                raise ValueError(f"parameter {name} starts outside K ({K!r}); on_infeasible_start='raise'")
            x0 = self._feasible_start(K, x0, learner)
            warnings.warn(f"parameter {name} started outside K ({K!r}); replaced by {self._start_rule}", stacklevel=4)
            with torch.no_grad():
                p.copy_(x0.to(p.dtype))
        self._learners[p] = learner
        self.state[p] = learner.init(x0)
        self._sync(p)

    _start_rule = "a Frank-Wolfe eps-approximate projection (linear oracle calls only)"

    def _feasible_start(self, K, x0, learner):
        x, _ = frank_wolfe_projection(K, x0, learner.eps, max_oracle_calls=learner.max_oracle_calls)
        return x

    def _sync(self, p):
        with torch.no_grad():
            p.copy_(self._learners[p].played(self.state[p]).to(p.dtype))

    def _named_params(self):
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                yield self._param_name(gi, pi), p

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        active = [(n, p) for n, p in self._named_params() if p.grad is not None]
        for name, p in active:  # every gradient is checked before anything changes
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not take sparse gradients (parameter {name})")
            if not torch.isfinite(p.grad).all():
                raise FloatingPointError(f"round {self.state[p]['round'] + 1}: the gradient of parameter {name} "
                                         f"is not finite (NaN/Inf); {type(self).__name__} changed nothing")
        for _, p in active:
            self._learners[p].step(self.state[p], p.grad.detach())
            self._sync(p)
        return loss

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, p in enumerate(params):  # the float64 state as saved (the base class casts to p.dtype)
            if idx in state_dict["state"]:
                self.state[p] = _to_device(state_dict["state"][idx], p.device)
                self._learners[p].K.calls = int(self.state[p].get("oracle_calls", 0))
                self._sync(p)

    def oracle_calls(self) -> int:
        """Linear-oracle calls made so far, over all parameters."""
        return sum(int(s.get("oracle_calls", 0)) for s in self.state.values())


class BOGDIP(_OnlineOptimizer):
    """Blocked OGD with infeasible projections (one learner per parameter). State per parameter:
    round, block_index, position (rounds into the block), grad_sum, x (played), y (infeasible
    point), oracle_calls, fw_rounds, y_moves, oracle_calls_last_block."""

    options_class = BOGDIPOptions

    def __init__(self, params, set: str = "l2_ball", radius: float = 1.0, lo: float = -1.0, hi: float = 1.0,
                 eta: Optional[float] = None, block: Optional[int] = None, eps: Optional[float] = None,
                 horizon: Optional[int] = None, gamma: float = 2.0 / 3.0, grad_bound: float = 1.0,
                 on_infeasible_start: str = "project", power_iters: int = 40, power_tol: float = 1e-10,
                 seed: int = 0, max_oracle_calls: int = 100000):
        opts = dict(locals())
        del opts["self"], opts["params"], opts["__class__"]
        super().__init__(params, opts)

    def _make_learner(self, K, r, o):
        return learners.BOGDIP(K, r["eta"], r["block"], r["eps"], o.gamma, o.max_oracle_calls)


class BOGDIPEnsemble(_OnlineOptimizer):
    """Hedge over BOGD_IP step sizes eta_min 2^(i-1), i = 1..experts (dynamic regret). State per
    parameter: as BOGDIP plus expert_x, expert_y (lists), log_weights, etas."""

    options_class = EnsembleOptions

    def __init__(self, params, set: str = "l2_ball", radius: float = 1.0, lo: float = -1.0, hi: float = 1.0,
                 eta_min: Optional[float] = None, experts: Optional[int] = None, meta_lr: Optional[float] = None,
                 block: Optional[int] = None, eps: Optional[float] = None, horizon: Optional[int] = None,
                 gamma: float = 2.0 / 3.0, grad_bound: float = 1.0, on_infeasible_start: str = "project",
                 power_iters: int = 40, power_tol: float = 1e-10, seed: int = 0, max_oracle_calls: int = 100000):
        opts = dict(locals())
        del opts["self"], opts["params"], opts["__class__"]
        super().__init__(params, opts)

    def _make_learner(self, K, r, o):
        return learners.BOGDIPEnsemble(K, r["etas"], r["block"], r["eps"], r["meta_lr"], o.gamma, o.max_oracle_calls)


class BOGDIPAdaptive(_OnlineOptimizer):
    """Geometric-covering BOGD_IP instances under AdaNormalHedge (adaptive regret). State per
    parameter: as BOGDIP plus instances (x, y, scale, start, end, R, C each) and max_alive."""

    options_class = AdaptiveOptions

    def __init__(self, params, set: str = "l2_ball", radius: float = 1.0, lo: float = -1.0, hi: float = 1.0,
                 eta_scale: float = 1.0, max_scale: Optional[int] = None, block: Optional[int] = None,
                 eps: Optional[float] = None, horizon: Optional[int] = None, gamma: float = 2.0 / 3.0,
                 grad_bound: float = 1.0, on_infeasible_start: str = "project", power_iters: int = 40,
                 power_tol: float = 1e-10, seed: int = 0, max_oracle_calls: int = 100000):
        opts = dict(locals())
        del opts["self"], opts["params"], opts["__class__"]
        super().__init__(params, opts)

    def _make_learner(self, K, r, o):
        return learners.BOGDIPAdaptive(K, r["eta0"], r["block"], r["eps"], r["max_scale"], o.gamma, o.max_oracle_calls)


class ProjectedOGD(_OnlineOptimizer):
    """x <- Proj_K(x - eta g) each round with the exact Euclidean projection (the baseline; not
    projection-free). State per parameter: round, x, projections."""

    options_class = ProjectedOGDOptions
    _start_rule = "its exact Euclidean projection"

    def __init__(self, params, set: str = "l2_ball", radius: float = 1.0, lo: float = -1.0, hi: float = 1.0,
                 eta: Optional[float] = None, horizon: Optional[int] = None, grad_bound: float = 1.0,
                 on_infeasible_start: str = "project", power_iters: int = 40, power_tol: float = 1e-10, seed: int = 0):
        opts = dict(locals())
        del opts["self"], opts["params"], opts["__class__"]
        super().__init__(params, opts)

    def _make_learner(self, K, r, o):
        return learners.ProjectedOGD(K, r["eta"])

    def _feasible_start(self, K, x0, learner):
        return project(K, x0)

