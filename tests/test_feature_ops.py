"""Each feature op against a Python / numpy reference, through the engine (fused and unfused)
and, for the arithmetic, through the kernels on edge values."""
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recis.features import FeatureEngine
from recis.features.arrow import ingest
from test_feature_reference import ref_cross_hash, ref_dense, ref_hash, ref_sparse

ops = torch.ops.recis
INT64 = st.integers(-(2 ** 63), 2 ** 63 - 1)


def kjt_rows(kjt, key):
    jt = kjt[key]
    return [t.tolist() for t in torch.split(jt.values(), jt.lengths().tolist())]


def check_sparse(features, table, names=None):
    """Both engines give the reference's ids for every sparse feature."""
    for fused in (True, False):
        batch = FeatureEngine(features, fused=fused)(table)
        for f in features:
            if f["kind"] == "sparse" and (names is None or f["name"] in names):
                assert kjt_rows(batch.sparse, f["name"]) == ref_sparse(features, f["name"], table), (f["name"], fused)


def check_dense(features, table):
    for fused in (True, False):
        batch = FeatureEngine(features, fused=fused)(table)
        for i, f in enumerate(f for f in features if f["kind"] == "dense"):
            expected = np.array(ref_dense(features, f["name"], table), dtype=np.float32)
            np.testing.assert_allclose(batch.dense[:, i].numpy(), expected, rtol=1e-6, atol=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(INT64, max_size=30), st.integers(1, 2 ** 63 - 1))
def test_mod_is_python_floor_mod(values, n):
    got = ops.feat_mod([torch.tensor(values, dtype=torch.int64)], [n])[0].tolist()
    assert got == [v % n for v in values]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000003, 2 ** 32 + 1, 2 ** 62 + 7, 2 ** 63 - 1])
def test_mod_edge_values(n):
    edge = [0, 1, -1, 2 ** 63 - 1, -(2 ** 63), -(2 ** 63) + 1, n - 1, -n, n, 2 * n - 1]
    edge = [v for v in edge if -(2 ** 63) <= v < 2 ** 63]
    assert ops.feat_mod([torch.tensor(edge)], [n])[0].tolist() == [v % n for v in edge]
    narrow = torch.tensor([-128, -1, 0, 127], dtype=torch.int8)
    assert ops.feat_mod([narrow], [n])[0].tolist() == [v % n for v in narrow.tolist()]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=30),
       st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8))
def test_bucketize_is_searchsorted_right(values, boundaries):
    b = sorted(boundaries)
    got = ops.feat_bucketize([torch.tensor(values, dtype=torch.float64)], [torch.tensor(b, dtype=torch.float64)])[0]
    assert got.tolist() == np.searchsorted(np.array(b), np.array(values, dtype=np.float64), side="right").tolist()


def test_bucketize_int_columns_and_boundary_values():
    b = [0.0, 10.0, 10.0, 100.0]
    values = np.array([-5, 0, 9, 10, 11, 100, 101, 2 ** 40])
    got = ops.feat_bucketize([torch.from_numpy(values)], [torch.tensor(b, dtype=torch.float64)])[0]
    assert got.tolist() == np.searchsorted(b, values, side="right").tolist()
    with pytest.raises(ValueError, match="sorted"):
        ops.feat_bucketize([torch.from_numpy(values)], [torch.tensor([2.0, 1.0], dtype=torch.float64)])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e12, 1e12), st.just(math.nan)), max_size=30), st.sampled_from(["sign", "zero"]))
def test_log1p_negative_modes(values, negative):
    x = np.array(values, dtype=np.float64)
    got = ops.feat_log1p([torch.from_numpy(x)], [0 if negative == "sign" else 1])[0].numpy()
    if negative == "sign":
        expected = np.sign(x) * np.log1p(np.abs(x))
    else:
        expected = np.where(np.isnan(x), x, np.log1p(np.maximum(x, 0)))
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)


def test_log1p_integers_small_and_large():
    x = np.array([0, 1, 4095, 4096, 10 ** 12, -1, -4095, -4096, -(10 ** 12)], dtype=np.int64)
    for mode, expected in ((0, np.sign(x) * np.log1p(np.abs(x.astype(np.float64)))),
                           (1, np.log1p(np.maximum(x, 0).astype(np.float64)))):
        np.testing.assert_allclose(ops.feat_log1p([torch.from_numpy(x)], [mode])[0].numpy(), expected, rtol=1e-15)


