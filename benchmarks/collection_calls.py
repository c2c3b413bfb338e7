"""Per-step cost of an EmbeddingCollection with several table groups (the table-op call count
matters at small batches): forward + backward (fused sparse optimizer, or deferred + step) +
zero_grad, timed as the median of the main thread's CPU time per step (a loaded machine
disturbs it less than wall time), plus wall time.

    python benchmarks/collection_calls.py --groups 4 --batch 256 --steps 400 --repeats 3
    python benchmarks/collection_calls.py --groups 1 --tables-per-group 1 --batch 1 --vocab 100   # fixed cost
"""
import argparse
import json
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "recis")):
    sys.path.insert(0, os.path.dirname(_HERE))

import torch  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

from recis.nn import EmbeddingCollection, TableConfig  # noqa: E402
from recis.optim import SparseRowwiseAdagrad  # noqa: E402

# (dim, combiner) of each group: tables with the same pair share a group.
GROUP_KINDS = [(16, "sum"), (16, "mean"), (8, "sum"), (4, "sum"), (32, "sum"), (8, "mean"), (1, "sum"), (1, "mean")]


def build(groups: int, tables_per_group: int):
    configs = []
    for g in range(groups):
        dim, comb = GROUP_KINDS[g % len(GROUP_KINDS)]
        for t in range(tables_per_group):
            configs.append(TableConfig(f"g{g}t{t}", dim, [f"f{g}_{t}"], combiner=comb))
    return EmbeddingCollection(configs)


def batches(keys, batch: int, n: int, vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(1, 4, (len(keys) * batch,), generator=gen)
        values = torch.randint(0, vocab, (int(lengths.sum()),), generator=gen)
        out.append(KeyedJaggedTensor.from_lengths_sync(keys, values, lengths))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--tables-per-group", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=100_000, help="ids drawn uniformly from [0, vocab)")
    p.add_argument("--deferred", action="store_true", help="deferred optimizer (step()) instead of fused")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ec = build(a.groups, a.tables_per_group)
    opt = SparseRowwiseAdagrad(ec, lr=0.05, fused=not a.deferred)
    data = batches(ec.feature_names(), a.batch, 50, a.vocab)
    cpu, wall = [], []
    for _ in range(a.repeats):
        c_gaps, w_gaps = [], []
        for i in range(a.steps):
            c0, w0 = time.thread_time(), time.perf_counter()
            out = ec(data[i % len(data)])
            out.values().sum().backward()
            opt.step()
            opt.zero_grad()
            c_gaps.append(time.thread_time() - c0)
            w_gaps.append(time.perf_counter() - w0)
        cpu.append(round(statistics.median(c_gaps[20:]) * 1e6, 1))
        wall.append(round(statistics.median(w_gaps[20:]) * 1e6, 1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for i in range(10):
            ec(data[i]).values().sum().backward()
            opt.step()
            opt.zero_grad()
    calls = {e.key: e.count / 10 for e in prof.key_averages() if e.key.startswith("recis::")}
    out = {"groups": len(ec.groups), "median_step_cpu_us": cpu, "median_step_wall_us": wall,
           "recis_op_calls_per_step": calls}
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
