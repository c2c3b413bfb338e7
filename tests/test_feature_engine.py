"""FeatureEngine end to end: fused == unfused == the per-row reference, CSE, the dictionary
cache, batches of every shape (empty, all-null, lists, dictionaries, chunked tables) and the
Batch object."""
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from recis.features import Batch, FeatureEngine
from test_feature_ops import kjt_rows
from test_feature_reference import ref_dense, ref_sparse

ops = torch.ops.recis

MIXED = [
    {"name": "user", "kind": "sparse", "column": "user", "ops": [{"op": "hash"}, {"op": "mod", "n": 1000}]},
    {"name": "user_big", "kind": "sparse", "column": "user", "ops": [{"op": "hash"}, {"op": "mod", "n": 2 ** 40}]},
    {"name": "user_raw", "kind": "sparse", "column": "user", "ops": [{"op": "fill_missing", "value": ""}, {"op": "hash"}]},
    {"name": "cat", "kind": "sparse", "column": "cat", "ops": [{"op": "hash", "seed": 7}]},
    {"name": "tags", "kind": "sparse", "column": "tags", "ops": [{"op": "hash"}, {"op": "truncate", "max_len": 2}]},
    {"name": "dtags", "kind": "sparse", "column": "dtags",
     "ops": [{"op": "fill_missing", "value": "none"}, {"op": "multi_hash", "num_hashes": 2}]},
    {"name": "age_b", "kind": "sparse", "column": "age", "ops": [{"op": "bucketize", "boundaries": [18, 30, 50]}]},
    {"name": "ux", "kind": "sparse", "cross": ["user", "cat"], "ops": [{"op": "mod", "n": 5000}]},
    {"name": "age", "kind": "dense", "column": "age", "ops": [{"op": "fill_missing", "value": 0}, {"op": "log1p"}]},
    {"name": "score", "kind": "dense", "column": "score",
     "ops": [{"op": "fill_missing", "value": 0.5}, {"op": "normalize", "mean": 1, "std": 3}, {"op": "clip", "min": -1}]},
    {"name": "click", "kind": "label", "column": "click"},
    {"name": "title", "kind": "passthrough", "column": "title"},
]


def mixed_table(rng, n, users=None, cats=None):
    """A table of the MIXED layout; `users` / `cats` fix the dictionaries (for cache tests)."""
    users = users if users is not None else pa.array([f"u{i}" for i in range(int(rng.integers(1, 40)))])
    cats = cats if cats is not None else pa.array([f"c{i}" for i in range(5)])

    def dict_col(dictionary, p_null):
        idx = rng.integers(0, len(dictionary), n).astype(np.int32)
        return pa.DictionaryArray.from_arrays(pa.array(idx, mask=rng.random(n) < p_null), dictionary)

    tags = [None if rng.random() < 0.1 else [None if rng.random() < 0.1 else f"t{rng.integers(9)}"
                                             for _ in range(rng.integers(0, 4))] for _ in range(n)]
    return pa.table({
        "user": dict_col(users, 0.2),
        "cat": pa.array([f"c{rng.integers(5)}" for _ in range(n)], type=pa.large_string()),
        "tags": pa.array(tags, type=pa.list_(pa.string())),
        "dtags": pa.array(tags, type=pa.list_(pa.dictionary(pa.int32(), pa.string()))),
        "age": pa.array(rng.integers(-5, 90, n), mask=rng.random(n) < 0.3),
        "score": pa.array(rng.normal(size=n).astype(np.float32), mask=rng.random(n) < 0.3),
        "click": pa.array(rng.integers(0, 2, n).astype(np.int8)),
        "title": pa.array([f"title {i}" for i in range(n)]),
    })


def assert_batches_equal(a: Batch, b: Batch):
    assert a.sparse.keys() == b.sparse.keys()
    assert torch.equal(a.sparse.values(), b.sparse.values())
    assert torch.equal(a.sparse.lengths(), b.sparse.lengths())
    assert torch.equal(a.sparse.offsets(), b.sparse.offsets())
    assert torch.equal(a.dense, b.dense) and a.dense_names == b.dense_names
    assert torch.equal(a.labels, b.labels) and a.size == b.size
    assert {k: v.to_pylist() for k, v in a.extras.items()} == {k: v.to_pylist() for k, v in b.extras.items()}


