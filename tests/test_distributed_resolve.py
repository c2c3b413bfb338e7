"""The `recis::resolve` table op (the owner's half of a sharded lookup), on the C++ table and on
the Triton kernels (interpreter): resolving distinct keys with counts leaves a table exactly as a
lookup of a batch holding each key `count` times does (rows, counts, admission), and the rows'
gradient reaches the table like a lookup's."""
import pytest
import torch

from recis.distributed.owner_rows import owner_rows, resolve, unique_keys
from recis.nn import FrequencyAdmission, TableGroup
from recis.nn.functional import LOOKUP_EVAL, LOOKUP_TRAIN, LOOKUP_TRAIN_WITH_GRAD
from recis.optim import SparseSGD

BACKENDS = ["cpp", "triton"]


def group(backend, admission=None, missing="zeros"):
    return TableGroup(4, names=["a", "b"], seeds=[11, 12], admission=admission, missing=missing, backend=backend)


def contents(g):
    out = {}
    for t in g.tables:
        e = t.export()
        order = torch.argsort(e["ids"])
        out[t.name] = {k: v[order] for k, v in e.items() if k != "slots"}
    return out


def batch_lookup(g, keys):
    """One training lookup of a batch holding key (ns, id) `count` times (one bag per table)."""
    per_ns = [[i for ns, i, c in keys if ns == t for _ in range(c)] for t in range(2)]
    values = torch.tensor(per_ns[0] + per_ns[1], dtype=torch.int64)
    offsets = torch.tensor([0, len(per_ns[0]), values.numel()], dtype=torch.int64)
    g.lookup(values, offsets, None, [0, 1], 1, [0, 4], 8, 0, True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resolve_with_counts_equals_a_lookup_of_the_repeated_ids(backend):
    admission = FrequencyAdmission(min_count=3)
    keys_1 = [(0, 5, 2), (0, 7, 3), (1, 7, 1), (1, -9, 4), (0, 2**62, 1)]
    keys_2 = [(0, 5, 1), (1, 7, 1), (0, 8, 2)]
    ref, got = group("cpp", admission), group(backend, admission)
    for keys in (keys_1, keys_2):
        batch_lookup(ref, keys)
        ns, ids, counts = (torch.tensor(c, dtype=torch.int64) for c in zip(*keys))
        rows = resolve(got, ns, ids, counts, LOOKUP_TRAIN)
        assert rows.dtype == torch.int64 and rows.shape == ids.shape
        # admitted: 7 (count 3), -9 (4), then 5 (2 + 1): the others wait in the sketch
        held = {(int(n), int(i)) for n, i, r in zip(ns, ids, rows) if r >= 0}
        want = {(t.ns, int(i)) for t in ref.tables for i in t.export()["ids"] if (t.ns, int(i)) in
                {(k[0], k[1]) for k in keys}}
        assert held == want
    assert got.step == ref.step == 2
    want, have = contents(ref), contents(got)
    for name in want:
        for k, v in want[name].items():
            assert torch.equal(have[name][k], v), (name, k)
    assert got.stats()["not_admitted"] == ref.stats()["not_admitted"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_resolve_finds_only_and_counts_nothing(backend):
    g = group(backend)
    resolve(g, torch.tensor([0]), torch.tensor([3]), torch.tensor([2]), LOOKUP_TRAIN)
    before = contents(g)
    rows = resolve(g, torch.tensor([0, 0, 1]), torch.tensor([3, 4, 3]), torch.tensor([5, 1, 1]), LOOKUP_EVAL)
    assert (rows >= 0).tolist() == [True, False, False]
    assert g.step == 1
    after = contents(g)
    for name in before:
        for k in before[name]:
            assert torch.equal(before[name][k], after[name][k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_keys_are_refused_naming_the_culprit(backend):
    g = group(backend)
    with pytest.raises(ValueError, match="count 0"):
        resolve(g, torch.tensor([0]), torch.tensor([3]), torch.tensor([0]), LOOKUP_TRAIN)
    with pytest.raises((IndexError, ValueError), match="namespace"):
        resolve(g, torch.tensor([2]), torch.tensor([3]), torch.tensor([1]), LOOKUP_TRAIN)
    with pytest.raises(ValueError, match="one count per id"):
        resolve(g, torch.tensor([0, 0]), torch.tensor([3, 4]), torch.tensor([1]), LOOKUP_TRAIN)
    assert g.step == 0 and len(g) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_training_resolve_holds_its_rows_until_the_tensor_is_freed(backend):
    g = group(backend)
    rows = resolve(g, torch.tensor([0]), torch.tensor([3]), torch.tensor([1]), LOOKUP_TRAIN_WITH_GRAD)
    assert g.live_forwards() == 1
    del rows
    assert g.live_forwards() == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("missing", ["zeros", "init"])
def test_owner_rows_gradient_is_the_sgd_step_of_each_key(backend, fused, missing):
    """Keys repeat (two ranks asked for the same id): each row's gradient is the sum of its keys'."""
    g = group(backend, admission=FrequencyAdmission(min_count=2), missing=missing)
    opt = SparseSGD(g.tables, lr=0.5, fused=fused)
    ns = torch.tensor([0, 1, 0, 0, 1])
    ids = torch.tensor([10, 10, 20, 10, 30])
    counts = torch.tensor([1, 2, 1, 1, 1])  # (0, 20) and (1, 30) are seen once: not admitted
    coef = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    out = owner_rows(g, ns, ids, counts, training=True)
    init_a = g.tables[0].initial_rows(torch.tensor([10, 20]))
    init_b = g.tables[1].initial_rows(torch.tensor([10, 30]))
    want_rows = torch.stack([init_a[0], init_b[0], init_a[1] if missing == "init" else torch.zeros(4), init_a[0],
                             init_b[1] if missing == "init" else torch.zeros(4)])
    assert torch.equal(out, want_rows)
    (out * coef).sum().backward()
    opt.step()
    a, b = g.tables[0].export(), g.tables[1].export()
    assert a["ids"].tolist() == [10] and b["ids"].tolist() == [10]
    assert a["counts"].tolist() == [2] and b["counts"].tolist() == [2]
    torch.testing.assert_close(a["rows"][0], init_a[0] - 0.5 * (coef[0] + coef[3]), rtol=0, atol=1e-6)
    torch.testing.assert_close(b["rows"][0], init_b[0] - 0.5 * coef[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unique_keys_sums_counts_per_key(backend):
    ns, ids, counts, inverse = unique_keys(group(backend), torch.tensor([1, 0, 1, 0]), torch.tensor([5, 5, 5, 6]),
                                           torch.tensor([2, 1, 3, 1]))
    keys = list(zip(ns.tolist(), ids.tolist(), counts.tolist()))
    assert sorted(keys) == [(0, 5, 1), (0, 6, 1), (1, 5, 5)]
    assert [keys[i][:2] for i in inverse.tolist()] == [(1, 5), (0, 5), (1, 5), (0, 6)]
    one = TableGroup(4, names=["c"], seeds=[1], backend=backend)
    ns, ids, counts, inverse = unique_keys(one, torch.zeros(3, dtype=torch.int64), torch.tensor([9, 4, 9]),
                                           torch.tensor([1, 2, 3]))
    assert sorted(zip(ids.tolist(), counts.tolist())) == [(4, 2), (9, 4)] and ns.tolist() == [0, 0]
    assert [ids[i] for i in inverse.tolist()] == [9, 4, 9]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backward_with_no_admitted_row_in_an_empty_table_changes_nothing(backend):
    """A rank whose shard is still empty and admits nothing yet (admission) takes its backward."""
    g = group(backend, admission=FrequencyAdmission(min_count=5))
    opt = SparseSGD(g.tables, lr=0.5)
    out = owner_rows(g, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([1, 2]), training=True)
    assert torch.equal(out, torch.zeros(2, 4))
    out.sum().backward()
    opt.step()
    assert len(g) == 0 and g.pending_rows() == 0
