"""One dispatcher: every table op is one torch.ops.recis op with a C++ CPU kernel, a Triton CUDA
kernel and a fake kernel. Triton tables on the CPU run the CUDA kernel through an explicit
redispatch (recis._ops.kernels). The table-free ops (dedup_jagged, pool_rows, pool_rows_backward)
are checked bit for bit against C++ with the Triton kernels in the interpreter, and torch.compile
is checked to capture the table ops of both backends where the dispatcher can pick the kernel."""
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from conftest import EXTREME_IDS, offsets_for
from recis._ops import kernels
from recis.nn import HashEmbedding, Uniform

pytest.importorskip("triton")

ops = torch.ops.recis
TABLE_OPS = ("lookup_forward", "lookup_backward", "lookup_backward_apply", "apply_update", "clear_pending", "find",
             "find_or_insert", "erase", "gather", "dedup_jagged", "pool_rows", "pool_rows_backward")
CPU = SimpleNamespace(backend="cpp", device=torch.device("cpu"))
INTERPRETED = SimpleNamespace(backend="triton", device=torch.device("cpu"))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def triton_on(request):
    """The Triton kernels on the CPU (interpreter) and, when present, on CUDA (compiled)."""
    return SimpleNamespace(backend="triton", device=torch.device(request.param))


def _to(dev, *ts):
    return [t.to(dev) if isinstance(t, torch.Tensor) else t for t in ts]


@pytest.mark.parametrize("name", TABLE_OPS)
def test_every_table_op_has_cpu_cuda_and_fake_kernels(name):
    from torch._library.simple_registry import singleton

    qualname = f"recis::{name}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU"), f"{name}: no C++ kernel"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"), f"{name}: no Triton kernel"
    assert singleton.find(qualname).fake_impl.kernel is not None, f"{name}: no fake kernel"


def test_kernels_are_chosen_by_device_not_by_table():
    cpp = HashEmbedding(4, seed=1, backend="cpp")
    tri = HashEmbedding(4, seed=1, backend="triton")
    assert kernels(cpp.group) is ops
    assert kernels(SimpleNamespace(backend="triton", device=torch.device("cuda", 0))) is ops
    assert kernels(tri.group) is not ops
    ids = torch.tensor([5, 6, 5])
    assert torch.equal(kernels(tri.group).find_or_insert(tri.group.token, tri.group.handle, 0, ids),
                       kernels(cpp.group).find_or_insert(cpp.group.token, cpp.group.handle, 0, ids))
    # CPU tensors reach the C++ kernel whatever the handle: it knows no Triton table.
    with pytest.raises(ValueError, match="unknown table handle"):
        ops.find(tri.group.handle, 0, ids)


# ----------------------------------------------------------------------------- table-free ops
def _jagged(gen, feature_ns, batch, max_len=5):
    """A KeyedJaggedTensor-ordered batch with duplicates, empty bags and the int64 extremes."""
    pool = torch.tensor(EXTREME_IDS + [5, 6, 7, 123456789], dtype=torch.int64)
    lengths = torch.randint(0, max_len + 1, (len(feature_ns) * batch,), generator=gen).tolist()
    if lengths:
        lengths[0] = 0
    values = pool[torch.randint(0, pool.numel(), (sum(lengths),), generator=gen)]
    return values, offsets_for(lengths), torch.rand(values.numel(), generator=gen)


LAYOUTS = [([0], 4), ([0, 0, 1], 3), ([1, -1, 0, 1], 2), ([-1, 2], 3), ([0], 0)]


@pytest.mark.parametrize("feature_ns,batch", LAYOUTS)
def test_dedup_jagged_bit_equal(gen, feature_ns, batch, triton_on):
    values, offsets, _ = _jagged(gen, feature_ns, batch)
    want = kernels(CPU).dedup_jagged(values, offsets, feature_ns, batch)
    got = kernels(triton_on).dedup_jagged(*_to(triton_on.device, values, offsets), feature_ns, batch)
    for name, w, g in zip(("ids", "ns", "counts", "inverse"), want, got):
        assert g.device == triton_on.device and w.dtype == g.dtype and torch.equal(w, g.cpu()), name


def _pool_case(gen, feature_ns, batch, dim):
    values, offsets, weights = _jagged(gen, feature_ns, batch)
    ids, _, _, inverse = ops.dedup_jagged(values, offsets, feature_ns, batch)
    rows = torch.randn(ids.numel() + 2, dim, generator=gen)  # two rows no value uses
    col_offsets = [f * dim for f in range(len(feature_ns))]
    return rows, inverse, offsets, weights, col_offsets, len(feature_ns) * dim


