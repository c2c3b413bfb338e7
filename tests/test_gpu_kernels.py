"""The Triton kernels (recis.gpu) against the C++ CPU path, run in Triton's interpreter.

Each test builds the same table twice, once on the C++ backend and once on the Triton backend
(backend="triton" on the CPU: the kernels of recis/gpu/kernels run in Triton's interpreter, as
with TRITON_INTERPRET=1), feeds both the same batches and asserts equal results: rows found,
pooled outputs, updated rows and optimizer slots, metadata. Sizes stay small: the interpreter
runs kernels in Python. Where a GPU is present, the tests taking `device` also run the compiled
kernels on it (benchmarks/gpu_check.sh).
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import EXTREME_IDS, INT64_MAX, INT64_MIN, assert_exports_equal, offsets_for, sorted_export
from recis.nn import (Constant, EmbeddingCollection, FrequencyAdmission, HashEmbedding, LFUEviction, Normal,
                      TableConfig, TableGroup, TruncatedNormal, TTLEviction, Uniform, sparse_tables)
from recis.optim import SparseAdagrad, SparseAdam, SparseAdamW, SparseFTRL, SparseRowwiseAdagrad, SparseSGD

pytest.importorskip("triton")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
INITS = [Uniform(-0.5, 0.5), Normal(0.1, 0.7), TruncatedNormal(0.0, 1.0, 0.5), Constant(0.25)]


@pytest.fixture(params=DEVICES)
def device(request):
    """Where the Triton table lives: cpu (interpreter) and, when present, cuda (compiled)."""
    return torch.device(request.param)


def pair(dim=5, names=("a",), seeds=(11,), device="cpu", **kw):
    """The same table on the C++ backend and on the Triton backend (on `device`)."""
    cpp = TableGroup(dim, list(names), list(seeds), backend="cpp", **kw)
    tri = TableGroup(dim, list(names), list(seeds), backend="triton", device=device, **kw)
    assert tri._impl.__class__.__name__ == "TritonTable" and tri.handle < 0 < cpp.handle
    return cpp, tri


def batch(gen, n_bags=6, max_len=4, pool=None):
    """A jagged batch with duplicates, empty bags and the int64 extremes."""
    pool = pool if pool is not None else torch.tensor(EXTREME_IDS + [5, 6, 7, 123456789], dtype=torch.int64)
    lengths = torch.randint(0, max_len + 1, (n_bags,), generator=gen).tolist()
    lengths[1] = 0
    values = pool[torch.randint(0, pool.numel(), (sum(lengths),), generator=gen)]
    return values, offsets_for(lengths), torch.rand(values.numel(), generator=gen)


def cpu_export(table):
    return {k: v.cpu() for k, v in table.export().items()}


def exports(group):
    return [sorted_export(cpu_export(t)) for t in group.tables]


def assert_groups_equal(a, b):
    for x, y in zip(a.tables, b.tables):
        assert_exports_equal(cpu_export(x), cpu_export(y))
    assert a.step == b.step
    sa, sb = a.stats(), b.stats()
    for k in ("inserts", "evictions", "not_admitted", "live"):
        assert sa[k] == sb[k], k


# ----------------------------------------------------------------------------- initialization
@pytest.mark.parametrize("init", INITS, ids=["uniform", "normal", "truncated", "constant"])
def test_initial_rows_bit_for_bit(init, gen, device):
    cpp, tri = pair(dim=19, names=("a", "b"), seeds=(3, 2**64 - 1), device=device, initializer=init)
    ids = torch.cat([torch.tensor(EXTREME_IDS), torch.randint(INT64_MIN, INT64_MAX, (24,), generator=gen)])
    for t_cpp, t_tri in zip(cpp.tables, tri.tables):
        assert torch.equal(t_cpp.initial_rows(ids), t_tri.initial_rows(ids).cpu())


def test_truncated_normal_resamples_like_the_cpu():
    # A cutoff this tight makes most first draws fall outside: the redraw loop runs many attempts.
    cpp, tri = pair(dim=9, initializer=TruncatedNormal(0.0, 1.0, 0.05))
    ids = torch.arange(-15, 15)
    a, b = cpp.tables[0].initial_rows(ids), tri.tables[0].initial_rows(ids)
    assert torch.equal(a, b)
    assert float(b.abs().max()) <= float(torch.tensor(0.05))


# ----------------------------------------------------------------------------- id map
def _check_map(cpp, tri, ids):
    r_cpp, r_tri = cpp.tables[0].find(ids), tri.tables[0].find(ids)
    assert torch.equal(r_cpp >= 0, r_tri >= 0)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["insert", "erase", "find"]),
                          st.lists(st.one_of(st.sampled_from(EXTREME_IDS), st.integers(-40, 40),
                                             st.integers(INT64_MIN, INT64_MAX)), max_size=30)),
                min_size=1, max_size=6))
def test_id_map_matches_a_dict_model(ops):
    """Random inserts (with growth), erases (tombstones) and finds against {id: row}."""
    tri = TableGroup(3, ["t"], [5], backend="triton")
    table = tri.tables[0]
    model = {}
    for op, ids in ops:
        t = torch.tensor(ids, dtype=torch.int64)
        if op == "insert":
            rows = table.find_or_insert(t).tolist()
            for i, r in zip(ids, rows):
                assert r >= 0
                assert model.setdefault(i, r) == r
        elif op == "erase":
            assert table.erase(t) == len({i for i in ids if i in model})
            for i in ids:
                model.pop(i, None)
        rows = table.find(t).tolist()
        assert rows == [model.get(i, -1) for i in ids]
        assert len(table) == len(model)
        live = set(model.values())
        assert len(live) == len(model), "two ids share a row"
    exp = table.export()
    assert sorted(exp["ids"].tolist()) == sorted(model)


def test_same_ids_get_the_same_rows_as_the_cpu_with_growth_inside_a_batch(gen, device):
    cpp, tri = pair(dim=4, device=device)
    first = torch.tensor(EXTREME_IDS * 2)
    big = torch.cat([torch.randint(INT64_MIN, INT64_MAX, (150,), generator=gen), first])  # rehash: 16 -> 512 slots
    for ids in (first, big, big.flip(0)):
        assert torch.equal(cpp.tables[0].find_or_insert(ids), tri.tables[0].find_or_insert(ids).cpu())
    assert tri._impl.map.cap >= 2 * len(tri)
    assert_groups_equal(cpp, tri)
    # Erase, then insert again: freed rows are reused in the same order.
    gone = big[::3]
    assert cpp.tables[0].erase(gone) == tri.tables[0].erase(gone)
    again = torch.cat([gone.flip(0), torch.tensor([99, 100])])
    assert torch.equal(cpp.tables[0].find_or_insert(again), tri.tables[0].find_or_insert(again).cpu())
    assert_groups_equal(cpp, tri)


# ----------------------------------------------------------------------------- pooled forward
def _ec_pair(combiner, missing="zeros", device="cpu", **kw):
    configs = [TableConfig("u", 6, ["u0", "u1"], combiner=combiner, seed=1, missing=missing, **kw),
               TableConfig("i", 6, ["i0"], combiner=combiner, seed=2, missing=missing, **kw)]
    out = "keyed" if combiner else "dict"
    # The batches also carry a key "x" that no table serves (the kernels skip its values).
    return (EmbeddingCollection(configs, output=out, backend="cpp", extra_keys=["x"]),
            EmbeddingCollection(configs, output=out, backend="triton", device=device, extra_keys=["x"]))


def _kjt(gen, keys=("u0", "x", "u1", "i0"), batch_size=4, weighted=False):
    KeyedJaggedTensor = pytest.importorskip("torchrec.sparse.jagged_tensor").KeyedJaggedTensor

    values, offsets, weights = batch(gen, n_bags=len(keys) * batch_size)
    return KeyedJaggedTensor(keys=list(keys), values=values, offsets=offsets, weights=weights if weighted else None)


def _same_outputs(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            x, y = a[k], b[k]
            x, y = (x.values(), y.values()) if hasattr(x, "lengths") else (x, y)
            assert torch.equal(x, y.cpu()), k
    else:
        assert a.keys() == b.keys()
        assert torch.equal(a.values(), b.values().cpu())


@pytest.mark.parametrize("combiner,weighted", [("sum", False), ("sum", True), ("mean", False), (None, True)])
def test_lookup_forward_equals_the_cpu(combiner, weighted, gen, device):
    cpp, tri = _ec_pair(combiner, device=device)
    for _ in range(2):  # the second batch has hits and new ids
        kjt = _kjt(gen, weighted=weighted)
        _same_outputs(cpp(kjt), tri(kjt.to(device)))
    for g_cpp, g_tri in zip(cpp.groups, tri.groups):
        assert_groups_equal(g_cpp, g_tri)


@pytest.mark.parametrize("missing", ["zeros", "init"])
def test_eval_lookup_of_absent_ids(missing, gen, device):
    cpp, tri = _ec_pair("sum", missing=missing, device=device)
    kjt = _kjt(gen)
    cpp(kjt), tri(kjt.to(device))
    cpp.eval(), tri.eval()
    kjt = _kjt(gen)
    _same_outputs(cpp(kjt), tri(kjt.to(device)))
    ids = torch.tensor([INT64_MIN, 424242, INT64_MAX])
    assert torch.equal(cpp.tables()["u"].lookup(ids), tri.tables()["u"].lookup(ids).cpu())


def test_raw_op_outputs_match(gen):
    """unique_rows and inverse of lookup_forward are the same tensors as C++'s."""
    from recis._ops import kernels

    cpp, tri = pair(dim=3, names=("a", "b"), seeds=(1, 2))
    values, offsets, _ = batch(gen, n_bags=8)
    for g in (cpp, tri):
        g.out = kernels(g).lookup_forward([g.token], [g.handle], values, offsets, None, [0, -1, 1, 0], 2,
                                          [0, 0, 3, 6], 9, [0], 1)
    for x, y in zip(cpp.out, tri.out):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- backward + optimizers
