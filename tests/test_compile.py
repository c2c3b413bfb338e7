"""torch.compile: a HashEmbedding + Linear model trains under compile exactly like eager, and
the recis ops pass torch.library.opcheck where its checks make sense for stateful ops."""
import pytest
import torch
import torch._dynamo

from recis.nn import HashEmbedding, Uniform, sparse_tables
from recis.optim import SparseAdagrad

ops = torch.ops.recis

BATCHES = [
    (torch.tensor([1, 2, 3, 2]), torch.tensor([0, 2, 4])),
    (torch.tensor([5, 1, 7, 9, 9]), torch.tensor([0, 3, 5])),
    (torch.tensor([11, 1, 2]), torch.tensor([0, 1, 3])),
]


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = HashEmbedding(8, combiner="sum", initializer=Uniform(-0.5, 0.5), seed=3)
        self.lin = torch.nn.Linear(8, 1)

    def forward(self, values, offsets):
        return self.lin(self.emb(values, offsets)).squeeze(-1)


def _train(backend):
    torch.manual_seed(0)
    model = _Model()
    run = torch.compile(model, backend=backend) if backend else model
    sparse = SparseAdagrad(sparse_tables(model), lr=0.1)
    dense = torch.optim.SGD(model.lin.parameters(), lr=0.1)
    sizes, preds = [], []
    for values, offsets in BATCHES:
        y = run(values, offsets)
        ((y - 1.0) ** 2).sum().backward()
        sparse.step(), dense.step()
        sparse.zero_grad(), dense.zero_grad()
        sizes.append(len(model.emb.table))
        preds.append(y.detach())
    state = model.emb.table.export()
    order = torch.argsort(state["ids"])
    ids = state["ids"][order]
    return sizes, preds, ids, state["rows"][order], state["slots"][order], \
        [p.detach().clone() for p in model.lin.parameters()], model.emb.table.initial_rows(ids)


def _assert_same_training(eager, compiled):
    sizes_e, preds_e, ids_e, rows_e, slots_e, lin_e, init_e = eager
    sizes_c, preds_c, ids_c, rows_c, slots_c, lin_c, _ = compiled
    # the compiled model performed the lookups: its table grew batch by batch like eager's
    assert sizes_c == sizes_e == [3, 6, 7]
    assert torch.equal(ids_c, ids_e)
    for a, b in zip(preds_c, preds_e):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rows_c, rows_e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(slots_c, slots_e, rtol=1e-6, atol=1e-6)
    for a, b in zip(lin_c, lin_e):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # and the training actually moved the rows away from their initial values
    assert not torch.equal(rows_c, init_e)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_training_matches_eager_aot_eager(fresh_dynamo):
    _assert_same_training(_train(None), _train("aot_eager"))


@pytest.mark.slow
def test_compiled_training_matches_eager_inductor(fresh_dynamo):
    _assert_same_training(_train(None), _train("inductor"))


def test_compiled_training_captures_the_ops_in_one_graph(fresh_dynamo):
    """With fullgraph=True the training forward traces without graph breaks: the lookup and its
    backward are ops of the compiled graph (not eager fallbacks), and the results match eager."""
    targets = set()
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def recording_backend(gm, example_inputs):
        for mod in gm.modules():
            if isinstance(mod, torch.fx.GraphModule):
                targets.update(str(n.target) for n in mod.graph.nodes)
        return aot_eager(gm, example_inputs)

    torch.manual_seed(0)
    model = _Model()
    run = torch.compile(model, backend=recording_backend, fullgraph=True)
    sparse = SparseAdagrad(sparse_tables(model), lr=0.1)
    ref = _Model()
    ref.lin.load_state_dict(model.lin.state_dict())
    ref_sparse = SparseAdagrad(sparse_tables(ref), lr=0.1)
    for values, offsets in BATCHES:
        for m, fn, opt in ((model, run, sparse), (ref, ref, ref_sparse)):
            ((fn(values, offsets) - 1.0) ** 2).sum().backward()
            opt.step()
    assert any("recis.lookup_forward" in t for t in targets), sorted(targets)
    assert any("recis.lookup_backward" in t for t in targets), sorted(targets)
    assert len(model.emb.table) == len(ref.emb.table) == 7
    ids = torch.tensor([1, 2, 3, 5, 7, 9, 11])
    torch.testing.assert_close(model.emb.table.lookup(ids), ref.emb.table.lookup(ids), rtol=1e-6, atol=1e-6)


