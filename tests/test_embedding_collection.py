"""EmbeddingCollection: KeyedJaggedTensor in, KeyedTensor (or dict) out.

References: each table's own find + gather, and torchrec's EmbeddingBagCollection holding the
same rows (indexed compactly per table) on a KJT whose ids were mapped to those indices.
"""
import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recis.nn import Constant, EmbeddingCollection, TableConfig, Uniform, sparse_tables
from recis.optim import SparseAdagrad, SparseSGD

RTOL, ATOL = 1e-6, 1e-6


def _configs():
    # a1 and c1 share a config (dim 4, sum, same initializer) -> one group; b has dim 8.
    init = Uniform(-1.0, 1.0)
    return [
        TableConfig("a", 4, ["fa1", "fa2"], initializer=init, seed=1),
        TableConfig("b", 8, ["fb"], initializer=init, seed=2),
        TableConfig("c", 4, ["fc"], initializer=init, seed=3),
    ]


def _kjt(weights=False, extra=True):
    # KJT in an order unlike the config order, with a feature no table names and empty bags.
    keys = ["fc", "fb", "fa1", "extra", "fa2"] if extra else ["fc", "fb", "fa1", "fa2"]
    per_key = {
        "fc": ([5, 5, 6], [2, 0, 1]),
        "fb": ([5, 1 << 62, -3, 7], [1, 2, 1]),
        "fa1": ([5, 9, 9, 10, -(2**63)], [3, 0, 2]),
        "extra": ([100, 101], [1, 1, 0]),
        "fa2": ([9, 11], [0, 1, 1]),
    }
    values = torch.tensor([v for k in keys for v in per_key[k][0]], dtype=torch.int64)
    lengths = torch.tensor([n for k in keys for n in per_key[k][1]], dtype=torch.int64)
    w = None
    if weights:
        w = torch.linspace(-2.0, 3.0, values.numel())
    return KeyedJaggedTensor.from_lengths_sync(keys, values, lengths, weights=w)


def _table_of(ec):
    return {f: c.name for c in ec.configs for f in c.feature_names}


def _expected_pooled(ec, kjt, combiner_of=None):
    """Per feature: pooled rows from the owning table's find + gather."""
    owner = _table_of(ec)
    tables = ec.tables()
    combiners = {c.name: c.combiner for c in ec.configs}
    out = {}
    for f, jt in kjt.to_dict().items():
        if f not in owner:
            continue
        t = tables[owner[f]]
        rows = t.find(jt.values())
        assert bool((rows >= 0).all()), f"{f}: ids were not inserted"
        emb = t.gather(rows)
        w = jt.weights_or_none()
        if w is not None:
            emb = emb * w[:, None]
        bags = []
        for piece, n in zip(torch.split(emb, jt.lengths().tolist()), jt.lengths().tolist()):
            s = piece.sum(0) if n else torch.zeros(t.embedding_dim)
            if combiners[owner[f]] == "mean" and n:
                s = s / n
            bags.append(s)
        out[f] = torch.stack(bags)
    return out


def _torchrec_reference(ec, kjt, weighted=False):
    """A torchrec EmbeddingBagCollection holding the same rows, and the KJT mapped to its rows."""
    owner = _table_of(ec)
    tables = ec.tables()
    configs, index = [], {}
    for c in ec.configs:
        state = tables[c.name].export()
        index[c.name] = {i: k for k, i in enumerate(state["ids"].tolist())}
        configs.append(EmbeddingBagConfig(
            name=c.name, embedding_dim=c.embedding_dim, num_embeddings=max(1, len(index[c.name])),
            feature_names=list(c.feature_names),
            pooling=PoolingType.MEAN if c.combiner == "mean" else PoolingType.SUM))
    ebc = EmbeddingBagCollection(tables=configs, is_weighted=weighted)
    with torch.no_grad():
        for c in ec.configs:
            state = tables[c.name].export()
            ebc.embedding_bags[c.name].weight[:len(index[c.name])] = state["rows"]
    feats = [f for f in kjt.keys() if f in owner]
    d = kjt.to_dict()
    values = torch.cat([torch.tensor([index[owner[f]][i] for i in d[f].values().tolist()], dtype=torch.int64)
                        for f in feats])
    lengths = torch.cat([d[f].lengths() for f in feats])
    w = torch.cat([d[f].weights() for f in feats]) if weighted else None
    mapped = KeyedJaggedTensor.from_lengths_sync(feats, values, lengths, weights=w)
    return ebc, mapped, index


# --------------------------------------------------------------------------- forward