OPTIMIZERS = {
    "sgd": lambda t, f: SparseSGD(t, lr=0.3, weight_decay=0.01, fused=f),
    "adagrad": lambda t, f: SparseAdagrad(t, lr=0.2, lr_decay=0.01, weight_decay=0.02, fused=f),
    "rowwise": lambda t, f: SparseRowwiseAdagrad(t, lr=0.2, fused=f),
    "rowwise_wd": lambda t, f: SparseRowwiseAdagrad(t, lr=0.2, weight_decay=0.01, fused=f),
    "adam": lambda t, f: SparseAdam(t, lr=0.05, weight_decay=0.01, fused=f),
    "adamw": lambda t, f: SparseAdamW(t, lr=0.05, fused=f),
    "ftrl": lambda t, f: SparseFTRL(t, lr=0.2, l1=0.001, l2=0.01, fused=f),
}


def _train(emb, opt, gen, fused, combiner, steps=2, accumulate=1):
    dev = emb.group.device
    for _ in range(steps):
        for _ in range(accumulate):
            values, offsets, weights = (t.to(dev) for t in batch(gen, n_bags=5))
            out = emb(values, offsets if combiner else None, weights if combiner == "sum" else None)
            target = torch.randn(out.shape, generator=gen).to(dev)
            ((out - target) ** 2).sum().backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("name,dim", [(name, 7) for name in OPTIMIZERS] + [("rowwise", 37), ("rowwise_wd", 37)])