def assert_matches_reference(batch: Batch, features, table):
    for f in features:
        if f["kind"] == "sparse":
            assert kjt_rows(batch.sparse, f["name"]) == ref_sparse(features, f["name"], table), f["name"]
    dense = [f for f in features if f["kind"] == "dense"]
    for i, f in enumerate(dense):
        np.testing.assert_allclose(batch.dense[:, i].numpy(), np.float32(ref_dense(features, f["name"], table)),
                                   rtol=1e-6)
    assert batch.labels.tolist() == table.column("click").to_pylist()


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 60))
def test_fused_unfused_and_reference_agree(seed, n):
    table = mixed_table(np.random.default_rng(seed), n)
    fused, unfused = FeatureEngine(MIXED)(table), FeatureEngine(MIXED, fused=False)(table)
    assert_batches_equal(fused, unfused)
    assert_matches_reference(fused, MIXED, table)


def test_shared_sub_chains_are_computed_once():
    fused, unfused = FeatureEngine(MIXED), FeatureEngine(MIXED, fused=False)
    # hash(user) is shared by user, user_big and the cross: one node in the fused plan
    hashes = [n for n in fused.plan.nodes if n.kind == "op" and n.op.name == "hash" and n.inputs[0].column == "user"]
    assert len(hashes) == 1 and sorted(hashes[0].users) == ["user", "user_big", "ux"]
    assert len(fused.plan.nodes) < len(unfused.plan.nodes)
    table = mixed_table(np.random.default_rng(0), 50)
    fused(table), unfused(table)
    s_f, s_u = fused.stats(), unfused.stats()
    assert s_f["node_evals"] == sum(n.kind != "source" for n in fused.plan.nodes) - s_f["cache_hits"]
    assert s_u["node_evals"] == sum(n.kind != "source" for n in unfused.plan.nodes)
    assert s_f["kernel_calls"] < s_u["kernel_calls"]
    assert s_f["features"] == s_u["features"]  # the same counters either way


def test_one_kernel_call_per_op_and_level():
    feats = [{"name": f"c{i}", "kind": "sparse", "column": f"c{i}", "ops": [{"op": "hash"}, {"op": "mod", "n": 10}]}
             for i in range(26)] + [{"name": f"d{i}", "kind": "dense", "column": f"d{i}",
                                     "ops": [{"op": "fill_missing", "value": 0}, {"op": "log1p"}]} for i in range(13)]
    rng = np.random.default_rng(1)
    table = pa.table({**{f"c{i}": pa.array([f"v{k}" for k in rng.integers(0, 9, 100)]) for i in range(26)},
                      **{f"d{i}": pa.array(rng.integers(0, 9, 100), mask=rng.random(100) < 0.2) for i in range(13)}})
    engine = FeatureEngine(feats)
    engine(table)
    # hash, mod, log1p, sparse assembly, dense assembly; fill_missing needs no kernel
    assert engine.stats()["kernel_calls"] == 5
    assert "level 1: hash x26" in engine.plan.explain()


def test_dictionary_results_are_kept_while_the_dictionary_repeats():
    rng = np.random.default_rng(5)
    users = pa.array([f"user-{i}" for i in range(300)])
    engine, unfused = FeatureEngine(MIXED), FeatureEngine(MIXED, fused=False)
    for k in range(4):  # the same dictionary (equal, not identical), then a new one
        dictionary = users if k < 3 else pa.array([f"other-{i}" for i in range(300)])
        table = mixed_table(rng, 64, users=pa.array(dictionary.to_pylist()))
        batch = engine(table)
        assert_batches_equal(batch, unfused(table))
        assert_matches_reference(batch, MIXED, table)
    # the 300-entry dictionary outgrows the 64-row batch: hashed per position when first seen,
    # as a dictionary (kept) from its second batch on, and per position again when it changes
    assert engine.stats()["cache_hits"] == 3


