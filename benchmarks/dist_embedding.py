"""Distributed embedding step on N local CPU ranks: recis row-wise sharding vs torchrec DMP row-wise.

The same spawned ranks (gloo, one torch thread each) build every contestant of
``_dist_contestants.py`` on the workload of ``embedding_step.py`` (F Zipf features, B samples per
rank, dim D, tables warmed with every id), then time them interleaved round by round (the order
rotates), between barriers. A step is lookup + backward + fused row-wise Adagrad on this rank's
own batch of B samples (global batch W*B). Per step and rank it counts the bytes handed to other
ranks by every torch.distributed collective (``CommCounter``) and compares recis' count with
``ShardedEmbeddingCollection.comm_stats`` and with the model of docs/scaling.md (``recis_bytes``).

    python benchmarks/dist_embedding.py --quick
    python benchmarks/dist_embedding.py --json dist.json
    python benchmarks/dist_embedding.py --model-table --dedup 0.33 --compute-ms 120
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(1, os.path.dirname(_HERE))

METHODS = ("recis", "torchrec", "recis_local")
TRIPLE_BYTES = 24   # (tag, id, count), 3 x int64, per unique remote key
FLOAT_BYTES = 4
COLLECTIVES_PER_STEP = 4  # recis: counts, ids, rows (forward), gradients (backward) all-to-alls


# ----------------------------------------------------------------------------------------------
# the model of docs/scaling.md
# ----------------------------------------------------------------------------------------------

def recis_bytes(unique: float, world: int, dim: int) -> Dict[str, float]:
    """Bytes one rank sends per step when its local batch has `unique` distinct (table, id) keys
    (ids after dedup); keys are owned uniformly at random, so a share (W-1)/W of them is remote."""
    remote = unique * (world - 1) / world
    out = {"ids": TRIPLE_BYTES * remote, "counts": 8.0 * (world - 1),
           "rows": FLOAT_BYTES * dim * remote, "grads": FLOAT_BYTES * dim * remote}
    out["total"] = sum(out.values())
    return out


def torchrec_rw_bytes(ids: float, batch: int, features: int, dim: int, world: int) -> Dict[str, float]:
    """torchrec row-wise pooled (EmbeddingBagCollection), per rank per step: every id (no dedup)
    and every bag length (int64) go to the row block's owner; partial pooled sums of the global
    batch are reduce-scattered forward and their gradients all-gathered backward (ring volumes)."""
    out = {"ids": 8.0 * ids * (world - 1) / world, "lengths": 8.0 * features * batch * (world - 1),
           "pooled": FLOAT_BYTES * features * dim * batch * (world - 1),
           "pooled_grads": FLOAT_BYTES * features * dim * batch * (world - 1)}
    out["total"] = sum(out.values())
    return out


def step_time_s(compute_s: float, sent_bytes: float, gbit_s: float, world: int, latency_s: float = 25e-6,
                collectives: int = COLLECTIVES_PER_STEP) -> float:
    """compute + bytes / bandwidth + one latency per peer message of every all-to-all."""
    if world == 1:
        return compute_s
    return compute_s + sent_bytes * 8 / (gbit_s * 1e9) + collectives * (world - 1) * latency_s


def scaling_table(batch: int, features: int, dim: int, ids_per_bag: float, dedup: float, compute_ms: float,
                  worlds: Sequence[int] = (2, 8, 32, 128), gbits: Sequence[float] = (10, 25, 100),
                  latency_us: float = 25.0) -> str:
    """The worked table of docs/scaling.md (markdown)."""
    ids = batch * features * ids_per_bag
    head = ("| W | recis MB/step/rank | torchrec RW MB/step/rank | "
            + " | ".join(f"recis ms @ {g:g} Gbit/s" for g in gbits) + " | "
            + " | ".join(f"torchrec ms @ {g:g} Gbit/s" for g in gbits) + " |")
    lines = [head, "|" + "---|" * (3 + 2 * len(gbits))]
    for w in worlds:
        r = recis_bytes(dedup * ids, w, dim)["total"]
        t = torchrec_rw_bytes(ids, batch, features, dim, w)["total"]
        rt = [step_time_s(compute_ms / 1e3, r, g, w, latency_us / 1e6) * 1e3 for g in gbits]
        tt = [step_time_s(compute_ms / 1e3, t, g, w, latency_us / 1e6, collectives=3) * 1e3 for g in gbits]
        lines.append(f"| {w} | {r / 1e6:.1f} | {t / 1e6:.1f} | " + " | ".join(f"{x:.0f}" for x in rt) + " | "
                     + " | ".join(f"{x:.0f}" for x in tt) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------

@dataclass
class Config:
    features: int = 26
    batch: int = 4096          # per rank
    rows: int = 1_000_000
    dim: int = 64
    world: int = 2
    rounds: int = 9
    steps: int = 3             # timed steps per contestant per round
    batches: int = 6           # pre-generated batches per rank (cycled)
    warm: int = 2
    seed: int = 0
    methods: List[str] = field(default_factory=lambda: list(METHODS))

    def __post_init__(self):
        for name in ("features", "batch", "rows", "dim", "rounds", "steps", "batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.world < 2:
            raise ValueError(f"world must be >= 2 ranks for a distributed benchmark, got {self.world}")
        if self.warm < 0:
            raise ValueError(f"warm must be >= 0, got {self.warm}")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        if "recis" not in self.methods:
            raise ValueError("methods must include 'recis' (the byte accounting is checked on it)")


# ----------------------------------------------------------------------------------------------
# the rank body
# ----------------------------------------------------------------------------------------------

def _quiet():
    warnings.filterwarnings("ignore")
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    logging.disable(logging.WARNING)


def rank_main(cfg: Config) -> dict:
    """Runs on every rank (spawned by run_local); returns this rank's samples and counts."""
    _quiet()
    from _dist_contestants import CommCounter, RecisLocal, RecisSharded, TorchrecRW, timed_steps
    from _workload import Workload
    from recis.distributed import ShardingEnv

    env = ShardingEnv.current()
    wl = Workload(features=cfg.features, rows=cfg.rows, dim=cfg.dim, seed=cfg.seed)
    batches = wl.batches(cfg.batch, cfg.batches, seed_offset=1 + env.rank)
    grad = torch.randn(cfg.batch, cfg.features * cfg.dim, generator=torch.Generator().manual_seed(7 + env.rank))
    kinds = {"recis": RecisSharded, "torchrec": TorchrecRW, "recis_local": RecisLocal}
    counter = CommCounter().install()
    try:
        contestants, build_s = [], {}
        for key in cfg.methods:
            c = kinds[key](wl, torch.device("cpu"))
            t0 = time.perf_counter()
            with counter.pause():
                c.build()
                env.barrier()
            build_s[key] = time.perf_counter() - t0
            c.prepare(batches, grad)
            contestants.append(c)
        for c in contestants:
            with counter.pause():
                for i in range(cfg.warm):
                    c.step(i % cfg.batches)
        recis = contestants[cfg.methods.index("recis")]
        recis.comm_log.clear()
        samples = {c.key: [] for c in contestants}
        sent = {c.key: [] for c in contestants}
        by_op = {c.key: {} for c in contestants}
        recis_batches = []
        cursor = cfg.warm
        for r in range(cfg.rounds):
            order = contestants[r % len(contestants):] + contestants[:r % len(contestants)]
            idx = [(cursor + j) % cfg.batches for j in range(cfg.steps)]
            cursor += cfg.steps
            for c in order:
                per_step, delta = timed_steps(c, idx, counter, env.barrier)
                samples[c.key].append(per_step)
                sent[c.key].append(sum(delta["bytes"].values()) / cfg.steps)
                for op, b in delta["bytes"].items():
                    by_op[c.key][op] = by_op[c.key].get(op, 0) + b
                if c is recis:
                    recis_batches += idx
        n_timed = cfg.rounds * cfg.steps
        return {"rank": env.rank, "samples_s": samples, "sent_bytes": sent,
                "by_op": {k: {op: b / n_timed for op, b in v.items()} for k, v in by_op.items()},
                "recis_steps": _recis_step_stats(recis, batches, recis_batches, cfg.dim),
                "plans": {c.key: getattr(c, "plan_desc", "unsharded") for c in contestants},
                "build_s": build_s, "live_rows": {c.key: c.n_live() for c in contestants if hasattr(c, "n_live")}}
    finally:
        counter.uninstall()