def test_normalize_and_clip_against_numpy():
    x = np.array([-3.5, 0.0, 2.0, 1e9, np.nan, np.inf], dtype=np.float64)
    got = ops.feat_normalize([torch.from_numpy(x)], [1.5], [2.5])[0].numpy()
    np.testing.assert_array_equal(got, (x - 1.5) / 2.5)
    got = ops.feat_clip([torch.from_numpy(x)], [-1.0], [3.0])[0].numpy()
    np.testing.assert_array_equal(got, np.clip(x, -1.0, 3.0))
    ints = torch.tensor([-7, 0, 7], dtype=torch.int32)
    assert ops.feat_clip([ints], [-math.inf], [5.0])[0].tolist() == [-7.0, 0.0, 5.0]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=25), st.integers(0, 2 ** 64 - 1),
       st.integers(1, 1000), st.booleans())
def test_hash_mod_chain_with_nulls_dropped_or_filled(values, seed, n, fill):
    ops_ = ([{"op": "fill_missing", "value": "?"}] if fill else []) + [{"op": "hash", "seed": seed}, {"op": "mod", "n": n}]
    table = pa.table({"s": pa.array(values, type=pa.string()), "d": pa.array(values, type=pa.string()).dictionary_encode()})
    features = [{"name": "plain", "kind": "sparse", "column": "s", "ops": ops_},
                {"name": "dict", "kind": "sparse", "column": "d", "ops": ops_}]
    check_sparse(features, table)


def test_fill_missing_after_hash_and_on_ints():
    table = pa.table({"s": ["a", None, "b"], "i": pa.array([5, None, -2], type=pa.int32())})
    features = [{"name": "late", "kind": "sparse", "column": "s", "ops": [{"op": "hash"}, {"op": "fill_missing", "value": -1}]},
                {"name": "ints", "kind": "sparse", "column": "i", "ops": [{"op": "fill_missing", "value": 0}]},
                {"name": "ints_h", "kind": "sparse", "column": "i", "ops": [{"op": "hash", "seed": 3}]}]
    check_sparse(features, table)
    assert kjt_rows(FeatureEngine(features)(table).sparse, "late") == [[ref_hash("a")], [-1], [ref_hash("b")]]


def test_multi_hash_gives_k_ids_per_value_and_fills_k_ids():
    table = pa.table({"s": pa.array(["x", None, "y"]).dictionary_encode(), "l": [["a", "b"], [], None]})
    features = [{"name": "m", "kind": "sparse", "column": "s", "ops": [{"op": "multi_hash", "num_hashes": 3, "seed": 9}]},
                {"name": "mf", "kind": "sparse", "column": "s",
                 "ops": [{"op": "multi_hash", "num_hashes": 2}, {"op": "fill_missing", "value": 7}, {"op": "mod", "n": 50}]},
                {"name": "ml", "kind": "sparse", "column": "l", "ops": [{"op": "multi_hash", "num_hashes": 2}]}]
    check_sparse(features, table)
    assert kjt_rows(FeatureEngine(features)(table).sparse, "m")[0] == [ref_hash("x", 9 + j) for j in range(3)]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), st.integers(-50, 50)), max_size=6)), max_size=12),
       st.integers(1, 4), st.sampled_from(["first", "last"]), st.one_of(st.none(), st.integers(-3, 3)))
def test_truncate_and_pad_list_columns(rows, max_len, keep, pad_value):
    table = pa.table({"seq": pa.array(rows, type=pa.list_(pa.int64())),
                      "big": pa.array(rows, type=pa.large_list(pa.int64()))})
    trunc = {"op": "truncate", "max_len": max_len, "keep": keep, "pad_value": pad_value}
    features = [{"name": "t", "kind": "sparse", "column": "seq", "ops": [trunc]},
                {"name": "ht", "kind": "sparse", "column": "big", "ops": [{"op": "hash"}, trunc, {"op": "mod", "n": 97}]},
                {"name": "raw", "kind": "sparse", "column": "seq"}]
    check_sparse(features, table)


