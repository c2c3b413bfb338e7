"""Checkpoints that scale with what changed: save / load time and bytes per rank for one large
hash table (default 10M rows, dim 16, SparseAdagrad: 16 slots per row).

1. One process: a full save; 1 % of the rows touched by training steps; an incremental save;
   loading the full checkpoint and the full + incremental chain into a fresh model.
2. Resharding: the table sharded row-wise over W=2 gloo processes and saved, then loaded by
   W=4 processes; each rank reports its bytes read against its own share of the rows.

    python benchmarks/checkpoint_scale.py                 # 10M rows (about 1.5 GB per full save)
    python benchmarks/checkpoint_scale.py --rows 200000   # a quick run

"bytes read" counts every byte read from checkpoint files (checksum passes included,
recis.checkpoint.ranged.bytes_read); "table bytes" are the bytes of the tables' rows in the
sparse files (ids, rows, slots, counts, last_seen).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TABLE = "item"
SEED = 5
CHUNK = 1 << 20


def make_model(dim: int):
    from recis.nn import EmbeddingCollection, TableConfig, sparse_tables
    from recis.optim import SparseAdagrad

    model = torch.nn.Module()
    model.ec = EmbeddingCollection([TableConfig(TABLE, dim, [TABLE], seed=SEED)])
    opt = SparseAdagrad(sparse_tables(model), lr=0.01)
    return model, {"sparse": opt}


def all_ids(rows: int) -> torch.Tensor:
    return torch.randperm(rows * 4, generator=torch.Generator().manual_seed(1))[:rows] * 7 + 3


def fill(model, ids: torch.Tensor, dim: int) -> None:
    """Loads `ids` with random rows and slots (what a long training leaves), chunk by chunk."""
    table = model.ec.tables()[TABLE]
    g = torch.Generator().manual_seed(2)
    for s in range(0, ids.numel(), CHUNK):
        part = ids[s:s + CHUNK]
        n = part.numel()
        table.load({"ids": part, "rows": torch.randn(n, dim, generator=g), "slots": torch.rand(n, dim, generator=g),
                    "counts": torch.randint(1, 100, (n,), generator=g), "last_seen": torch.zeros(n, dtype=torch.int64)})
    table.group.load_group_state({"step": torch.tensor(10)})


def touch(model, opts, ids: torch.Tensor) -> None:
    """One training step over `ids` (their rows and slots change, last_seen moves)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    kjt = KeyedJaggedTensor.from_lengths_sync([TABLE], ids, torch.ones(ids.numel(), dtype=torch.int64))
    model.ec.train()
    model.ec(kjt).values().square().sum().backward()
    opts["sparse"].step()
    opts["sparse"].zero_grad()


def sparse_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.name.startswith("sparse"))


def timed(fn):
    from recis.checkpoint import ranged

    before = ranged.bytes_read()
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, ranged.bytes_read() - before


