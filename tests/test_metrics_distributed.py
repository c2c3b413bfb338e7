"""Cross-rank reduction of recis.metrics with a real 2-process gloo group (CPU).

Each rank feeds its own shard (of different sizes; one rank's GAUC users overlap the
other's), syncs, and writes what it computes; the test compares that with the same metrics
over the concatenated data in this process.
"""
import json
import math

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _metric_sync import write_sync_report
from recis.metrics import AUC, GAUC, Calibration, LogLoss, MetricCollection

WORLD = 2


def make_metrics():
    return MetricCollection({"auc": AUC(), "gauc_imp": GAUC("impressions"), "gauc_clk": GAUC("clicks"),
                             "logloss": LogLoss(), "calibration": Calibration()})


def shard(rank):
    """Rank 0 gets 3000 examples, rank 1 1100; scores have ties; users overlap across ranks."""
    g = torch.Generator().manual_seed(100 + rank)
    n = 3000 if rank == 0 else 1100
    preds = torch.randint(1, 200, (n,), generator=g).double() / 200
    labels = (torch.rand(n, generator=g) < preds).double()
    groups = torch.randint(0, 150, (n,), generator=g) + rank * 100
    weights = torch.randint(1, 4, (n,), generator=g).double()
    return preds, labels, groups, weights


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        preds, labels, groups, weights = shard(rank)
        metrics = make_metrics()
        for i in range(0, len(preds), 512):  # streaming: several updates
            s = slice(i, i + 512)
            metrics.update(preds[s], labels[s], weights[s], groups=groups[s])
        # A metric whose configuration differs across ranks is refused on every rank.
        write_sync_report(metrics, lambda m: m.compute(), GAUC("clicks" if rank == 0 else "impressions"), out_dir,
                          rank)
    finally:
        dist.destroy_process_group()


def test_synced_metrics_equal_metrics_on_concatenated_data(tmp_path):
    # fork: the ranks start in well under a second (spawn would import torch twice more).
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    whole = make_metrics()
    parts = [shard(r) for r in range(WORLD)]
    cat = [torch.cat([p[i] for p in parts]) for i in range(4)]
    whole.update(cat[0], cat[1], cat[3], groups=cat[2])
    expected = whole.compute()
    for rank, res in enumerate(results):
        for name, value in expected.items():
            assert not math.isnan(value)
            # Rank/rank-merge order only changes float64 summation order.
            assert abs(res["synced"][name] - value) <= 1e-12 * max(1.0, abs(value)), (rank, name)
        assert res["restored"] == res["local"]
        assert res["local"] != res["synced"]
        assert "ranks [" in res["mismatch"] and "weighting" in res["mismatch"]
    # Both ranks agree exactly.
    assert results[0]["synced"] == results[1]["synced"]
    # Local values are each rank's own shard.
    own = make_metrics()
    p, y, g, w = parts[1]
    own.update(p, y, w, groups=g)
    for name, value in own.compute().items():
        assert abs(results[1]["local"][name] - value) <= 1e-12 * max(1.0, abs(value)), name
