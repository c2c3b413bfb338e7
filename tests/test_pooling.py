"""Pooled forward/backward of HashEmbedding against torch.nn.functional.embedding_bag / embedding.

The reference: after recis has inserted the ids of a batch, its rows are copied (find + gather)
into a dense weight indexed by recis row number; torch's own embedding_bag over the mapped row
indices must then give the same pooled output, and the gradient of that dense weight must be
exactly what SparseSGD(lr=1.0) subtracts from each touched row.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recis.nn import HashEmbedding, Uniform, sparse_tables
from recis.optim import SparseSGD

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RTOL, ATOL = 1e-6, 1e-6


def _offsets(lengths):
    return torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0)


def _dense_weight(emb, extra_rows=None):
    """A dense [R, dim] copy of every live row of `emb`, indexed by recis row number."""
    state = emb.table.export()
    rows = emb.table.find(state["ids"])
    assert bool((rows >= 0).all())
    n = int(rows.max()) + 1 if rows.numel() else 0
    w = torch.zeros(n, emb.embedding_dim)
    w[rows] = emb.table.gather(rows)
    # gather and export agree on the rows
    torch.testing.assert_close(w[rows], state["rows"], rtol=0, atol=0)
    return w


def _reference(emb, values, offsets, weights, combiner):
    """torch's pooled output and dense-weight gradient function on the mapped row ids."""
    rows = emb.table.find(values)
    assert bool((rows >= 0).all()), "training forward must have inserted every id"
    w = _dense_weight(emb).requires_grad_(True)
    if combiner is None:
        out = F.embedding(rows, w)
        if weights is not None:
            out = out * weights[:, None]
    elif combiner == "sum":
        out = F.embedding_bag(rows, w, offsets, mode="sum", per_sample_weights=weights, include_last_offset=True)
    else:
        lengths = (offsets[1:] - offsets[:-1]).to(torch.float32)
        if weights is None:
            out = F.embedding_bag(rows, w, offsets, mode="mean", include_last_offset=True)
        else:  # torch's mean mode takes no weights: sum(w * x) / len, empty bag -> 0
            sums = F.embedding_bag(rows, w, offsets, mode="sum", per_sample_weights=weights, include_last_offset=True)
            out = sums / lengths.clamp(min=1)[:, None]
    return out, w, rows


def _check_forward_backward(values, offsets, combiner, weights=None, dim=4, seed=0, extra_ids=(), grad_seed=1):
    emb = HashEmbedding(dim, combiner=combiner, initializer=Uniform(-1.0, 1.0), seed=seed)
    opt = SparseSGD(sparse_tables(emb), lr=1.0)
    if len(extra_ids):
        emb.table.find_or_insert(torch.tensor(list(extra_ids), dtype=torch.int64))
    out = emb(values, offsets, weights)
    ref_out, w, rows = _reference(emb, values, offsets, weights, combiner)
    assert out.dtype == torch.float32
    assert out.shape == ref_out.shape
    torch.testing.assert_close(out, ref_out.detach(), rtol=RTOL, atol=ATOL)

    g = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    ref_out.backward(grad)
    before = w.detach().clone()
    opt.step()
    after = _dense_weight(emb)
    assert after.shape == before.shape, "a step must not insert or drop rows"
    expected = before - w.grad
    torch.testing.assert_close(after, expected, rtol=RTOL, atol=ATOL)
    # rows that no value of the batch maps to are bit-identical
    untouched = torch.ones(before.shape[0], dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(after[untouched], before[untouched])
    return emb, out


# --------------------------------------------------------------------------- forward + grad

@pytest.mark.parametrize("combiner", ["sum", "mean"])
@pytest.mark.parametrize("dim", [3, 8, 16])
def test_pooled_matches_embedding_bag(combiner, dim):
    values = torch.tensor([10, 11, 12, 10, 13, 14, 15, 11, 16, 17], dtype=torch.int64)
    offsets = _offsets([3, 1, 0, 4, 2])
    _check_forward_backward(values, offsets, combiner, dim=dim, extra_ids=[100, 101, 102])


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_per_sample_weights(combiner):
    values = torch.tensor([1, 2, 3, 1, 4, 5, 2], dtype=torch.int64)
    offsets = _offsets([2, 3, 0, 2])
    weights = torch.tensor([0.5, -1.5, 2.0, 3.0, 0.25, -0.75, 1.0])
    _check_forward_backward(values, offsets, combiner, weights=weights, dim=8, extra_ids=[99])


def test_unpooled_matches_embedding():
    values = torch.tensor([7, 8, 7, -7, 9, 7], dtype=torch.int64)
    offsets = _offsets([2, 0, 3, 1])
    emb, out = _check_forward_backward(values, offsets, None, dim=5, extra_ids=[1234])
    assert out.shape == (values.numel(), 5)


def test_unpooled_with_weights():
    values = torch.tensor([7, 8, 7, -7, 9, 7], dtype=torch.int64)
    offsets = _offsets([3, 3])
    weights = torch.tensor([1.0, -2.0, 0.5, 4.0, 0.0, 3.0])
    _check_forward_backward(values, offsets, None, weights=weights, dim=8)


def test_unpooled_without_offsets_equals_one_bag():
    values = torch.tensor([3, 1, 3, 2], dtype=torch.int64)
    emb = HashEmbedding(4, combiner=None, seed=5)
    out = emb(values)
    assert out.shape == (4, 4)
    ref = emb.table.gather(emb.table.find(values))
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=0)


