"""Frequency admission, TTL and LFU eviction, and hard capacity limits, against Python models."""
import math
import random

import pytest
import torch

from conftest import INT64_MIN, assert_exports_equal, export_as_dict, ids_tensor, offsets_for
from recis.nn import (EmbeddingCollection, FrequencyAdmission, HashEmbedding, LFUEviction, TableConfig, TableGroup,
                      TTLEviction, Uniform)
from recis.optim import SparseRowwiseAdagrad, SparseSGD

DIM = 4
SEED = 31
INIT = Uniform(-1.0, 1.0)


def oracle_initial(ids, seed=SEED, init=INIT, dim=DIM):
    """Initial rows of `ids` computed by a separate, untouched table with the same seed."""
    t = TableGroup(dim, names=["oracle"], seeds=[seed], initializer=init).tables[0]
    return t.gather(t.find_or_insert(ids_tensor(ids)))


def present(table, ids):
    return [i for i, r in zip(ids, table.find(ids_tensor(ids)).tolist()) if r >= 0]


# ============================================================================ admission
@pytest.mark.parametrize("missing", ["zeros", "init"])
@pytest.mark.parametrize("min_count", [2, 3])
def test_frequency_admission_against_a_sighting_model(missing, min_count):
    """Random training steps (forward, backward, SGD step) with a model that counts sightings per
    occurrence: an id gets a row on its min_count-th sighting; before that it reads zeros or its
    initial row and its gradients are dropped; once admitted it starts from its initial row."""
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, missing=missing,
                        admission=FrequencyAdmission(min_count=min_count, sketch_width=1 << 14))
    lr = 0.5
    opt = SparseSGD(emb.group.tables, lr=lr)
    pool = list(range(-6, 6)) + [INT64_MIN]
    init = dict(zip(pool, oracle_initial(pool)))
    sightings = {i: 0 for i in pool}
    values = {}  # model: id -> current row, for admitted ids
    r = random.Random(5)
    g = torch.Generator().manual_seed(3)
    unadmitted_reads = 0
    for step in range(25):
        batch = [r.choice(pool) for _ in range(r.randint(1, 6))]
        for i in batch:
            sightings[i] += 1
        for i in batch:
            if i not in values and sightings[i] >= min_count:
                values[i] = init[i].clone()  # admitted in this step: starts from its initial row
        out = emb(ids_tensor(batch))
        for k, i in enumerate(batch):
            if i in values:  # admitted: its (possibly trained) row
                assert torch.allclose(out[k].detach(), values[i], atol=1e-6), (step, i)
            else:
                expected = init[i] if missing == "init" else torch.zeros(DIM)
                unadmitted_reads += 1
                assert torch.equal(out[k].detach(), expected), (step, i)
        weights = torch.randn(len(batch), DIM, generator=g)
        (out * weights).sum().backward()
        opt.step()
        for k, i in enumerate(batch):
            if i in values:
                values[i] = values[i] - lr * weights[k]
        # Exactly the admitted ids have rows, with the model's values.
        assert sorted(present(emb.table, pool)) == sorted(values)
        assert len(emb.table) == len(values)
        for i, v in values.items():
            assert torch.allclose(emb.table.lookup(ids_tensor([i]))[0], v, atol=1e-5), i
    assert unadmitted_reads > 5 and len(values) > 5  # both regimes were exercised


def test_admission_on_the_kth_sighting_counts_each_occurrence():
    emb = HashEmbedding(DIM, combiner="sum", initializer=INIT, seed=SEED,
                        admission=FrequencyAdmission(min_count=3, sketch_width=1 << 12))
    with torch.no_grad():
        emb(ids_tensor([10, 20]), offsets_for([1, 1]))       # 10: 1, 20: 1
        assert len(emb.table) == 0
        emb(ids_tensor([10, 10]), offsets_for([2]))          # 10: 3 (two occurrences) -> admitted
        assert present(emb.table, [10, 20]) == [10]
        emb(ids_tensor([20]), offsets_for([1]))              # 20: 2
        assert present(emb.table, [10, 20]) == [10]
        out = emb(ids_tensor([20, 30]), offsets_for([1, 1]))  # 20: 3 -> admitted on this lookup
        assert present(emb.table, [10, 20, 30]) == [10, 20]
    # The id admitted during the lookup already reads its initial row in that lookup.
    assert torch.equal(out[0], oracle_initial([20])[0])
    assert torch.equal(out[1], torch.zeros(DIM))
    assert emb.group.stats()["not_admitted"] > 0


