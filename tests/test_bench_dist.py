"""benchmarks/dist_embedding.py in a tiny configuration on 2 real gloo ranks: report structure,
bytes on the wire against the model of docs/scaling.md, and the cut that dedup makes."""
import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torchrec")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import dist_embedding as de  # noqa: E402
from _workload import Workload  # noqa: E402

TINY = de.Config(features=4, batch=256, rows=20_000, dim=16, world=2, rounds=2, steps=1, batches=2, warm=1,
                 methods=["recis", "torchrec"])


@pytest.fixture(scope="module")
def report():
    return de.run(TINY, timeout_s=240)


def reference_dup_ratio(cfg: de.Config, steps) -> float:
    """U/N of the batches the ranks stepped on, counted with Python sets of (feature, id)."""
    wl = Workload(features=cfg.features, rows=cfg.rows, dim=cfg.dim, seed=cfg.seed)
    n = u = 0
    for rank in range(cfg.world):
        batches = wl.batches(cfg.batch, cfg.batches, seed_offset=1 + rank)
        for i in steps:
            b = batches[i]
            n += b.n_ids
            u += len({(f, int(x)) for f, ids in enumerate(b.per_feature_raw) for x in ids})
    return u / n


@pytest.mark.slow
def test_report_structure(report):
    assert set(report["methods"]) == {"recis", "torchrec"}
    for key, m in report["methods"].items():
        assert m["samples"] == TINY.rounds
        assert 0 < m["ms_min"] <= m["ms_median"], key
        assert m["examples_per_s"] == pytest.approx(TINY.world * TINY.batch / (m["ms_median"] / 1e3))
        assert m["sent_bytes_per_rank"] > 0, key
    assert report["methods"]["recis"]["plan"].endswith("row_wise")
    assert report["methods"]["torchrec"]["plan"] == "row_wise/fused"
    # recis only uses all-to-alls; torchrec row-wise reduce-scatters pooled outputs and all-gathers their grads
    assert set(report["methods"]["recis"]["sent_by_op"]) == {"all_to_all_single"}
    assert {"reduce_scatter_tensor", "all_gather_into_tensor"} <= set(report["methods"]["torchrec"]["sent_by_op"])
    assert report["ratio_recis_over_torchrec"] > 0
    assert "| recis ShardedEmbeddingCollection" in de.markdown(report)


@pytest.mark.slow
def test_bytes_within_ten_percent_of_the_model(report):
    rb = report["recis_bytes"]
    # comm_stats' own accounting equals what the collectives were handed, byte for byte
    assert rb["comm_stats_total"] == pytest.approx(rb["counted_total"], rel=1e-9)
    assert rb["measured"]["counts"] == 8 * (TINY.world - 1)
    assert rb["measured"]["rows"] == pytest.approx(rb["measured"]["grads"], rel=0.1)
    assert 0.9 <= rb["measured_over_model"] <= 1.1
    for part in ("ids", "rows", "grads"):
        assert rb["measured"][part] == pytest.approx(rb["model"][part], rel=0.1), part
    assert 0.9 <= report["torchrec_bytes"]["measured_over_model"] <= 1.1


@pytest.mark.slow
def test_dedup_cuts_ids_traffic_by_the_duplicate_ratio(report):
    d = report["dedup"]
    steps = [(TINY.warm + r * TINY.steps + j) % TINY.batches for r in range(TINY.rounds) for j in range(TINY.steps)]
    assert d["dup_ratio"] == pytest.approx(reference_dup_ratio(TINY, steps), rel=1e-9)
    assert d["dup_ratio"] < 0.9  # the Zipf batch does repeat ids, so there is something to cut
    assert d["ids_bytes"] < d["ids_bytes_no_dedup"]
    assert d["cut"] == pytest.approx(d["dup_ratio"], rel=0.1)


def test_model_by_hand():
    # U = 1000 keys, W = 4: 750 remote; triples 24 B, rows 4 * 8 B each way, counts 8 B per peer
    assert de.recis_bytes(1000, 4, 8) == {"ids": 18000, "counts": 24, "rows": 24000, "grads": 24000,
                                          "total": 66024}
    t = de.torchrec_rw_bytes(ids=600, batch=100, features=3, dim=8, world=4)
    assert t == {"ids": 3600, "lengths": 7200, "pooled": 28800, "pooled_grads": 28800, "total": 68400}
    assert de.step_time_s(0.1, 1.25e9, 10, 1) == 0.1
    assert de.step_time_s(0.1, 1.25e9, 10, 3, latency_s=1e-3, collectives=4) == pytest.approx(0.1 + 1.0 + 0.008)


@given(u=st.integers(1, 10**7), w=st.integers(2, 1024), dim=st.integers(1, 512))
def test_model_properties(u, w, dim):
    b = de.recis_bytes(u, w, dim)
    assert b["total"] == pytest.approx(b["ids"] + b["counts"] + b["rows"] + b["grads"])
    assert b["rows"] == b["grads"] == pytest.approx(b["ids"] * 4 * dim / 24)
    # bounded in W: never more than every unique key's triple and row both ways
    assert b["total"] - b["counts"] <= (24 + 8 * dim) * u * (1 + 1e-12)
    assert de.recis_bytes(u, w + 1, dim)["total"] > b["total"]


@pytest.mark.parametrize("bad,match", [
    ({"world": 1}, "world must be >= 2"), ({"batch": 0}, "batch must be >= 1"),
    ({"methods": ["recis", "dlrm"]}, "methods must be a non-empty subset"),
    ({"methods": ["torchrec"]}, "must include 'recis'"), ({"warm": -1}, "warm must be >= 0")])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        de.Config(**bad)
