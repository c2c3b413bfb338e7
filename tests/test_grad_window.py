"""Rows a gradient may still reach are protected from eviction.

A training forward that expects a backward holds the rows seen since its step for as long as
its autograd graph lives (until backward, or until its outputs are dropped); gradients waiting
for the sparse optimizer hold their rows until step() or zero_grad(). Forward-only use never jams a table, a
table without a sparse optimizer keeps no gradients, and a table at capacity that cannot make
room says what holds its rows. Every test runs on both backends (Triton in its interpreter)."""
import gc

import pytest
import torch
from hypothesis import event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import ids_tensor
from recis.nn import HashEmbedding, LFUEviction, TableGroup, TTLEviction, Uniform
from recis.optim import SparseSGD

DIM = 2
SEED = 5
INIT = Uniform(-1.0, 1.0)
BACKENDS = ["cpp", "triton"]


def _emb(backend, capacity, **kw):
    return HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, backend=backend,
                         eviction=LFUEviction(capacity=capacity, evict_fraction=0.0), **kw)


def _initial(ids):
    """Initial rows of `ids` from a separate table with the same seed and initializer."""
    t = TableGroup(DIM, ["oracle"], [SEED], initializer=INIT).tables[0]
    return t.gather(t.find_or_insert(ids_tensor(ids)))


def _present(emb, ids):
    return [i for i, r in zip(ids, emb.table.find(ids_tensor(ids)).tolist()) if r >= 0]


# The issue's repro on the C++ backend only: it runs in the fast suite.
def test_discarded_training_forwards_do_not_jam_the_table():
    e = HashEmbedding(4, combiner=None, eviction=LFUEviction(capacity=10))
    for i in range(10):
        e(torch.tensor([i]))
    e(torch.tensor([99])).sum().backward()  # used to fail: "only 0 rows are old enough to evict"
    assert len(e.table) == 10 and _present(e, [99]) == [99]


@pytest.mark.parametrize("backend", BACKENDS)
def test_issue_repro(backend):
    e = HashEmbedding(4, combiner=None, eviction=LFUEviction(capacity=10), backend=backend)
    for i in range(10):
        e(torch.tensor([i]))
    e(torch.tensor([99])).sum().backward()
    assert len(e.table) == 10 and _present(e, [99]) == [99]
    assert e.group.live_forwards() == 0 and e.group.pending_rows() == 0


