"""last_seen lives in the id map's slot (a stamp of the table's stamp clock, which is also the
fused dedup's mark): against a dict model, training lookups, resolve, inserts and imports set it,
eval lookups and refused batches leave it alone, compaction of the clock keeps it exactly, and
export(since=) selects by it without reading the row store."""
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from recis.distributed.owner_rows import resolve
from recis.nn import TableGroup
from recis.nn.functional import LOOKUP_EVAL, LOOKUP_TRAIN

DIM = 4
POOL = list(range(-3, 9)) + [2**62, -2**63]
KEYS = [(ns, i) for ns in (0, 1) for i in POOL]


def make_group(backend="cpp", **kw):
    return TableGroup(DIM, names=["a", "b"], seeds=[11, 12], backend=backend, **kw)


def lookup(g, keys, train):
    """One lookup of a batch holding `keys` ((ns, id) pairs, repeats allowed), one bag per table."""
    per_ns = [[i for ns, i in keys if ns == t] for t in range(2)]
    values = torch.tensor(per_ns[0] + per_ns[1], dtype=torch.int64)
    offsets = torch.tensor([0, len(per_ns[0]), values.numel()], dtype=torch.int64)
    with torch.no_grad():
        return g.lookup(values, offsets, None, [0, 1], 1, [0, DIM], 2 * DIM, 0, train)


def last_seen(g):
    out = {}
    for t in g.tables:
        e = t.export()
        out.update({(t.ns, int(i)): int(s) for i, s in zip(e["ids"], e["last_seen"])})
    return out


def since_ids(g, since):
    return {(t.ns, int(i)) for t in g.tables for i in t.export(since=since)["ids"]}