def single(rows: int, dim: int, touched: float, root: Path) -> dict:
    from recis.checkpoint import CheckpointManager

    model, opts = make_model(dim)
    ids = all_ids(rows)
    fill(model, ids, dim)
    mgr = CheckpointManager(root / "single", keep_last=None)
    full, t_full, _ = timed(lambda: mgr.save(1, model, opts, incremental=False))
    hit = ids[torch.randperm(rows, generator=torch.Generator().manual_seed(3))[:int(rows * touched)]]
    for s in range(0, hit.numel(), CHUNK // 4):
        touch(model, opts, hit[s:s + CHUNK // 4])
    inc, t_inc, _ = timed(lambda: mgr.save(2, model, opts, incremental=True))
    del model, opts
    fresh, fopts = make_model(dim)
    _, t_load_full, r_full = timed(lambda: CheckpointManager(root / "single").load(full, fresh, fopts))
    del fresh, fopts
    fresh, fopts = make_model(dim)
    _, t_load_chain, r_chain = timed(lambda: CheckpointManager(root / "single").load(inc, fresh, fopts))
    assert len(fresh.ec.tables()[TABLE]) == rows
    return {"rows": rows, "dim": dim, "touched_rows": int(hit.unique().numel()),
            "full": {"save_s": t_full, "sparse_bytes": sparse_bytes(full), "load_s": t_load_full, "read_bytes": r_full},
            "incremental": {"save_s": t_inc, "sparse_bytes": sparse_bytes(inc), "chain_load_s": t_load_chain,
                            "read_bytes": r_chain - r_full}}


def _save_rank(directory: str, rows: int, dim: int):
    from recis.checkpoint import CheckpointManager
    from recis.distributed import shard
    from recis.distributed.env import ShardingEnv
    from recis.distributed.owner import owner_of

    env = ShardingEnv.current()
    model, opts = make_model(dim)
    model = shard(model, verbose=False)
    ids = all_ids(rows)
    mine = ids[owner_of(ids, SEED, env.world_size) == env.rank]  # the rows this rank owns (row-wise)
    fill(model, mine, dim)
    _, t, _ = timed(lambda: CheckpointManager(directory, keep_last=None).save(1, model, opts, incremental=False))
    return {"rank": env.rank, "rows": int(mine.numel()), "save_s": t}


def _load_rank(directory: str, rows: int, dim: int):
    from recis.checkpoint import CheckpointManager
    from recis.distributed import shard
    from recis.distributed.env import ShardingEnv

    env = ShardingEnv.current()
    model, opts = make_model(dim)
    model = shard(model, verbose=False)
    _, t, read = timed(lambda: CheckpointManager(directory, keep_last=None).load("latest", model, opts))
    n = len(model.ec.tables()[TABLE])
    return {"rank": env.rank, "rows": n, "load_s": t, "read_bytes": read}


def reshard(rows: int, dim: int, save_world: int, load_world: int, root: Path) -> dict:
    from recis.distributed.local import run_local

    directory = str(root / "sharded")
    saved = [r.value for r in run_local(_save_rank, save_world, directory, rows, dim, timeout_s=1800)]
    ckpt = next(p for p in Path(directory).iterdir() if p.name.startswith("step-"))
    loaded = [r.value for r in run_local(_load_rank, load_world, directory, rows, dim, timeout_s=1800)]
    assert sum(r["rows"] for r in loaded) == rows
    return {"save": saved, "load": loaded, "sparse_bytes": sparse_bytes(ckpt)}


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def report(single_r: dict, reshard_r: dict, args) -> str:
    row_bytes = 8 + 4 * args.dim + 4 * args.dim + 8 + 8
    f, i = single_r["full"], single_r["incremental"]
    lines = [f"{args.rows:,} rows, dim {args.dim}, SparseAdagrad ({row_bytes} checkpoint bytes per row: id, "
             f"row, slots, count, last_seen); {single_r['touched_rows']:,} rows touched "
             f"({100 * single_r['touched_rows'] / args.rows:.2f} %)", "",
             "| checkpoint | save s | sparse bytes written | load s | bytes read |", "|---|---|---|---|---|",
             f"| full | {f['save_s']:.2f} | {mb(f['sparse_bytes'])} | {f['load_s']:.2f} | {mb(f['read_bytes'])} |",
             f"| incremental (1 %) | {i['save_s']:.2f} | {mb(i['sparse_bytes'])} "
             f"({100 * i['sparse_bytes'] / f['sparse_bytes']:.2f} % of full) | {i['chain_load_s']:.2f} (chain) | "
             f"{mb(i['read_bytes'])} beyond the full ({100 * i['read_bytes'] / max(f['read_bytes'], 1):.2f} %) |",
             "", f"Resharding W={args.save_world} -> {args.load_world} (gloo processes, row-wise): "
             f"{mb(reshard_r['sparse_bytes'])} of sparse shards", "",
             "| rank | save s (W=2) | load s (W=4) | rows owned | own share | bytes read | read / share |",
             "|---|---|---|---|---|---|---|"]
    for r in reshard_r["load"]:
        share = r["rows"] * row_bytes
        save = next((s["save_s"] for s in reshard_r["save"] if s["rank"] == r["rank"]), None)
        lines.append(f"| {r['rank']} | {f'{save:.2f}' if save is not None else '-'} | {r['load_s']:.2f} | "
                     f"{r['rows']:,} | {mb(share)} | {mb(r['read_bytes'])} | {r['read_bytes'] / share:.3f} |")
    lines.append("")
    lines.append(f"Before this change every rank read every shard file whole, twice (checksum, then "
                 f"load): {mb(2 * reshard_r['sparse_bytes'])} per rank.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--touched", type=float, default=0.01)
    p.add_argument("--save-world", type=int, default=2)
    p.add_argument("--load-world", type=int, default=4)
    p.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary directory)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="recis-ckpt-bench-"))
    try:
        single_r = single(args.rows, args.dim, args.touched, root)
        reshard_r = reshard(args.rows, args.dim, args.save_world, args.load_world, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(report(single_r, reshard_r, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"single": single_r, "reshard": reshard_r}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