@pytest.mark.parametrize("feature_ns,batch", LAYOUTS)
@pytest.mark.parametrize("combiner", [0, 1])
@pytest.mark.parametrize("weighted", [False, True])
def test_pool_rows_and_backward_bit_equal(gen, feature_ns, batch, combiner, weighted, triton_on):
    dim, dev = 6, triton_on.device
    rows, inverse, offsets, weights, col_offsets, out_cols = _pool_case(gen, feature_ns, batch, dim)
    w = weights if weighted else None
    args = (rows, inverse, offsets, w, feature_ns, batch, col_offsets, out_cols, combiner)
    want, got = kernels(CPU).pool_rows(*args), kernels(triton_on).pool_rows(*_to(dev, *args)).cpu()
    assert want.shape == got.shape == (batch, out_cols)
    # skipped features leave their columns as allocated: compare the columns that are written
    live = [c for f, c0 in zip(feature_ns, col_offsets) if f >= 0 for c in range(c0, c0 + dim)]
    assert torch.equal(want[:, live], got[:, live])
    grad = torch.randn(batch, out_cols, generator=gen)
    bargs = (grad, inverse, offsets, w, feature_ns, batch, col_offsets, out_cols, combiner, rows.shape[0], dim)
    want = kernels(CPU).pool_rows_backward(*bargs)
    got = kernels(triton_on).pool_rows_backward(*_to(dev, *bargs)).cpu()
    assert want.shape == got.shape == rows.shape
    assert torch.equal(want, got)
    assert torch.equal(got[-2:], torch.zeros(2, dim)), "rows no value uses get a zero gradient"


@pytest.mark.parametrize("feature_ns,batch", [([1, -1, 0, 1], 2), ([-1, 2], 3)])
def test_pool_rows_backward_ignores_skipped_features(gen, feature_ns, batch, triton_on):
    """Values of a skipped feature (ns < 0) add nothing to the gradient, whatever rows their
    inverse names: the same gradient as with -1 there, on both kernels."""
    dim = 6
    rows, inverse, offsets, weights, col_offsets, out_cols = _pool_case(gen, feature_ns, batch, dim)
    pointed = inverse.clone()
    for f, ns in enumerate(feature_ns):
        s, e = offsets[f * batch].item(), offsets[(f + 1) * batch].item()
        if ns < 0:
            assert e > s, "the case needs values in the skipped feature"
            pointed[s:e] = torch.arange(e - s) % rows.shape[0]
    grad = torch.randn(batch, out_cols, generator=gen)
    for combiner in (0, 1):
        want = kernels(CPU).pool_rows_backward(grad, inverse, offsets, weights, feature_ns, batch, col_offsets,
                                               out_cols, combiner, rows.shape[0], dim)
        for k in (CPU, triton_on):
            got = kernels(k).pool_rows_backward(*_to(k.device, grad, pointed, offsets, weights), feature_ns, batch,
                                                col_offsets, out_cols, combiner, rows.shape[0], dim)
            assert torch.equal(got.cpu(), want), k.backend


def test_pool_rows_matches_an_independent_reference(gen):
    """sum / mean of weight * row over each bag, written with plain torch (no recis kernel)."""
    feature_ns, batch, dim = [0, 1], 3, 4
    rows, inverse, offsets, weights, col_offsets, out_cols = _pool_case(gen, feature_ns, batch, dim)
    for combiner in (0, 1):
        got = kernels(INTERPRETED).pool_rows(rows, inverse, offsets, weights, feature_ns, batch, col_offsets,
                                             out_cols, combiner)
        for k in range(len(feature_ns) * batch):
            f, b = divmod(k, batch)
            s, e = offsets[k].item(), offsets[k + 1].item()
            ref = (weights[s:e, None] * rows[inverse[s:e].long()]).sum(0) if e > s else torch.zeros(dim)
            if combiner == 1 and e > s:
                ref = ref / (e - s)
            torch.testing.assert_close(got[b, col_offsets[f]:col_offsets[f] + dim], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [CPU, INTERPRETED], ids=["cpp", "triton"])
def test_pool_rows_errors_name_the_argument(gen, k):
    rows, inverse, offsets, weights, col_offsets, out_cols = _pool_case(gen, [0], 3, 4)
    with pytest.raises(ValueError, match="pool_rows pools"):
        kernels(k).pool_rows(rows, inverse, offsets, None, [0], 3, col_offsets, out_cols, 2)
    bad = inverse.clone()
    bad[-1] = rows.shape[0]
    with pytest.raises(ValueError, match="inverse"):
        kernels(k).pool_rows(rows, bad, offsets, None, [0], 3, col_offsets, out_cols, 0)
    with pytest.raises(ValueError, match="output gradient"):
        kernels(k).pool_rows_backward(torch.zeros(2, out_cols), inverse, offsets, None, [0], 3, col_offsets,
                                      out_cols, 0, rows.shape[0], 4)
    with pytest.raises(TypeError, match="int64"):
        kernels(k).dedup_jagged(torch.zeros(3, dtype=torch.int32), offsets, [0], 3)