def test_keyed_output_keys_and_values():
    ec = EmbeddingCollection(_configs(), extra_keys="ignore")
    kjt = _kjt()
    kt = ec(kjt)
    assert isinstance(kt, KeyedTensor)
    # group {a, c} (dim 4) first, then {b}; inside a group: tables then features in config order
    assert kt.keys() == ["fa1", "fa2", "fc", "fb"]
    assert kt.length_per_key() == [4, 4, 4, 8]
    assert kt.values().shape == (3, 20)
    assert ec.feature_names() == ["fa1", "fa2", "fc", "fb"]
    expected = _expected_pooled(ec, kjt)
    got = kt.to_dict()
    assert set(got) == set(expected)
    for f in expected:
        torch.testing.assert_close(got[f].detach(), expected[f], rtol=RTOL, atol=ATOL)
    # features that no table names are ignored (never inserted anywhere)
    for t in ec.tables().values():
        assert bool((t.find(torch.tensor([100, 101])) < 0).all())


def test_matches_torchrec_embedding_bag_collection_forward_and_backward():
    configs = _configs()
    configs[1] = TableConfig("b", 8, ["fb"], combiner="mean", initializer=Uniform(-1, 1), seed=2)
    ec = EmbeddingCollection(configs, extra_keys="ignore")
    opt = SparseSGD(sparse_tables(ec), lr=1.0)
    kjt = _kjt()
    kt = ec(kjt)
    ebc, mapped, index = _torchrec_reference(ec, kjt)
    ref = ebc(mapped).to_dict()
    got = kt.to_dict()
    for f in ref:
        torch.testing.assert_close(got[f].detach(), ref[f].detach(), rtol=RTOL, atol=ATOL)

    g = torch.Generator().manual_seed(0)
    grads = {f: torch.randn(ref[f].shape, generator=g) for f in ref}
    sum(((got[f] * grads[f]).sum() for f in grads), torch.zeros(())).backward()
    sum(((ref[f] * grads[f]).sum() for f in grads), torch.zeros(())).backward()
    before = {name: t.export() for name, t in ec.tables().items()}
    opt.step()
    for name, t in ec.tables().items():
        state = t.export()
        assert sorted(state["ids"].tolist()) == sorted(before[name]["ids"].tolist())
        pos = [index[name][i] for i in state["ids"].tolist()]
        wgrad = ebc.embedding_bags[name].weight.grad[pos]
        prev = {i: r for i, r in zip(before[name]["ids"].tolist(), before[name]["rows"])}
        prev_rows = torch.stack([prev[i] for i in state["ids"].tolist()])
        torch.testing.assert_close(state["rows"], prev_rows - wgrad, rtol=RTOL, atol=ATOL)


def test_large_batch_matches_torchrec():
    """Enough values for the multi-threaded dedup / pooling paths, ids shared across features."""
    g = torch.Generator().manual_seed(0)
    configs = [TableConfig("a", 8, ["f1", "f2"], initializer=Uniform(-1, 1), seed=1),
               TableConfig("b", 8, ["f3"], combiner="mean", initializer=Uniform(-1, 1), seed=2)]
    ec = EmbeddingCollection(configs)
    keys, batch = ["f3", "f1", "f2"], 1500
    lengths = torch.randint(0, 8, (len(keys) * batch,), generator=g)
    pool = torch.randint(-(2**62), 2**62, (2000,), generator=g)
    values = pool[torch.randint(0, pool.numel(), (int(lengths.sum()),), generator=g)]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys, values, lengths)
    kt = ec(kjt)
    ebc, mapped, _ = _torchrec_reference(ec, kjt)
    ref = ebc(mapped).to_dict()
    for f in keys:
        torch.testing.assert_close(kt.to_dict()[f].detach(), ref[f].detach(), rtol=RTOL, atol=ATOL)


def test_weighted_kjt_matches_torchrec():
    ec = EmbeddingCollection(_configs(), extra_keys="ignore")
    kjt = _kjt(weights=True)
    kt = ec(kjt)
    expected = _expected_pooled(ec, kjt)
    ebc, mapped, _ = _torchrec_reference(ec, kjt, weighted=True)
    ref = ebc(mapped).to_dict()
    for f in expected:
        torch.testing.assert_close(kt.to_dict()[f].detach(), expected[f], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(kt.to_dict()[f].detach(), ref[f].detach(), rtol=RTOL, atol=ATOL)


def test_mean_combiner_and_empty_bags():
    ec = EmbeddingCollection([TableConfig("m", 4, ["f"], combiner="mean", initializer=Uniform(-1, 1))])
    kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 2, 3, 3]), torch.tensor([0, 3, 1, 0]))
    out = ec(kjt).to_dict()["f"]
    assert out.shape == (4, 4)
    torch.testing.assert_close(out.detach(), _expected_pooled(ec, kjt)["f"], rtol=RTOL, atol=ATOL)
    assert torch.equal(out[0].detach(), torch.zeros(4)) and torch.equal(out[3].detach(), torch.zeros(4))