def test_eval_lookups_do_not_count_towards_admission():
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED,
                        admission=FrequencyAdmission(min_count=2, sketch_width=1 << 12))
    emb.eval()
    with torch.no_grad():
        for _ in range(5):
            emb(ids_tensor([7, 7, 7]))
    assert len(emb.table) == 0
    emb.train()
    with torch.no_grad():
        emb(ids_tensor([7]))
        assert len(emb.table) == 0
        emb(ids_tensor([7]))
    assert present(emb.table, [7]) == [7]


def test_not_admitted_gradients_leave_no_row_and_do_not_leak():
    """Backward + optimizer.step on a batch with non-admitted ids: no row appears for them, and
    the admitted ids get exactly their own gradient."""
    emb = HashEmbedding(DIM, combiner="sum", initializer=INIT, seed=SEED, missing="init",
                        admission=FrequencyAdmission(min_count=4, sketch_width=1 << 12))
    opt = SparseSGD(emb.group.tables, lr=1.0)
    with torch.no_grad():
        for _ in range(4):
            emb(ids_tensor([1]), offsets_for([1]))
    assert present(emb.table, [1]) == [1]
    before = emb.table.lookup(ids_tensor([1]))[0].clone()
    out = emb(ids_tensor([1, 2, 2, 3]), offsets_for([1, 2, 1]))
    # Bags of non-admitted ids read their initial rows (missing="init").
    init2, init3 = oracle_initial([2, 3])
    assert torch.equal(out[1].detach(), 2 * init2)
    assert torch.equal(out[2].detach(), init3)
    grad = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    (out * grad).sum().backward()
    opt.step()
    assert present(emb.table, [1, 2, 3]) == [1]
    assert len(emb.table) == 1
    assert torch.allclose(emb.table.lookup(ids_tensor([1]))[0], before - grad[0], atol=1e-6)
    # Id 2 has been seen 2 times: two more sightings admit it, at its untouched initial row.
    with torch.no_grad():
        emb(ids_tensor([2, 2]), offsets_for([2]))
    assert torch.equal(emb.table.lookup(ids_tensor([2]))[0], init2)


def test_admission_counts_are_per_logical_table():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    adm = FrequencyAdmission(min_count=2, sketch_width=1 << 12)
    ec = EmbeddingCollection([TableConfig("a", DIM, ["fa"], admission=adm, seed=1),
                              TableConfig("b", DIM, ["fb"], admission=adm, seed=2)])
    assert len(ec.groups) == 1  # one physical table, one sketch
    a, b = ec.tables()["a"], ec.tables()["b"]

    def step(fa, fb):
        kjt = KeyedJaggedTensor.from_lengths_sync(["fa", "fb"], ids_tensor(fa + fb), torch.tensor([len(fa), len(fb)]))
        with torch.no_grad():
            ec(kjt)

    step([5], [5])  # one sighting in each table: the same id in two id spaces
    assert len(a) == 0 and len(b) == 0
    step([5], [6])
    assert present(a, [5, 6]) == [5] and len(b) == 0
    step([], [5])
    assert present(b, [5, 6]) == [5]