def test_truncate_counts_cut_and_padded_ids():
    table = pa.table({"seq": [[1, 2, 3, 4], [5], []]})
    engine = FeatureEngine([{"name": "t", "kind": "sparse", "column": "seq",
                             "ops": [{"op": "truncate", "max_len": 2, "keep": "last", "pad_value": 0}]}])
    assert kjt_rows(engine(table).sparse, "t") == [[3, 4], [5, 0], [0, 0]]
    stats = engine.stats()["features"]["t"]
    assert (stats["truncated"], stats["padded"]) == (2, 3)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.sampled_from(["u1", "u2", "u3"])),
                          st.one_of(st.none(), st.lists(st.integers(0, 9), max_size=4))), max_size=12),
       st.integers(1, 6), st.integers(0, 2 ** 64 - 1))
def test_cross_is_the_capped_cartesian_product(rows, cap, seed):
    table = pa.table({"user": pa.array([r[0] for r in rows], type=pa.string()),
                      "items": pa.array([r[1] for r in rows], type=pa.list_(pa.int64()))})
    features = [{"name": "item", "kind": "sparse", "column": "items", "ops": [{"op": "mod", "n": 5}]},
                {"name": "x", "kind": "sparse", "cross": ["user", "item"], "cross_cap": cap, "cross_seed": seed,
                 "ops": [{"op": "mod", "n": 1000}]},
                {"name": "x3", "kind": "sparse", "cross": [{"column": "user"}, {"column": "items"}, {"feature": "item"}]}]
    check_sparse(features, table)


def test_cross_by_hand_and_its_cap_counter():
    table = pa.table({"a": [["p", "q"]], "b": [[1, 2, 3]]})
    engine = FeatureEngine([{"name": "x", "kind": "sparse", "cross": ["a", "b"], "cross_cap": 4}])
    ha, hb = [ref_hash(s) for s in "pq"], [ref_hash(i) for i in (1, 2, 3)]
    expected = [ref_cross_hash([a, b]) for a in ha for b in hb][:4]
    assert kjt_rows(engine(table).sparse, "x") == [expected]
    assert engine.stats()["features"]["x"]["cross_capped"] == 2


def test_dense_chain_with_nulls_and_negative_values():
    x = [3.0, None, -2.0, 0.0, 1e6, float("nan")]
    table = pa.table({"x": pa.array(x, type=pa.float64()), "i": pa.array([1, None, -5, 0, 7, 2], type=pa.int64())})
    features = [{"name": "a", "kind": "dense", "column": "x", "nan": "keep",
                 "ops": [{"op": "fill_missing", "value": 1}, {"op": "log1p"}, {"op": "normalize", "mean": 0.5, "std": 2}]},
                {"name": "b", "kind": "dense", "column": "i",
                 "ops": [{"op": "fill_missing", "value": 0}, {"op": "log1p", "negative": "zero"}, {"op": "clip", "max": 1.5}]},
                {"name": "c", "kind": "dense", "column": "i",
                 "ops": [{"op": "fill_missing", "value": 0}, {"op": "bucketize", "boundaries": [-1, 0, 5]}]},
                {"name": "raw", "kind": "dense", "column": "i", "ops": [{"op": "fill_missing", "value": 4}]}]
    table2 = table.set_column(0, "x", pa.array([v if v is None or v == v else 0.0 for v in x], type=pa.float64()))
    check_dense(features, table2)
    batch = FeatureEngine(features)(table)
    assert math.isnan(batch.dense[5, 0].item())  # with nan: keep, NaN flows through (it is not a null)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), max_size=200), st.integers(0, 200), st.integers(0, 200))
def test_validity_bitmaps_unpack_like_arrow(valid, start, length):
    arr = pa.array([1 if v else None for v in valid], type=pa.int32()).slice(start, length)
    col = ingest(arr)
    expected = [v is not None for v in arr.to_pylist()]
    assert (col.mask.tolist() if col.mask is not None else [True] * len(arr)) == expected
    bitmap = torch.tensor([0b10110010, 0b00000001], dtype=torch.uint8)
    assert ops.feat_unpack_bits([bitmap], [3], [7])[0].tolist() == [False, True, True, False, True, True, False]