def test_empty_batch():
    ec = EmbeddingCollection(_configs())
    keys = ["fa1", "fa2", "fb", "fc"]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys, torch.empty(0, dtype=torch.int64),
                                              torch.zeros(4 * 2, dtype=torch.int64))
    kt = ec(kjt)
    assert kt.values().shape == (2, 20)
    assert torch.equal(kt.values().detach(), torch.zeros(2, 20))


# --------------------------------------------------------------------------- groups, id spaces

def test_same_config_tables_share_one_group():
    ec = EmbeddingCollection([TableConfig("x", 4, ["fx"], seed=1), TableConfig("y", 4, ["fy"], seed=2)])
    assert len(ec.groups) == 1
    assert sorted(ec.groups[0].names) == ["x", "y"]
    tables = ec.tables()
    assert set(tables) == {"x", "y"}
    assert tables["x"].group is tables["y"].group
    assert tables["x"].name == "x"


@pytest.mark.parametrize("other", [
    dict(embedding_dim=8), dict(combiner="mean"), dict(initializer=Constant(0.5)), dict(missing="init"),
    dict(capacity=100),
], ids=["dim", "combiner", "initializer", "missing", "capacity"])
def test_different_config_gives_separate_groups(other):
    base = dict(embedding_dim=4, combiner="sum", initializer=None, missing="zeros", capacity=None)
    cfg = dict(base, **other)
    ec = EmbeddingCollection([TableConfig("x", 4, ["fx"]), TableConfig("y", feature_names=["fy"], **cfg)])
    assert len(ec.groups) == 2
    assert ec.tables()["x"].group is not ec.tables()["y"].group


def test_three_tables_two_groups():
    ec = EmbeddingCollection(_configs())
    assert len(ec.groups) == 2
    assert [sorted(g.names) for g in ec.groups] == [["a", "c"], ["b"]]


def test_same_raw_id_in_two_merged_tables_is_independent():
    # Same config and even the same seed: still two id spaces with their own rows.
    init = Uniform(-1, 1)
    ec = EmbeddingCollection([TableConfig("x", 4, ["fx"], initializer=init, seed=7),
                              TableConfig("y", 4, ["fy"], initializer=init, seed=7)])
    assert len(ec.groups) == 1
    opt = SparseSGD(sparse_tables(ec), lr=1.0)
    kjt = KeyedJaggedTensor.from_lengths_sync(["fx", "fy"], torch.tensor([42, 42]), torch.tensor([1, 1]))
    ec(kjt)
    x, y = ec.tables()["x"], ec.tables()["y"]
    rx, ry = x.find(torch.tensor([42])), y.find(torch.tensor([42]))
    assert int(rx) >= 0 and int(ry) >= 0 and int(rx) != int(ry)
    assert len(x) == 1 and len(y) == 1
    y_before = y.gather(ry)
    # train only fx: y's row for the same raw id must not move
    only_x = KeyedJaggedTensor.from_lengths_sync(["fx", "fy"], torch.tensor([42]), torch.tensor([1, 0]))
    out = ec(only_x).to_dict()
    out["fx"].sum().backward()
    x_before = x.gather(rx)
    opt.step()
    assert torch.equal(y.gather(ry), y_before)
    torch.testing.assert_close(x.gather(rx), x_before - 1.0, rtol=RTOL, atol=ATOL)
    # an id only ever seen by x is unknown to y
    ec(KeyedJaggedTensor.from_lengths_sync(["fx", "fy"], torch.tensor([77]), torch.tensor([1, 0])))
    assert int(x.find(torch.tensor([77]))) >= 0 and int(y.find(torch.tensor([77]))) == -1


def test_different_seeds_give_different_values_for_same_id():
    init = Uniform(-1, 1)
    ec = EmbeddingCollection([TableConfig("x", 4, ["fx"], initializer=init, seed=1),
                              TableConfig("y", 4, ["fy"], initializer=init, seed=2)])
    kt = ec(KeyedJaggedTensor.from_lengths_sync(["fx", "fy"], torch.tensor([42, 42]), torch.tensor([1, 1])))
    d = kt.to_dict()
    assert not torch.equal(d["fx"], d["fy"])


# --------------------------------------------------------------------------- dict output, unpooled