# ============================================================================ TTL
def ttl_model_run(ttl, interval, steps, seed):
    """Trains with forward + backward + SGD on random batches and checks the table after every
    forward against a model: every `interval` forwards, rows unseen for more than `ttl` steps
    (step counter = number of training forwards) are erased; a returning id restarts from its
    initial row."""
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, eviction=TTLEviction(ttl, interval))
    lr = 0.25
    opt = SparseSGD(emb.group.tables, lr=lr)
    pool = list(range(12))
    init = dict(zip(pool, oracle_initial(pool)))
    # Ids 0-3 are hot (seen often), the others cold, so both eviction and survival happen.
    r = random.Random(seed)
    values, last_seen = {}, {}
    evicted_total = 0
    for step in range(1, steps + 1):
        # Eviction decided at the end of step-1 (if it was a multiple of the interval) applies now.
        prev = step - 1
        if prev > 0 and prev % interval == 0:
            gone = [i for i in values if prev - last_seen[i] > ttl]
            for i in gone:
                del values[i], last_seen[i]
            evicted_total += len(gone)
        batch = [r.choice(pool[:4]) for _ in range(2)] + ([r.choice(pool[4:])] if r.random() < 0.4 else [])
        out = emb(ids_tensor(batch))
        for i in batch:
            if i not in values:
                values[i] = init[i].clone()
            last_seen[i] = step
        for k, i in enumerate(batch):
            assert torch.allclose(out[k].detach(), values[i], atol=1e-5), (step, i)
        out.sum().backward()
        opt.step()
        for i in set(batch):
            values[i] = values[i] - lr * batch.count(i)
        assert emb.group.step == step
        if step % interval == 0:
            continue  # eviction for this step may run now or at the next forward: both are fine
        assert sorted(present(emb.table, pool)) == sorted(values), step
        for i, v in values.items():
            assert torch.allclose(emb.table.lookup(ids_tensor([i]))[0], v, atol=1e-5)
    assert evicted_total > 0
    return emb


@pytest.mark.parametrize("ttl,interval", [(3, 4), (2, 1), (5, 3)])
def test_ttl_eviction_against_a_last_seen_model(ttl, interval):
    emb = ttl_model_run(ttl, interval, steps=40, seed=ttl * 10 + interval)
    assert emb.group.stats()["evictions"] > 0


def test_ttl_scenario_old_rows_go_recent_rows_stay():
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, eviction=TTLEviction(3, 5))
    with torch.no_grad():
        emb(ids_tensor([1, 2, 3]))   # step 1
        emb(ids_tensor([2]))         # step 2
        emb(ids_tensor([3]))         # step 3
        emb(ids_tensor([4]))         # step 4
        assert present(emb.table, [1, 2, 3, 4]) == [1, 2, 3, 4]  # no eviction before the interval
        emb(ids_tensor([5]))         # step 5: 1 unseen for 4 > 3 steps, 2 for exactly 3
        emb(ids_tensor([6]))         # step 6
        assert present(emb.table, [1, 2, 3, 4, 5, 6]) == [2, 3, 4, 5, 6]
        emb(ids_tensor([6]))         # steps 7..9: no interval boundary, nothing goes
        emb(ids_tensor([6]))
        emb(ids_tensor([6]))
        assert present(emb.table, [2, 3, 4, 5, 6]) == [2, 3, 4, 5, 6]
        emb(ids_tensor([6]))         # step 10: 2, 3, 4 and 5 are older than 3 steps
        emb(ids_tensor([6]))         # step 11
    assert present(emb.table, [1, 2, 3, 4, 5, 6]) == [6]
    assert emb.group.stats()["evictions"] == 5


def test_evict_expired_runs_ttl_now():
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, eviction=TTLEviction(2, 1000))
    with torch.no_grad():
        emb(ids_tensor([1, 2]))  # step 1
        emb(ids_tensor([2]))     # step 2
        emb(ids_tensor([3]))     # step 3
        emb(ids_tensor([3]))     # step 4: 1 unseen for 3 steps, 2 for 2
    assert emb.group.evict_expired() == 1
    assert present(emb.table, [1, 2, 3]) == [2, 3]
    assert emb.group.evict_expired() == 0
    with pytest.raises(ValueError):
        HashEmbedding(DIM).group.evict_expired()


def test_ttl_does_not_evict_rows_with_pending_gradients():
    """A row whose gradient waits for optimizer.step() must not be evicted in between."""
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, eviction=TTLEviction(1, 1000))
    opt = SparseSGD(emb.group.tables, lr=1.0)
    emb(ids_tensor([1])).sum().backward()  # step 1; its gradient is pending until opt.step()
    with torch.no_grad():
        for _ in range(4):
            emb(ids_tensor([2]))  # steps 2-5: id 1 is now unseen for 4 > 1 steps
    emb.group.evict_expired()
    assert present(emb.table, [1, 2]) == [1, 2]
    opt.step()
    assert torch.allclose(emb.table.lookup(ids_tensor([1]))[0], oracle_initial([1])[0] - 1.0, atol=1e-6)
    assert emb.group.evict_expired() == 1  # once applied, the stale row may go
    assert present(emb.table, [1, 2]) == [2]


