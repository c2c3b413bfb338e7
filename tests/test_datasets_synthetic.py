"""The Criteo-like generator: counter-based randomness (published SplitMix64 vectors), exact Zipf
ranks (brute-force reference), determinism and sharding, schema, the planted model (calibration,
Bayes AUC, a fitted logistic regression), Parquet output and throughput."""
import resource
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from recis.datasets import _counter_rng as rng
from recis.datasets import criteo
from recis.datasets._zipf import TruncatedZipf
from recis.datasets.synthetic import (KAGGLE_CRITEO_CARDINALITIES, CriteoLike, CriteoLikeConfig,
                                      criteo_like)

SMALL = dict(num_dense=3, num_sparse=4, cardinalities=[10, 100, 1000, 5000], seed=11)


# --- counter-based randomness -------------------------------------------------------------------
def test_splitmix64_published_vectors():
    # SplitMix64 seeded with 0 (Vigna's reference splitmix64.c): state_i = i * GAMMA, i = 1, 2, ...
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F, 0xF88BB8A8724C81EC]
    got = rng.bits(0, rng.spread(np.arange(1, 5)))
    assert [int(x) for x in got] == expected
    assert rng.mix_int(0x9E3779B97F4A7C15) == expected[0]


@given(st.lists(st.integers(0, 2 ** 64 - 1), min_size=1, max_size=20))
def test_numpy_mix_equals_python_mix(xs):
    got = rng.mix(np.array(xs, dtype=np.uint64))
    assert [int(x) for x in got] == [rng.mix_int(x) for x in xs]


def test_uniform_range_and_moments():
    u = rng.uniform(rng.stream_key(1, 2), rng.spread(np.arange(200_000)))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert rng.uniform_scalar(5, 9) == rng.uniform(5, rng.spread(np.array([9])))[0]


# --- Zipf ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,a", [(1, 1.05), (3, 1.05), (1000, 1.05), (100_000, 1.05),
                                 (100_000, 1.0), (50_000, 0.0), (20_000, 0.7), (10_000, 2.5)])
def test_zipf_pmf_matches_brute_force(n, a):
    z = TruncatedZipf(n, a)
    k = np.arange(1, n + 1, dtype=np.float64)
    exact = k ** -a / np.sum(k ** -a)
    pmf = z.pmf(k)
    assert abs(pmf.sum() - 1) < 1e-9
    assert np.max(np.abs(pmf / exact - 1)) < 2e-6
    # the sampled ranks invert the sampler's own CDF exactly
    u = rng.uniform(7, rng.spread(np.arange(50_000)))
    ranks = z.ranks(u)
    reference = np.minimum(np.searchsorted(np.cumsum(pmf), u, side="right") + 1, n)
    assert np.array_equal(ranks, reference)
    assert ranks.min() >= 1 and ranks.max() <= n
    assert np.all(np.diff(ranks[np.argsort(u)]) >= 0)


def test_zipf_sample_fits_exact_distribution():
    n, a = 100_000, 1.05
    ranks = TruncatedZipf(n, a).ranks(rng.uniform(3, rng.spread(np.arange(400_000))))
    k = np.arange(1, n + 1, dtype=np.float64)
    exact_cdf = np.cumsum(k ** -a) / np.sum(k ** -a)
    empirical = np.cumsum(np.bincount(ranks, minlength=n + 1)[1:]) / len(ranks)
    assert np.max(np.abs(empirical - exact_cdf)) < 1.63 / np.sqrt(len(ranks))  # KS at 1%


def _rank_frequency_slope(ranks, top=300):
    counts = np.sort(np.bincount(ranks))[::-1][:top]
    x = np.log(np.arange(1, top + 1))
    return np.polyfit(x, np.log(counts), 1)[0]


@pytest.mark.parametrize("a", [0.8, 1.05, 1.3])
def test_zipf_rank_frequency_slope(a):
    ranks = TruncatedZipf(1_000_000, a).ranks(rng.uniform(9, rng.spread(np.arange(500_000))))
    assert abs(_rank_frequency_slope(ranks) + a) < 0.06


# --- the generator -------------------------------------------------------------------------------
def test_schema_is_criteo_and_values_are_hex():
    gen = CriteoLike(**SMALL)
    batch = gen.batch(0, 2000)
    assert batch.schema.equals(criteo.schema(3, 4))
    for name in gen.sparse_names:
        values = batch[name].to_pylist()
        assert all(len(v) == 8 and int(v, 16) >= 0 and v == v.lower() for v in values)
    for name, card in zip(gen.sparse_names, SMALL["cardinalities"]):
        assert len(set(batch[name].to_pylist())) <= card
    dense = np.stack([batch[n].to_numpy() for n in gen.dense_names])
    assert np.all(dense >= 0) and np.all(dense == np.floor(dense))
    assert set(np.unique(batch["label"].to_numpy())) == {0, 1}