def test_dict_output_equals_keyed_output():
    kjt = _kjt()
    keyed = EmbeddingCollection(_configs(), extra_keys="ignore")
    as_dict = EmbeddingCollection(_configs(), output="dict", extra_keys="ignore")
    kt = keyed(kjt)
    d = as_dict(kjt)
    assert isinstance(d, dict)
    assert list(d) == kt.keys()
    for f, t in kt.to_dict().items():
        assert d[f].shape == (3, t.shape[1])
        assert torch.equal(d[f], t)


def test_unpooled_tables_give_jagged_tensors():
    init = Uniform(-1, 1)
    ec = EmbeddingCollection([TableConfig("seq", 4, ["hist", "hist2"], combiner=None, initializer=init),
                              TableConfig("p", 4, ["fp"], initializer=init)], output="dict")
    assert len(ec.groups) == 2
    keys = ["hist2", "fp", "hist"]
    lengths = torch.tensor([1, 0, 2, 1, 1, 1, 3, 0, 1])
    values = torch.tensor([1, 2, 3, 10, 20, 30, 5, 6, 7, 8, 9, 1])[: int(lengths.sum())]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys, values, lengths)
    out = ec(kjt)
    assert set(out) == {"hist", "hist2", "fp"}
    seq = ec.tables()["seq"]
    src = kjt.to_dict()
    for f in ("hist", "hist2"):
        jt = out[f]
        assert isinstance(jt, JaggedTensor)
        assert torch.equal(jt.lengths(), src[f].lengths())
        assert jt.values().shape == (src[f].values().numel(), 4)
        expected = seq.gather(seq.find(src[f].values()))
        torch.testing.assert_close(jt.values().detach(), expected, rtol=0, atol=0)
    assert out["fp"].shape == (3, 4)
    torch.testing.assert_close(out["fp"].detach(), _expected_pooled(ec, kjt)["fp"], rtol=RTOL, atol=ATOL)


def test_unpooled_gradient_reaches_rows():
    ec = EmbeddingCollection([TableConfig("seq", 4, ["h"], combiner=None, initializer=Uniform(-1, 1))],
                             output="dict")
    opt = SparseSGD(sparse_tables(ec), lr=1.0)
    kjt = KeyedJaggedTensor.from_lengths_sync(["h"], torch.tensor([3, 4, 3]), torch.tensor([2, 1]))
    jt = ec(kjt)["h"]
    t = ec.tables()["seq"]
    before = t.gather(t.find(torch.tensor([3, 4])))
    g = torch.tensor([[1.0, 2, 3, 4], [0.5, 0.5, 0.5, 0.5], [-1.0, 0, 1, 0]])
    jt.values().backward(g)
    opt.step()
    after = t.gather(t.find(torch.tensor([3, 4])))
    torch.testing.assert_close(after, before - torch.stack([g[0] + g[2], g[1]]), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- eval, torchrec model

def test_eval_mode_does_not_insert():
    ec = EmbeddingCollection(_configs(), extra_keys="ignore").eval()
    kt = ec(_kjt())
    assert torch.equal(kt.values(), torch.zeros(3, 20))
    assert all(len(t) == 0 for t in ec.tables().values())


class _TinyRanker(torch.nn.Module):
    """torchrec-style: sparse arch (KJT -> KeyedTensor), then a dense arch over to_dict()."""

    def __init__(self):
        super().__init__()
        self.sparse = EmbeddingCollection(_configs(), extra_keys="ignore")
        self.over = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def forward(self, kjt):
        kt = self.sparse(kjt)
        d = kt.to_dict()
        # regroup in a fixed order, independent of the collection's key order
        feats = torch.cat([d[f] for f in ("fa1", "fa2", "fb", "fc")], dim=1)
        return self.over(feats).squeeze(-1)


def test_drops_into_a_torchrec_style_model_and_trains():
    torch.manual_seed(0)
    model = _TinyRanker()
    sparse_opt = SparseAdagrad(sparse_tables(model), lr=0.2)
    dense_opt = torch.optim.Adam(model.parameters(), lr=0.02)
    assert len(list(model.parameters())) == 4, "only the dense arch has torch parameters"
    kjt = _kjt()
    y = torch.tensor([1.0, -1.0, 0.5])
    model(kjt)  # inserts the ids
    rows0 = {name: t.export() for name, t in model.sparse.tables().items()}
    losses = []
    for _ in range(30):
        loss = ((model(kjt) - y) ** 2).mean()
        loss.backward()
        sparse_opt.step(), dense_opt.step()
        sparse_opt.zero_grad(), dense_opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    for name, t in model.sparse.tables().items():
        state = t.export()
        assert sorted(state["ids"].tolist()) == sorted(rows0[name]["ids"].tolist())
        assert not torch.equal(state["rows"], rows0[name]["rows"]), f"table {name} did not train"