def test_duplicate_ids_in_one_bag():
    values = torch.tensor([5, 5, 5, 6, 5], dtype=torch.int64)
    offsets = _offsets([3, 2])
    emb, out = _check_forward_backward(values, offsets, "sum", dim=4)
    assert len(emb.table) == 2
    _check_forward_backward(values, offsets, "mean", dim=4)


def test_duplicates_sum_is_multiple_of_row():
    emb = HashEmbedding(6, combiner="sum", initializer=Uniform(-1, 1), seed=2)
    out = emb(torch.tensor([42, 42, 42]), torch.tensor([0, 3]))
    row = emb.table.gather(emb.table.find(torch.tensor([42])))
    torch.testing.assert_close(out.detach(), 3 * row, rtol=RTOL, atol=ATOL)


def test_int64_extremes_as_ids():
    ids = [INT64_MIN, INT64_MAX, 0, -1, 1, INT64_MIN + 1, INT64_MAX - 1]
    values = torch.tensor(ids + [INT64_MIN, -1], dtype=torch.int64)
    offsets = _offsets([2, 3, 2, 2])
    emb, _ = _check_forward_backward(values, offsets, "sum", dim=4)
    assert len(emb.table) == len(ids)
    rows = emb.table.find(torch.tensor(ids, dtype=torch.int64))
    assert bool((rows >= 0).all())
    assert len(set(rows.tolist())) == len(ids), "distinct extreme ids must get distinct rows"
    assert sorted(emb.table.export()["ids"].tolist()) == sorted(ids)