# ----------------------------------------------------------------------------- torch.compile
class _Model(torch.nn.Module):
    def __init__(self, backend, device="cpu"):
        super().__init__()
        self.emb = HashEmbedding(8, combiner="sum", initializer=Uniform(-0.5, 0.5), seed=3, backend=backend,
                                 device=device)
        self.lin = torch.nn.Linear(8, 1, device=device)

    def forward(self, values, offsets):
        return self.lin(self.emb(values, offsets)).squeeze(-1)


def _compile_report(model, values, offsets):
    """(graph breaks, whether the lookup op is a node of the captured graphs, output) of one
    compiled forward. Breaks are Dynamo's own count: explain() leaves out a break that
    precedes any captured op, so the counter of every break is read as well."""
    torch._dynamo.reset()
    counters.clear()
    targets = []

    def record(gm, example_inputs):
        for mod in gm.modules():
            if isinstance(mod, torch.fx.GraphModule):
                targets.extend(str(n.target) for n in mod.graph.nodes)
        return gm.forward

    out = torch.compile(model, backend=record)(values, offsets)
    breaks = sum(counters["graph_break"].values())
    explained = torch._dynamo.explain(model)(values, offsets).graph_break_count
    torch._dynamo.reset()
    return max(breaks, explained), any("recis.lookup_forward" in t for t in targets), out


BATCH = (torch.tensor([1, 2, 3, 2]), torch.tensor([0, 2, 4]))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_cpp_tables_compile_without_graph_breaks(train):
    model = _Model("cpp").train(train)
    breaks, captured, _ = _compile_report(model, *BATCH)
    assert breaks == 0 and captured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_cuda_tables_compile_with_the_graph_breaks_of_the_cpu(train):
    cpu = _compile_report(_Model("cpp").train(train), *BATCH)
    gpu = _compile_report(_Model("triton", "cuda").train(train), *(t.cuda() for t in BATCH))
    assert gpu[0] == cpu[0] == 0 and gpu[1] and cpu[1]


class _Scorer(torch.nn.Module):
    def __init__(self, backend, device="cpu"):
        super().__init__()
        self.emb = HashEmbedding(8, combiner="sum", initializer=Uniform(-0.5, 0.5), seed=3, backend=backend,
                                 device=device)

    def forward(self, values, offsets):
        return (self.emb(values, offsets) * 2).sum(-1)


def test_cuda_tables_trace_like_cpu_tables_without_a_gpu():
    """Without a GPU: a Triton table on a fake CUDA device (FakeTensorMode: its tensors have
    shapes and a device, no data) compiles an eval-mode model with the graph breaks of the C++
    table, none, and the lookup op in the graph (the graph runs on fake tensors: fake kernels, no
    Triton launch). Training needs a real device: autograd's gradient edge for a CUDA leaf asks
    for the CUDA runtime, which a CPU-only torch build lacks (test above, on a GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cpu = _compile_report(_Scorer("cpp").eval(), *BATCH)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        cuda = torch.device("cuda", 0)
        model = _Scorer("triton", cuda).eval()
        assert kernels(model.emb.group) is ops and model.emb.group.token.device == cuda
        gpu = _compile_report(model, *(t.to(cuda) for t in BATCH))
    assert gpu[0] == cpu[0] == 0 and gpu[1] and cpu[1]
    assert gpu[2].device == cuda and gpu[2].shape == cpu[2].shape


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_interpreted_triton_tables_run_the_lookup_outside_the_graph(train):
    """On the CPU both backends' inputs are CPU tensors, for which the dispatcher picks the C++
    kernel: a graph replays `recis.lookup_forward` by its tensors' device, so the interpreter's
    explicit CUDA redispatch cannot be a node of it. The compiled model breaks the graph there and
    runs the lookup eagerly, with the eager results."""
    torch.manual_seed(0)
    model = _Model("triton").train(train)
    ref = _Model("cpp").train(train)
    ref.lin.load_state_dict(model.lin.state_dict())
    breaks, captured, out = _compile_report(model, *BATCH)
    assert breaks > 0 and not captured
    torch.testing.assert_close(out, ref(*BATCH), rtol=0, atol=0)
