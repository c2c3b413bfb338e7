"""Deterministic row initialization: order/thread independence and the initializers' statistics.

Statistics are checked against closed-form values (uniform moments, normal/truncated-normal
moments and interval masses, the Xavier/Kaiming formulas), not against recis itself.
"""
import math

import pytest
import torch

from conftest import INT64_MAX, INT64_MIN, distinct_random_int64, ids_tensor, offsets_for, truncated_normal_std
from recis.nn import (Constant, HashEmbedding, KaimingNormal, KaimingUniform, Normal, TableGroup, TruncatedNormal,
                      Uniform, XavierNormal, XavierUniform, Zeros)
from recis.optim import SparseSGD

DIM = 8
N_IDS = 50_000


def normal_mass(k: float) -> float:
    """P(|Z| <= k) for a standard normal Z."""
    return math.erf(k / math.sqrt(2))


def values_of(table, ids):
    """Row values of ids, read through find + gather (ids must be present)."""
    rows = table.find(ids)
    assert bool((rows >= 0).all())
    return table.gather(rows)


@pytest.fixture(scope="module")
def stat_ids():
    g = torch.Generator().manual_seed(77)
    # Half sequential ids (the common case for raw feature ids), half random 64-bit ids.
    return torch.cat([torch.arange(N_IDS // 2, dtype=torch.int64), distinct_random_int64(N_IDS // 2, g)]).unique()


def sample(initializer, ids, dim=DIM, seed=3):
    g = TableGroup(dim, names=["t"], seeds=[seed], initializer=initializer)
    t = g.tables[0]
    rows = t.find_or_insert(ids)
    values = t.gather(rows)
    # The insert path and the pure initial_rows path agree.
    assert torch.equal(values, t.initial_rows(ids))
    return values


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("init", [None, Uniform(-1.0, 1.0), Normal(0.0, 1.0), XavierUniform()])
def test_initial_rows_independent_of_insertion_order(init, gen):
    ids = torch.cat([distinct_random_int64(3000, gen), ids_tensor([0, -1, INT64_MIN, INT64_MAX])])
    a = TableGroup(DIM, names=["a"], seeds=[42], initializer=init).tables[0]
    b = TableGroup(DIM, names=["b"], seeds=[42], initializer=init).tables[0]
    a.find_or_insert(ids)
    perm = torch.randperm(ids.numel(), generator=gen)
    # b gets the ids in another order, in several calls, with other ids interleaved.
    for part in ids[perm].split(700):
        b.find_or_insert(torch.cat([part, part[:5] + 1]))
    assert torch.equal(values_of(a, ids), values_of(b, ids))
    # Rows are positioned differently, the values are not.
    assert not torch.equal(a.find(ids), b.find(ids))


def test_initial_rows_same_through_training_lookup_and_namespace_position():
    """Training forward, find_or_insert and a table at another namespace position of another
    group give one id the same row: the value is a function of (seed, id) only."""
    ids = ids_tensor([5, 3, 5, -9, INT64_MIN, 12345678901])
    emb = HashEmbedding(DIM, combiner=None, seed=17, initializer=Normal(0.0, 0.5))
    with torch.no_grad():
        out = emb(ids)
    other = TableGroup(DIM, names=["x", "y"], seeds=[99, 17], initializer=Normal(0.0, 0.5)).tables[1]
    other.find_or_insert(ids.flip(0))
    assert torch.equal(out, values_of(other, ids))
    assert torch.equal(out, values_of(emb.table, ids))


def test_initial_rows_independent_of_thread_count(restore_threads, gen):
    ids = distinct_random_int64(60_000, gen)
    values = ids[torch.randint(0, ids.numel(), (80_000,), generator=gen)]  # with repeats
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        emb = HashEmbedding(DIM, combiner=None, seed=5)
        with torch.no_grad():
            out = emb(values)
        present = torch.unique(values)
        results.append((out, values_of(emb.table, present), emb.table.initial_rows(present)))
    (out1, v1, i1), (out2, v2, i2) = results
    assert torch.equal(out1, out2)
    assert torch.equal(v1, v2)
    assert torch.equal(i1, i2)
    assert torch.equal(v1, i1)


def test_different_seeds_and_ids_give_different_rows(stat_ids):
    a = sample(Normal(0.0, 1.0), stat_ids, seed=1)
    b = sample(Normal(0.0, 1.0), stat_ids, seed=2)
    # No id has the same row under two seeds, and no value column is shared.
    assert not bool((a == b).all(dim=1).any())
    assert float((a == b).float().mean()) < 1e-3
    # Distinct ids get distinct rows, and the two seeds' rows are uncorrelated.
    assert torch.unique(a, dim=0).shape[0] == a.shape[0]
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert abs(float(corr)) < 0.01


def test_same_id_in_two_logical_tables_with_different_seeds_differs():
    g = TableGroup(DIM, names=["user", "item"], seeds=[11, 12], initializer=Uniform(-1.0, 1.0))
    user, item = g.tables
    ids = ids_tensor([0, 1, 2, -1, INT64_MAX, INT64_MIN])
    u = user.gather(user.find_or_insert(ids))
    i = item.gather(item.find_or_insert(ids))
    assert not bool((u == i).all(dim=1).any())
    # Same seeds in two namespaces do give the same rows (the seed, not the slot, decides).
    same = TableGroup(DIM, names=["p", "q"], seeds=[7, 7], initializer=Uniform(-1.0, 1.0))
    p, q = same.tables
    assert torch.equal(p.gather(p.find_or_insert(ids)), q.gather(q.find_or_insert(ids)))


def test_columns_are_not_copies_of_each_other(stat_ids):
    x = sample(Uniform(-1.0, 1.0), stat_ids)
    c = torch.corrcoef(x.T)
    off_diag = c - torch.diag(torch.diag(c))
    assert float(off_diag.abs().max()) < 0.02
    # Neighbouring ids are not correlated either (sequential ids are the first half).
    seq = x[:1000]
    assert abs(float(torch.corrcoef(torch.stack([seq[:-1].flatten(), seq[1:].flatten()]))[0, 1])) < 0.05


# ----------------------------------------------------------------------------- statistics
def check_uniform(x, low, high):
    assert float(x.min()) >= low
    assert float(x.max()) < high
    span = high - low
    # Extremes are approached (a narrower range would fail this).
    assert float(x.min()) < low + 0.001 * span
    assert float(x.max()) > high - 0.001 * span
    n = x.numel()
    assert abs(float(x.mean()) - (low + high) / 2) < 5 * span / math.sqrt(12 * n)
    assert abs(float(x.std()) - span / math.sqrt(12)) < 0.01 * span / math.sqrt(12)
    # Flat histogram: each of 10 bins holds 10% +- 0.5%.
    hist = torch.histc(x.flatten(), bins=10, min=low, max=high) / n
    assert float((hist - 0.1).abs().max()) < 0.005, hist


def check_normal(x, mean, std):
    n = x.numel()
    assert abs(float(x.mean()) - mean) < 5 * std / math.sqrt(n)
    assert abs(float(x.std()) / std - 1) < 0.01
    z = ((x - mean) / std).abs()
    for k in (0.5, 1.0, 2.0, 3.0):
        assert abs(float((z <= k).float().mean()) - normal_mass(k)) < 0.005, k
    assert float(z.max()) > 3.5  # tails exist


@pytest.mark.parametrize("low,high", [(-0.05, 0.05), (-0.3, 0.7), (2.0, 3.0)])
def test_uniform_statistics(stat_ids, low, high):
    check_uniform(sample(Uniform(low, high), stat_ids), low, high)


def test_uniform_default_bounds(stat_ids):
    check_uniform(sample(Uniform(), stat_ids), -0.05, 0.05)


@pytest.mark.parametrize("mean,std", [(0.0, 0.01), (0.5, 2.0)])
def test_normal_statistics(stat_ids, mean, std):
    check_normal(sample(Normal(mean, std), stat_ids), mean, std)


@pytest.mark.parametrize("mean,std,cutoff", [(0.0, 0.2, 2.0), (0.1, 0.3, 1.0), (-1.0, 1.5, 3.0)])
def test_truncated_normal_statistics(stat_ids, mean, std, cutoff):
    x = sample(TruncatedNormal(mean=mean, std=std, cutoff=cutoff), stat_ids)
    tol = 1e-6 * (abs(mean) + cutoff * std)
    assert float(x.min()) >= mean - cutoff * std - tol
    assert float(x.max()) <= mean + cutoff * std + tol
    assert float(x.min()) < mean - 0.98 * cutoff * std  # truncated, not narrower
    assert float(x.max()) > mean + 0.98 * cutoff * std
    expected_std = std * truncated_normal_std(cutoff)
    assert abs(float(x.std()) / expected_std - 1) < 0.015
    assert abs(float(x.mean()) - mean) < 5 * expected_std / math.sqrt(x.numel())
    # Shape: the mass within one std of the mean is that of the truncated normal.
    inner = float(((x - mean).abs() <= 0.5 * std).float().mean())
    assert abs(inner - normal_mass(0.5) / normal_mass(cutoff)) < 0.005


def test_default_initializer_is_truncated_normal_with_std_one_over_sqrt_dim(stat_ids):
    x = sample(None, stat_ids, dim=16)
    std = 1 / math.sqrt(16)
    assert float(x.abs().max()) <= 2 * std * (1 + 1e-6)
    assert abs(float(x.std()) / (std * truncated_normal_std(2.0)) - 1) < 0.015


@pytest.mark.parametrize("value", [0.0, 0.25, -3.5])
def test_constant_is_exact(stat_ids, value):
    x = sample(Constant(value), stat_ids[:1000])
    assert torch.equal(x, torch.full_like(x, value))


def test_zeros_and_named_initializers(stat_ids):
    x = sample(Zeros(), stat_ids[:1000])
    assert torch.equal(x, torch.zeros_like(x))
    assert torch.equal(sample("zeros", stat_ids[:10]), torch.zeros(10, DIM))
    assert torch.equal(sample("xavier_uniform", stat_ids[:100]), sample(XavierUniform(), stat_ids[:100]))


@pytest.mark.parametrize("dim", [4, 16])
@pytest.mark.parametrize("gain", [1.0, math.sqrt(2.0)])
def test_xavier_and_kaiming_from_their_formulas(stat_ids, dim, gain):
    fan_in = fan_out = dim
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    check_uniform(sample(XavierUniform(gain=gain), stat_ids, dim=dim), -bound, bound)
    check_normal(sample(XavierNormal(gain=gain), stat_ids, dim=dim), 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))
    bound = gain * math.sqrt(3.0 / fan_in)
    check_uniform(sample(KaimingUniform(gain=gain), stat_ids, dim=dim), -bound, bound)
    check_normal(sample(KaimingNormal(gain=gain), stat_ids, dim=dim), 0.0, gain / math.sqrt(fan_in))


def test_xavier_and_kaiming_explicit_fans(stat_ids):
    ids = stat_ids[:20_000]
    bound = math.sqrt(6.0 / (10 + 50))
    check_uniform(sample(XavierUniform(fan_in=10, fan_out=50), ids), -bound, bound)
    check_normal(sample(XavierNormal(fan_in=10, fan_out=50), stat_ids), 0.0, math.sqrt(2.0 / 60))
    bound = math.sqrt(3.0 / 30)
    check_uniform(sample(KaimingUniform(fan_in=30), ids), -bound, bound)
    check_normal(sample(KaimingNormal(fan_in=30, fan_out=5), stat_ids), 0.0, 1 / math.sqrt(30))


# ----------------------------------------------------------------------------- erase + reinsert
@pytest.mark.parametrize("missing", ["zeros", "init"])
def test_erased_then_reinserted_id_reproduces_initial_row(missing):
    emb = HashEmbedding(DIM, combiner="sum", seed=21, initializer=Uniform(-1.0, 1.0), missing=missing)
    opt = SparseSGD(emb.group.tables, lr=0.5)
    ids = ids_tensor([7, -7, INT64_MIN])
    offsets = offsets_for([1, 1, 1])
    first = emb(ids, offsets).detach().clone()  # each bag holds one id: its initial row
    for _ in range(3):
        emb(ids, offsets).sum().backward()
        opt.step()
    trained = emb.table.lookup(ids)
    assert not torch.allclose(trained, first)  # training moved the rows
    assert emb.table.erase(ids_tensor([7, INT64_MIN])) == 2
    # Absent ids read zeros or, with missing="init", their initial row -- without inserting.
    looked = emb.table.lookup(ids)
    assert len(emb.table) == 1
    absent_expected = first[[0, 2]] if missing == "init" else torch.zeros(2, DIM)
    assert torch.equal(looked[[0, 2]], absent_expected)
    assert torch.equal(looked[1], trained[1])
    emb.eval()
    with torch.no_grad():
        out = emb(ids, offsets)
    assert torch.equal(out[[0, 2]], absent_expected)
    assert len(emb.table) == 1
    emb.train()
    with torch.no_grad():
        again = emb(ids, offsets)
    assert len(emb.table) == 3
    assert torch.equal(again[0], first[0])
    assert torch.equal(again[2], first[2])
    assert torch.equal(again[1], trained[1])


# ----------------------------------------------------------------------------- dense fill (init_)
def test_init_fills_a_dense_tensor_from_the_rows_law():
    """`init_` (torchrec's EmbeddingBagConfig.init_fn of a recis table) draws from the law of the
    table's rows, its width taken from the tensor's last dim; a Parameter is filled in place."""
    torch.manual_seed(5)
    dense = lambda dim=DIM: torch.empty(N_IDS, dim)  # noqa: E731
    check_uniform(Uniform(-0.3, 0.7).init_(dense()), -0.3, 0.7)
    check_normal(Normal(0.5, 2.0).init_(dense()), 0.5, 2.0)
    x = TruncatedNormal(mean=0.1, std=0.3, cutoff=1.0).init_(dense())
    assert float(x.min()) >= 0.1 - 0.3 - 1e-6 and float(x.max()) <= 0.1 + 0.3 + 1e-6
    assert abs(float(x.std()) / (0.3 * truncated_normal_std(1.0)) - 1) < 0.015
    x = TruncatedNormal().init_(dense(16))  # std 1/sqrt(dim) of the tensor's width
    assert abs(float(x.std()) / (0.25 * truncated_normal_std(2.0)) - 1) < 0.015
    bound = math.sqrt(6.0 / (16 + 16))
    check_uniform(XavierUniform().init_(dense(16)), -bound, bound)
    assert torch.equal(Constant(-3.5).init_(dense()), torch.full((N_IDS, DIM), -3.5))
    weight = torch.nn.Parameter(torch.zeros(100, DIM))
    assert Uniform(1.0, 2.0).init_(weight) is weight
    assert weight.is_leaf and float(weight.min()) >= 1.0
