"""One full embedding training step (lookup + backward + sparse optimizer update), recis vs peers.

All contestants run in ONE process on the same pre-generated batches, interleaved round-robin
(warm-up steps first), so that machine noise hits every method alike.  The workload and the peer
setups follow the project's CPU baseline study (BENCHMARKS.md):

* recis ``EmbeddingCollection`` (one logical table per feature, merged by recis into one physical
  table, fused row-wise Adagrad); it gets the raw 63-bit ids, so hashing is included;
* ``torch.nn.EmbeddingBag(mode="sum", sparse=True)`` + ``torch.optim.SGD`` / ``torch.optim.Adagrad``
  (and ``torch.optim.SparseAdam`` on CUDA) on pre-mapped rows of one shared table;
* fbgemm CPU TBE, one table per feature, fused EXACT_ROWWISE_ADAGRAD, pre-mapped rows;
* torchrec ``DistributedModelParallel(EmbeddingBagCollection)`` on a 1-rank gloo group (the planner
  picks the fused TBE kernel), one table per feature, fused row-wise Adagrad, pre-mapped rows.

The gradient of the pooled output ``[B, F*D]`` is a fixed random tensor.  Before timing the script
cross-checks recis against ``nn.EmbeddingBag`` (forward) and against TBE (one row-wise Adagrad step).

    python benchmarks/embedding_step.py --quick
    python benchmarks/embedding_step.py --json results.json
    python benchmarks/embedding_step.py --device cuda --skip-scaling   # recis tables on the GPU (Triton)

With ``--device cuda`` recis' tables live in GPU memory (Triton kernels, recis.gpu), and the run
also measures the device's copy bandwidth, the pooled forward's bandwidth and the id map's find
and insert rates on large batches, and checks the GPU targets (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
import traceback
import warnings

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
if os.path.isdir(os.path.join(_HERE, "..", "recis")):  # run from a checkout without `pip install -e .`
    sys.path.insert(1, os.path.dirname(_HERE))
from _contestants import (EPS, LR, TBE, EmbBag, Recis, Skip, TorchrecDMP, _kjt, _reason,  # noqa: E402
                          make_tbe)
from _device_rates import copy_bandwidth, forward_bandwidth, large_find_rate, large_insert_rate  # noqa: E402
from _workload import Probe, Workload  # noqa: E402

TIMED_PER_ROUND = 3

# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wait_idle(max_s, threshold=0.25, window=0.5):
    """Waits (up to max_s seconds) until other processes use < threshold cores; returns their load."""
    deadline, bg = time.perf_counter() + max_s, None
    while True:
        p0 = Probe()
        time.sleep(window)
        wall, _, cpu = Probe().since(p0)
        bg = cpu / wall
        if bg < threshold or time.perf_counter() >= deadline:
            return bg


def run_interleaved(contestants, rounds, n_batches, device, warm_first=2, warm=1, log=None, idle_s=0.0):
    """Round-robin over contestants; returns {key: stats}. A contestant that raises is dropped."""
    res = {c.key: {"samples": [], "faults": 0, "bg_s": 0.0, "wall_s": 0.0, "error": None} for c in contestants}
    cursor = {c.key: 0 for c in contestants}
    live = list(contestants)
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            if idle_s > 0:
                bg = wait_idle(idle_s)
                if log and bg >= 0.25:
                    log(f"  machine still busy after waiting {idle_s:.0f} s ({bg:.2f} other cores)")
            for c in order:
                st = res[c.key]
                try:
                    for _ in range(warm_first if r == 0 else warm):
                        c.step(cursor[c.key] % n_batches)
                        cursor[c.key] += 1
                    _sync(device)
                    p0 = Probe()
                    for _ in range(TIMED_PER_ROUND):
                        t0 = time.perf_counter()
                        c.step(cursor[c.key] % n_batches)
                        _sync(device)
                        st["samples"].append(time.perf_counter() - t0)
                        cursor[c.key] += 1
                    wall, flt, bg = Probe().since(p0)
                    st["faults"] += flt
                    st["bg_s"] += bg
                    st["wall_s"] += wall
                except Exception as e:  # noqa: BLE001 - a failing contestant must not stop the others
                    st["error"] = _reason(e)
                    live.remove(c)
                    if log:
                        log(f"  {c.key} failed in round {r}: {st['error']}")
                        traceback.print_exc()
            if log:
                log(f"  round {r + 1}/{rounds} done")
    finally:
        gc.enable()
    out = {}
    for key, st in res.items():
        s = st["samples"]
        out[key] = {
            "error": st["error"], "n": len(s),
            "median_ms": statistics.median(s) * 1e3 if s else None,
            "min_ms": min(s) * 1e3 if s else None,
            "faults_per_step": st["faults"] / len(s) if s else None,
            "bg_cores": st["bg_s"] / st["wall_s"] if st["wall_s"] else None,
            "samples_ms": [x * 1e3 for x in s],
        }
    return out


# ----------------------------------------------------------------------------------------------
# correctness cross-checks
# ----------------------------------------------------------------------------------------------

def _positions(export_ids, ids):
    """Index of every id of ``ids`` in ``export_ids`` (all must be present)."""
    order = torch.argsort(export_ids)
    sorted_ids = export_ids[order]
    pos = torch.searchsorted(sorted_ids, ids).clamp_(max=max(len(sorted_ids) - 1, 0))
    if not torch.equal(sorted_ids[pos], ids):
        raise AssertionError("an id of the batch is missing from the table export")
    return order[pos]


def check_forward(rc: Recis, batch):
    """recis pooled forward == nn.EmbeddingBag on the mapped ids with the exported rows."""
    kjt = rc.convert(batch)
    with torch.no_grad():
        kt = rc.ec(kjt)
    got = kt.to_dict()
    F, B, worst = rc.wl.features, batch.batch_size, 0.0
    for f in range(F):
        exp = rc.tables[f"t{f}"].export()
        ids = batch.per_feature_raw[f].to(exp["ids"].device)
        pos = _positions(exp["ids"], ids)
        lengths = batch.lengths[f * B:(f + 1) * B]
        off = torch.zeros(B + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=off[1:])
        eb = torch.nn.EmbeddingBag.from_pretrained(exp["rows"].float(), mode="sum", include_last_offset=True)
        ref = eb(pos, off.to(pos.device))
        worst = max(worst, (got[f"f{f}"].float() - ref).abs().max().item())
    return {"max_abs_diff": worst, "ok": worst <= 1e-5}


def check_rowwise_step(wl: Workload, device, batch_size=256):
    """One recis SparseRowwiseAdagrad step == one TBE EXACT_ROWWISE_ADAGRAD step on the same rows."""
    from recis.nn import EmbeddingCollection, TableConfig, sparse_tables
    from recis.optim import SparseRowwiseAdagrad
    F, D = wl.features, wl.dim
    b = wl.batches(batch_size, 1, seed_offset=99)[0]
    ec = EmbeddingCollection([TableConfig(name=f"t{f}", embedding_dim=D, feature_names=[f"f{f}"],
                                          combiner="sum") for f in range(F)])
    if device.type != "cpu":
        ec = ec.to(device)
    tables = ec.tables()
    for f in range(F):
        tables[f"t{f}"].find_or_insert(torch.unique(b.per_feature_raw[f]).to(device))
    opt = SparseRowwiseAdagrad(sparse_tables(ec), lr=LR, eps=EPS)
    before = [tables[f"t{f}"].export() for f in range(F)]
    tbe = make_tbe([len(e["ids"]) for e in before], D, device)
    weights, states = tbe.split_embedding_weights(), tbe.split_optimizer_states()
    pos = []
    with torch.no_grad():
        for f, e in enumerate(before):
            weights[f].copy_(e["rows"])
            if e["slots"].numel():
                states[f][0].copy_(e["slots"][:, 0])
            pos.append(_positions(e["ids"], b.per_feature_raw[f].to(device)))
    grad = torch.randn(batch_size, F * D, generator=torch.Generator().manual_seed(7)).to(device)
    kt = ec(_kjt([f"f{f}" for f in range(F)], b.raw.to(device), b.lengths.to(device)))
    out = kt.to_dict()
    recis_out = torch.cat([out[f"f{f}"] for f in range(F)], dim=1)
    tbe_out = tbe(torch.cat(pos), b.fm_offsets.to(device))
    fwd = (recis_out - tbe_out).abs().max().item()
    recis_out.backward(grad)  # same as kt.values().backward() with grad permuted to kt's key order
    opt.step()
    tbe_out.backward(grad)
    w_err = s_err = s_rel = s_max = 0.0
    moved = 0
    for f, e in enumerate(before):
        a = tables[f"t{f}"].export()
        p = _positions(a["ids"], e["ids"])
        w_err = max(w_err, (a["rows"][p] - weights[f]).abs().max().item())
        moved += int((a["rows"][p] != e["rows"]).any(dim=1).sum())
        if a["slots"].numel():
            ref = states[f][0]
            diff = (a["slots"][p][:, 0] - ref).abs()
            s_err = max(s_err, diff.max().item())
            s_rel = max(s_rel, (diff / ref.abs().clamp(min=1.0)).max().item())
            s_max = max(s_max, ref.abs().max().item())
    # The row-wise state is a sum of mean(g^2) over the row's summed gradient: for hot ids it reaches
    # O(100), where fp32 summation order alone moves it by ~1e-5 absolute, so it is compared relatively.
    return {"fwd_max_abs_diff": fwd, "weight_max_abs_diff": w_err, "state_max_abs_diff": s_err,
            "state_max_rel_diff": s_rel, "state_max": s_max,
            "rows_updated": moved, "rows": sum(len(e["ids"]) for e in before),
            "slot_width": int(before[0]["slots"].shape[1]) if before[0]["slots"].dim() == 2 else None,
            "ok": max(fwd, w_err, s_rel) <= 1e-5}


# ----------------------------------------------------------------------------------------------
# id map rates and memory
# ----------------------------------------------------------------------------------------------

def idmap_rates(wl: Workload, batch, device, reps):
    """find / find_or_insert rates of one HashTable holding the whole vocabulary."""
    from recis.nn import HashEmbedding
    try:
        from recis.nn import Zeros  # rows initialized to zeros: insert with (almost) no init cost
    except ImportError:
        Zeros = None
    g = torch.Generator().manual_seed(wl.seed + 5)
    all_ids = torch.from_numpy(wl.ids.reshape(-1).copy())[torch.randperm(wl.vocab, generator=g)].to(device)
    chunk = batch.n_ids

    def fill(initializer, reserve=False):
        emb = HashEmbedding(wl.dim, combiner="sum", seed=0, initializer=initializer)
        if device.type != "cpu":
            emb = emb.to(device)
        if reserve:
            emb.table.reserve(wl.vocab)
        _sync(device)
        t0 = time.perf_counter()
        for s in range(0, wl.vocab, chunk):
            emb.table.find_or_insert(all_ids[s:s + chunk])
        _sync(device)
        return emb, time.perf_counter() - t0

    res = {"threads": torch.get_num_threads(), "vocab": wl.vocab, "insert_chunk": chunk}
    if Zeros is not None:
        t_zero = []
        for _ in range(reps):
            emb, dt = fill(Zeros())
            t_zero.append(dt)
            del emb
        res["insert_zeros_init_ids_per_s"] = wl.vocab / statistics.median(t_zero)
        t_res = []
        for _ in range(reps):
            emb, dt = fill(Zeros(), reserve=True)
            t_res.append(dt)
            del emb
        res["insert_reserved_ids_per_s"] = wl.vocab / statistics.median(t_res)
    t_ins = []
    for _ in range(reps):
        emb, dt = fill(None)  # default initializer (deterministic per (seed, id))
        t_ins.append(dt)
    table = emb.table
    res["len_after_insert"] = len(table)
    res["insert_default_init_ids_per_s"] = wl.vocab / statistics.median(t_ins)
    ids = batch.raw.to(device)
    finds, hits = [], []
    for _ in range(max(5, 3 * reps)):
        t0 = time.perf_counter()
        rows = table.find(ids)
        _sync(device)
        finds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        table.find_or_insert(ids)
        _sync(device)
        hits.append(time.perf_counter() - t0)
    res.update({
        "find_batch_ids": batch.n_ids, "find_all_present": bool((rows >= 0).all()),
        "find_ms": statistics.median(finds) * 1e3,
        "find_ids_per_s": batch.n_ids / statistics.median(finds),
        "find_or_insert_hit_ids_per_s": batch.n_ids / statistics.median(hits),
        "bytes_per_row_no_optimizer": table.memory_bytes() / max(len(table), 1),
    })
    del emb, table
    return res


def recis_memory(rc: Recis):
    lens = {n: len(t) for n, t in rc.tables.items()}
    mem = {n: t.memory_bytes() for n, t in rc.tables.items()}
    live = sum(lens.values())
    e = next(iter(rc.tables.values())).export()
    slots = e["slots"]
    slot_bytes = slots.shape[1] * slots.element_size() if slots.dim() == 2 else 0
    row_bytes = rc.wl.dim * e["rows"].element_size()
    res = {"live_rows": live, "memory_bytes_sum": sum(mem.values()),
           "bytes_per_row": sum(mem.values()) / max(live, 1),
           "budget_bytes_per_row": row_bytes + slot_bytes + 32, "optimizer_state_bytes": slot_bytes,
           "rss_growth_bytes": rc.rss_growth, "rss_bytes_per_row": rc.rss_growth / max(live, 1),
           "rss_growth_warm_bytes": rc.rss_warm, "rss_warm_bytes_per_row": rc.rss_warm / max(live, 1),
           "warm_s": rc.warm_s}
    groups = {id(t.group): t.group for t in rc.tables.values() if hasattr(getattr(t, "group", None), "memory_bytes")}
    if groups:  # physical tables (recis merges same-config logical tables into one group)
        g_bytes = sum(g.memory_bytes() for g in groups.values())
        res.update(physical_tables=len(groups), physical_memory_bytes=g_bytes,
                   physical_bytes_per_row=g_bytes / max(live, 1))
    return res


def _gpu_bandwidth(out, wl, device, recis_c):
    out["copy_bytes_per_s"] = copy = copy_bandwidth(device)
    print(f"- device copy bandwidth (1 GiB tensor.copy_, read + write): {copy / 1e9:.0f} GB/s")
    if recis_c is not None:
        out["forward"] = fb = forward_bandwidth(recis_c.ec, recis_c.inputs[0], device)
        print(f"- recis pooled forward, {fb['values']:,} values x dim {wl.dim} (rows read + output written): "
              f"pooling kernel {fb['pool_ms']:.3f} ms = {fb['pool_bytes_per_s'] / 1e9:.0f} GB/s "
              f"({fb['pool_bytes_per_s'] / copy:.0%} of copy); whole eval lookup with dedup, hashing and find "
              f"{fb['lookup_ms']:.3f} ms = {fb['lookup_bytes_per_s'] / 1e9:.0f} GB/s")


def _gpu_idmap(out, wl, device):
    from recis.nn import HashEmbedding, Zeros
    ids = torch.from_numpy(wl.ids.reshape(-1).copy()).to(device)
    emb = HashEmbedding(wl.dim, initializer=Zeros(), device=device)
    emb.table.find_or_insert(ids)
    out["find"] = f = large_find_rate(emb.table, ids, device)
    print(f"- recis id map find: {f['find_ids_per_s'] / 1e9:.2f} B ids/s ({f['find_ids']:,} present ids, "
          f"load {f['load']:.2f}, {f['map_slots']:,} slots, all found: {f['all_present']})")
    del emb
    out["insert"] = ins = large_insert_rate(lambda: HashEmbedding(wl.dim, initializer=Zeros(), device=device).table,
                                            ids, device)
    print(f"- recis id map insert of {ins['insert_ids']:,} fresh ids (one find_or_insert, Zeros rows): "
          f"{ins['insert_ids_per_s'] / 1e6:.0f} M ids/s with growth, "
          f"{ins['insert_reserved_ids_per_s'] / 1e6:.0f} M ids/s into a reserve()d table")


def gpu_section(wl, batches, device, recis_c, res, B):
    """Copy vs pooled-forward bandwidth, large-batch id map rates and the GPU targets (docs/gpu.md)."""
    out = {"device_name": torch.cuda.get_device_name(device)}
    print(f"\n## GPU ({out['device_name']})\n")
    for key, part in (("bandwidth", lambda: _gpu_bandwidth(out, wl, device, recis_c)),
                      ("idmap", lambda: _gpu_idmap(out, wl, device))):
        try:
            part()
        except Exception as e:  # noqa: BLE001 - one failing measurement must not stop the others
            out[f"{key}_error"] = _reason(e)
            print(f"- {key}: failed: {_reason(e)}")
            traceback.print_exc()
    targets = {}
    step = res.get("recis", {}).get("median_ms")
    bag = res.get("embbag_adagrad", {}).get("median_ms")
    if step and bag:
        targets["step_vs_embbag_adagrad"] = {"ratio": bag / step, "target": 3.0, "ok": bag / step >= 3.0}
    if "find" in out:
        f = out["find"]["find_ids_per_s"]
        targets["find_ids_per_s"] = {"value": f, "target": 1e9, "ok": f >= 1e9 and out["find"]["load"] <= 0.5}
    if "forward" in out and "copy_bytes_per_s" in out:
        r = out["forward"]["pool_bytes_per_s"] / out["copy_bytes_per_s"]
        targets["forward_share_of_copy"] = {"ratio": r, "target": 0.5, "ok": r >= 0.5}
    out["targets"] = targets
    print("\nGPU targets: " + "; ".join(
        f"{k} {v.get('ratio', v.get('value')):.3g} (target {v['target']:g}): {'PASS' if v['ok'] else 'FAIL'}"
        for k, v in targets.items()))
    return out


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def fixed_grad(B, F, D, seed):
    return torch.randn(B, F * D, generator=torch.Generator().manual_seed(seed))


def build_all(classes, log):
    built, skipped = [], {}
    for c in classes:
        t0 = time.perf_counter()
        try:
            c.build()
            built.append(c)
            log(f"  built {c.key} in {time.perf_counter() - t0:.1f} s")
        except Skip as e:
            skipped[c.key] = str(e)
            log(f"  {c.key} skipped: {e}")
        except Exception as e:  # noqa: BLE001
            skipped[c.key] = f"build failed: {_reason(e)}"
            log(f"  {c.key} build failed: {_reason(e)}")
            traceback.print_exc()
    return built, skipped


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def main_table(order, res, skipped, B):
    base = res.get("embbag_sgd", {}).get("median_ms")
    tbe = res.get("tbe", {}).get("median_ms")
    lines = ["| method | optimizer | id map incl. | ms/step (median) | min ms | examples/s | "
             "speed-up vs EmbeddingBag+SGD | time / TBE per-feature (lower = faster) | page faults/step | "
             "bg cores | samples |", "|" + "---|" * 11]
    for c in order:
        head = f"| {c.label} | {c.optimizer} | {'yes' if c.idmap else 'no'} |"
        if c.key in skipped:
            lines.append(head + f" skipped: {skipped[c.key]} |" + " - |" * 7)
            continue
        r = res[c.key]
        if r["median_ms"] is None:
            lines.append(head + f" failed: {r['error']} |" + " - |" * 7)
            continue
        m = r["median_ms"]
        lines.append(head + f" {m:.2f} | {r['min_ms']:.2f} | {B / m * 1e3 / 1e3:.1f} k | "
                     f"{_f(base / m if base else None, '{:.2f}x')} | {_f(m / tbe if tbe else None, '{:.2f}')} | "
                     f"{r['faults_per_step']:.0f} | {_f(r['bg_cores'])} | {r['n']}"
                     + (f" (failed later: {r['error']})" if r["error"] else "") + " |")
    return "\n".join(lines)


def run_scaling(args, device, log):
    points = [(1024, 1_000_000), (4096, 1_000_000), (16384, 1_000_000), (4096, 100_000), (4096, 10_000_000)]
    if args.quick:
        points = [p for p in points if p[1] <= 1_000_000]
    by_rows = {}
    for B, rows in points:
        by_rows.setdefault(rows, []).append(B)
    out = []
    for rows in sorted(by_rows):
        log(f"scaling: rows={rows:,}: building workload and tables")
        wl = Workload(features=args.features, rows=rows, dim=args.dim, seed=args.seed)
        cs, skipped = build_all([Recis(wl, device), TBE(wl, device)], log)
        for B in by_rows[rows]:
            batches = wl.batches(B, args.n_batches)
            grad = fixed_grad(B, wl.features, wl.dim, args.seed + 3)
            for c in cs:
                c.prepare(batches, grad)
            res = run_interleaved(cs, args.scaling_rounds, len(batches), device,
                                  idle_s=args.wait_idle) if cs else {}
            row = {"batch": B, "rows": rows, "vocab": wl.vocab,
                   "unique_ids_per_step": statistics.mean(b.n_unique for b in batches)}
            for key in ("recis", "tbe"):
                row[key] = res.get(key) or {"error": skipped.get(key, "not run")}
                row[key].pop("samples_ms", None)
            a, b = row["recis"].get("median_ms"), row["tbe"].get("median_ms")
            row["recis_over_tbe"] = a / b if a and b else None
            out.append(row)
            log(f"  B={B} rows={rows:,}: recis {_f(a)} ms, TBE {_f(b)} ms")
        for c in cs:
            c.close()
        del cs
        gc.collect()
    return out


def scaling_table(rows):
    lines = ["| batch | rows | unique ids/step | recis ms (median) | recis min | recis examples/s | "
             "TBE ms (median) | TBE min | TBE examples/s | recis/TBE time | faults/step recis / TBE | "
             "bg cores recis / TBE |", "|" + "---|" * 12]
    for r in rows:
        a, b = r["recis"], r["tbe"]
        am, bm = a.get("median_ms"), b.get("median_ms")
        lines.append(
            f"| {r['batch']} | {r['rows']:,} | {r['unique_ids_per_step'] / 1e3:.1f} k | "
            f"{_f(am) if am else 'n/a: ' + str(a.get('error'))} | {_f(a.get('min_ms'))} | "
            f"{_f(r['batch'] / am * 1e3 / 1e3 if am else None, '{:.0f} k')} | "
            f"{_f(bm) if bm else 'n/a: ' + str(b.get('error'))} | {_f(b.get('min_ms'))} | "
            f"{_f(r['batch'] / bm * 1e3 / 1e3 if bm else None, '{:.0f} k')} | "
            f"{_f(r['recis_over_tbe'])} | {_f(a.get('faults_per_step'), '{:.0f}')} / "
            f"{_f(b.get('faults_per_step'), '{:.0f}')} | {_f(a.get('bg_cores'))} / {_f(b.get('bg_cores'))} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small run (< ~60 s): 1e5 rows, 2 rounds, no 1e7 point")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--rows", type=float, default=None, help="id vocabulary capacity (default 1e6; 1e5 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 2 with --quick)")
    p.add_argument("--n-batches", type=int, default=4, help="pre-generated batches to cycle through")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--only", metavar="KEYS", help="comma-separated contestant keys to run (e.g. recis,tbe)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each round wait up to S seconds for other processes to go quiet")
    p.add_argument("--json", metavar="PATH", help="write all results as JSON")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    a = p.parse_args(argv)
    a.rows = int(a.rows if a.rows is not None else (1e5 if a.quick else 1e6))
    a.rounds = a.rounds if a.rounds is not None else (2 if a.quick else 5)
    a.scaling_rounds = 2 if a.quick else 3
    a.n_batches = min(a.n_batches, 3) if a.quick else a.n_batches
    return a


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - progress goes to stderr
    device = torch.device(args.device)
    for cat in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)
    for name in ("torchrec", "torch.fx", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but torch.cuda.is_available() is False")
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("fbgemm_gpu", "torchrec", "recis"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception as e:  # noqa: BLE001
            versions[mod] = f"not importable ({_reason(e)})"
    results = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "versions": versions,
               "threads": torch.get_num_threads(), "machine": platform.machine()}
    print(f"# embedding step benchmark ({'quick' if args.quick else 'full'}), device {device}, "
          f"{torch.get_num_threads()} torch threads")
    print(" ".join(f"{k} {v}" for k, v in versions.items()))

    wl = Workload(features=args.features, rows=args.rows, dim=args.dim, seed=args.seed)
    batches = wl.batches(args.batch, args.n_batches)
    grad = fixed_grad(args.batch, wl.features, wl.dim, args.seed + 3)
    n_ids = statistics.mean(b.n_ids for b in batches)
    n_uniq = statistics.mean(b.n_unique for b in batches)
    print(f"workload: {wl.features} features, batch {args.batch}, dim {wl.dim}, fp32, {wl.min_ids}-{wl.max_ids} "
          f"ids/bag, Zipf({wl.alpha}) over {wl.ranks:,} ranks/feature, vocabulary {wl.vocab:,} ids "
          f"(capacity {wl.rows:,} rows), mean {n_ids:,.0f} ids and {n_uniq:,.0f} unique ids per step, "
          f"{len(batches)} batches cycled")
    results["workload"] = {"vocab": wl.vocab, "ranks_per_feature": wl.ranks, "ids_per_step": n_ids,
                           "unique_ids_per_step": n_uniq}

    # ---- correctness cross-checks (small, separate tables) ----
    print("\n## Correctness cross-checks")
    checks = {}
    try:
        checks["rowwise_step_vs_tbe"] = r = check_rowwise_step(wl, device)
        print(f"- recis SparseRowwiseAdagrad step vs fbgemm TBE EXACT_ROWWISE_ADAGRAD ({r['rows']} rows, "
              f"{r['rows_updated']} updated): forward max|diff| {r['fwd_max_abs_diff']:.2e}, weights "
              f"{r['weight_max_abs_diff']:.2e}, optimizer state {r['state_max_abs_diff']:.2e} abs / "
              f"{r['state_max_rel_diff']:.2e} rel (values up to {r['state_max']:.1f}) -> "
              f"{'OK' if r['ok'] else 'MISMATCH'}")
    except Exception as e:  # noqa: BLE001
        checks["rowwise_step_vs_tbe"] = {"ok": False, "error": _reason(e)}
        print(f"- recis row-wise Adagrad step vs TBE: not run/failed: {_reason(e)}")
        traceback.print_exc()

    # ---- build the contestants ----
    log("building contestants")
    order = [Recis(wl, device), EmbBag(wl, device, "SGD"), EmbBag(wl, device, "Adagrad"),
             TBE(wl, device), TorchrecDMP(wl, device)]
    if device.type == "cuda":
        order.insert(3, EmbBag(wl, device, "SparseAdam"))
    if args.only:
        keep = set(args.only.split(","))
        order = [c for c in order if c.key in keep]
    built, skipped = build_all(order, log)
    recis_c = next((c for c in built if c.key == "recis"), None)
    if recis_c is not None:
        try:
            checks["forward_vs_embeddingbag"] = r = check_forward(recis_c, batches[0])
            print(f"- recis pooled forward vs nn.EmbeddingBag on exported rows (batch {args.batch}, all "
                  f"{wl.features} features): max|diff| {r['max_abs_diff']:.2e} -> {'OK' if r['ok'] else 'MISMATCH'}")
        except Exception as e:  # noqa: BLE001
            checks["forward_vs_embeddingbag"] = {"ok": False, "error": _reason(e)}
            print(f"- recis forward vs nn.EmbeddingBag: failed: {_reason(e)}")
            traceback.print_exc()
    results["checks"] = checks
    for c in built:
        c.prepare(batches, grad)
    tr = next((c for c in built if c.key == "torchrec"), None)
    if tr is not None:
        print(f"- torchrec plan: {tr.plan_desc}")

    # ---- main timing ----
    log(f"timing {len(built)} contestants, {args.rounds} rounds")
    res = run_interleaved(built, args.rounds, len(batches), device, log=log, idle_s=args.wait_idle)
    if recis_c is not None and recis_c.n_live() != recis_c.live:
        print(f"- WARNING: recis tables grew during timing ({recis_c.live:,} -> {recis_c.n_live():,} ids): "
              "steps were not all hits")
    print(f"\n## Lookup + backward + sparse update per step (B = {args.batch}, {wl.rows:,} rows, "
          f"{TIMED_PER_ROUND * args.rounds} samples per method)\n")
    print(main_table(order, res, skipped, args.batch))
    busy = [k for k, r in res.items() if (r.get("bg_cores") or 0) > 0.1]
    if busy:
        print(f"\nNOTE: other processes used > 0.1 cores while timing {', '.join(busy)}: 2-thread OpenMP "
              "kernels stall when a core is taken, so treat those rows as unreliable (see --wait-idle).")
    results["main"] = {c.key: {"label": c.label, "optimizer": c.optimizer, "idmap": c.idmap,
                               **(res.get(c.key) or {"skipped": skipped.get(c.key)})} for c in order}
    if device.type == "cuda":
        results["gpu"] = gpu_section(wl, batches, device, recis_c, res, args.batch)

    # ---- id map rates and memory ----
    print()
    if recis_c is not None:
        mem = recis_memory(recis_c)
        results["memory"] = mem
        for c in built:
            c.close()
        built = []
        gc.collect()
        try:
            im = idmap_rates(wl, batches[0], device, reps=2 if args.quick else 3)
            results["idmap"] = im
            zero = im.get("insert_zeros_init_ids_per_s")
            print(f"- recis id map ({im['threads']} threads): find {im['find_ids_per_s'] / 1e6:.1f} M ids/s "
                  f"({im['find_batch_ids']:,} ids, all present: {im['find_all_present']}, {im['find_ms']:.2f} ms); "
                  f"find_or_insert on present ids {im['find_or_insert_hit_ids_per_s'] / 1e6:.1f} M ids/s")
            print(f"- recis insert of {im['vocab']:,} fresh ids into an empty table (find_or_insert in chunks of "
                  f"{im['insert_chunk']:,}, growth included): "
                  + (f"{zero / 1e6:.2f} M ids/s with Zeros() rows (~insert alone), " if zero else "")
                  + (f"{im['insert_reserved_ids_per_s'] / 1e6:.2f} M ids/s into a reserve()d table with Zeros() rows "
                     "(map insert alone: no rehash, no page faults), " if "insert_reserved_ids_per_s" in im else "")
                  + f"{im['insert_default_init_ids_per_s'] / 1e6:.2f} M ids/s including the default row "
                  f"initialization; table without optimizer: {im['bytes_per_row_no_optimizer']:.1f} B/row")
        except Exception as e:  # noqa: BLE001
            results["idmap"] = {"error": _reason(e)}
            print(f"- recis id map rates: failed: {_reason(e)}")
            traceback.print_exc()
        print(f"- recis memory after warm-up ({mem['live_rows']:,} live rows, row-wise Adagrad): "
              f"memory_bytes/len = {mem['bytes_per_row']:.1f} B/row vs budget {mem['budget_bytes_per_row']} "
              f"(dim*4 + {mem['optimizer_state_bytes']} optimizer state + 32); warm-up insert {mem['warm_s']:.2f} s")
        print(f"- process RSS growth while building it: {mem['rss_growth_warm_bytes'] / 2**20:.1f} MiB = "
              f"{mem['rss_warm_bytes_per_row']:.1f} B/row after the warm-up inserts, "
              f"{mem['rss_growth_bytes'] / 2**20:.1f} MiB = {mem['rss_bytes_per_row']:.1f} B/row once the optimizer "
              "is created")
        if "physical_bytes_per_row" in mem:
            print(f"- recis physical table(s): {mem['physical_tables']} group(s), group.memory_bytes()/live ids "
                  f"= {mem['physical_bytes_per_row']:.1f} B/row ({mem['physical_memory_bytes'] / 2**20:.1f} MiB)")
    else:
        print(f"- recis id map / memory: skipped: {skipped.get('recis')}")
    for c in built:
        c.close()
    del built
    gc.collect()

    # ---- scaling ----
    if not args.skip_scaling:
        log("scaling")
        sc = run_scaling(args, device, log)
        results["scaling"] = sc
        print(f"\n## Scaling: recis (hashing included) vs fbgemm TBE per-feature tables (pre-mapped ids), "
              f"{args.scaling_rounds * TIMED_PER_ROUND} samples per cell\n")
        print(scaling_table(sc))
        if any((r[k].get("bg_cores") or 0) > 0.1 for r in sc for k in ("recis", "tbe")):
            print("\nNOTE: other processes used > 0.1 cores during some scaling cells (last column); "
                  "their timings are unreliable.")
    total = time.perf_counter() - t_start
    results["wall_s"] = total
    print(f"\ntotal wall time {total:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
