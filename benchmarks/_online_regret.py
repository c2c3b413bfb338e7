"""Regret of the projection-free online optimizers on drifting streams (arXiv 2305.11726).

For each stream, optimizer, seed and horizon T = 2^10 .. 2^14: the dynamic regret (against the
stream's comparator sequence, with its path length P_T), the static regret, the interval regret
on [T/2, T) (static regret of the second half alone), the linear-oracle calls per round and the
wall time per round. Per optimizer: the log-log slope of dynamic regret against T (fitted per
seed), and regret/T at the largest T; mean ± sample standard deviation over the seeds.

Streams (recis_online.oco.streams):
- `ls`: drifting least squares f_t(x) = ||x - u_t||^2 on the simplex (d = --d), u_t piecewise
  constant with --switches switches at seed-drawn fractions of T;
- `ls_shift`: the same with one switch, at T/2 (the adaptive-regret case);
- `logistic`: online logistic regression in an l1 ball of radius --radius, the true direction
  switching --switches times, comparator = each segment's best point in hindsight.

Optimizers: bogd_ip, bogd_ip_ensemble, bogd_ip_adaptive, projected_ogd, every one with its [I]
defaults derived from (T, K's diameter D, the stream's gradient bound G): B = ceil(sqrt T),
eps = D^2/sqrt T, eta = D/(G T^(3/4)) (the ensemble's eta_min; projected OGD: D/(G sqrt T)).
Nothing is tuned, so there is no validation seed.

The lead's benchmarks/online.py dispatches here (`add_args`, `run`); run alone with
`python benchmarks/_online_regret.py [--quick]`.
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPTIMIZERS = ("bogd_ip", "bogd_ip_ensemble", "bogd_ip_adaptive", "projected_ogd")
STREAMS = ("ls", "ls_shift", "logistic")


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--t-min", type=int, default=10, help="smallest horizon: T = 2^t-min")
    p.add_argument("--t-max", type=int, default=14, help="largest horizon: T = 2^t-max")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--d", type=int, default=10, help="dimension of the streams")
    p.add_argument("--switches", type=int, default=4, help="comparator switches of the ls and logistic streams")
    p.add_argument("--radius", type=float, default=2.0, help="l1-ball radius of the logistic stream")
    p.add_argument("--streams", default=",".join(STREAMS))
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=None, help="output prefix: <out>.json, <out>.md and <out>_<stream>.png "
                   "(default: benchmarks/results/online_regret; a --quick run writes to the temporary directory)")
    p.add_argument("--quick", action="store_true", help="smoke run: T = 2^8 .. 2^10, one seed")
    return p


def _plugin_path():
    """This checkout's plugin first (an installed recis_online may be another version)."""
    plugin = str(ROOT / "plugins" / "online")
    if plugin not in sys.path:
        sys.path.insert(0, plugin)


def _make_stream(kind, T, seed, args):
    from recis_online.oco.sets import make_set
    from recis_online.oco.streams import DriftingLeastSquares, SwitchingLogistic

    if kind == "ls":
        return "simplex", {}, DriftingLeastSquares(make_set("simplex", (args.d,)), T, (args.d,), args.switches, seed)
    if kind == "ls_shift":
        return "simplex", {}, DriftingLeastSquares(make_set("simplex", (args.d,)), T, (args.d,), seed=seed,
                                                   switch_at=[0.5])
    if kind == "logistic":
        K = make_set("l1_ball", (args.d,), radius=args.radius)
        return "l1_ball", {"radius": args.radius}, SwitchingLogistic(K, T, args.d, args.switches, seed)
    raise ValueError(f"unknown stream {kind!r} (streams: {', '.join(STREAMS)})")