def test_gradient_of_an_evicted_row_never_lands_on_another_id():
    """Forward at step 1, more training lookups, then backward: if id 1's row is evicted and
    reused by a new id before the optimizer step, the new id must not receive id 1's gradient."""
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, eviction=TTLEviction(1, 1000))
    opt = SparseSGD(emb.group.tables, lr=1.0)
    out = emb(ids_tensor([1]))  # step 1
    with torch.no_grad():
        for _ in range(3):
            emb(ids_tensor([2]))  # steps 2-4
    out.sum().backward()
    emb.group.evict_expired()
    with torch.no_grad():
        emb(ids_tensor([3]))  # may reuse the row that id 1 had
    opt.step()
    assert torch.equal(emb.table.lookup(ids_tensor([3]))[0], oracle_initial([3])[0])
    assert torch.equal(emb.table.lookup(ids_tensor([2]))[0], oracle_initial([2])[0])
    if present(emb.table, [1]):
        assert torch.allclose(emb.table.lookup(ids_tensor([1]))[0], oracle_initial([1])[0] - 1.0, atol=1e-6)


# ============================================================================ LFU
def test_lfu_scenario_evicts_the_least_frequent_and_spares_the_batch():
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, eviction=LFUEviction(8, 0.0))
    t = emb.table
    with torch.no_grad():
        # Ids 0-3 seen 10 times each; ids 4, 5, 6, 7 seen 1, 2, 3, 4 times.
        emb(ids_tensor([0, 1, 2, 3] * 10 + [4] + [5] * 2 + [6] * 3 + [7] * 4))
        assert len(t) == 8
        emb(ids_tensor([100, 101]))           # two new ids: the two rarest (4 and 5) go
        assert len(t) == 8
        assert sorted(present(t, list(range(8)) + [100, 101])) == [0, 1, 2, 3, 6, 7, 100, 101]
        # The rarest are now 100 and 101 (once each), but they are in the batch; 6 is next.
        emb(ids_tensor([100, 101, 300]))
        assert len(t) == 8
        assert sorted(present(t, list(range(8)) + [100, 101, 300])) == [0, 1, 2, 3, 7, 100, 101, 300]
    assert emb.group.stats()["evictions"] == 3


def test_two_lookups_before_backward_do_not_mix_up_gradients():
    """A model may look up one table twice per training step (two features, two towers). Each
    lookup advances the step counter; if the second lookup's LFU eviction frees rows of the
    first, the first lookup's gradient must still not reach the ids that took those rows."""
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, eviction=LFUEviction(4, 0.0))
    opt = SparseSGD(emb.group.tables, lr=1.0)
    with torch.no_grad():
        emb(ids_tensor([3] * 5 + [4] * 5 + [1, 2]))  # 3 and 4 frequent, 1 and 2 rare; table full
    out1 = emb(ids_tensor([1, 2]))
    out2 = emb(ids_tensor([5, 6]))  # needs two rows
    (out1.sum() + 10 * out2.sum()).backward()
    opt.step()
    init = dict(zip([1, 2, 3, 4, 5, 6], oracle_initial([1, 2, 3, 4, 5, 6])))
    assert len(emb.table) <= 4
    for i in (5, 6):  # their own gradient only: 10 per element
        assert torch.allclose(emb.table.lookup(ids_tensor([i]))[0], init[i] - 10.0, atol=1e-5), i
    for i in present(emb.table, [1, 2]):
        assert torch.allclose(emb.table.lookup(ids_tensor([i]))[0], init[i] - 1.0, atol=1e-5), i
    for i in present(emb.table, [3, 4]):
        assert torch.equal(emb.table.lookup(ids_tensor([i]))[0], init[i]), i


