"""One op call per collection: an EmbeddingCollection with several table groups looks them all up
with one recis::lookup_forward call per step, and its backward makes one call (the fused update
across groups, or the gradients kept for step()).

Reference: the same tables as one-table collections (one group each, their own op calls), fed
the same batches; outputs, rows and optimizer slots must be bit-equal.
"""
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.nn import EmbeddingCollection, TableConfig, Uniform
from recis.optim import SparseAdagrad, SparseRowwiseAdagrad, SparseSGD

KEYS = ["fa", "fb", "fc", "fd", "fe"]


def _configs():
    # four groups: (4, sum) a+b, (8, sum) c, (4, mean) d, (3, unpooled) e
    init = Uniform(-1.0, 1.0)
    return [TableConfig("a", 4, ["fa"], initializer=init, seed=1),
            TableConfig("b", 4, ["fb"], initializer=init, seed=2),
            TableConfig("c", 8, ["fc"], initializer=init, seed=3),
            TableConfig("d", 4, ["fd"], combiner="mean", initializer=init, seed=4),
            TableConfig("e", 3, ["fe"], combiner=None, initializer=init, seed=5)]


def _batches(n=4, batch=5, seed=0, weighted=True):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(0, 4, (len(KEYS) * batch,), generator=gen)
        values = torch.randint(-6, 6, (int(lengths.sum()),), generator=gen)
        weights = torch.rand(values.numel(), generator=gen) if weighted else None
        out.append(KeyedJaggedTensor.from_lengths_sync(KEYS, values, lengths, weights=weights))
    return out


def _loss(out, scale):
    """A loss whose gradient differs per feature and column (a fixed random scale per feature)."""
    total = 0.0
    for f, v in out.items():
        v = v.values() if hasattr(v, "lengths") else v
        total = total + (v * scale[f][: v.shape[-1]]).sum() + (v ** 2).sum()
    return total


def _scale():
    gen = torch.Generator().manual_seed(7)
    return {f: torch.randn(8, generator=gen) for f in KEYS}


def _collections(backend="cpp"):
    full = EmbeddingCollection(_configs(), output="dict", backend=backend)
    parts = [EmbeddingCollection([c], output="dict", backend=backend, extra_keys="ignore") for c in _configs()]
    return full, parts


def _recis_calls(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("recis::")}


def _assert_same_tables(full, parts):
    tables = full.tables()
    for part in parts:
        for name, t in part.tables().items():
            a, b = tables[name].export(), t.export()
            order_a, order_b = torch.argsort(a["ids"]), torch.argsort(b["ids"])
            for k in a:
                assert torch.equal(a[k][order_a], b[k][order_b]), (name, k)


@pytest.mark.parametrize("fused", [True, False])
def test_one_lookup_call_and_one_backward_call_per_step(fused):
    full, _ = _collections()
    assert len(full.groups) == 4
    opt = SparseRowwiseAdagrad(full, lr=0.1, fused=fused)
    scale = _scale()
    batches = _batches()

    def step(kjt):
        _loss(full(kjt), scale).backward()
        opt.step()
        opt.zero_grad()

    step(batches[0])
    calls = _recis_calls(lambda: step(batches[1]))
    assert calls.get("recis::lookup_forward") == 1, calls
    assert "recis::clear_pending" not in calls, calls  # nothing waits after step(): no call
    if fused:
        assert calls.get("recis::lookup_backward_apply") == 1 and "recis::lookup_backward" not in calls, calls
        assert "recis::apply_update" not in calls, calls
    else:
        assert calls.get("recis::lookup_backward") == 1 and "recis::lookup_backward_apply" not in calls, calls
        assert calls.get("recis::apply_update") == 4, calls  # step(): one per group (own hyperparameters)
    full.eval()
    with torch.no_grad():
        assert _recis_calls(lambda: full(batches[2])).get("recis::lookup_forward") == 1


@pytest.mark.parametrize("fused", [True, False])
def test_one_call_equals_a_call_per_group(fused):
    """The multi-table call trains exactly as separate one-group calls would."""
    full, parts = _collections()
    opt = SparseAdagrad(full, lr=0.2, lr_decay=0.01, fused=fused)
    part_opts = [SparseAdagrad(p, lr=0.2, lr_decay=0.01, fused=fused) for p in parts]
    scale = _scale()
    for kjt in _batches(n=5):
        out = full(kjt)
        ref = {}
        for p in parts:
            ref.update(p(kjt))
        assert set(out) == set(ref) == set(KEYS)
        for f in KEYS:
            x, y = out[f], ref[f]
            x, y = (x.values(), y.values()) if hasattr(x, "lengths") else (x, y)
            assert torch.equal(x, y), f
        _loss(out, scale).backward()
        _loss(ref, scale).backward()
        for o in [opt] + part_opts:
            o.step()
            o.zero_grad()
    _assert_same_tables(full, parts)
    for g in full.groups:
        assert g.optimizer_step == 5 and g.step == 5