@pytest.mark.parametrize("with_optimizer", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_only_scoring_in_train_mode_never_jams(backend, with_optimizer):
    """Scoring / feature extraction in train mode with grad enabled, outputs dropped: each new id
    evicts the least frequent row; the table never refuses a batch."""
    emb = _emb(backend, 4)
    opt = SparseSGD(emb.group.tables, lr=1.0) if with_optimizer else None
    n = 12 if backend == "triton" else 60
    for i in range(n):
        emb(ids_tensor([i, i + 1])).sum().item()  # scores used, graph dropped at once
        assert len(emb.table) <= 4
    assert {n - 1, n} <= set(_present(emb, list(range(n + 1))))
    assert emb.group.live_forwards() == 0 and emb.group.pending_rows() == 0
    del opt


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_live_forward_protects_its_rows_and_the_error_says_so(backend):
    """A forward whose output is kept alive holds the rows seen since its step; dropped forwards
    hold nothing; once the output is dropped its rows may go."""
    emb = _emb(backend, 3)
    with torch.no_grad():
        emb(ids_tensor([1, 2, 3]))              # step 1: table full, nothing holds these rows
    kept = emb(ids_tensor([1, 2]))              # step 2: training forward whose output stays alive
    emb(ids_tensor([10]))                       # step 3, output dropped: 3 (seen before step 2) goes
    assert sorted(_present(emb, [1, 2, 3, 10])) == [1, 2, 10]
    with pytest.raises(RuntimeError) as err:
        emb(ids_tensor([11]))                   # every row was seen since step 2
    msg = str(err.value)
    assert "table 'table'" in msg and "capacity of 3" in msg and "only 0 rows may be evicted" in msg
    assert "1 forward pass in training mode whose outputs are still alive" in msg
    assert "waiting for the sparse optimizer" not in msg
    assert "eval()" in msg and "torch.no_grad()" in msg and "drop the outputs" in msg
    assert sorted(_present(emb, [1, 2, 10, 11])) == [1, 2, 10]  # a refused batch changes nothing
    del kept                                    # its graph is freed: the rows are released
    assert emb.group.live_forwards() == 0
    emb(ids_tensor([11]))                       # 10 is the least frequent
    assert sorted(_present(emb, [1, 2, 10, 11])) == [1, 2, 11]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pending_gradients_protect_their_rows_and_the_error_names_them(backend):
    emb = _emb(backend, 3)
    opt = SparseSGD(emb.group.tables, lr=1.0)
    emb(ids_tensor([1, 2, 3])).sum().backward()   # 3 rows pending until step()
    assert emb.group.live_forwards() == 0 and emb.group.pending_rows() == 3
    with pytest.raises(RuntimeError) as err:
        emb(ids_tensor([4]))
    msg = str(err.value)
    assert "3 rows with gradients waiting for the sparse optimizer's step() or zero_grad()" in msg
    assert "forward pass" not in msg
    opt.zero_grad()
    emb(ids_tensor([4]))
    assert len(emb.table) == 3 and _present(emb, [4]) == [4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_accumulation_still_protects_pending_rows(backend):
    """forward1, backward1, forward2, backward2, (no_grad lookups of new ids), step: the rows of
    both micro-batches survive, and each gets exactly the sum of its two gradients."""
    emb = _emb(backend, 4)
    opt = SparseSGD(emb.group.tables, lr=1.0)
    (emb(ids_tensor([1, 2])) * 1.0).sum().backward()
    (emb(ids_tensor([2, 3])) * 10.0).sum().backward()
    with torch.no_grad():
        emb(ids_tensor([7]))                      # one free row: fits
        with pytest.raises(RuntimeError, match="waiting for the sparse optimizer"):
            emb(ids_tensor([8]))                  # would need a pending row
    opt.step()
    init = dict(zip([1, 2, 3], _initial([1, 2, 3])))
    want = {1: init[1] - 1.0, 2: init[2] - 11.0, 3: init[3] - 10.0}
    for i, v in want.items():
        assert torch.allclose(emb.table.lookup(ids_tensor([i]))[0], v, atol=1e-6), i
    with torch.no_grad():
        emb(ids_tensor([8]))                      # after step() the rows may go
    assert len(emb.table) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forward_alive_across_step_keeps_its_rows_until_its_backward(backend):
    """forward2, step() of the previous micro-batch, then backward2: step() must not release
    forward2's rows, or a lookup in between hands them to new ids that then get its gradient."""
    emb = _emb(backend, 4)
    opt = SparseSGD(emb.group.tables, lr=1.0)
    emb(ids_tensor([0, 0, 0, 1, 1, 1])).sum().backward()   # 0 and 1: frequent
    out2 = emb(ids_tensor([2, 3]))                          # 2 and 3: rare, held by out2
    opt.step()
    with torch.no_grad():
        emb(ids_tensor([4, 5]))   # two rows must go: 0 and 1 (2 and 3 are rarer, but held)
    assert sorted(_present(emb, [0, 1, 2, 3, 4, 5])) == [2, 3, 4, 5]
    (out2 * 10.0).sum().backward()
    opt.step()
    init = dict(zip([2, 3, 4, 5], _initial([2, 3, 4, 5])))
    for i in (2, 3):
        assert torch.allclose(emb.table.lookup(ids_tensor([i]))[0], init[i] - 10.0, atol=1e-6), i
    for i in (4, 5):
        assert torch.equal(emb.table.lookup(ids_tensor([i]))[0], init[i]), i


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_without_a_sparse_optimizer_keeps_no_gradients(backend):
    """Dense-only training (tables frozen, no sparse optimizer): backward keeps nothing for the
    table, so nothing piles up and nothing holds rows; the table never jams."""
    emb = _emb(backend, 4)
    lin = torch.nn.Linear(DIM, 1)
    dense = torch.optim.SGD(lin.parameters(), lr=0.1)
    n = 10 if backend == "triton" else 40
    for i in range(n):
        lin(emb(ids_tensor([i, i + 1, i + 2]))).sum().backward()
        dense.step(), dense.zero_grad()
        assert emb.group.pending_rows() == 0 and emb.group.live_forwards() == 0
        assert len(emb.table) <= 4
    for i in _present(emb, list(range(n + 2))):  # the frozen rows never moved
        assert torch.equal(emb.table.lookup(ids_tensor([i]))[0], _initial([i])[0]), i


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_collected_optimizer_drops_its_pending_gradients(backend):
    emb = _emb(backend, 4)
    opt = SparseSGD(emb.group.tables, lr=1.0)
    emb(ids_tensor([1, 2])).sum().backward()
    assert emb.group.pending_rows() == 2
    del opt
    gc.collect()
    assert emb.group.pending_rows() == 0
    emb(ids_tensor([3])).sum().backward()
    assert emb.group.pending_rows() == 0
    opt = SparseSGD(emb.group.tables, lr=1.0)       # a new optimizer: gradients are kept again
    emb(ids_tensor([3])).sum().backward()
    assert emb.group.pending_rows() == 1
    opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulating_without_step_keeps_the_buffer_bounded(backend):
    """Many backward passes before one step(): the buffer merges duplicate rows when it outgrows
    the table (its size stays within a few times the live rows), and step() applies the sum."""
    emb = _emb(backend, 8)
    opt = SparseSGD(emb.group.tables, lr=1.0)
    ids = [1, 2, 3]
    n = 12 if backend == "triton" else 200
    for _ in range(n):
        (emb(ids_tensor(ids)) * 0.5).sum().backward()
        assert emb.group.pending_rows() <= 2 * (len(emb.table) + 1) + len(ids)
    opt.step()
    for i, v in zip(ids, _initial(ids)):
        assert torch.allclose(emb.table.lookup(ids_tensor([i]))[0], v - 0.5 * n, atol=1e-4), i


@pytest.mark.parametrize("backend", BACKENDS)
def test_tables_do_not_move_while_a_forward_awaits_its_backward(backend):
    emb = _emb(backend, 4)
    out = emb(ids_tensor([1]))
    other = "triton" if backend == "cpp" else "cpp"
    with pytest.raises(RuntimeError, match="1 forward passes in training mode"):
        emb.group.to("cpu", backend=other)
    out.sum().backward()
    emb.group.to("cpu", backend=other)
    assert emb.group.backend == other and _present(emb, [1]) == [1]


def test_retain_graph_keeps_the_rows_until_the_graph_is_freed():
    emb = _emb("cpp", 2)
    out = emb(ids_tensor([1]))
    out.sum().backward(retain_graph=True)       # a second backward may still come
    assert emb.group.live_forwards() == 1
    del out
    assert emb.group.live_forwards() == 0


def test_eval_and_no_grad_forwards_hold_nothing():
    emb = _emb("cpp", 2)
    with torch.no_grad():
        emb(ids_tensor([1]))
    kept = [emb.eval()(ids_tensor([1]))]
    emb.train()
    with torch.no_grad():
        kept.append(emb(ids_tensor([2])))
    assert emb.group.live_forwards() == 0
    with torch.no_grad():
        emb(ids_tensor([3, 4]))                   # 1 and 2 may both go
    assert sorted(_present(emb, [1, 2, 3, 4])) == [3, 4]


# ============================================================================ stateful model
class GradWindowMachine(RuleBasedStateMachine):
    """Training forwards (outputs kept), backward passes, dropped outputs, no_grad and eval
    lookups, step(), zero_grad(), erases and TTL sweeps on a small LFU table, against a model that
    knows each id's count, last-seen step and value. The model's rule: rows seen at or after
    the step of the oldest live training forward, or at or after the smallest last-seen step of
    the rows with pending gradients, are never evicted; everything else is fair game, least
    frequent first (then least recent, then smallest id)."""

    backend = "cpp"
    CAP, TTL = 3, 3
    POOL = list(range(8))

    def __init__(self):
        super().__init__()
        self.emb = HashEmbedding(DIM, combiner=None, initializer=INIT, seed=SEED, backend=self.backend,
                                 eviction=[LFUEviction(capacity=self.CAP, evict_fraction=0.0),
                                           TTLEviction(ttl_steps=self.TTL, interval_steps=10**9)])
        self.init = dict(zip(self.POOL, _initial(self.POOL)))
        self.opt = None
        self.step = 0
        self.rows = {}          # id -> [count, last_seen, value]
        self.live = []          # [(step, ids, output)] of training forwards not yet backpropagated
        self.pending = {}       # id -> summed gradient (1 per occurrence)
        self.pending_guard = None

    @initialize(with_optimizer=st.booleans())
    def attach(self, with_optimizer):
        if with_optimizer:
            self.opt = SparseSGD(self.emb.group.tables, lr=1.0)

    def _guard(self):
        guard = [self.step] + [s for s, _, _ in self.live]
        if self.pending:
            guard.append(self.pending_guard)
        return min(guard)

    def _lookup(self, ids, grad):
        """Runs a training lookup against the model; returns the output (or None if refused)."""
        self.step += 1
        batch = set(ids)
        new = [i for i in batch if i not in self.rows]
        need = len(self.rows) + len(new) - self.CAP
        guard = self._guard()
        cands = sorted((c, s, i) for i, (c, s, _) in self.rows.items() if i not in batch and s < guard)
        if need > 0 and need > len(cands):
            with pytest.raises(RuntimeError, match="may be evicted") as err:
                if grad:
                    self.emb(ids_tensor(ids))
                else:
                    with torch.no_grad():
                        self.emb(ids_tensor(ids))
            assert ("forward pass" in str(err.value)) == bool(self.live)
            assert ("waiting for the sparse optimizer" in str(err.value)) == bool(self.pending)
            event("refused: " + ("live forwards" if self.live else "") + (" pending" if self.pending else ""))
            self.step -= 1
            return None
        if grad:
            out = self.emb(ids_tensor(ids))
        else:
            with torch.no_grad():
                out = self.emb(ids_tensor(ids))
        if need > 0:
            event("evicted")
        for _, _, i in cands[:max(need, 0)]:
            del self.rows[i]
        for i in ids:
            if i not in self.rows:
                self.rows[i] = [0, self.step, self.init[i].clone()]
            self.rows[i][0] += 1
            self.rows[i][1] = self.step
        return out

    @rule(ids=st.lists(st.sampled_from(POOL), min_size=1, max_size=3))
    def train_forward(self, ids):
        out = self._lookup(ids, grad=True)
        if out is not None:
            self.live.append((self.step, ids, out))

    @rule(ids=st.lists(st.sampled_from(POOL), min_size=1, max_size=3))
    def no_grad_forward(self, ids):
        self._lookup(ids, grad=False)

    @rule(ids=st.lists(st.sampled_from(POOL), min_size=1, max_size=3))
    def eval_forward(self, ids):
        self.emb.eval()
        self.emb(ids_tensor(ids))               # reads only: the model does not change
        self.emb.train()

    @precondition(lambda self: self.live)
    @rule(k=st.integers(0, 10))
    def backward(self, k):
        _, ids, out = self.live.pop(k % len(self.live))
        out.sum().backward()
        del out
        if self.opt is None:
            return
        guard = min(self.rows[i][1] for i in ids)
        self.pending_guard = guard if not self.pending else min(self.pending_guard, guard)
        for i in ids:
            self.pending[i] = self.pending.get(i, 0.0) + 1.0

    @precondition(lambda self: self.live)
    @rule(k=st.integers(0, 10))
    def drop_output(self, k):
        self.live.pop(k % len(self.live))

    @precondition(lambda self: self.opt is not None)
    @rule()
    def step_optimizer(self):
        self.opt.step()
        for i, g in self.pending.items():
            self.rows[i][2] = self.rows[i][2] - g
        self.pending = {}

    @precondition(lambda self: self.opt is not None)
    @rule()
    def zero_grad(self):
        self.opt.zero_grad()
        self.pending = {}

    @rule(ids=st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True))
    def erase(self, ids):
        guard = self._guard()
        held = [i for i in ids if i in self.rows and self.rows[i][1] >= guard]
        if held and (self.live or self.pending):
            with pytest.raises(RuntimeError, match="cannot erase"):
                self.emb.table.erase(ids_tensor(ids))
            return
        assert self.emb.table.erase(ids_tensor(ids)) == sum(i in self.rows for i in ids)
        for i in ids:
            self.rows.pop(i, None)

    @rule()
    def ttl_sweep(self):
        guard = self._guard()
        old = [i for i, (_, s, _) in self.rows.items() if s < guard and self.step - s > self.TTL]
        assert self.emb.group.evict_expired() == len(old)
        event(f"ttl swept {min(len(old), 2)}+")
        for i in old:
            del self.rows[i]

    @invariant()
    def table_matches_model(self):
        state = self.emb.table.export()
        got = {i: (int(c), int(s)) for i, c, s in zip(state["ids"].tolist(), state["counts"], state["last_seen"])}
        assert got == {i: (c, s) for i, (c, s, _) in self.rows.items()}
        for i, r in zip(state["ids"].tolist(), state["rows"]):
            assert torch.equal(r, self.rows[i][2]), i
        assert self.emb.group.live_forwards() == len(self.live)
        assert (self.emb.group.pending_rows() > 0) == bool(self.pending)


GradWindowMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_grad_window_against_a_model = GradWindowMachine.TestCase


class TritonGradWindowMachine(GradWindowMachine):
    backend = "triton"


TritonGradWindowMachine.TestCase.settings = settings(max_examples=8, stateful_step_count=20, deadline=None)
test_grad_window_against_a_model_triton = pytest.mark.slow(TritonGradWindowMachine.TestCase)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_saved_tensor_hook_that_copies_does_not_release_the_rows_early(backend):
    """Offloading hooks copy saved tensors (the copy does not carry the hold); the forward's
    rows stay held until its backward all the same."""
    emb = _emb(backend, 2)

    def pack(t):
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = emb(ids_tensor([1, 2]))
    assert emb.group.live_forwards() == 1
    with torch.no_grad(), pytest.raises(RuntimeError, match="1 forward pass"):
        emb(ids_tensor([3]))
    out.sum().backward()
    assert emb.group.live_forwards() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_erase_refuses_rows_a_gradient_may_still_reach(backend):
    """An erased row goes to the next new id: erasing an id whose gradient is pending (or whose
    forward awaits its backward) would hand that gradient to another id."""
    emb = _emb(backend, 8)
    opt = SparseSGD(emb.group.tables, lr=1.0)
    emb(ids_tensor([1, 2])).sum().backward()               # 1 and 2: gradients pending
    with pytest.raises(RuntimeError) as err:
        emb.table.erase(ids_tensor([2, 5]))
    assert "cannot erase 1 ids of table 'table' (namespace 0), namely 2:" in str(err.value)
    assert "waiting for the sparse optimizer" in str(err.value)
    assert sorted(_present(emb, [1, 2])) == [1, 2]          # nothing was erased
    out = emb(ids_tensor([3]))                              # 3: held by a live forward
    with pytest.raises(RuntimeError, match="1 forward pass"):
        emb.table.erase(ids_tensor([3]))
    opt.step()
    out.sum().backward()
    opt.step()                                              # nothing holds any row now
    assert emb.table.erase(ids_tensor([1, 2, 3])) == 3
    with torch.no_grad():
        emb(ids_tensor([7, 8, 9]))                          # reuse the freed rows
    init = dict(zip([1, 7, 8, 9], _initial([1, 7, 8, 9])))
    for i in (7, 8, 9):                                     # no stray gradient reached them
        assert torch.equal(emb.table.lookup(ids_tensor([i]))[0], init[i]), i