def _recis_step_stats(recis, batches, indices, dim) -> List[dict]:
    """Per timed recis step: comm_stats, the batch's ids and unique ids, and what the ids exchange
    would carry without dedup (every remote occurrence sent as its own triple)."""
    loc = {t.name: (gi, t.ns) for gi, g in enumerate(recis.ec.groups) for t in g.tables}
    remote_raw = {}
    out = []
    for stats, i in zip(recis.comm_log, indices):
        if i not in remote_raw:
            b = batches[i]
            remote_raw[i] = sum(int((~recis.ec.owned(*loc[f"t{f}"], ids)).sum())
                                for f, ids in enumerate(b.per_feature_raw))
        b = batches[i]
        out.append({**stats, "grads_bytes": FLOAT_BYTES * dim * stats["remote_keys"], "ids_in_batch": b.n_ids,
                    "unique_in_batch": b.n_unique, "remote_ids_no_dedup": remote_raw[i]})
    return out


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------

def _mean(xs):
    return sum(xs) / len(xs)


def assemble(cfg: Config, ranks: List[dict]) -> dict:
    """Step time per sample = the slowest rank's; bytes = per rank per step, averaged over ranks."""
    methods = {}
    for key in cfg.methods:
        per_sample = [max(r["samples_s"][key][s] for r in ranks) for s in range(cfg.rounds)]
        med = statistics.median(per_sample)
        methods[key] = {"ms_median": med * 1e3, "ms_min": min(per_sample) * 1e3,
                        "examples_per_s": cfg.world * cfg.batch / med, "samples": len(per_sample),
                        "sent_bytes_per_rank": _mean([_mean(r["sent_bytes"][key]) for r in ranks]),
                        "sent_by_op": {op: _mean([r["by_op"][key].get(op, 0) for r in ranks])
                                       for op in sorted({o for r in ranks for o in r["by_op"][key]})},
                        "plan": ranks[0]["plans"][key], "build_s": max(r["build_s"][key] for r in ranks)}
    steps = [s for r in ranks for s in r["recis_steps"]]
    stats = {k: _mean([s[k] for s in steps]) for k in steps[0]}
    comm_total = stats["ids_bytes"] + stats["count_bytes"] + stats["rows_bytes"] + stats["grads_bytes"]
    model = _mean([recis_bytes(s["unique_keys"], cfg.world, cfg.dim)["total"] for s in steps])
    model_parts = {k: _mean([recis_bytes(s["unique_keys"], cfg.world, cfg.dim)[k] for s in steps])
                   for k in ("ids", "counts", "rows", "grads")}
    dup_ratio = stats["unique_in_batch"] / stats["ids_in_batch"]
    no_dedup = TRIPLE_BYTES * stats["remote_ids_no_dedup"]
    report = {"config": asdict(cfg), "methods": methods,
              "recis_bytes": {"comm_stats_total": comm_total, "counted_total": methods["recis"]["sent_bytes_per_rank"],
                              "model_total": model, "measured_over_model": comm_total / model,
                              "measured": {"ids": stats["ids_bytes"], "counts": stats["count_bytes"],
                                           "rows": stats["rows_bytes"], "grads": stats["grads_bytes"]},
                              "model": model_parts},
              "dedup": {"ids_per_step": stats["ids_in_batch"], "unique_per_step": stats["unique_in_batch"],
                        "dup_ratio": dup_ratio, "ids_bytes": stats["ids_bytes"], "ids_bytes_no_dedup": no_dedup,
                        "cut": stats["ids_bytes"] / no_dedup if no_dedup else float("nan")}}
    if "torchrec" in methods:
        tm = torchrec_rw_bytes(stats["ids_in_batch"], cfg.batch, cfg.features, cfg.dim, cfg.world)
        report["torchrec_bytes"] = {"counted_total": methods["torchrec"]["sent_bytes_per_rank"],
                                    "model_total": tm["total"], "model": tm,
                                    "measured_over_model": methods["torchrec"]["sent_bytes_per_rank"] / tm["total"]}
        paired = [_mean([r["samples_s"]["recis"][s] for r in ranks]) / _mean([r["samples_s"]["torchrec"][s]
                                                                             for r in ranks])
                  for s in range(cfg.rounds)]
        report["ratio_recis_over_torchrec"] = methods["recis"]["ms_median"] / methods["torchrec"]["ms_median"]
        report["ratio_paired_median"] = statistics.median(paired)
    return report