class LastSeenMachine(RuleBasedStateMachine):
    """Training and eval lookups, resolve (train / eval), inserts, imports with last_seen values,
    erases, set_step (steps going back) and forced compactions on a two-table group; the model is
    a dict (ns, id) -> last_seen and the table's step."""

    def __init__(self):
        super().__init__()
        self.g = make_group()
        self.step = 0
        self.model = {}

    @initialize(limit=st.sampled_from([None, 24, 60]))
    def clock(self, limit):
        if limit is not None:  # a tiny clock: compaction every few steps
            self.g._impl._set_stamp_limit(limit)

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=0, max_size=12))
    def train_lookup(self, keys):
        lookup(self.g, keys, True)
        self.step += 1
        for k in keys:
            self.model[k] = self.step

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=12))
    def eval_lookup(self, keys):
        lookup(self.g, keys, False)  # reads only

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=8, unique=True), train=st.booleans())
    def resolve_keys(self, keys, train):
        ns, ids = (torch.tensor(c, dtype=torch.int64) for c in zip(*keys))
        resolve(self.g, ns, ids, torch.ones_like(ids), LOOKUP_TRAIN if train else LOOKUP_EVAL)
        if train:
            self.step += 1
            for k in keys:
                self.model[k] = self.step

    @rule(ns=st.sampled_from([0, 1]), ids=st.lists(st.sampled_from(POOL), min_size=1, max_size=6))
    def insert(self, ns, ids):
        self.g.tables[ns].find_or_insert(torch.tensor(ids))
        for i in ids:
            self.model.setdefault((ns, i), self.step)

    @rule(ns=st.sampled_from([0, 1]), data=st.data())
    def load(self, ns, data):
        ids = data.draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=6, unique=True))
        seen = data.draw(st.lists(st.integers(0, 40), min_size=len(ids), max_size=len(ids)))
        self.g.tables[ns].load({"ids": torch.tensor(ids), "rows": torch.zeros(len(ids), DIM),
                                "last_seen": torch.tensor(seen)})
        for i, s in zip(ids, seen):
            self.model[(ns, i)] = s

    @rule(ns=st.sampled_from([0, 1]), ids=st.lists(st.sampled_from(POOL), min_size=1, max_size=4))
    def erase(self, ns, ids):
        self.g.tables[ns].erase(torch.tensor(ids))
        for i in ids:
            self.model.pop((ns, i), None)

    @rule(step=st.integers(0, 40))
    def set_step(self, step):
        self.g.load_group_state({"step": torch.tensor(step)})
        self.step = step

    @rule()
    def compact(self):
        self.g._impl._compact_stamps()

    @invariant()
    def matches_model(self):
        assert self.g.step == self.step
        assert last_seen(self.g) == self.model
        for since in (0, 1, self.step // 2, self.step, self.step + 1, 41):
            assert since_ids(self.g, since) == {k for k, s in self.model.items() if s >= since}, since


LastSeenMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_last_seen_against_a_model = LastSeenMachine.TestCase


def test_compaction_keeps_last_seen_exactly():
    g = make_group()
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        keys = [KEYS[int(k)] for k in torch.randint(len(KEYS), (10,), generator=gen)]
        lookup(g, keys, True)
    before, state = last_seen(g), g._impl._stamp_state()
    assert state["epochs"] > 25 and state["steps_sorted"]
    g._impl._compact_stamps()
    after = g._impl._stamp_state()
    assert after["compactions"] == state["compactions"] + 1
    assert after["next"] == len(set(before.values())) + 1  # stamps 1..K for the K distinct steps
    assert last_seen(g) == before
    assert since_ids(g, 20) == {k for k, s in before.items() if s >= 20}
    # A tiny clock bound: the lookups below compact on their own, and nothing is lost.
    g._impl._set_stamp_limit(30)
    model = dict(before)
    for step in range(31, 61):
        keys = [KEYS[int(k)] for k in torch.randint(len(KEYS), (10,), generator=gen)]
        lookup(g, keys, True)
        model.update({k: step for k in keys})
        assert last_seen(g) == model
    assert g._impl._stamp_state()["compactions"] > after["compactions"] + 5


def test_eval_lookups_leave_last_seen_alone():
    g = make_group()
    lookup(g, [(0, 1), (0, 2), (1, 1)], True)
    lookup(g, [(0, 2), (1, 3)], True)
    before = last_seen(g)
    assert before == {(0, 1): 1, (0, 2): 2, (1, 1): 1, (1, 3): 2}
    for keys in ([(0, 1), (0, 1), (1, 1), (1, 3), (0, 7)], [(0, 2)] * 5):
        lookup(g, keys, False)
        g.tables[0].lookup(torch.tensor([1, 2, 9]))
        assert last_seen(g) == before
    # Stamps the eval calls borrowed are not mistaken for this lookup's own: it dedups right.
    out = lookup(g, [(0, 1), (0, 1), (0, 2)], True)
    assert last_seen(g)[(0, 1)] == 3 and last_seen(g)[(1, 1)] == 1
    assert torch.equal(out[0, :DIM], g.tables[0].lookup(torch.tensor([1, 1, 2])).sum(0))


def test_a_refused_batch_leaves_last_seen_alone():
    g = make_group()
    for t in g.tables:
        g._impl.set_capacity(t.ns, 3, 0, 0.0)  # capacity 3, no eviction policy: a 4th id is refused
    lookup(g, [(0, 1), (0, 2), (0, 3)], True)
    lookup(g, [(0, 1)], True)
    before = last_seen(g)
    with pytest.raises(RuntimeError, match="capacity"):
        lookup(g, [(0, 1), (0, 2), (0, 4)], True)
    assert last_seen(g) == before and g.step == 2
    lookup(g, [(0, 2)], True)
    assert last_seen(g) == {(0, 1): 2, (0, 2): 3, (0, 3): 1}


def test_the_triton_table_agrees():
    """The Triton twin keeps its own last_seen per row; both export the same values."""
    pytest.importorskip("triton")
    script = [("train", [(0, 1), (0, 2), (1, 5)]), ("eval", [(0, 1), (1, 7)]), ("train", [(0, 2), (1, 7)]),
              ("resolve", [(0, 9), (1, 5)]), ("insert", [(0, 11)]), ("eval", [(0, 9), (0, 2)])]
    got = []
    for backend in ("cpp", "triton"):
        g = make_group(backend)
        for op, keys in script:
            if op in ("train", "eval"):
                lookup(g, keys, op == "train")
            elif op == "resolve":
                ns, ids = (torch.tensor(c, dtype=torch.int64) for c in zip(*keys))
                resolve(g, ns, ids, torch.ones_like(ids), LOOKUP_TRAIN)
            else:
                g.tables[0].find_or_insert(torch.tensor([i for _, i in keys]))
        got.append((last_seen(g), since_ids(g, 3)))
    assert got[0] == got[1]


def test_a_row_takes_4_bytes_less():
    """RowMeta is the count alone: a row is 4 + 4 * (dim + optimizer slots) bytes in the store."""
    g = make_group()
    assert g._impl.row_bytes() == 4 * (1 + DIM)
    ids = torch.arange(100_000)
    g.tables[0].find_or_insert(ids)
    per_row = g.memory_bytes() / 100_000
    assert per_row < 4 * (1 + DIM) + 16 / 0.5 + 1  # map slots at load >= 0.5 right after a grow


def test_export_since_reads_only_the_id_map():
    """The selection of export(since=) reads the slots' stamps only: with the row store made
    unreadable (mprotect) it still runs, in a child process that would die on a fault."""
    code = textwrap.dedent("""
        import torch
        from recis.nn import TableGroup
        g = TableGroup(8, names=["a"], seeds=[1])
        t = g.tables[0]
        for s in range(5):
            v = torch.arange(s * 1000, s * 1000 + 40000)
            g.lookup(v, torch.tensor([0, v.numel()]), None, [0], 1, [0], 8, 0, True)
        want = t.export(since=4)["ids"].numel()
        assert want == 41000, want  # ids [3000, 44000): seen at steps 4 and 5
        assert g._impl._rows_since_without_rows(0, 4) == want
        assert g._impl._rows_since_without_rows(0, 0) == t.export()["ids"].numel()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stdout, r.stderr[-2000:])
