"""The torch ops under torch.ops.recis: schemas, and fake kernels (shapes / dtypes, no C++ state)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import recis  # noqa: F401  (registers the ops)
from recis.nn import HashEmbedding, Uniform

ops = torch.ops.recis

SCHEMAS = {
    "lookup_forward": "recis::lookup_forward(Tensor(a!)[] tokens, int[] tables, Tensor values, Tensor offsets, "
                      "Tensor? weights, int[] feature_ns, int batch_size, int[] col_offsets, int out_cols, "
                      "int[] combiners, int lookup_mode) -> (Tensor, Tensor, Tensor)",
    "lookup_backward": "recis::lookup_backward(Tensor(a!)[] tokens, int[] tables, Tensor grad_out, Tensor offsets, "
                       "Tensor? weights, Tensor unique_rows, Tensor inverse, int[] feature_ns, int batch_size, "
                       "int[] col_offsets, int out_cols, int[] combiners) -> ()",
    "lookup_backward_apply": "recis::lookup_backward_apply(Tensor(a!)[] tokens, int[] tables, Tensor grad_out, "
                             "Tensor offsets, Tensor? weights, Tensor unique_rows, Tensor inverse, int[] feature_ns, "
                             "int batch_size, int[] col_offsets, int out_cols, int[] combiners, int[] kinds, "
                             "float[] hyper) -> Tensor",
    "apply_update": "recis::apply_update(Tensor(a!) token, int table, int kind, float[] hyper, "
                    "bool skip_nonfinite) -> Tensor",
    "clear_pending": "recis::clear_pending(Tensor(a!)[] tokens, int[] tables) -> ()",
    "find": "recis::find(int table, int ns, Tensor ids) -> Tensor",
    "find_or_insert": "recis::find_or_insert(Tensor(a!) token, int table, int ns, Tensor ids) -> Tensor",
    "erase": "recis::erase(Tensor(a!) token, int table, int ns, Tensor ids) -> int",
    "gather": "recis::gather(int table, Tensor rows) -> Tensor",
}


def _norm(schema: str) -> str:
    return " ".join(schema.split())


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_op_exists_with_documented_schema(name):
    op = getattr(ops, name)
    got = _norm(str(op.default._schema))
    if name == "erase":  # a symbolic count (SymInt) is the same op to eager callers
        got = got.replace("-> SymInt", "-> int")
    assert got == _norm(SCHEMAS[name])


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_op_has_cpu_and_fake_kernels(name):
    qualname = f"recis::{name}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU")
    # register_fake installs a Meta kernel (or a fake impl looked up by FakeTensorMode)
    from torch._library.simple_registry import singleton
    assert singleton.find(qualname).fake_impl.kernel is not None, f"{name} has no fake kernel"


def test_mutating_ops_declare_the_token_mutation():
    for name in ("lookup_forward", "lookup_backward", "lookup_backward_apply", "apply_update", "clear_pending",
                 "find_or_insert", "erase"):
        schema = getattr(ops, name).default._schema
        token = schema.arguments[0]
        assert token.name in ("token", "tokens")  # the lookup ops take a list of tables: a token each
        assert token.alias_info is not None and token.alias_info.is_write, name
    for name in ("find", "gather"):
        schema = getattr(ops, name).default._schema
        assert not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments), name


# --------------------------------------------------------------------------- fake kernels

def _emb(dim=6):
    emb = HashEmbedding(dim, combiner="sum", initializer=Uniform(-1, 1), seed=0)
    emb.table.find_or_insert(torch.tensor([1, 2, 3]))
    return emb


def _is_dynamic(size) -> bool:
    return isinstance(size, torch.SymInt) and not size.node.has_hint()


def _fake_mode():
    return FakeTensorMode(shape_env=ShapeEnv())


@pytest.mark.parametrize("combiner,batch", [(0, 3), (1, 3), (0, 0)])
def test_fake_lookup_forward_pooled(combiner, batch):
    emb = _emb(6)
    h = emb.group.handle
    n_real = len(emb.table)
    with _fake_mode():
        token = torch.zeros(1, dtype=torch.int64)
        values = torch.empty(7 if batch else 0, dtype=torch.int64)
        offsets = torch.empty(batch + 1, dtype=torch.int64)
        weights = torch.empty(values.shape[0], dtype=torch.float32)
        out, unique, inverse = ops.lookup_forward([token], [h], values, offsets, weights, [0], batch, [0], 6,
                                                  [combiner], 1)
        assert out.shape == (batch, 6) and out.dtype == torch.float32
        assert unique.dim() == 2 and unique.dtype == torch.int64
        # either a data-dependent size (the unique rows) or a static one slot per value
        assert _is_dynamic(unique.shape[1]) or unique.shape == (1, values.shape[0]), unique.shape
        assert inverse.shape == (1, values.shape[0]) and inverse.dtype == torch.int32
    assert len(emb.table) == n_real, "fake kernels must not touch the table"
    assert emb.group.step == 0


def test_fake_lookup_forward_multi_feature_out_cols():
    emb = _emb(4)
    with _fake_mode():
        token = torch.zeros(1, dtype=torch.int64)
        values = torch.empty(9, dtype=torch.int64)
        offsets = torch.empty(3 * 2 + 1, dtype=torch.int64)
        out, unique, inverse = ops.lookup_forward([token], [emb.group.handle], values, offsets, None, [0, -1, 0],
                                                  2, [0, 0, 4], 8, [0], 0)
        assert out.shape == (2, 8) and out.dtype == torch.float32
        assert inverse.shape == (1, 9) and inverse.dtype == torch.int32


def test_fake_lookup_forward_unpooled():
    emb = _emb(5)
    with _fake_mode():
        token = torch.zeros(1, dtype=torch.int64)
        values = torch.empty(11, dtype=torch.int64)
        offsets = torch.empty(4, dtype=torch.int64)
        out, unique, inverse = ops.lookup_forward([token], [emb.group.handle], values, offsets, None, [0], 3, [0], 0,
                                                  [2], 1)
        assert out.shape == (11, 5) and out.dtype == torch.float32
        assert inverse.shape == (1, 11) and inverse.dtype == torch.int32


def test_fake_lookup_forward_matches_real_dtypes_and_shapes():
    emb = _emb(6)
    values, offsets = torch.tensor([1, 2, 2, 9]), torch.tensor([0, 1, 4])
    real = ops.lookup_forward([emb.group.token], [emb.group.handle], values, offsets, None, [0], 2, [0], 6, [0], 0)
    with _fake_mode() as mode:
        fake = ops.lookup_forward([mode.from_tensor(emb.group.token)], [emb.group.handle], mode.from_tensor(values),
                                  mode.from_tensor(offsets), None, [0], 2, [0], 6, [0], 0)
    for r, f in zip(real, fake):
        assert r.dtype == f.dtype and r.device == f.device and r.dim() == f.dim()
    assert real[0].shape == fake[0].shape and real[2].shape == fake[2].shape
    if _is_dynamic(fake[1].shape[1]):
        assert real[1].shape == (1, 3)  # unique ids 1, 2, 9
    else:  # a static size promises exactly that size from the real kernel too
        assert real[1].shape == fake[1].shape, (real[1].shape, fake[1].shape)


def test_fake_table_ops_shapes_and_no_side_effects():
    emb = _emb(6)
    h = emb.group.handle
    n_real = len(emb.table)
    with _fake_mode():
        token = torch.zeros(1, dtype=torch.int64)
        ids = torch.empty(5, dtype=torch.int64)
        rows = ops.find(h, 0, ids)
        assert rows.shape == (5,) and rows.dtype == torch.int64
        rows = ops.find_or_insert(token, h, 0, ids)
        assert rows.shape == (5,) and rows.dtype == torch.int64
        out = ops.gather(h, rows)
        assert out.shape == (5, 6) and out.dtype == torch.float32
        res = ops.apply_update(token, h, 0, [0.1, 0.0], False)
        assert res.shape == (2,) and res.dtype == torch.int64
        assert ops.clear_pending([token], [h]) is None
        assert ops.lookup_backward([token], [h], torch.empty(2, 6), torch.empty(3, dtype=torch.int64), None,
                                   torch.empty(1, 5, dtype=torch.int64), torch.empty(1, 5, dtype=torch.int32), [0], 2,
                                   [0], 6, [0]) is None
        res = ops.lookup_backward_apply([token], [h], torch.empty(2, 6), torch.empty(3, dtype=torch.int64), None,
                                        torch.empty(1, 5, dtype=torch.int64), torch.empty(1, 5, dtype=torch.int32),
                                        [0], 2, [0], 6, [0], [0], [0.1, 0.0])
        assert res.shape == (1, 2) and res.dtype == torch.int64
    assert len(emb.table) == n_real
    assert bool((emb.table.find(torch.tensor([1, 2, 3])) >= 0).all())


def test_fake_erase_returns_a_count_without_touching_the_table():
    """erase's fake kernel returns a data-dependent count; calling the op under FakeTensorMode
    must give back an int / SymInt, not fail, and must not erase anything."""
    emb = _emb(6)
    with _fake_mode():
        token = torch.zeros(1, dtype=torch.int64)
        erased = ops.erase(token, emb.group.handle, 0, torch.empty(5, dtype=torch.int64))
        assert isinstance(erased, (int, torch.SymInt))
    assert len(emb.table) == 3


def test_real_ops_return_documented_dtypes():
    emb = _emb(6)
    h, token = emb.group.handle, emb.group.token
    t0 = int(token)
    ids = torch.tensor([3, 1, 77])
    rows = ops.find(h, 0, ids)
    assert rows.dtype == torch.int64 and rows.tolist()[2] == -1
    assert int(token) == t0, "find does not bump the token"
    rows = ops.find_or_insert(token, h, 0, ids)
    assert rows.dtype == torch.int64 and bool((rows >= 0).all())
    assert int(token) > t0, "find_or_insert bumps the token (declared mutation)"
    g = ops.gather(h, torch.tensor([int(rows[0]), -1]))
    assert g.shape == (2, 6) and g.dtype == torch.float32
    assert torch.equal(g[1], torch.zeros(6)), "row -1 gathers zeros"
    with pytest.raises(IndexError):
        ops.gather(h, torch.tensor([10**6]))
    assert ops.erase(token, h, 0, torch.tensor([3, 3, 12345])) == 1