def test_small_dictionaries_hit_the_cache_from_the_second_batch():
    engine = FeatureEngine([{"name": "c", "kind": "sparse", "column": "c", "ops": [{"op": "hash"}, {"op": "mod", "n": 7}]}])
    dictionary = pa.array(["a", "b", "c"])
    for k in range(3):
        table = pa.table({"c": pa.DictionaryArray.from_arrays(pa.array([0, 2, 1, 2], type=pa.int32()), dictionary)})
        assert kjt_rows(engine(table).sparse, "c") == [[ref_sparse([{"name": "c", "kind": "sparse", "column": "c",
                                                                        "ops": [{"op": "hash"}, {"op": "mod", "n": 7}]}],
                                                                      "c", table)[r][0]] for r in range(4)]
    assert engine.stats()["cache_hits"] == 2


def test_empty_batch():
    table = mixed_table(np.random.default_rng(0), 0)
    for fused in (True, False):
        batch = FeatureEngine(MIXED, fused=fused)(table)
        assert batch.size == 0 and batch.sparse.values().numel() == 0
        assert batch.sparse.lengths().numel() == 0 and batch.sparse.keys()[0] == "user"
        assert tuple(batch.dense.shape) == (0, 2) and batch.labels.shape == (0,)


def test_all_null_columns():
    n = 5
    table = pa.table({"a": pa.nulls(n), "s": pa.array([None] * n, type=pa.string()),
                      "d": pa.array([None] * n, type=pa.float64()), "l": pa.array([None] * n, type=pa.list_(pa.int64()))})
    feats = [{"name": "drop", "kind": "sparse", "column": "a", "ops": [{"op": "hash"}]},
             {"name": "fill", "kind": "sparse", "column": "a", "ops": [{"op": "fill_missing", "value": "x"}, {"op": "hash"}]},
             {"name": "s", "kind": "sparse", "column": "s", "ops": [{"op": "hash"}, {"op": "mod", "n": 3}]},
             {"name": "l", "kind": "sparse", "column": "l"},
             {"name": "dense", "kind": "dense", "column": "d", "ops": [{"op": "fill_missing", "value": 2}, {"op": "log1p"}]},
             {"name": "dense_null", "kind": "dense", "column": "a", "ops": [{"op": "fill_missing", "value": 1.5}]}]
    for fused in (True, False):
        engine = FeatureEngine(feats, fused=fused)
        batch = engine(table)
        assert kjt_rows(batch.sparse, "drop") == [[]] * n and kjt_rows(batch.sparse, "s") == [[]] * n
        assert kjt_rows(batch.sparse, "fill") == ref_sparse(feats, "fill", table)
        assert kjt_rows(batch.sparse, "l") == [[]] * n
        np.testing.assert_allclose(batch.dense[:, 0].numpy(), np.log1p(2.0))
        assert batch.dense[:, 1].tolist() == [1.5] * n
        stats = engine.stats()["features"]
        assert stats["drop"]["nulls"] == n and stats["drop"]["nulls_dropped"] == n
        assert stats["fill"]["nulls_filled"] == n and stats["l"]["null_rows"] == n


def test_chunked_tables_and_sliced_batches():
    rng = np.random.default_rng(2)
    table = pa.concat_tables([mixed_table(rng, 20), mixed_table(rng, 15)])
    assert table.column("user").num_chunks == 2
    expected = FeatureEngine(MIXED, fused=False)(table)
    assert_batches_equal(FeatureEngine(MIXED)(table), expected)
    assert_matches_reference(expected, MIXED, table)
    sliced = table.combine_chunks().to_batches()[0].slice(7, 20)
    assert_matches_reference(FeatureEngine(MIXED)(sliced), MIXED, pa.Table.from_batches([sliced]))


def test_batch_labels_extras_and_device_moves():
    rng = np.random.default_rng(3)
    table = mixed_table(rng, 10).append_column("click2", pa.array([1.5] * 10))
    feats = MIXED + [{"name": "click2", "kind": "label", "column": "click2"}]
    batch = FeatureEngine(feats)(table)
    assert set(batch.labels) == {"click", "click2"} and batch.labels["click2"].tolist() == [1.5] * 10
    assert batch.extras["title"].to_pylist() == table.column("title").to_pylist()
    moved = batch.to("cpu", non_blocking=True)
    assert torch.equal(moved.sparse.values(), batch.sparse.values()) and moved.extras is not batch.extras
    if torch.cuda.is_available():
        assert batch.pin_memory().dense.is_pinned()


