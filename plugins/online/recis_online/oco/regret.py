"""Regret measurement: run an optimizer on a stream (one `step()` per round, the gradient taken
at the point played), then static, dynamic and interval regret, the path length P_T, log-log
slopes and a plot of regret against T.

- static regret on [s, e): sum f_t(x_t) - min_{x in K} sum f_t(x) (the best fixed point in hindsight);
- dynamic regret on [s, e): sum f_t(x_t) - sum f_t(u_t) against the stream's comparator sequence;
- interval regret on [s, e): the static regret of that interval alone (adaptive regret's unit).

>>> import torch
>>> from recis_online.oco.sets import L2Ball
>>> from recis_online.oco.streams import DriftingLeastSquares
>>> from recis_online.oco.optim import ProjectedOGD
>>> stream = DriftingLeastSquares(L2Ball(1.0), T=64, shape=(3,), switches=1, seed=0)
>>> trace = play(stream, lambda params: ProjectedOGD(params, set="l2_ball", eta=0.25))
>>> r = regret_report(stream, trace)
>>> r["dynamic"] >= r["static"]  # the per-round comparator is no worse than a fixed one
True
>>> round(loglog_slope([2 ** 10, 2 ** 12], [2.0 ** 7.5, 2.0 ** 9]), 9)
0.75
"""
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch

__all__ = ["Trace", "play", "dynamic_regret", "static_regret", "interval_regret", "regret_report", "loglog_slope",
           "plot_regret"]

F64 = torch.float64


@dataclass
class Trace:
    X: torch.Tensor          # (T, *shape): the point played at each round
    seconds: float           # wall time of the T rounds
    oracle_calls: int        # linear-oracle calls made (0 for optimizers without a counter)
    optimizer: object = None


def play(stream, make_optimizer: Callable, dtype=F64) -> Trace:
    """Plays the stream: a parameter starts at stream.start(); at round t the optimizer's current
    parameter is played, its gradient is set to grad f_t(x_t) and step() is called once."""
    p = torch.nn.Parameter(stream.start().to(dtype).clone())
    opt = make_optimizer([p])
    X = torch.empty((stream.T,) + tuple(stream.shape), dtype=F64)
    t0 = time.perf_counter()
    for t in range(stream.T):
        x = p.detach().to(F64)
        X[t] = x
        p.grad = stream.grad(t, x).to(dtype)
        opt.step()
    seconds = time.perf_counter() - t0
    calls = opt.oracle_calls() if hasattr(opt, "oracle_calls") else 0
    return Trace(X, seconds, calls, opt)


def _range(stream, start, end):
    end = stream.T if end is None else end
    if not 0 <= start < end <= stream.T:
        raise ValueError(f"interval [{start}, {end}) is not inside the stream's rounds [0, {stream.T})")
    return start, end


def dynamic_regret(stream, X: torch.Tensor, start: int = 0, end: Optional[int] = None) -> float:
    start, end = _range(stream, start, end)
    played, comp = stream.losses(X), stream.losses(stream.comparators())
    return float((played[start:end] - comp[start:end]).sum())


def static_regret(stream, X: torch.Tensor, start: int = 0, end: Optional[int] = None) -> float:
    start, end = _range(stream, start, end)
    best = stream.best_fixed(start, end)
    return float(stream.losses(X)[start:end].sum() - stream.loss_at(best, start, end).sum())


interval_regret = static_regret


def regret_report(stream, trace: Trace, intervals: Sequence = ()) -> Dict[str, float]:
    """static, dynamic, path_length, oracle_calls_per_round, seconds and, per (start, end) in
    `intervals`, interval_<start>_<end> (static regret on that interval)."""
    out = {"T": stream.T, "static": static_regret(stream, trace.X), "dynamic": dynamic_regret(stream, trace.X),
           "path_length": stream.path_length(), "oracle_calls_per_round": trace.oracle_calls / stream.T,
           "seconds": trace.seconds}
    for s, e in intervals:
        out[f"interval_{s}_{e}"] = interval_regret(stream, trace.X, s, e)
    return out


def loglog_slope(Ts: Sequence[float], regrets: Sequence[float]) -> float:
    """The least-squares slope of log(regret) against log(T) (regrets must be > 0)."""
    if any(r <= 0 for r in regrets):
        raise ValueError(f"log-log slope needs positive regrets, got {list(regrets)}")
    xs = [math.log(t) for t in Ts]
    ys = [math.log(r) for r in regrets]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot_regret(curves: Dict[str, tuple], path: str, title: str = "regret vs T") -> str:
    """Log-log plot of regret against T: curves maps a label to (Ts, mean regrets[, spreads]).
    Draws with matplotlib's Agg backend; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, curve in curves.items():
        Ts, R = curve[0], curve[1]
        if len(curve) > 2 and curve[2] is not None:
            ax.errorbar(Ts, R, yerr=curve[2], marker="o", capsize=3, label=label)
        else:
            ax.plot(Ts, R, marker="o", label=label)
    Ts0 = list(curves.values())[0][0]
    ref = list(curves.values())[0][1][0]
    ax.plot(Ts0, [ref * (t / Ts0[0]) ** 0.75 for t in Ts0], "k--", lw=0.8, label="slope 3/4")
    ax.plot(Ts0, [ref * (t / Ts0[0]) for t in Ts0], "k:", lw=0.8, label="slope 1")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T (rounds)")
    ax.set_ylabel("regret")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