@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_updates_equal_the_cpu(name, dim, fused, device):
    """dim 37: row-wise Adagrad's sum of squares fills its 16 lanes twice and then a part of them."""
    combiner = {"sgd": "mean", "adagrad": None}.get(name, "sum")
    accumulate = 1 if fused else 2  # deferred mode also merges the gradients of two backwards
    results = []
    for backend, dev in (("cpp", "cpu"), ("triton", device)):
        emb = HashEmbedding(dim, combiner=combiner, initializer=Uniform(-0.5, 0.5), seed=3, backend=backend,
                            device=dev)
        opt = OPTIMIZERS[name](sparse_tables(emb), fused)
        _train(emb, opt, torch.Generator().manual_seed(5), fused, combiner, accumulate=accumulate)
        results.append(emb)
    assert_groups_equal(results[0].group, results[1].group)
    assert results[1].group.optimizer_step == 2


def test_hot_rows_are_summed_in_chunks(monkeypatch):
    """Rows seen more than hot_row_split times in a batch are summed chunk by chunk: the same
    gradient up to float rounding; rows seen less often stay bit for bit."""
    from recis.gpu.lookup import LookupOps

    monkeypatch.setattr(LookupOps, "hot_row_split", 2)
    values = torch.tensor([7, 7, 8, 7, 7, 7, 9, 8])
    offsets = torch.tensor([0, 2, 3, 6, 6, 8])
    grads = []
    for backend in ("cpp", "triton"):
        emb = HashEmbedding(3, combiner="mean", initializer=Constant(0.0), backend=backend)
        opt = SparseSGD(sparse_tables(emb), lr=1.0)
        out = emb(values, offsets)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(3)))
        opt.step()
        grads.append(-emb.table.lookup(torch.tensor([7, 8, 9])))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-6, atol=1e-6)  # 5 terms: chunked
    assert torch.equal(grads[1][1:], grads[0][1:])  # 2 and 1 terms: exact
    assert not torch.equal(grads[1][0], torch.zeros(3))


