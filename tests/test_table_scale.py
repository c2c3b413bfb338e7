"""Scale checks of the id map: a million distinct ids, and growth by many rehashes."""
import pytest
import torch

from conftest import distinct_random_int64, random_int64
from recis.nn import Constant, HashEmbedding, TableGroup

N = 1_000_000


def test_million_distinct_ids_get_million_distinct_rows(gen):
    ids = distinct_random_int64(N, gen)
    g = TableGroup(1, names=["big"], seeds=[9], initializer=Constant(0.0))
    t = g.tables[0]
    rows = t.find_or_insert(ids)
    assert len(t) == N
    assert bool((rows >= 0).all())
    assert torch.unique(rows).numel() == N, "two distinct ids share a row"
    assert int(rows.max()) < N  # rows are dense: nothing was allocated twice
    assert len(t) <= 0.8 * g._impl.map_capacity(0)
    # Every id is found again, at the row it was given, in another order.
    perm = torch.randperm(N, generator=gen)
    assert torch.equal(t.find(ids[perm]), rows[perm])
    # Fresh random ids are (with overwhelming probability) absent.
    others = random_int64(10_000, gen)
    others = others[~torch.isin(others, ids)]
    assert bool((t.find(others) == -1).all())
    # The export lists each id once.
    exported = t.export()["ids"]
    assert exported.numel() == N
    assert torch.equal(torch.sort(exported).values, torch.sort(ids).values)


def test_many_ids_in_small_batches_through_training_lookups(gen):
    """Growth by many rehashes through the fused training lookup (parallel dedup + resolve)."""
    ids = distinct_random_int64(N // 4, gen)
    emb = HashEmbedding(1, combiner=None, initializer=Constant(1.0))
    caps = set()
    for part in ids.split(25_000):
        with torch.no_grad():
            out = emb(part)
        assert torch.equal(out, torch.ones(part.numel(), 1))
        caps.add(emb.group._impl.map_capacity(0))
    assert len(caps) >= 5
    t = emb.table
    assert len(t) == ids.numel()
    rows = t.find(ids)
    assert bool((rows >= 0).all())
    assert torch.unique(rows).numel() == ids.numel()


def test_rehash_growth_keeps_every_id_and_load_bounded(gen):
    g = TableGroup(1, names=["t"], seeds=[1], initializer=Constant(0.0))
    t = g.tables[0]
    impl = g._impl
    seen = []
    capacities = []
    for k in range(60):
        batch = random_int64(500, gen)
        # Half of each batch repeats ids that are already present.
        if seen:
            old = torch.cat(seen)
            batch[:250] = old[torch.randint(0, old.numel(), (250,), generator=gen)]
        seen.append(batch)
        t.find_or_insert(batch)
        cap = impl.map_capacity(0)
        capacities.append(cap)
        assert len(t) <= 0.8 * cap
    all_ids = torch.unique(torch.cat(seen))
    assert len(t) == all_ids.numel()
    assert len(set(capacities)) >= 5, capacities
    rows = t.find(all_ids)
    assert bool((rows >= 0).all())
    assert torch.unique(rows).numel() == all_ids.numel()


def test_reserve_presizes_without_changing_contents():
    g = TableGroup(4, names=["t"], seeds=[3])
    t = g.tables[0]
    t.find_or_insert(torch.tensor([1, 2, 3]))
    before = t.export()
    t.reserve(100_000)
    cap = g._impl.map_capacity(0)
    assert cap * 0.8 >= 100_003
    rows = t.find_or_insert(torch.arange(10, 100_010))
    assert g._impl.map_capacity(0) == cap, "no rehash after reserve"
    assert len(set(rows.tolist())) == 100_000
    after = t.export()
    keep = torch.isin(after["ids"], before["ids"])
    order = after["ids"][keep].argsort()
    torch.testing.assert_close(after["rows"][keep][order], before["rows"][before["ids"].argsort()])
    with pytest.raises(ValueError):
        t.reserve(-1)