def test_fused_and_deferred_groups_of_one_collection():
    """Groups with a fused optimizer and groups with a deferred one: backward makes one call of
    each kind, and trains as the separate groups would."""
    full, parts = _collections()
    fused_tables = [t for n, t in full.tables().items() if n in ("a", "b", "e")]
    deferred_tables = [t for n, t in full.tables().items() if n in ("c", "d")]
    opts = [SparseSGD(fused_tables, lr=0.3, fused=True), SparseAdagrad(deferred_tables, lr=0.2)]
    part_opts = [SparseSGD(p, lr=0.3, fused=True) if "c" not in p.tables() and "d" not in p.tables()
                 else SparseAdagrad(p, lr=0.2) for p in parts]
    scale = _scale()
    batches = _batches(n=4)
    for i, kjt in enumerate(batches):
        def step():
            _loss(full(kjt), scale).backward()
            for o in opts:
                o.step()
                o.zero_grad()
        calls = _recis_calls(step)
        assert calls.get("recis::lookup_forward") == 1, calls
        assert calls.get("recis::lookup_backward_apply") == 1 and calls.get("recis::lookup_backward") == 1, calls
        ref = {}
        for p in parts:
            ref.update(p(kjt))
        _loss(ref, scale).backward()
        for o in part_opts:
            o.step()
            o.zero_grad()
    _assert_same_tables(full, parts)


def test_fused_nonfinite_gradient_names_its_tables_and_updates_the_others():
    full, _ = _collections()
    opt = SparseSGD(full, lr=0.5, fused=True)
    kjt = _batches(n=1, weighted=False)[0]
    full(kjt)["fa"].sum().backward()  # every id of the batch has a row now
    before = {n: t.export() for n, t in full.tables().items()}
    out = full(kjt)
    loss = out["fa"].sum() * float("nan") + out["fc"].sum()
    with pytest.raises(FloatingPointError, match=r"\['a', 'b'\]"):
        loss.backward()
    after = {n: t.export() for n, t in full.tables().items()}
    assert torch.equal(before["a"]["rows"], after["a"]["rows"])  # NaN rows left alone
    assert not torch.equal(before["c"]["rows"], after["c"]["rows"])  # the other group was updated
    assert opt.nonfinite_rows > 0


def test_triton_tables_take_the_same_single_call():
    """The Triton kernel of the list-taking ops (interpreter on the CPU) equals the C++ one."""
    cpp, _ = _collections("cpp")
    tri, _ = _collections("triton")
    opts = [SparseRowwiseAdagrad(cpp, lr=0.1, fused=True), SparseRowwiseAdagrad(tri, lr=0.1, fused=True)]
    scale = _scale()
    for kjt in _batches(n=2, batch=3):
        outs = [m(kjt) for m in (cpp, tri)]
        for f in KEYS:
            x, y = outs[0][f], outs[1][f]
            x, y = (x.values(), y.values()) if hasattr(x, "lengths") else (x, y)
            assert torch.equal(x, y), f
        for o, out in zip(opts, outs):
            _loss(out, scale).backward()
            o.step()
    for name, t in cpp.tables().items():
        a, b = t.export(), tri.tables()[name].export()
        oa, ob = torch.argsort(a["ids"]), torch.argsort(b["ids"])
        for k in ("ids", "rows", "slots"):
            assert torch.equal(a[k][oa], b[k][ob]), (name, k)


def test_fake_kernel_shapes_of_a_multi_table_call():
    """The fake kernel gives the real kernel's shapes: flat with several blocks, else the block."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    full, _ = _collections()
    kjt = _batches(n=1)[0]
    groups = full.groups
    layout = full._layout(kjt.keys())
    args = (kjt.values(), kjt.offsets(), None, layout.feature_ns, kjt.stride(), layout.col_offsets, layout.out_cols,
            layout.combiners, 0)
    real = torch.ops.recis.lookup_forward([g.token for g in groups], [g.handle for g in groups], *args)
    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        fake = torch.ops.recis.lookup_forward([mode.from_tensor(g.token) for g in groups],
                                              [g.handle for g in groups], mode.from_tensor(args[0]),
                                              mode.from_tensor(args[1]), *args[2:])
    n, batch = kjt.values().numel(), kjt.stride()
    assert real[0].shape == fake[0].shape == (batch * layout.out_cols + n * 3,)  # pooled block + e's [n, 3]
    assert real[1].shape == fake[1].shape == real[2].shape == (4, n)