@pytest.mark.parametrize("capacity,fraction", [(10, 0.0), (16, 0.25), (6, 0.5)])
def test_lfu_against_a_frequency_model(capacity, fraction):
    emb = HashEmbedding(2, combiner=None, initializer=INIT, seed=SEED, eviction=LFUEviction(capacity, fraction))
    t = emb.table
    r = random.Random(capacity)
    pool = list(range(40))
    weights = [1.0 / (1 + i) for i in pool]  # skewed: low ids are frequent
    count, last = {}, {}
    total_evicted = 0
    for step in range(1, 80):
        batch = r.choices(pool, weights=weights, k=r.randint(1, capacity))
        distinct = set(batch)
        assert len(distinct) <= capacity
        new = [i for i in distinct if i not in count]
        candidates = [i for i in count if i not in distinct]
        need = max(0, len(count) + len(new) - capacity)
        with torch.no_grad():
            emb(ids_tensor(batch))
        live = set(present(t, pool))
        assert len(t) == len(live) <= capacity
        assert distinct <= live, "an id of the current batch is missing"
        evicted = set(count) - live
        assert evicted <= set(candidates), "an id of the current batch was evicted"
        if need == 0:
            assert not evicted
        else:
            expected = min(max(need, math.ceil(fraction * capacity)), len(candidates))
            assert len(evicted) == expected, (step, need)
        survivors = [i for i in candidates if i not in evicted]
        if evicted and survivors:
            # Least frequently seen first; ties broken by least recently seen.
            worst_evicted = max((count[i], last[i]) for i in evicted)
            best_survivor = min((count[i], last[i]) for i in survivors)
            assert worst_evicted <= best_survivor, (step, worst_evicted, best_survivor)
        total_evicted += len(evicted)
        for i in evicted:
            del count[i], last[i]
        for i in batch:
            count[i] = count.get(i, 0) + 1
            last[i] = step
        assert set(count) == live
        exported = export_as_dict(t.export())
        assert {i: e[2] for i, e in exported.items()} == count  # counts are sightings since insertion
        assert {i: e[3] for i, e in exported.items()} == last
    assert total_evicted > 0
    assert emb.group.stats()["evictions"] == total_evicted


def test_lfu_capacity_is_per_logical_table():
    ec = EmbeddingCollection([
        TableConfig("a", DIM, ["fa"], eviction=LFUEviction(3, 0.0)),
        TableConfig("b", DIM, ["fb"], eviction=LFUEviction(3, 0.0)),
    ])
    assert len(ec.groups) == 1
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    with torch.no_grad():
        for k in range(6):
            kjt = KeyedJaggedTensor.from_lengths_sync(["fa", "fb"], ids_tensor([k, k + 1, 100 + k]),
                                                      torch.tensor([2, 1]))
            ec(kjt)
            a, b = ec.tables()["a"], ec.tables()["b"]
            assert len(a) <= 3 and len(b) <= 3
    assert len(a) == 3 and len(b) == 3


def test_lfu_new_batch_larger_than_what_can_be_evicted_raises():
    emb = HashEmbedding(DIM, combiner=None, eviction=LFUEviction(4, 0.0))
    with torch.no_grad():
        emb(ids_tensor([1, 2]))
        with pytest.raises(RuntimeError, match="4"):
            emb(ids_tensor([10, 11, 12, 13, 14]))  # 5 distinct new ids can never fit in 4 rows