def test_ftrl_general_power_is_close(gen):
    """lr_power != -0.5: the GPU's n^p is exp2(p log2 n), not powf: equal to a few ulps."""
    exports_ = []
    for backend in ("cpp", "triton"):
        emb = HashEmbedding(4, initializer=Uniform(-0.5, 0.5), backend=backend)
        opt = SparseFTRL(sparse_tables(emb), lr=0.2, lr_power=-0.3, l2=0.01)
        _train(emb, opt, torch.Generator().manual_seed(1), False, "sum")
        exports_.append(sorted_export(emb.table.export()))
    torch.testing.assert_close(exports_[0]["rows"], exports_[1]["rows"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exports_[0]["slots"], exports_[1]["slots"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_nonfinite_gradients_like_the_cpu(skip, fused):
    outcomes = []
    for backend in ("cpp", "triton"):
        emb = HashEmbedding(3, initializer=Uniform(-0.5, 0.5), backend=backend)
        opt = SparseRowwiseAdagrad(sparse_tables(emb), lr=0.1, skip_nonfinite=skip, fused=fused)
        out = emb(torch.tensor([1, 2, 2, 3]), torch.tensor([0, 1, 3, 4]))
        grad = torch.ones_like(out)
        grad[1, 0] = float("nan")
        caught = None
        try:
            with pytest.warns(RuntimeWarning) if skip else _nothing():
                out.backward(grad)
                opt.step()
        except FloatingPointError as e:
            caught = type(e)
        outcomes.append((caught, opt.nonfinite_rows, sorted_export(emb.table.export())))
    assert outcomes[0][:2] == outcomes[1][:2]
    assert_exports_equal(outcomes[0][2], outcomes[1][2])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------- admission, eviction
def test_admission_and_lfu_eviction_like_the_cpu(gen, device):
    kw = dict(initializer=Uniform(-1, 1), admission=FrequencyAdmission(min_count=2, sketch_width=65521),
              eviction=LFUEviction(capacity=12, evict_fraction=0.25))
    cpp, tri = pair(dim=3, device=device, **kw)
    pool = torch.arange(-20, 20)
    for _ in range(6):
        values, offsets, _ = batch(gen, n_bags=6, max_len=5, pool=pool)
        with torch.no_grad():  # no backward follows: rows of this batch are not protected
            for g in (cpp, tri):
                g.lookup(values.to(g.device), offsets.to(g.device), None, [0], 6, [0], 3, 0, True)
        assert_groups_equal(cpp, tri)
        assert torch.equal(cpp._impl.get_sketch(), tri._impl.get_sketch().cpu())
    assert cpp.stats()["evictions"] > 0 and cpp.stats()["not_admitted"] > 0


def test_ttl_eviction_like_the_cpu(gen):
    cpp, tri = pair(dim=2, eviction=TTLEviction(ttl_steps=2, interval_steps=3))
    for step in range(8):
        values = torch.tensor([step, step + 1, -step, INT64_MIN + step])
        with torch.no_grad():
            for g in (cpp, tri):
                g.lookup(values, torch.tensor([0, 2, 4]), None, [0], 2, [0], 2, 1, True)
        assert_groups_equal(cpp, tri)
    assert cpp.stats()["evictions"] > 0


def test_capacity_without_eviction_refuses_the_batch_like_the_cpu():
    cpp, tri = pair(dim=2, capacity=3)
    for g in (cpp, tri):
        g.tables[0].find_or_insert(torch.tensor([1, 2]))
        with pytest.raises(RuntimeError, match="capacity reached"):
            g.lookup(torch.tensor([3, 4]), torch.tensor([0, 2]), None, [0], 1, [0], 2, 0, True)
        assert g.step == 0 and len(g) == 2


# ----------------------------------------------------------------------------- moving tables
def test_group_moves_between_backends_with_its_state(gen):
    emb = HashEmbedding(4, initializer=Uniform(-0.5, 0.5), admission=FrequencyAdmission(min_count=1))
    opt = SparseAdam(sparse_tables(emb), lr=0.1)
    _train(emb, opt, gen, False, "sum")
    before = exports(emb.group)
    emb.group.to("cpu", backend="triton")
    assert emb.group.backend == "triton"
    assert all(torch.equal(x[k], y[k]) for x, y in zip(before, exports(emb.group)) for k in x)
    _train(emb, opt, gen, False, "sum")  # the attached optimizer keeps working on the new backend
    state = emb.state_dict()
    twin = HashEmbedding(4, initializer=Uniform(-0.5, 0.5), admission=FrequencyAdmission(min_count=1))
    twin.load_state_dict(state)
    assert_exports_equal(cpu_export(emb.table), twin.table.export())


def test_pending_gradients_block_a_move():
    emb = HashEmbedding(2)
    opt = SparseSGD(sparse_tables(emb), lr=0.1)  # noqa: F841  (held: gradients wait for it)
    emb(torch.tensor([1]), torch.tensor([0, 1])).sum().backward()
    with pytest.raises(RuntimeError, match="step\\(\\) or zero_grad\\(\\)"):
        emb.group.to("cpu", backend="triton")


def test_bad_input_is_named():
    tri = TableGroup(2, ["t"], [1], backend="triton")
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        tri.lookup(torch.tensor([1, 2]), torch.tensor([0, 2, 1, 2]), None, [0], 3, [0], 2, 0, True)
    with pytest.raises(ValueError, match="backend must be one of"):
        TableGroup(2, ["t"], [1], backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_module_to_cuda_keeps_its_state(gen):
    emb = HashEmbedding(4, initializer=Uniform(-0.5, 0.5))
    opt = SparseRowwiseAdagrad(sparse_tables(emb), lr=0.1)
    _train(emb, opt, gen, False, "sum")
    before = exports(emb.group)
    emb.cuda()
    assert emb.group.device.type == "cuda" and emb.group.backend == "triton"
    after = exports(emb.group)
    assert all(torch.equal(x[k], y[k].cpu()) for x, y in zip(before, after) for k in x)
    values, offsets, _ = batch(gen)
    out = emb(values.cuda(), offsets.cuda())
    assert out.device.type == "cuda"
    emb.cpu()
    assert emb.group.backend == "cpp"



@pytest.mark.slow
def test_kernels_under_triton_interpret_env(tmp_path):
    """With TRITON_INTERPRET=1 set before Triton is imported (the usual way to run Triton on a
    CPU), the kernels give the C++ results too."""
    import os
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text(
        "import torch\n"
        "from recis.nn import HashEmbedding, Normal\n"
        "from recis.optim import SparseAdagrad\n"
        "ids, off = torch.tensor([3, -1, 2**63 - 1, 3, 0]), torch.tensor([0, 2, 2, 5])\n"
        "res = []\n"
        "for backend in ('cpp', 'triton'):\n"
        "    emb = HashEmbedding(5, combiner='mean', initializer=Normal(0.0, 0.3), backend=backend)\n"
        "    opt = SparseAdagrad([emb.table], lr=0.1, fused=True)\n"
        "    emb(ids, off).pow(2).sum().backward()\n"
        "    res.append((emb(ids, off).detach(), emb.table.lookup(ids)))\n"
        "assert all(torch.equal(a, b) for a, b in zip(*res)), res\n"
        "print('same')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same" in done.stdout, done.stderr[-2000:]