def markdown(report: dict) -> str:
    cfg, ms = report["config"], report["methods"]
    lines = [f"W={cfg['world']} ranks x 1 thread, F={cfg['features']}, B={cfg['batch']} per rank, "
             f"D={cfg['dim']}, rows={cfg['rows']:,}, {cfg['rounds']} rounds x {cfg['steps']} steps", "",
             "| method | sharding / kernel | ms/step (median) | min ms | examples/s (global) | "
             "MB sent/step/rank | by collective (MB) | samples |", "|---|---|---|---|---|---|---|---|"]
    for key, m in ms.items():
        ops = ", ".join(f"{op} {b / 1e6:.2f}" for op, b in m["sent_by_op"].items()) or "none"
        label = {"recis": "recis ShardedEmbeddingCollection (raw ids)",
                 "torchrec": "torchrec DMP(EmbeddingBagCollection) (pre-mapped rows)",
                 "recis_local": "recis EmbeddingCollection, unsharded per rank (no exchange)"}[key]
        lines.append(f"| {label} | {m['plan']} | {m['ms_median']:.2f} | {m['ms_min']:.2f} | "
                     f"{m['examples_per_s'] / 1e3:.1f} k | {m['sent_bytes_per_rank'] / 1e6:.3f} | {ops} | "
                     f"{m['samples']} |")
    rb, d = report["recis_bytes"], report["dedup"]
    lines += ["", f"- recis bytes/step/rank: comm_stats {rb['comm_stats_total'] / 1e6:.3f} MB, counted at the "
              f"collectives {rb['counted_total'] / 1e6:.3f} MB, model {rb['model_total'] / 1e6:.3f} MB "
              f"(measured/model {rb['measured_over_model']:.3f})",
              f"- dedup: {d['ids_per_step']:.0f} ids, {d['unique_per_step']:.0f} unique per step and rank "
              f"(U/N = {d['dup_ratio']:.3f}); ids exchange {d['ids_bytes'] / 1e6:.3f} MB vs "
              f"{d['ids_bytes_no_dedup'] / 1e6:.3f} MB without dedup (cut to {d['cut']:.3f})"]
    if "torchrec_bytes" in report:
        tb = report["torchrec_bytes"]
        lines.append(f"- torchrec bytes/step/rank: counted {tb['counted_total'] / 1e6:.3f} MB, model "
                     f"{tb['model_total'] / 1e6:.3f} MB (measured/model {tb['measured_over_model']:.3f})")
        lines.append(f"- recis / torchrec step time: {report['ratio_recis_over_torchrec']:.2f} (medians), "
                     f"{report['ratio_paired_median']:.2f} (median of per-round ratios)")
    return "\n".join(lines)