def test_compiled_eval_lookup_is_in_the_graph(fresh_dynamo):
    """In eval mode (no autograd) the whole forward, lookup op included, traces into one graph."""
    model = _Model()
    model.emb.table.find_or_insert(torch.tensor([1, 2, 3]))
    model.eval()
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    run = torch.compile(model, backend=backend, fullgraph=True)
    values, offsets = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2, 4])
    with torch.no_grad():
        got = run(values, offsets)
        want = model(values, offsets)
    assert "recis.lookup_forward.default" in targets or "recis.lookup_forward" in targets, targets
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert len(model.emb.table) == 3, "eval lookups must not insert, compiled or not"


def test_compiled_forwards_hold_their_rows_only_while_their_graph_lives(fresh_dynamo):
    """Under torch.compile (one graph) a training forward's hold on its rows ends with its
    autograd graph, as in eager: forwards whose output is dropped never jam a full table."""
    from recis.nn import LFUEviction

    class Capped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = HashEmbedding(8, combiner="sum", eviction=LFUEviction(capacity=6), seed=3)
            self.lin = torch.nn.Linear(8, 1)

        def forward(self, values, offsets):
            return self.lin(self.emb(values, offsets)).squeeze(-1)

    model = Capped()
    run = torch.compile(model, backend="aot_eager", fullgraph=True)
    sparse = SparseAdagrad(sparse_tables(model), lr=0.1)
    offsets = torch.tensor([0, 2, 4])
    for i in range(12):
        y = run(torch.tensor([i, i + 1, i + 2, i + 3]), offsets)
        assert model.emb.group.live_forwards() == 1
        if i % 3 == 0:
            y.sum().backward()
            sparse.step()
        del y  # the others are dropped without backward
        assert model.emb.group.live_forwards() == 0 and model.emb.group.pending_rows() == 0
        assert len(model.emb.table) == min(6, i + 4)


# --------------------------------------------------------------------------- opcheck

_BASIC = ("test_schema", "test_faketensor", "test_autograd_registration")


def _table():
    emb = HashEmbedding(4, combiner="sum", initializer=Uniform(-1, 1), seed=1)
    emb.table.find_or_insert(torch.tensor([1, 2, 3]))
    return emb.group


def test_opcheck_find():
    g = _table()
    torch.library.opcheck(ops.find.default, (g.handle, 0, torch.tensor([1, 5, 3])),
                          test_utils=_BASIC + ("test_aot_dispatch_dynamic",))


def test_opcheck_gather():
    g = _table()
    torch.library.opcheck(ops.gather.default, (g.handle, torch.tensor([0, 2, -1])),
                          test_utils=_BASIC + ("test_aot_dispatch_dynamic",))


def test_opcheck_find_or_insert():
    g = _table()
    torch.library.opcheck(ops.find_or_insert.default, (g.token, g.handle, 0, torch.tensor([1, 7, 7])),
                          test_utils=_BASIC)


@pytest.mark.parametrize("combiner", [0, 1, 2])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_opcheck_lookup_forward(combiner, mode):
    g = _table()
    args = ([g.token], [g.handle], torch.tensor([1, 2, 3, 9]), torch.tensor([0, 2, 4]),
            torch.tensor([1.0, 2, 3, 4]), [0], 2, [0], 0 if combiner == 2 else 4, [combiner], mode)
    torch.library.opcheck(ops.lookup_forward.default, args, test_utils=_BASIC)


def test_opcheck_lookup_backward_and_update():
    g = _table()
    values, offsets = torch.tensor([1, 2, 3, 2]), torch.tensor([0, 2, 4])
    out, unique, inverse = ops.lookup_forward([g.token], [g.handle], values, offsets, None, [0], 2, [0], 4, [0], 1)
    torch.library.opcheck(ops.lookup_backward.default,
                          ([g.token], [g.handle], torch.ones(2, 4), offsets, None, unique, inverse, [0], 2, [0], 4, [0]),
                          test_utils=("test_schema", "test_faketensor"))
    g._impl.set_slots(0, [], True)  # SGD layout
    torch.library.opcheck(ops.apply_update.default, (g.token, g.handle, 0, [0.1, 0.0], False),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops.clear_pending.default, ([g.token], [g.handle]),
                          test_utils=("test_schema", "test_faketensor"))
