"""Sharded GPU tables under torchrun, one rank per GPU (NCCL): the exactness check and the step time.

Every rank builds the same EmbeddingCollection of F tables on its GPU (Triton kernels), shards it
row-wise (`recis.distributed.shard`) and trains S steps of lookup + backward + fused row-wise
Adagrad on its slice of each global batch, with a per-rank mean loss. Rank 0 also trains an
unsharded copy on the whole global batches (one process's model); the ranks then gather their
shards, and rank 0 compares every table with the copy (max |difference| of rows and slots, ids
and counts equal). Then it times T more sharded steps. Results go to --json (rank 0).

    torchrun --standalone --nproc-per-node 2 benchmarks/dist_gpu_check.py --json out.json
    torchrun --standalone --nproc-per-node 2 benchmarks/dist_gpu_check.py --cpu --batch 64 --rows 1000 \
        --dim 8 --steps 3 --timed 2     # a smoke run of this script on the CPU (gloo, Triton interpreter)
"""
import argparse
import json
import os
import sys
import time

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(_HERE))


def batches(steps: int, global_batch: int, features: int, rows: int, device, seed: int = 1):
    """(values, lengths, coefficients) of each global batch: 1-3 Zipf-like ids per bag."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        lengths = torch.randint(1, 4, (features * global_batch,), generator=g)
        u = torch.rand(int(lengths.sum()), generator=g)
        values = (rows * u ** 3).long()  # skewed: a few hot ids repeat across ranks
        out.append((values.to(device), lengths.to(device)))
    return out


def local_slice(values, lengths, features: int, global_batch: int, lo: int, hi: int):
    """Examples [lo, hi) of every feature of a global batch, as a KeyedJaggedTensor."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
    vals, lens = [], []
    for f in range(features):
        a, b = f * global_batch + lo, f * global_batch + hi
        vals.append(values[offsets[a]:offsets[b]])
        lens.append(lengths[a:b])
    return KeyedJaggedTensor.from_lengths_sync([f"f{f}" for f in range(features)], torch.cat(vals), torch.cat(lens))


def train(ec, opt, data, lo, hi, args, coef):
    for values, lengths in data:
        kjt = local_slice(values, lengths, args.features, args.global_batch, lo, hi)
        out = ec(kjt).values()
        (out * coef[lo:hi]).sum(1).mean().backward()
        opt.step()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=4096, help="examples per rank")
    p.add_argument("--steps", type=int, default=8, help="steps checked against one process")
    p.add_argument("--timed", type=int, default=20, help="steps timed after the check")
    p.add_argument("--json", default=None)
    p.add_argument("--cpu", action="store_true", help="tables on the CPU with the Triton kernels (interpreter), gloo")
    args = p.parse_args()

    from recis.distributed import Planner, init_from_env, shard, shutdown
    from recis.nn import EmbeddingCollection, TableConfig
    from recis.optim import SparseRowwiseAdagrad

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if args.cpu:
        device, backend = torch.device("cpu"), "triton"
        env = init_from_env("gloo")
    else:
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), None
        env = init_from_env()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    args.global_batch = args.batch * env.world_size
    configs = [TableConfig(f"t{f}", args.dim, [f"f{f}"]) for f in range(args.features)]
    coef = torch.randn(args.global_batch, args.features * args.dim, generator=torch.Generator().manual_seed(3))
    coef = coef.to(device)
    data = batches(args.steps + args.timed, args.global_batch, args.features, args.rows, device)
    lo, hi = env.rank * args.batch, (env.rank + 1) * args.batch

    ec = shard(EmbeddingCollection(configs, device=device, backend=backend), env,
               Planner(overrides={c.name: "row_wise" for c in configs}), verbose=False)
    opt = SparseRowwiseAdagrad(ec, lr=0.05, fused=True)
    train(ec, opt, data[:args.steps], lo, hi, args, coef)
    shards = {n: {k: v.cpu() for k, v in t.export().items()} for n, t in ec.tables().items()}
    everyone = env.all_gather_object(shards, what="table shards")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    result = {"world": env.world_size, "device": name, **vars(args)}
    if env.rank == 0:
        ref = EmbeddingCollection(configs, device=device, backend=backend)
        ref_opt = SparseRowwiseAdagrad(ref, lr=0.05, fused=True)
        train(ref, ref_opt, data[:args.steps], 0, args.global_batch, args, coef)
        diffs = {}
        for name, table in ref.tables().items():
            want = {k: v.cpu() for k, v in table.export().items()}
            got = {k: torch.cat([s[name][k] for s in everyone]) for k in want}
            wo, go = torch.argsort(want["ids"]), torch.argsort(got["ids"])
            same_ids = torch.equal(want["ids"][wo], got["ids"][go])
            diffs[name] = {"ids_equal": same_ids,
                           "counts_equal": same_ids and torch.equal(want["counts"][wo], got["counts"][go]),
                           "rows_max_abs": float((want["rows"][wo] - got["rows"][go]).abs().max()) if same_ids
                           else None,
                           "slots_max_abs": float((want["slots"][wo] - got["slots"][go]).abs().max()) if same_ids
                           else None}
        result["check"] = diffs
        result["exact"] = all(d["ids_equal"] and d["counts_equal"] and d["rows_max_abs"] <= 1e-5
                              and d["slots_max_abs"] <= 1e-5 for d in diffs.values())
    sync()
    env.barrier()
    t0 = time.perf_counter()
    train(ec, opt, data[args.steps:], lo, hi, args, coef)
    sync()
    env.barrier()
    ms = (time.perf_counter() - t0) / max(args.timed, 1) * 1e3
    result.update(step_ms=ms, examples_per_s=args.global_batch / (ms / 1e3), comm_stats=ec.comm_stats)
    if env.rank == 0:
        print(json.dumps(result, indent=1, default=str))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1, default=str)
    del ec, opt
    shutdown()
    return 0 if env.rank != 0 or result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
