"""Property tests of the id -> row map: a hypothesis state machine against a Python dict model.

Two logical tables (namespaces) of one TableGroup are driven at once, each with its own dict
model, so every step also checks that their 64-bit id spaces are independent although they
share one row store.
"""
import random

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import EXTREME_IDS, INT64_MAX, INT64_MIN, DictModel, ids_tensor
from recis.nn import TableGroup, Uniform

DIM = 3
SEEDS = [101, 202]

ANY_ID = st.one_of(
    st.integers(-8, 8),
    st.sampled_from(EXTREME_IDS),
    st.integers(INT64_MIN, INT64_MAX),
)
NS = st.sampled_from([0, 1])


def make_group():
    return TableGroup(DIM, names=["left", "right"], seeds=SEEDS, initializer=Uniform(-1.0, 1.0))


ORACLE = make_group()


class IdMapMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.group = make_group()
        self.models = [DictModel(), DictModel()]
        self.known = set()  # every id used so far, to draw repeats (hits, re-inserts) from
        self.load_counter = 0

    # ---------------------------------------------------------------- helpers
    def table(self, ns):
        return self.group.tables[ns]

    def draw_ids(self, data, max_size=24):
        if self.known:
            elem = st.one_of(ANY_ID, st.sampled_from(sorted(self.known)))
        else:
            elem = ANY_ID
        ids = data.draw(st.lists(elem, max_size=max_size))
        if ids and data.draw(st.booleans()):
            ids = ids + ids[: data.draw(st.integers(1, len(ids)))]  # duplicates within the call
        self.known.update(ids)
        return ids

    def record_inserts(self, ns, ids, rows):
        """Checks rows from find_or_insert against the model and adds the new ids to it."""
        t, model = self.table(ns), self.models[ns]
        assert rows.dtype == torch.int64 and rows.shape == (len(ids),)
        assert bool((rows >= 0).all()), "find_or_insert returned -1"
        first_row = {}
        for i, r in zip(ids, rows.tolist()):
            assert first_row.setdefault(i, r) == r, f"id {i} got two rows in one call"
        values = t.gather(rows)
        # What a fresh insert must give, from a second, untouched group with the same config.
        initial = ORACLE.tables[ns].initial_rows(ids_tensor(ids)) if ids else None
        for k, (i, r) in enumerate(zip(ids, rows.tolist())):
            if i in model.values:
                assert torch.equal(values[k], model.values[i]), f"existing id {i} changed on find_or_insert"
            else:
                # A (re)inserted id gets its deterministic initial row: the same as the first time.
                if i in model.first_values:
                    assert torch.equal(values[k], model.first_values[i]), f"re-inserted id {i} got another value"
                else:
                    model.first_values[i] = values[k].clone()
                assert torch.equal(values[k], initial[k]), f"new id {i} did not get its initial row"
        # Second pass: register new ids (duplicates in the call are handled by the dict).
        for k, i in enumerate(ids):
            if i not in model.values:
                model.values[i] = values[k].clone()

    # ---------------------------------------------------------------- rules
    @rule(ns=NS, data=st.data())
    def insert(self, ns, data):
        ids = self.draw_ids(data)
        rows = self.table(ns).find_or_insert(ids_tensor(ids))
        self.record_inserts(ns, ids, rows)

    @rule(ns=NS, data=st.data())
    def find(self, ns, data):
        ids = self.draw_ids(data)
        t, model = self.table(ns), self.models[ns]
        before = len(t)
        rows = t.find(ids_tensor(ids))
        assert len(t) == before, "find inserted"
        assert rows.shape == (len(ids),)
        values = t.gather(rows)
        for k, (i, r) in enumerate(zip(ids, rows.tolist())):
            if i in model.values:
                assert r >= 0, f"live id {i} not found"
                assert torch.equal(values[k], model.values[i])
            else:
                assert r == -1, f"absent id {i} found at row {r}"
                assert torch.equal(values[k], torch.zeros(DIM)), "gather(-1) must give zeros"

    @rule(ns=NS, data=st.data())
    def erase(self, ns, data):
        ids = self.draw_ids(data)
        model = self.models[ns]
        expected = len(set(ids) & set(model.values))
        assert self.table(ns).erase(ids_tensor(ids)) == expected
        for i in set(ids):
            model.values.pop(i, None)
        rows = self.table(ns).find(ids_tensor(ids))
        assert bool((rows == -1).all()), "erased id still found"

    @rule(ns=NS, n=st.integers(200, 1500), chunks=st.integers(1, 8), seed=st.integers(0, 2 ** 32))
    def grow(self, ns, n, chunks, seed):
        """Many inserts in a few calls: the map must rehash, repeatedly, without losing ids."""
        r = random.Random(seed)
        ids = [r.getrandbits(64) - 2 ** 63 for _ in range(n)]
        t = self.table(ns)
        step = -(-n // chunks)
        for start in range(0, n, step):
            part = ids[start:start + step]
            rows = t.find_or_insert(ids_tensor(part))
            self.record_inserts(ns, part, rows)
            assert len(t) <= 0.8 * self.group._impl.map_capacity(ns) + 1e-9
        # Keep the pool of known ids small: only a few of these are reused later.
        self.known.update(ids[:5])

    @rule(ns=NS, data=st.data())
    def overwrite(self, ns, data):
        """load() inserts or overwrites; values no longer equal the initial rows afterwards."""
        ids = list(dict.fromkeys(self.draw_ids(data, max_size=10)))
        self.load_counter += 1
        rows = torch.arange(len(ids) * DIM, dtype=torch.float32).reshape(len(ids), DIM) + 1000.0 * self.load_counter
        self.table(ns).load({"ids": ids_tensor(ids), "rows": rows})
        for k, i in enumerate(ids):
            self.models[ns].values[i] = rows[k].clone()

    @rule(ns=NS)
    def export_clear_load(self, ns):
        t = self.table(ns)
        state = t.export()
        self.check_export(ns, state)
        t.clear()
        assert len(t) == 0
        if self.models[ns].values:
            assert bool((t.find(ids_tensor(self.models[ns].ids())) == -1).all())
        t.load(state)

    @rule()
    def load_into_fresh_group(self):
        states = [t.export() for t in self.group.tables]
        fresh = make_group()
        for t, s in zip(fresh.tables, states):
            t.load(s)
        self.group = fresh

    @rule(ns=NS)
    def clear(self, ns):
        self.table(ns).clear()
        self.models[ns].values.clear()

    @precondition(lambda self: any(len(m) for m in self.models))
    @rule(ns=NS)
    def export_matches(self, ns):
        self.check_export(ns, self.table(ns).export())

    # ---------------------------------------------------------------- invariants
    def check_export(self, ns, state):
        model = self.models[ns]
        ids = state["ids"].tolist()
        assert sorted(ids) == model.ids()
        assert state["rows"].shape == (len(ids), DIM)
        for k, i in enumerate(ids):
            assert torch.equal(state["rows"][k], model.values[i]), f"export row of id {i}"

    @invariant()
    def sizes_match(self):
        for ns in (0, 1):
            assert len(self.table(ns)) == len(self.models[ns])
            assert len(self.table(ns)) <= 0.8 * self.group._impl.map_capacity(ns) + 1e-9
        assert len(self.group) == len(self.models[0]) + len(self.models[1])
        assert self.group.stats()["live"] == len(self.group)

    @invariant()
    def live_ids_found_with_distinct_rows(self):
        all_rows = []
        for ns in (0, 1):
            model = self.models[ns]
            if not model.values:
                continue
            ids = model.ids()
            rows = self.table(ns).find(ids_tensor(ids))
            assert bool((rows >= 0).all()), "a live id is missing"
            expected = torch.stack([model.values[i] for i in ids])
            assert torch.equal(self.table(ns).gather(rows), expected)
            all_rows.append(rows)
        if all_rows:
            rows = torch.cat(all_rows)
            assert torch.unique(rows).numel() == rows.numel(), "two live ids share a row"

    @invariant()
    def dead_ids_absent(self):
        for ns in (0, 1):
            dead = sorted(self.known - set(self.models[ns].values))[:200]
            if dead:
                assert bool((self.table(ns).find(ids_tensor(dead)) == -1).all()), "an absent id was found"


IdMapMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestIdMapStateMachine = IdMapMachine.TestCase


# -------------------------------------------------------------------- plain tests
def test_extreme_ids_are_ordinary_ids():
    g = make_group()
    t = g.tables[0]
    ids = ids_tensor(EXTREME_IDS)
    assert bool((t.find(ids) == -1).all())
    rows = t.find_or_insert(ids)
    assert torch.unique(rows).numel() == len(EXTREME_IDS)
    assert torch.equal(t.find(ids), rows)
    assert len(t) == len(EXTREME_IDS)
    # Erasing one extreme id leaves the others in place.
    assert t.erase(ids_tensor([INT64_MIN])) == 1
    found = t.find(ids)
    assert found[EXTREME_IDS.index(INT64_MIN)] == -1
    assert int((found >= 0).sum()) == len(EXTREME_IDS) - 1


def test_int32_ids_are_accepted():
    g = make_group()
    t = g.tables[0]
    rows64 = t.find_or_insert(torch.tensor([5, -7, 9], dtype=torch.int64))
    assert torch.equal(t.find(torch.tensor([5, -7, 9], dtype=torch.int32)), rows64)


def test_namespaces_are_independent_id_spaces():
    g = make_group()
    left, right = g.tables
    ids = ids_tensor([0, -1, 7, INT64_MAX])
    left.find_or_insert(ids)
    assert len(left) == 4 and len(right) == 0
    assert bool((right.find(ids) == -1).all())
    rrows = right.find_or_insert(ids)
    lrows = left.find(ids)
    assert not set(lrows.tolist()) & set(rrows.tolist()), "namespaces share rows"
    assert right.erase(ids_tensor([7])) == 1
    assert int(left.find(ids_tensor([7]))) >= 0, "erase in one namespace removed the id in the other"
    right.clear()
    assert len(right) == 0 and len(left) == 4


def test_growth_across_many_rehashes_keeps_ids_findable(gen):
    g = TableGroup(2, names=["t"], seeds=[3], initializer=Uniform(-1.0, 1.0))
    t = g.tables[0]
    impl = g._impl
    inserted = []
    caps = []
    for _ in range(120):
        batch = torch.randint(INT64_MIN, INT64_MAX, (97,), dtype=torch.int64, generator=gen)
        inserted.append(batch)
        t.find_or_insert(batch)
        cap = impl.map_capacity(0)
        if not caps or caps[-1] != cap:
            caps.append(cap)
            # Right after each growth step every id inserted so far must still be there.
            all_ids = torch.cat(inserted)
            rows = t.find(all_ids)
            assert bool((rows >= 0).all())
        assert len(t) <= 0.8 * cap
    all_ids = torch.unique(torch.cat(inserted))
    assert len(caps) >= 5, f"expected several rehashes, capacities were {caps}"
    assert caps == sorted(caps)
    assert len(t) == all_ids.numel()
    rows = t.find(all_ids)
    assert bool((rows >= 0).all())
    assert torch.unique(rows).numel() == all_ids.numel()
    # Values survive the rehashes: each equals the id's deterministic initial row.
    assert torch.equal(t.gather(rows), t.initial_rows(all_ids))


def test_erase_reinsert_cycles_reuse_rows_without_collisions(gen):
    """Heavy erase/insert churn on a small map (backward-shift deletion, free-list reuse)."""
    g = TableGroup(2, names=["t"], seeds=[5], initializer=Uniform(-1.0, 1.0))
    t = g.tables[0]
    live = set()
    pool = list(range(-40, 40)) + [INT64_MIN, INT64_MAX]
    r = random.Random(7)
    for _ in range(300):
        batch = r.sample(pool, r.randint(1, 12))
        if r.random() < 0.5:
            t.find_or_insert(ids_tensor(batch))
            live.update(batch)
        else:
            assert t.erase(ids_tensor(batch)) == len(live & set(batch))
            live.difference_update(batch)
        assert len(t) == len(live)
    ids = sorted(live)
    rows = t.find(ids_tensor(ids))
    assert bool((rows >= 0).all())
    assert torch.unique(rows).numel() == len(ids)
    dead = [i for i in pool if i not in live]
    assert bool((t.find(ids_tensor(dead)) == -1).all())
    # The row store never grew past the largest live set plus nothing: rows are reused.
    assert int(rows.max()) < len(pool)
    assert torch.equal(t.gather(rows), t.initial_rows(ids_tensor(ids)))


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single_calls(n):
    g = make_group()
    t = g.tables[1]
    ids = ids_tensor(range(n))
    assert t.find(ids).shape == (n,)
    assert t.find_or_insert(ids).shape == (n,)
    assert t.gather(t.find(ids)).shape == (n, DIM)
    assert t.erase(ids) == n
    assert len(t) == 0