def test_embedding_collection_takes_the_sparse_batch():
    from recis.nn import EmbeddingCollection, TableConfig
    table = mixed_table(np.random.default_rng(4), 16)
    batch = FeatureEngine(MIXED)(table)
    keys = batch.sparse.keys()
    ec = EmbeddingCollection([TableConfig("ids", 4, keys)])
    out = ec(batch.sparse)
    assert out.keys() == keys and tuple(out.values().shape) == (16, 4 * len(keys))


def test_null_counters():
    table = pa.table({"s": ["a", None, None, "b"], "l": pa.array([["x", None], None, [], ["y"]])})
    feats = [{"name": "s", "kind": "sparse", "column": "s", "ops": [{"op": "hash"}]},
             {"name": "l", "kind": "sparse", "column": "l", "ops": [{"op": "fill_missing", "value": "z"}, {"op": "hash"}]}]
    engine = FeatureEngine(feats)
    engine(table), engine(table)
    s, lst = engine.stats()["features"]["s"], engine.stats()["features"]["l"]
    assert (s["nulls"], s["nulls_dropped"], s["nulls_filled"]) == (4, 4, 0)
    assert (lst["nulls"], lst["nulls_filled"], lst["null_rows"]) == (2, 2, 2)
    assert engine.stats()["rows"] == 8 and engine.stats()["batches"] == 2
    engine.reset_stats()
    assert engine.stats()["features"]["s"]["nulls"] == 0


FEAT_OPS = ["feat_hash_str", "feat_hash_int", "feat_cross", "feat_mod", "feat_bucketize", "feat_log1p",
            "feat_normalize", "feat_clip", "feat_assemble_sparse", "feat_assemble_dense", "feat_truncate",
            "feat_same_bytes", "feat_unpack_bits"]


@pytest.mark.parametrize("name", FEAT_OPS)
def test_feature_ops_have_cpu_and_fake_kernels(name):
    from torch._library.simple_registry import singleton
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"recis::{name}", "CPU")
    assert singleton.find(f"recis::{name}").fake_impl.kernel is not None


def test_fake_kernels_give_shapes_without_data():
    with FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True) as mode:
        v = mode.from_tensor(torch.zeros(6, dtype=torch.int64))
        assert ops.feat_hash_int([v], [0], [3])[0].shape == (18,)
        assert ops.feat_log1p([v], [0])[0].dtype == torch.float64
        assert ops.feat_assemble_dense([v], [None], [None], [None], 6).shape == (6, 1)
        values, lengths, offsets = ops.feat_assemble_sparse([v, v], [1, 1], [None, None], [None, None], [None, None],
                                                            [None, None], 6)
        assert lengths.shape == (12,) and offsets.shape == (13,)


def test_same_bytes_compares_pairs_in_one_call():
    a = torch.arange(3 << 20, dtype=torch.int32)  # several 1 MiB chunks
    b = a.clone()
    b[-1] += 1
    got = ops.feat_same_bytes([a, a, a, torch.empty(0)], [a.clone(), b, a[:-1], torch.empty(0, dtype=torch.int8)])
    assert got.tolist() == [True, False, False, True]


def test_feature_kernels_release_the_gil():
    from test_gil_release import python_ran_during
    n = 2_000_000
    strings = pa.compute.cast(pa.array(np.arange(n)), pa.string())
    engine = FeatureEngine([{"name": "s", "kind": "sparse", "column": "s", "ops": [{"op": "hash"}, {"op": "mod", "n": 9}]}])
    table = pa.table({"s": strings})
    assert python_ran_during(lambda: engine(table))


def test_an_engine_pickles_to_a_fresh_copy():
    import pickle
    engine = FeatureEngine(MIXED)
    table = mixed_table(np.random.default_rng(6), 20)
    first = engine(table)
    copy = pickle.loads(pickle.dumps(engine))
    assert copy.specs == engine.specs and copy.stats()["batches"] == 0
    assert_batches_equal(copy(table), first)
    assert repr(copy) == "FeatureEngine(8 sparse, 2 dense, 1 label, 1 passthrough, 26 nodes, fused=True)"