def _one(kind, name, T, seed, args):
    from recis.optim import load_optimizer
    from recis_online.oco.regret import interval_regret, play, regret_report

    set_name, extra, stream = _make_stream(kind, T, seed, args)
    cls = load_optimizer(name, "dense")
    trace = play(stream, lambda ps: cls(ps, set=set_name, horizon=T, grad_bound=stream.grad_bound, **extra))
    rep = regret_report(stream, trace)
    rep["interval_second_half"] = interval_regret(stream, trace.X, T // 2, T)
    rep["us_per_round"] = 1e6 * trace.seconds / T
    return rep


def _ms(xs):
    xs = list(xs)
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fmt(m, s, digits=3):
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def run(args) -> dict:
    _plugin_path()
    import torch

    from recis_online.oco.regret import loglog_slope, plot_regret

    torch.set_num_threads(args.threads)
    if args.quick:
        args.t_min, args.t_max, args.seeds = 8, 10, "0"
    if args.out is None:  # a --quick (smoke) run never writes over the published results
        args.out = os.path.join(tempfile.gettempdir(), "online_regret") if args.quick else \
            str(HERE / "results" / "online_regret")
    seeds = [int(s) for s in str(args.seeds).split(",")]
    Ts = [2 ** k for k in range(args.t_min, args.t_max + 1)]
    streams = [s for s in args.streams.split(",") if s]
    names = [n for n in args.optimizers.split(",") if n]
    for n in names:
        if n not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {n!r} (optimizers: {', '.join(OPTIMIZERS)})")
    t_start = time.time()
    runs = []
    for kind in streams:
        for name in names:
            for seed in seeds:
                for T in Ts:
                    rep = _one(kind, name, T, seed, args)
                    rep.update(stream=kind, optimizer=name, seed=seed)
                    runs.append(rep)
                    print(f"{kind:9s} {name:17s} seed {seed} T {T:6d}  dynamic {rep['dynamic']:9.2f}  "
                          f"interval {rep['interval_second_half']:8.2f}  P_T {rep['path_length']:.2f}  "
                          f"calls/round {rep['oracle_calls_per_round']:.2f}", flush=True)
    summary = []
    for kind in streams:
        curves = {}
        for name in names:
            sel = [r for r in runs if r["stream"] == kind and r["optimizer"] == name]
            by_seed = {s: [r for r in sel if r["seed"] == s] for s in seeds}
            slopes = [loglog_slope(Ts, [r["dynamic"] for r in by_seed[s]]) if all(r["dynamic"] > 0 for r in by_seed[s])
                      else float("nan") for s in seeds]
            last = [r for r in sel if r["T"] == Ts[-1]]
            per_T = [_ms(r["dynamic"] for r in sel if r["T"] == T) for T in Ts]
            falls = all(all(a["dynamic"] / a["T"] > b["dynamic"] / b["T"] for a, b in zip(by_seed[s], by_seed[s][1:]))
                        for s in seeds)
            row = {"stream": kind, "optimizer": name, "slope": _ms(slopes), "slopes_per_seed": slopes,
                   "regret_per_round_falls": falls,
                   "dynamic_over_T": _ms(r["dynamic"] / r["T"] for r in last),
                   "dynamic": _ms(r["dynamic"] for r in last), "static": _ms(r["static"] for r in last),
                   "interval_second_half": _ms(r["interval_second_half"] for r in last),
                   "path_length": _ms(r["path_length"] for r in last),
                   "oracle_calls_per_round": _ms(r["oracle_calls_per_round"] for r in last),
                   "us_per_round": _ms(r["us_per_round"] for r in last)}
            summary.append(row)
            curves[name] = (Ts, [m for m, _ in per_T], [s for _, s in per_T])
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        plot_regret(curves, f"{args.out}_{kind}.png", title=f"dynamic regret vs T ({kind}, mean ± sd of {len(seeds)} seeds)")
    table = markdown(summary, Ts[-1], len(seeds))
    print(table)
    result = {"machine": machine(), "T": Ts, "seeds": seeds, "d": args.d, "switches": args.switches,
              "seconds": time.time() - t_start, "summary": summary, "runs": runs, "table": table,
              "plots": [_shown(f"{args.out}_{k}.png") for k in streams]}
    with open(f"{args.out}.json", "w") as f:
        json.dump(result, f, indent=1)
    with open(f"{args.out}.md", "w") as f:
        f.write(table + "\n")
    return result


def _shown(path: str) -> str:
    """A path as the checkout names it (relative to the repository root when inside it)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return os.path.basename(path)


def markdown(summary, T_last, n_seeds) -> str:
    head = (f"| stream | optimizer | slope of dynamic regret | regret/T falls | dynamic regret/T at T={T_last} | "
            f"interval regret [T/2, T) | static regret | P_T | oracle calls/round | µs/round |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for r in summary:
        rows.append(f"| {r['stream']} | {r['optimizer']} | {_fmt(*r['slope'])} | {'yes' if r['regret_per_round_falls'] else 'no'} "
                    f"| {_fmt(*r['dynamic_over_T'], 4)} | {_fmt(*r['interval_second_half'], 1)} | {_fmt(*r['static'], 1)} "
                    f"| {_fmt(*r['path_length'], 2)} | {_fmt(*r['oracle_calls_per_round'], 2)} | {_fmt(*r['us_per_round'], 0)} |")
    rows.append(f"\nmean ± sample sd over {n_seeds} seeds; slopes fitted per seed on log(regret) vs log(T).")
    return "\n".join(rows)


if __name__ == "__main__":
    run(add_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)).parse_args())