# ============================================================================ returning ids
@pytest.mark.parametrize("how", ["ttl", "lfu", "erase"])
def test_evicted_id_returns_with_initial_value_and_fresh_slots(how):
    eviction = {"ttl": TTLEviction(1, 1), "lfu": LFUEviction(3, 0.0), "erase": None}[how]
    emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, eviction=eviction)
    acc0 = 0.125
    opt = SparseRowwiseAdagrad(emb.group.tables, lr=0.1, initial_accumulator_value=acc0)
    target = 77
    init = oracle_initial([target])[0]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # train the target (plus two other ids that keep the LFU table full)
        out = emb(ids_tensor([target, target, 1, 2]))
        (out * torch.randn(4, DIM, generator=g)).sum().backward()
        opt.step()
    state = export_as_dict(emb.table.export())
    row, slots, _, _ = state[target]
    assert slots.shape == (1,)
    assert float(slots[0]) > acc0  # the accumulator moved
    assert not torch.equal(row, init)
    # Make the target go away.
    if how == "erase":
        assert emb.table.erase(ids_tensor([target])) == 1
    else:
        for k in range(3):  # other ids only; with TTL(1, 1) the target expires, with LFU(3) it is the rarest
            out = emb(ids_tensor([1, 1, 2, 2, 10 + k]))
            out.sum().backward()
            opt.step()
    assert present(emb.table, [target]) == []
    # It comes back: initial row, fresh accumulator.
    with torch.no_grad():
        out = emb(ids_tensor([target]))
    assert torch.equal(out[0], init)
    row, slots, count, _ = export_as_dict(emb.table.export())[target]
    assert torch.equal(row, init)
    assert float(slots[0]) == acc0
    assert count == 1
    # Its first update after returning is that of a fresh row: s = acc0 + mean(g^2).
    out = emb(ids_tensor([target]))
    grad = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    (out * grad).sum().backward()
    opt.step()
    s = acc0 + float((grad ** 2).mean())
    row, slots, _, _ = export_as_dict(emb.table.export())[target]
    assert math.isclose(float(slots[0]), s, rel_tol=1e-6)
    assert torch.allclose(row, init - 0.1 * grad[0] / (math.sqrt(s) + 1e-8), atol=1e-6)


def test_erased_rows_are_reused_from_the_free_list():
    g = TableGroup(DIM, names=["t"], seeds=[1], initializer=INIT)
    t = g.tables[0]
    rows = t.find_or_insert(ids_tensor(range(100)))
    assert t.erase(ids_tensor(range(50))) == 50
    new_rows = t.find_or_insert(ids_tensor(range(1000, 1050)))
    assert set(new_rows.tolist()) == set(rows[:50].tolist())
    assert torch.equal(t.gather(new_rows), oracle_initial(list(range(1000, 1050)), seed=1))


# ============================================================================ hard capacity
def test_capacity_without_eviction_raises_and_leaves_table_unchanged():
    cap = 7
    emb = HashEmbedding(DIM, combiner="sum", initializer=INIT, seed=SEED, capacity=cap)
    opt = SparseSGD(emb.group.tables, lr=0.1)
    out = emb(ids_tensor(range(cap)), offsets_for([cap]))  # exactly the capacity: fine
    out.sum().backward()
    opt.step()
    assert len(emb.table) == cap
    before = emb.table.export()
    attempts = [
        ids_tensor([100]),                 # one new id
        ids_tensor([0, 1, 100, 101]),      # hits and new ids mixed
        ids_tensor([3, 3, INT64_MIN]),     # repeated hit plus one new id
    ]
    for ids in attempts:
        with pytest.raises(RuntimeError, match=rf"\b{cap}\b"):
            with torch.no_grad():
                emb(ids, offsets_for([ids.numel()]))
        assert_exports_equal(emb.table.export(), before)
        with pytest.raises(RuntimeError, match=rf"\b{cap}\b"):
            emb.table.find_or_insert(ids)
        assert_exports_equal(emb.table.export(), before)
    with pytest.raises(RuntimeError, match=rf"\b{cap}\b"):
        emb.table.load({"ids": ids_tensor([0, 555]), "rows": torch.zeros(2, DIM)})
    assert_exports_equal(emb.table.export(), before)
    # Lookups of present ids still work, and erase frees room for exactly one new id.
    with torch.no_grad():
        emb(ids_tensor([0, 1]), offsets_for([2]))
    assert emb.table.erase(ids_tensor([0])) == 1
    emb.table.find_or_insert(ids_tensor([100]))
    assert len(emb.table) == cap
    with pytest.raises(RuntimeError):
        emb.table.find_or_insert(ids_tensor([101]))


def test_capacity_is_per_logical_table_without_eviction():
    g = TableGroup(DIM, names=["a", "b"], seeds=[1, 2], initializer=INIT, capacity=3)
    a, b = g.tables
    a.find_or_insert(ids_tensor([1, 2, 3]))
    b.find_or_insert(ids_tensor([1, 2, 3]))
    with pytest.raises(RuntimeError):
        b.find_or_insert(ids_tensor([4]))
    assert len(a) == 3 and len(b) == 3
