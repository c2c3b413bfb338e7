"""Smoke and unit tests of benchmarks/e2e_movielens.py (recis vs the torchrec twin), on a synthetic
MovieLens-shaped Parquet file so nothing is downloaded."""
import math
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torchrec")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import e2e_movielens as e2e  # noqa: E402
from _e2e_torchrec import (LINEAR_COLS, TorchrecDeepFM, Vocabulary, init_single_rank_gloo,  # noqa: E402
                           init_tables, wrap_dmp)

from recis.datasets.movielens import SCHEMA  # noqa: E402

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def synthetic_ratings(n: int, seed: int) -> pa.Table:
    """MovieLens-shaped rows whose label depends on the item and the user (so AUC is learnable)."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(1, 60, n), rng.integers(1, 80, n)
    rating = np.clip(np.where(items % 3 == 0, 4, 2) + (users % 2) + rng.integers(-1, 2, n), 1, 5)
    cols = {
        "user_id": users, "item_id": items, "rating": rating.astype(np.int8),
        "label": (rating >= 4).astype(np.int8), "timestamp": rng.integers(9e8, 1e9, n),
        "gender": rng.choice(["F", "M"], n), "age": rng.choice([1, 18, 25, 35], n).astype(np.int32),
        "occupation": rng.integers(0, 21, n).astype(np.int32),
        "zip_code": [f"{z:05d}" for z in rng.integers(0, 300, n)], "title": [f"Movie {i}" for i in items],
        "year": (1950 + items % 50).astype(np.int32),
        "genres": [list(rng.choice(GENRES, rng.integers(1, 4), replace=False)) for _ in range(n)],
    }
    return pa.Table.from_pydict(cols, schema=SCHEMA)


@pytest.fixture
def tiny_files(tmp_path):
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    pq.write_table(synthetic_ratings(600, 1), train)
    pq.write_table(synthetic_ratings(200, 2), test)
    return str(train), str(test)


def test_both_twins_train_and_report_finite_auc(tiny_files):
    cfg = e2e.load_config(epochs=1, train=tiny_files[0], test=tiny_files[1], batch_size=64)
    results, cmp = e2e.run(cfg)
    assert [r.name for r in results] == ["recis", "torchrec"]
    for r in results:
        assert r.train_examples == 600, r
        assert math.isfinite(r.auc) and 0.0 <= r.auc <= 1.0, r
        assert math.isfinite(r.logloss) and r.logloss > 0, r
        assert r.examples_per_s > 0 and r.wall_seconds >= r.train_seconds > 0
    assert cmp["speedup"] == pytest.approx(results[0].examples_per_s / results[1].examples_per_s)
    assert cmp["auc_diff"] == pytest.approx(results[0].auc - results[1].auc)
    table = e2e.markdown(results, cmp)
    assert "| recis |" in table and "| torchrec |" in table


def test_sample_files_keeps_a_seeded_subset_in_order(tiny_files, tmp_path):
    out = tmp_path / "sample"
    out.mkdir()
    train, _ = e2e.sample_files(*tiny_files, 0.25, str(out), seed=3)
    full, part = pq.read_table(tiny_files[0]).to_pylist(), pq.read_table(train).to_pylist()
    assert len(part) == 150
    it = iter(full)
    assert all(any(row == f for f in it) for row in part)  # a subsequence of the original rows
    with pytest.raises(ValueError, match="fraction"):
        e2e.sample_files(*tiny_files, 0.0, str(out))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), max_size=30),
       st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), max_size=30))
def test_vocabulary_matches_a_dict(known, queries):
    vocab = Vocabulary({"f": torch.tensor(known, dtype=torch.int64)})
    ref = {v: i for i, v in enumerate(sorted(set(known)))}
    reserved = len(ref)
    got = vocab.lookup("f", torch.tensor(queries, dtype=torch.int64)).tolist()
    assert got == [ref.get(q, reserved) for q in queries]
    assert vocab.unseen == sum(q not in ref for q in queries)
    assert vocab.rows() == {"f": reserved + 1}


def test_vocabulary_names_a_missing_feature():
    with pytest.raises(KeyError, match="'g'"):
        Vocabulary.from_batches(["f", "g"], [{"f": torch.tensor([1])}])


def test_twin_tables_are_initialised_like_recis_and_linear_moves_like_a_dim1_row():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    own = init_single_rank_gloo()
    try:
        torch.manual_seed(0)
        dmp, plan = wrap_dmp(TorchrecDeepFM(["a"], {"a": 50}, hidden=(4,)), lr=0.05)
        assert plan == "table_wise/fused"
        assert init_tables(dmp, std=0.01) == 2
        state = {k: v.local_shards()[0].tensor for k, v in dmp.state_dict().items() if hasattr(v, "local_shards")}
        emb, lin = state["embeddings.embedding_bags.a.weight"], state["linear.embedding_bags.linear_a.weight"]
        assert emb.abs().max() <= 0.02 and 0.005 < emb.std() < 0.012 and torch.all(lin == 0)

        class B:
            dense = None
            sparse = KeyedJaggedTensor(keys=["a"], values=torch.tensor([3]), lengths=torch.tensor([1]))

        dmp(B()).sum().backward()  # d logit / d w_3 = 1: row-wise Adagrad moves a dim-1 row by lr
        lin = dmp.state_dict()["linear.embedding_bags.linear_a.weight"].local_shards()[0].tensor
        assert lin[3].mean().item() == pytest.approx(-0.05, rel=1e-4) and lin.shape[1] == LINEAR_COLS
        assert torch.all(lin[torch.arange(50) != 3] == 0)
    finally:
        if own:
            torch.distributed.destroy_process_group()