def test_default_config_is_criteo_kaggle_layout():
    config = CriteoLikeConfig()
    assert (config.num_dense, config.num_sparse) == (13, 26)
    assert config.cardinalities == KAGGLE_CRITEO_CARDINALITIES
    assert CriteoLikeConfig(num_sparse=3).cardinalities == (100_000,) * 3


def test_rows_depend_only_on_seed_and_index():
    gen = CriteoLike(**SMALL)
    whole = pa.Table.from_batches(list(gen.batches(1000, batch_size=1000)))
    pieces = pa.Table.from_batches(list(gen.batches(1000, batch_size=137)))
    assert whole.equals(pieces)
    shard = pa.Table.from_batches([gen.batch(400, 250)])
    assert shard.equals(whole.slice(400, 250))
    assert pa.Table.from_batches([CriteoLike(**SMALL, threads=2).batch(0, 1000)]).equals(whole)
    assert pa.Table.from_batches([CriteoLike(**SMALL).batch(0, 1000)]).equals(whole)
    other = CriteoLike(**{**SMALL, "seed": 12}).batch(0, 1000)
    assert not other.equals(whole.to_batches()[0])


def test_nulls_follow_the_configured_fractions():
    gen = CriteoLike(**SMALL, dense_null_fraction=0.3, sparse_null_fraction=0.1)
    batch = gen.batch(0, 20_000)
    for name in gen.dense_names:
        assert abs(batch[name].null_count / 20_000 - 0.3) < 0.02
    for name in gen.sparse_names:
        assert abs(batch[name].null_count / 20_000 - 0.1) < 0.015
        assert all(v is None or len(v) == 8 for v in batch[name].to_pylist()[:500])


def test_generated_ids_are_zipf_distributed():
    gen = CriteoLike(num_dense=0, num_sparse=1, cardinalities=100_000, seed=5)
    column = pa.concat_arrays([b["C1"] for b in gen.batches(300_000)])
    ids = np.array([int(v, 16) for v in column.unique().to_pylist()], dtype=np.uint32)
    rank_of = dict(zip(gen.ids(0, np.arange(1, 100_001)).tolist(), range(1, 100_001)))
    assert all(int(i) in rank_of for i in ids)  # every value is the id of some rank
    counts = column.value_counts()
    ranks = np.array([rank_of[int(v, 16)] for v in counts.field("values").to_pylist()])
    freq = np.zeros(100_001, dtype=np.int64)
    freq[ranks] = counts.field("counts").to_numpy()
    exact = np.arange(1, 11, dtype=np.float64) ** -1.05 / np.sum(np.arange(1, 100_001.0) ** -1.05)
    sigma = np.sqrt(exact * (1 - exact) / 300_000)
    assert np.all(np.abs(freq[1:11] / 300_000 - exact) < 5 * sigma)
    x = np.log(np.arange(1, 301))
    assert abs(np.polyfit(x, np.log(freq[1:301]), 1)[0] + 1.05) < 0.06


def test_labels_follow_the_planted_probabilities():
    gen = CriteoLike(**SMALL, sparse_weight_std=0.6)
    table = pa.Table.from_batches(list(gen.batches(100_000)))
    p = gen.probabilities(table)
    y = table["label"].to_numpy()
    for lo, hi in [(0, 0.1), (0.1, 0.3), (0.3, 0.6), (0.6, 1.0)]:  # calibration per bin
        sel = (p >= lo) & (p < hi)
        if sel.sum() > 500:
            assert abs(y[sel].mean() - p[sel].mean()) < 4 * np.sqrt(0.25 / sel.sum())
    bayes = gen.bayes_auc(table)
    assert bayes == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert bayes > 0.7
    assert gen.bayes_auc(table.to_batches()) == bayes


def test_logistic_regression_approaches_bayes_auc():
    gen = CriteoLike(num_dense=3, num_sparse=6, cardinalities=[10, 20, 50, 100, 200, 30],
                     sparse_weight_std=0.8, dense_weight_std=0.5, seed=3)
    train = gen.batch(0, 60_000)
    test = gen.batch(60_000, 40_000)

    def features(batch, encoder=None):
        cats = np.stack([batch[n].to_numpy(zero_copy_only=False) for n in gen.sparse_names], 1)
        dense = np.log1p(np.stack([batch[n].to_numpy() for n in gen.dense_names], 1))
        encoder = encoder or OneHotEncoder(handle_unknown="ignore").fit(cats)
        return sp.hstack([encoder.transform(cats), sp.csr_matrix(dense)]).tocsr(), encoder

    x_train, encoder = features(train)
    x_test, _ = features(test, encoder)
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, train["label"].to_numpy())
    model_auc = roc_auc_score(test["label"].to_numpy(), model.decision_function(x_test))
    bayes = gen.bayes_auc(test)
    print(f"\nBayes AUC {bayes:.4f}, logistic regression AUC {model_auc:.4f}")
    assert bayes > 0.75
    assert bayes - 0.01 < model_auc < bayes + 0.005


