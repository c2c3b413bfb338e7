"""Parquet -> KeyedJaggedTensor: rows/s of recis.features against bare pyarrow and per-feature peers.

Writes (seeded, into a temp dir unless --keep) a Criteo-like Parquet file: 13 dense int64
columns with nulls, 26 categorical columns of 8-hex strings drawn Zipf(1.05) over Criteo-like
cardinalities (capped at 1M; 2% nulls) and a label. Then, in one process, interleaved round by
round, each contestant reads the whole file in batches:

* bare pyarrow ``ParquetFile.iter_batches``, plain and with ``read_dictionary`` for the strings;
* recis fused ``FeatureEngine`` (hash + mod for the categoricals, fill_missing + log1p for the
  dense columns, label), reading with dictionary encoding;
* the same specs through the unfused recis engine (``fused=False``: each op per feature);
* pandas + per-feature torch: ``to_pandas`` per batch, ``pandas.util.hash_array`` + mod per
  categorical column, fillna + log1p per dense column, torch tensors, a KeyedJaggedTensor.

Before timing, the fused engine's output is checked against the unfused engine and against the
xxhash package. Prints a markdown table (medians over rounds, ratios) and the targets.

    python benchmarks/io_bench.py --quick
    python benchmarks/io_bench.py --rows 2000000 --wait-idle 10 --json results.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

# Idle OpenMP workers sleep instead of spinning between the engine's parallel regions, so they
# leave the cores to pyarrow's decoding threads (set before torch starts its thread pool; the
# printout says which policy ran). An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(1, os.path.dirname(_HERE))
from _workload import Probe  # noqa: E402
from embedding_step import wait_idle  # noqa: E402

from recis import hashing  # noqa: E402
from recis.features import FeatureEngine  # noqa: E402

# Criteo Kaggle cardinalities of C1..C26, the largest capped at 1M.
CARDINALITIES = [1460, 583, 1_000_000, 1_000_000, 305, 24, 12517, 633, 3, 93145, 5683, 1_000_000, 3194, 27, 14992,
                 1_000_000, 10, 5652, 2173, 4, 1_000_000, 18, 15, 286181, 105, 142572]
DENSE, CATS = [f"I{i + 1}" for i in range(13)], [f"C{i + 1}" for i in range(26)]
MOD = 10_000_000
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def feature_config():
    return {"features": [{"name": c, "kind": "sparse", "column": c, "ops": [{"op": "hash"}, {"op": "mod", "n": MOD}]}
                         for c in CATS]
            + [{"name": d, "kind": "dense", "column": d, "ops": [{"op": "fill_missing", "value": 0}, {"op": "log1p"}]}
               for d in DENSE]
            + [{"name": "label", "kind": "label", "column": "label"}]}


# ---- data ------------------------------------------------------------------------------------

def _zipf_ranks(rng, n, card, alpha=1.05):
    cdf = np.cumsum(np.arange(1, card + 1, dtype=np.float64) ** -alpha)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1]), card - 1).astype(np.uint64)


def _hex_column(rng, n, card, salt, p_null=0.02):
    v = ((_zipf_ranks(rng, n, card) + np.uint64(salt << 32)) * np.uint64(hashing.GOLDEN)) >> np.uint64(32)
    nibbles = (v[:, None] >> (np.uint64(28) - np.uint64(4) * np.arange(8, dtype=np.uint64))) & np.uint64(15)
    data = HEX[nibbles.astype(np.intp)].reshape(-1)
    valid = rng.random(n) >= p_null
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 8 * (n + 1), 8, dtype=np.int32)),
                                       pa.py_buffer(data), pa.py_buffer(np.packbits(valid, bitorder="little")),
                                       null_count=int(n - valid.sum()))


def _chunk(rng, n):
    cols = {}
    for j, d in enumerate(DENSE):
        x = rng.zipf(1.2 + 0.05 * j, n).astype(np.int64) - 1 - (j == 1) * 2  # I2 has negatives, as in Criteo
        cols[d] = pa.array(x, mask=rng.random(n) < 0.05 + 0.03 * j)
    for j, c in enumerate(CATS):
        cols[c] = _hex_column(rng, n, CARDINALITIES[j], j)
    cols["label"] = pa.array((rng.random(n) < 0.25).astype(np.int64))
    return pa.table(cols)


def write_dataset(path, rows, seed, chunk=1 << 20):
    """Writes `rows` rows in row groups of `chunk` rows; dictionary pages up to 64 MiB keep every
    categorical column dictionary-encoded (the default 1 MiB would fall back to plain)."""
    rng = np.random.default_rng(seed)
    writer = None
    try:
        for start in range(0, rows, chunk):
            t = _chunk(rng, min(chunk, rows - start))
            if writer is None:
                writer = pq.ParquetWriter(path, t.schema, compression="snappy", dictionary_pagesize_limit=64 << 20)
            writer.write_table(t, row_group_size=chunk)
    finally:
        if writer is not None:
            writer.close()


# ---- contestants -----------------------------------------------------------------------------

def bare(path, batch_size, dictionary):
    def run():
        f = pq.ParquetFile(path, read_dictionary=CATS if dictionary else None)
        return sum(b.num_rows for b in f.iter_batches(batch_size=batch_size)), 0.0
    return run


def recis_engine(path, batch_size, fused):
    def run():
        engine = FeatureEngine.from_config(feature_config(), fused=fused)
        f, rows, spent = pq.ParquetFile(path, read_dictionary=CATS), 0, 0.0
        for b in f.iter_batches(batch_size=batch_size):
            t = time.perf_counter()
            out = engine(b)
            spent += time.perf_counter() - t
            rows += out.size
        return rows, spent
    return run


def pandas_batch(b):
    """One batch the pandas way: per-feature hashing and tensors, then a KeyedJaggedTensor."""
    import pandas as pd
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    df = b.to_pandas()
    values, lengths = [], []
    for c in CATS:
        s = df[c]
        valid = s.notna().to_numpy()
        h = pd.util.hash_array(s.to_numpy(dtype=object)[valid])
        values.append(torch.from_numpy((h % np.uint64(MOD)).astype(np.int64)))
        lengths.append(torch.from_numpy(valid.astype(np.int64)))
    kjt = KeyedJaggedTensor(CATS, torch.cat(values), lengths=torch.cat(lengths))
    dense = torch.stack([torch.from_numpy(np.log1p(np.abs(x)) * np.sign(x)) for x in
                         (df[d].fillna(0).to_numpy(dtype=np.float64) for d in DENSE)], 1).float()
    label = torch.from_numpy(df["label"].to_numpy(dtype=np.float32))
    return kjt, dense, label


def pandas_torch(path, batch_size):
    def run():
        f, rows, spent = pq.ParquetFile(path), 0, 0.0
        for b in f.iter_batches(batch_size=batch_size):
            t = time.perf_counter()
            rows += pandas_batch(b)[2].numel()
            spent += time.perf_counter() - t
        return rows, spent
    return run


def check(path, batch_size):
    """The fused engine equals the unfused one and the xxhash package on the first batches."""
    import xxhash
    f = pq.ParquetFile(path, read_dictionary=CATS)
    fused, unfused = FeatureEngine.from_config(feature_config()), FeatureEngine.from_config(feature_config(), fused=False)
    for k, b in enumerate(f.iter_batches(batch_size=batch_size)):
        x, y = fused(b), unfused(b)
        assert torch.equal(x.sparse.values(), y.sparse.values()) and torch.equal(x.sparse.lengths(), y.sparse.lengths())
        assert torch.equal(x.dense, y.dense) and torch.equal(x.labels, y.labels)
        if k == 0:
            col = b.column("C3").to_pylist()[:200]
            expected = [xxhash.xxh64_intdigest(s.encode()) for s in col if s is not None]
            got = x.sparse["C3"].values()[:len(expected)].tolist()
            assert got == [(h - 2 ** 64 if h >= 2 ** 63 else h) % MOD for h in expected], "ids differ from xxhash"
        if k == 2:
            return


# ---- timing ----------------------------------------------------------------------------------

def run_interleaved(contestants, rounds, idle_s=0.0):
    """Round-robin over the contestants (rotating who goes first); with idle_s, each run first
    waits up to idle_s seconds for the other processes to leave the cores."""
    res = {k: {"rows_s": [], "engine_s": [], "bg": []} for k in contestants}
    gc.collect()
    for r in range(rounds):
        keys = list(contestants)
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            if idle_s > 0:
                wait_idle(idle_s)
            p0 = Probe()
            rows, engine_s = contestants[k]()
            wall, _, bg = Probe().since(p0)
            res[k]["rows_s"].append(rows / wall)
            res[k]["engine_s"].append(engine_s / rows * 1e6)  # microseconds per row spent in the engine
            res[k]["bg"].append(bg / wall)
            res[k]["rows"] = rows
            gc.collect()
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--quick", action="store_true", help="200k rows, 3 rounds")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--threads", type=int, default=2, help="torch threads and pyarrow CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each run wait up to S seconds for other processes to go idle")
    p.add_argument("--keep", metavar="DIR", help="write (or reuse) the Parquet file in DIR instead of a temp dir")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.rounds = 200_000, 3
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pa.set_cpu_count(args.threads)
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    folder = args.keep or tmp.name
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"criteo_like_{args.rows}_{args.seed}.parquet")
    t0 = time.perf_counter()
    if not os.path.exists(path):
        write_dataset(path, args.rows, args.seed)
    print(f"data: {path} ({os.path.getsize(path) / 2 ** 20:.0f} MiB, {args.rows} rows, ready in "
          f"{time.perf_counter() - t0:.1f} s)")
    check(path, args.batch_size)
    print("check: fused == unfused engine on the first batches; C3 ids == xxhash.xxh64 % MOD")
    contestants = {
        "pyarrow iter_batches (plain)": bare(path, args.batch_size, False),
        "pyarrow iter_batches (read_dictionary)": bare(path, args.batch_size, True),
        "recis FeatureEngine fused -> KJT": recis_engine(path, args.batch_size, True),
        "recis FeatureEngine unfused -> KJT": recis_engine(path, args.batch_size, False),
        "pandas + per-feature torch -> KJT": pandas_torch(path, args.batch_size),
    }
    res = run_interleaved(contestants, args.rounds, args.wait_idle)
    med = {k: statistics.median(v["rows_s"]) for k, v in res.items()}
    eng = {k: statistics.median(v["engine_s"]) for k, v in res.items()}
    fused, unfused = "recis FeatureEngine fused -> KJT", "recis FeatureEngine unfused -> KJT"
    bare_dict, bare_plain = "pyarrow iter_batches (read_dictionary)", "pyarrow iter_batches (plain)"
    print(f"\n{args.rows} rows, batch {args.batch_size}, {args.threads} threads, {args.rounds} rounds (median); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, "
          f"pyarrow {pa.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}\n")
    print("| method | rows/s (median) | min / max | us/row in the engine | vs fused | bg cores |")
    print("|---|---|---|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {med[k] / 1e6:.2f} M | {min(v['rows_s']) / 1e6:.2f} / {max(v['rows_s']) / 1e6:.2f} M | "
              f"{eng[k]:.3f} | {med[k] / med[fused]:.2f}x | {statistics.median(v['bg']):.2f} |")
    targets = {
        "Parquet -> KJT >= 1.5M rows/s": med[fused] >= 1.5e6,
        "fused >= 0.5x bare pyarrow (read_dictionary)": med[fused] >= 0.5 * med[bare_dict],
        "fused >= 0.5x bare pyarrow (plain)": med[fused] >= 0.5 * med[bare_plain],
        "fused engine >= 3x unfused (engine time per row)": eng[unfused] >= 3 * eng[fused],
        "fused >= 3x unfused (end to end rows/s)": med[fused] >= 3 * med[unfused],
    }
    print(f"\nfused / bare (read_dictionary) = {med[fused] / med[bare_dict]:.2f}, fused / bare (plain) = "
          f"{med[fused] / med[bare_plain]:.2f}, engine time unfused / fused = {eng[unfused] / eng[fused]:.2f}, "
          f"end to end fused / unfused = {med[fused] / med[unfused]:.2f}, fused / pandas = "
          f"{med[fused] / med['pandas + per-feature torch -> KJT']:.2f}")
    for name, ok in targets.items():
        print(f"- {name}: {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": res, "median_rows_s": med, "engine_us_per_row": eng,
                       "targets": targets}, fh, indent=2)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