def test_empty_batch_b0_n0():
    emb = HashEmbedding(4, combiner="sum", seed=0)
    opt = SparseSGD(sparse_tables(emb), lr=1.0)
    out = emb(torch.empty(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert out.shape == (0, 4) and out.dtype == torch.float32
    out.sum().backward()
    opt.step()
    assert len(emb.table) == 0


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_all_bags_empty(combiner):
    emb = HashEmbedding(4, combiner=combiner, seed=0)
    opt = SparseSGD(sparse_tables(emb), lr=1.0)
    out = emb(torch.empty(0, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))
    assert out.shape == (3, 4)
    assert torch.equal(out.detach(), torch.zeros(3, 4))
    out.backward(torch.ones(3, 4))
    opt.step()
    assert len(emb.table) == 0


def test_unpooled_empty():
    emb = HashEmbedding(4, combiner=None, seed=0)
    out = emb(torch.empty(0, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    assert out.shape == (0, 4)


def test_empty_bags_between_full_ones():
    values = torch.tensor([1, 2, 3], dtype=torch.int64)
    offsets = _offsets([0, 2, 0, 0, 1, 0])
    emb, out = _check_forward_backward(values, offsets, "mean", dim=4)
    for b in (0, 2, 3, 5):
        assert torch.equal(out[b].detach(), torch.zeros(4))


def test_large_batch_parallel_dedup():
    """Enough values for the multi-threaded dedup path; many duplicates across threads."""
    g = torch.Generator().manual_seed(0)
    n_bags = 2500
    lengths = torch.randint(0, 16, (n_bags,), generator=g)
    n = int(lengths.sum())
    assert n > 3 * 4096
    pool = torch.randint(INT64_MIN, INT64_MAX, (3000,), generator=g, dtype=torch.int64)
    values = pool[torch.randint(0, pool.numel(), (n,), generator=g)]
    weights = torch.rand(n, generator=g)
    _check_forward_backward(values, _offsets(lengths.tolist()), "sum", weights=weights, dim=16)


def test_large_pooled_output_equals_its_parts():
    """A pooled output over 16 MiB is written with streaming stores: it equals, bit for bit, the
    outputs of its halves (written normally), and matches embedding_bag."""
    g = torch.Generator().manual_seed(0)
    n_bags = 72_000  # x 64 floats x 4 bytes = 17.6 MiB
    lengths = torch.randint(1, 3, (n_bags,), generator=g)
    pool = torch.randint(INT64_MIN, INT64_MAX, (4000,), generator=g, dtype=torch.int64)
    values = pool[torch.randint(0, pool.numel(), (int(lengths.sum()),), generator=g)]
    offsets = _offsets(lengths.tolist())
    emb, trained = _check_forward_backward(values, offsets, "sum", dim=64)
    assert trained.numel() * 4 > 16 << 20
    half = n_bags // 2
    with torch.no_grad():
        full = emb(values, offsets)
        cut = int(offsets[half])
        first = emb(values[:cut], offsets[: half + 1])
        second = emb(values[cut:], offsets[half:] - cut)
    assert torch.equal(full, torch.cat([first, second]))


def test_two_backward_accumulate_in_reference():
    """Same batch twice before one step: each touched row moves by twice torch's grad."""
    values = torch.tensor([1, 2, 2, 3], dtype=torch.int64)
    offsets = _offsets([2, 2])
    emb = HashEmbedding(4, combiner="sum", initializer=Uniform(-1, 1), seed=9)
    opt = SparseSGD(sparse_tables(emb), lr=1.0)
    grad = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.25, 0.5, -1.0, 2.0]])
    emb(values, offsets).backward(grad)
    ref_out, w, rows = _reference(emb, values, offsets, None, "sum")
    emb(values, offsets).backward(grad)
    ref_out.backward(2 * grad)
    before = w.detach().clone()
    opt.step()
    torch.testing.assert_close(_dense_weight(emb), before - w.grad, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- hypothesis

_ID_POOL = [0, 1, -1, 7, 123456789, INT64_MIN, INT64_MAX, 2**40]
_ids = st.one_of(st.sampled_from(_ID_POOL), st.integers(min_value=INT64_MIN, max_value=INT64_MAX))


@st.composite
def jagged_batches(draw):
    lengths = draw(st.lists(st.integers(0, 5), min_size=0, max_size=6))
    n = sum(lengths)
    ids = draw(st.lists(_ids, min_size=n, max_size=n))
    combiner = draw(st.sampled_from(["sum", "mean", None]))
    weighted = draw(st.booleans())
    weights = draw(st.lists(st.floats(-4, 4, width=32), min_size=n, max_size=n)) if weighted else None
    dim = draw(st.sampled_from([3, 8]))
    seed = draw(st.integers(0, 2**32 - 1))
    return lengths, ids, combiner, weights, dim, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jagged_batches())
def test_hypothesis_jagged_batches(batch):
    lengths, ids, combiner, weights, dim, seed = batch
    values = torch.tensor(ids, dtype=torch.int64).reshape(-1)
    offsets = _offsets(lengths)
    w = torch.tensor(weights, dtype=torch.float32).reshape(-1) if weights is not None else None
    emb, out = _check_forward_backward(values, offsets, combiner, weights=w, dim=dim, seed=seed,
                                       extra_ids=[31337])
    assert len(emb.table) == len(set(ids) | {31337})
    expected_rows = len(ids) if combiner is None else len(lengths)
    assert out.shape == (expected_rows, dim)