def test_write_parquet_round_trip_and_shards(tmp_path):
    gen = CriteoLike(**SMALL, sparse_null_fraction=0.05, dense_null_fraction=0.05)
    paths = gen.write_parquet(tmp_path / "all", 2500, rows_per_file=1000, batch_size=300)
    assert [pq.ParquetFile(p).metadata.num_rows for p in paths] == [1000, 1000, 500]
    back = pa.concat_tables([pq.read_table(p) for p in paths])
    assert back.equals(pa.Table.from_batches(list(gen.batches(2500))))
    # two writers of disjoint row ranges produce the same rows
    a = gen.write_parquet(tmp_path / "a", 1200, rows_per_file=5000)
    b = gen.write_parquet(tmp_path / "b", 1300, start=1200, rows_per_file=5000)
    assert pa.concat_tables([pq.read_table(p) for p in a + b]).equals(back)
    # the planted logits are recovered from the file alone, dictionary-encoded columns included
    dict_back = pq.read_table(paths[0], read_dictionary=gen.sparse_names)
    assert np.allclose(gen.logits(dict_back), gen.logits(back.slice(0, 1000)))


def test_dense_types(tmp_path):
    for dtype in criteo.DENSE_TYPES:
        gen = CriteoLike(**SMALL, dense_type=dtype)
        batch = gen.batch(0, 500)
        assert batch.schema.field("I1").type == dtype
        assert np.array_equal(gen.logits(batch), CriteoLike(**SMALL, dense_type=dtype).logits(batch))


def test_bad_config_and_bad_data_are_named():
    with pytest.raises(ValueError, match="cardinalities lists 2 values for 4"):
        CriteoLikeConfig(num_sparse=4, cardinalities=[1, 2])
    with pytest.raises(ValueError, match=r"CriteoLikeConfig.cardinalities\[1\] must be an integer in \[1, 2\*\*32\], got 0"):
        CriteoLikeConfig(num_sparse=2, cardinalities=[5, 0])
    with pytest.raises(ValueError, match="zipf_exponent"):
        CriteoLikeConfig(zipf_exponent=-1)
    with pytest.raises(ValueError, match="sparse_null_fraction"):
        CriteoLikeConfig(sparse_null_fraction=1.0)
    with pytest.raises(TypeError, match="dense_type"):
        CriteoLikeConfig(dense_type=pa.int32())
    with pytest.raises(TypeError, match="unknown CriteoLikeConfig fields"):
        criteo_like(10, cardinality=5)
    gen = CriteoLike(**SMALL)
    batch = gen.batch(0, 10)
    with pytest.raises(ValueError, match=r"missing columns \['C4'\]"):
        gen.logits(batch.drop_columns(["C4"]))
    bad = batch.set_column(batch.schema.get_field_index("C2"), "C2", pa.array(["zzzzzzzz"] * 10))
    with pytest.raises(ValueError, match="column C2: found a value that is not hexadecimal"):
        gen.logits(bad)
    short = batch.set_column(batch.schema.get_field_index("C1"), "C1", pa.array(["abc"] * 10))
    with pytest.raises(ValueError, match="column C1: every value must be 8 hex digits"):
        gen.logits(short)


def test_throughput_default_layout():
    gen = CriteoLike()  # 13 dense + 26 categorical, Criteo Kaggle cardinalities
    n, start = 0, time.perf_counter()
    for batch in gen.batches(500_000):
        n += batch.num_rows
    rate = n / (time.perf_counter() - start)
    print(f"\ncriteo_like: {rate:,.0f} rows/s (13 dense + 26 categorical, one thread)")
    assert n == 500_000


@pytest.mark.slow
def test_ten_million_rows_stream_in_bounded_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n, labels, nbytes = 0, 0, 0
    start = time.perf_counter()
    for batch in criteo_like(10_000_000, batch_size=1 << 16):
        n += batch.num_rows
        nbytes += batch.nbytes
        labels += int(np.sum(batch["label"].to_numpy()))
    rate = n / (time.perf_counter() - start)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"\n10M rows: {rate:,.0f} rows/s, CTR {labels / n:.3f}, {nbytes / 2 ** 30:.1f} GiB as "
          f"Arrow in all, peak RSS grew {grown_mib:.0f} MiB")
    assert n == 10_000_000
    assert grown_mib < nbytes / 2 ** 20 / 8  # streamed: a small fraction of the whole