def run(cfg: Config, timeout_s: float = 1800.0) -> dict:
    """Runs the benchmark on cfg.world local gloo ranks; returns the report."""
    from recis.distributed.local import run_local

    ranks = run_local(rank_main, cfg.world, cfg, timeout_s=timeout_s, collective_timeout_s=max(120.0, timeout_s / 4))
    return assemble(cfg, [r.value for r in ranks])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Config()
    for name in ("features", "batch", "rows", "dim", "world", "rounds", "steps", "batches", "warm", "seed"):
        ap.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    ap.add_argument("--quick", action="store_true", help="B=1024, 200k rows, 5 rounds")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--model-table", action="store_true", help="print the scaling model's table and exit")
    ap.add_argument("--dedup", type=float, default=0.33, help="U/N for --model-table")
    ap.add_argument("--ids-per-bag", type=float, default=2.0, help="mean ids per bag for --model-table")
    ap.add_argument("--compute-ms", type=float, default=100.0, help="per-rank compute for --model-table")
    ap.add_argument("--latency-us", type=float, default=25.0, help="per peer message, for --model-table")
    a = ap.parse_args(argv)
    if a.model_table:
        print(scaling_table(a.batch, a.features, a.dim, a.ids_per_bag, a.dedup, a.compute_ms,
                            latency_us=a.latency_us))
        return
    if a.quick:
        a.batch, a.rows, a.rounds = 1024, 200_000, 5
    cfg = Config(features=a.features, batch=a.batch, rows=a.rows, dim=a.dim, world=a.world, rounds=a.rounds,
                 steps=a.steps, batches=a.batches, warm=a.warm, seed=a.seed,
                 methods=[m for m in a.methods.split(",") if m])
    t0 = time.perf_counter()
    report = run(cfg, a.timeout)
    report["wall_s"] = time.perf_counter() - t0
    report["torch"] = torch.__version__
    print(markdown(report))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
