"""torchrec's own model classes (DLRM, DLRM_DCN, DLRM_Projection, SimpleDeepFMNN) built and trained
with a recis EmbeddingCollection in place of their EmbeddingBagCollection.

References: a twin of each model built by torchrec on an EmbeddingBagCollection whose rows start
at recis' initial rows (ids mapped to compact indices), trained with plain SGD on both sides;
Python sets of the raw ids fed; the law of the tables' initializers written out.
"""
import copy
import dataclasses

import pytest
import torch

pytest.importorskip("torchrec")
from torchrec.models.deepfm import SimpleDeepFMNN  # noqa: E402
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection  # noqa: E402
from torchrec.modules.embedding_configs import DataType, PoolingType  # noqa: E402
from torchrec.modules.embedding_modules import EmbeddingBagCollection  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

from recis.distributed import ShardingEnv, shard, wrap_dense  # noqa: E402
from recis.distributed.local import run_local  # noqa: E402
from recis.nn import (EmbeddingCollection, LFUEviction, Normal, TableConfig, Uniform,  # noqa: E402
                      sparse_tables)
from recis.nn.torchrec_compat import UNBOUNDED_NUM_EMBEDDINGS, embedding_bag_config  # noqa: E402
from recis.optim import SparseAdam, SparseRowwiseAdagrad, SparseSGD  # noqa: E402

D, DENSE = 4, 3
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Raw 64-bit ids, as a feature pipeline hashes them: negative, huge, the int64 extremes.
USERS = [INT64_MIN, INT64_MAX, -1, 0, 2**62, -(2**62) + 7, 12345678901234, -987654321, 3, 2**40 + 1, -17, 99]
ITEMS = [INT64_MAX - 1, INT64_MIN + 1, 2**61 + 3, -(2**50), 5, 6, -7, 1 << 33, 424242, -31337]
CTX = [INT64_MIN, 2**63 - 5, -2, 8]
KEYS = ["ctx_id", "clicked_item_id", "user_id", "item_id"]  # KJT order unlike the config order


def table_configs(item_combiner="mean"):
    """Same dim (the models need it), but two configs that interleave: user and ctx form one
    table group, item (its own initializer and combiner; two features) another, so the output
    order is user_id, ctx_id, item_id, clicked_item_id while the TableConfig order is user, item, ctx."""
    init = Uniform(-0.5, 0.5)
    return [TableConfig("user", D, ["user_id"], initializer=init),
            TableConfig("item", D, ["item_id", "clicked_item_id"], combiner=item_combiner,
                        initializer=Uniform(-0.4, 0.4)),
            TableConfig("ctx", D, ["ctx_id"], initializer=init)]


OWNER = {f: c.name for c in table_configs() for f in c.feature_names}

MODELS = {
    "DLRM": lambda ebc: DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE, dense_arch_layer_sizes=[8, D],
                             over_arch_layer_sizes=[8, 1]),
    "DLRM_DCN": lambda ebc: DLRM_DCN(embedding_bag_collection=ebc, dense_in_features=DENSE,
                                     dense_arch_layer_sizes=[8, D], over_arch_layer_sizes=[8, 1], dcn_num_layers=2,
                                     dcn_low_rank_dim=4),
    "DLRM_Projection": lambda ebc: DLRM_Projection(embedding_bag_collection=ebc, dense_in_features=DENSE,
                                                   dense_arch_layer_sizes=[8, D], over_arch_layer_sizes=[8, 1],
                                                   interaction_branch1_layer_sizes=[8, 2 * D],
                                                   interaction_branch2_layer_sizes=[8, 2 * D]),
    "SimpleDeepFMNN": lambda ebc: SimpleDeepFMNN(num_dense_features=DENSE, embedding_bag_collection=ebc,
                                                 hidden_layer_size=8, deep_fm_dimension=4),
}


def loss_of(name, out, labels):
    out = out.squeeze(-1)
    if name == "SimpleDeepFMNN":  # its OverArch ends in a sigmoid: probabilities out
        return torch.nn.functional.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), labels)
    return torch.nn.functional.binary_cross_entropy_with_logits(out, labels)


class Task:
    """A learnable click task over raw ids: click iff score(user) + score(item) > 0."""

    def __init__(self, seed=7):
        g = torch.Generator().manual_seed(seed)
        self.user_score = dict(zip(USERS, (torch.rand(len(USERS), generator=g) * 2 - 1).tolist()))
        self.item_score = dict(zip(ITEMS, (torch.rand(len(ITEMS), generator=g) * 2 - 1).tolist()))
        self.g = torch.Generator().manual_seed(seed + 1)

    def batch(self, size, weighted=False):
        g = self.g
        pick = lambda pool, n: [pool[i] for i in torch.randint(0, len(pool), (n,), generator=g).tolist()]  # noqa
        clicked_len = torch.randint(0, 4, (size,), generator=g)  # empty bags included
        per_key = {"user_id": (pick(USERS, size), [1] * size), "item_id": (pick(ITEMS, size), [1] * size),
                   "clicked_item_id": (pick(ITEMS, int(clicked_len.sum())), clicked_len.tolist()),
                   "ctx_id": (pick(CTX, size), [1] * size)}
        values = torch.tensor([v for k in KEYS for v in per_key[k][0]], dtype=torch.int64)
        lengths = torch.tensor([n for k in KEYS for n in per_key[k][1]], dtype=torch.int64)
        weights = torch.rand(values.numel(), generator=g) + 0.5 if weighted else None
        labels = torch.tensor([float(self.user_score[u] + self.item_score[i] > 0)
                               for u, i in zip(per_key["user_id"][0], per_key["item_id"][0])])
        return dict(sparse=KeyedJaggedTensor.from_lengths_sync(KEYS, values, lengths, weights=weights),
                    dense=torch.rand(size, DENSE, generator=g), labels=labels)


def ids_by_table(batches):
    out = {}
    for b in batches:
        for f, jt in b["sparse"].to_dict().items():
            out.setdefault(OWNER[f], set()).update(jt.values().tolist())
    return out


def build(name, seed=0, **table_options):
    torch.manual_seed(seed)
    ec = EmbeddingCollection(table_configs(**table_options))
    return MODELS[name](ec), ec


def eval_loss(name, model, batch):
    model.eval()
    with torch.no_grad():
        loss = float(loss_of(name, model(batch["dense"], batch["sparse"]), batch["labels"]))
    model.train()
    return loss


# --------------------------------------------------------------------------- construction


def test_embedding_bag_configs_describe_the_tables_in_output_order():
    ec = EmbeddingCollection(table_configs() + [
        TableConfig("capped", D, ["capped_id"], initializer=Normal(0.0, 0.1), capacity=100),
        TableConfig("lfu", 2 * D, ["lfu_id"], eviction=LFUEviction(capacity=50))])
    cfgs = ec.embedding_bag_configs()
    # the table groups in order, each group's tables in config order
    assert [c.name for c in cfgs] == ["user", "ctx", "item", "capped", "lfu"]
    by = {c.name: c for c in cfgs}
    assert by["item"].feature_names == ["item_id", "clicked_item_id"]
    assert [c.embedding_dim for c in cfgs] == [D, D, D, D, 2 * D]
    assert [c.pooling for c in cfgs] == [PoolingType.SUM, PoolingType.SUM, PoolingType.MEAN, PoolingType.SUM,
                                         PoolingType.SUM]
    assert [c.num_embeddings for c in cfgs] == [UNBOUNDED_NUM_EMBEDDINGS] * 3 + [100, 50]
    assert all(c.data_type == DataType.FP32 and c.use_virtual_table for c in cfgs)
    assert (by["item"].weight_init_min, by["item"].weight_init_max) == (-0.4, 0.4)
    assert by["capped"].weight_init_min is None  # a normal law has no bounds
    assert ec.is_weighted() and ec.device == torch.device("cpu")

    # The KeyedTensor's keys are the configs' feature names in order, as for an
    # EmbeddingBagCollection built from the same configs (with a vocabulary-sized table each).
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["lfu_id", "ctx_id", "capped_id", "clicked_item_id", "item_id", "user_id"],
        torch.tensor([INT64_MIN, 2, 3, 4, 5, 6, 7, 8, 9, INT64_MAX]),
        torch.tensor([1, 1, 1, 1, 0, 2, 1, 1, 0, 0, 1, 1]))
    kt = ec(kjt)
    assert kt.keys() == [f for c in cfgs for f in c.feature_names]
    ebc = EmbeddingBagCollection([dataclasses.replace(c, num_embeddings=10) for c in cfgs])
    small = KeyedJaggedTensor.from_lengths_sync(kjt.keys(), torch.arange(10), kjt.lengths())
    ref = ebc(small)
    assert kt.keys() == ref.keys() and kt.length_per_key() == ref.length_per_key()


def test_configs_refuse_what_an_embedding_bag_collection_cannot_be():
    unpooled = TableConfig("seq", D, ["seq_id"], combiner=None)
    with pytest.raises(ValueError, match="'seq' is unpooled"):
        embedding_bag_config(unpooled)
    as_dict = EmbeddingCollection(table_configs(), output="dict")
    with pytest.raises(ValueError, match="output='keyed'"):
        DLRM(embedding_bag_collection=as_dict, dense_in_features=DENSE, dense_arch_layer_sizes=[8, D],
             over_arch_layer_sizes=[8, 1])
    # the dims the configs report are the tables': torchrec's own check sees a mismatch
    mixed = EmbeddingCollection([TableConfig("a", D, ["fa"]), TableConfig("b", 2 * D, ["fb"])])
    with pytest.raises(AssertionError, match="same dimension"):
        DLRM(embedding_bag_collection=mixed, dense_in_features=DENSE, dense_arch_layer_sizes=[8, D],
             over_arch_layer_sizes=[8, 1])


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("name,kind,fused", [("DLRM", "rowwise_adagrad", False), ("DLRM_DCN", "adam", True),
                                             ("DLRM_Projection", "rowwise_adagrad", True),
                                             ("SimpleDeepFMNN", "adam", False)])
def test_trains_with_recis_sparse_and_torch_dense_optimizers(name, kind, fused):
    model, ec = build(name)
    # The recipe: the tables are no nn.Parameters, so a torch optimizer over model.parameters()
    # holds the dense part only and the sparse optimizer (given the model) the tables only.
    anchors = {id(t.group.anchor) for t in sparse_tables(model)}
    assert {t.name for t in sparse_tables(model)} == {"user", "item", "ctx"}
    assert not anchors & {id(p) for p in model.parameters()}
    sparse = (SparseRowwiseAdagrad(model, lr=0.1, fused=fused) if kind == "rowwise_adagrad"
              else SparseAdam(model, lr=0.05, fused=fused))
    dense = torch.optim.Adam(model.parameters(), lr=0.01)
    dense_before = [p.detach().clone() for p in model.parameters()]
    task = Task()
    held_out = task.batch(512)
    batches = [task.batch(64) for _ in range(50)]
    _train(name, model, batches, optimizers=(sparse, dense))
    seen = ids_by_table(batches)
    for t in sparse_tables(model):  # every raw id fed, and only those, has a row
        assert set(t.export()["ids"].tolist()) == seen[t.name]
    start = eval_loss(name, build(name)[0], held_out)  # the same model untrained
    end = eval_loss(name, model, held_out)
    assert end < 0.3 * start, (start, end)
    assert all(not torch.equal(a, b) for a, b in zip(dense_before, model.parameters()))


def _compact(kjt, index):
    """The KJT with each raw id replaced by its row in the twin's EmbeddingBagCollection."""
    values = torch.tensor([index[OWNER[f]][v] for f, jt in kjt.to_dict().items() for v in jt.values().tolist()],
                          dtype=torch.int64)
    return KeyedJaggedTensor.from_lengths_sync(kjt.keys(), values, kjt.lengths(), weights=kjt.weights_or_none())


@pytest.mark.parametrize("name,weighted", [(n, False) for n in MODELS] + [("DLRM", True)])
def test_matches_torchrec_twin_on_an_embedding_bag_collection(name, weighted):
    # torch's EmbeddingBag takes per-sample weights with sum pooling only
    model, ec = build(name, item_combiner="sum" if weighted else "mean")
    task = Task()
    batches = [task.batch(16, weighted) for _ in range(6)]
    seen = {t: sorted(ids) for t, ids in ids_by_table(batches).items()}
    index = {t: {v: k for k, v in enumerate(ids)} for t, ids in seen.items()}
    tables = ec.tables()
    # the twin: torchrec's EmbeddingBagCollection from the collection's own configs, one row per
    # id fed, starting at recis' initial rows; the same dense weights
    ebc = EmbeddingBagCollection([dataclasses.replace(c, num_embeddings=len(seen[c.name]))
                                  for c in ec.embedding_bag_configs()], is_weighted=weighted)
    with torch.no_grad():
        for t, ids in seen.items():
            ebc.embedding_bags[t].weight.copy_(tables[t].initial_rows(torch.tensor(ids)))
    twin = MODELS[name](ebc)
    missing, unexpected = twin.load_state_dict(
        {k: v for k, v in model.state_dict().items() if ".embedding_bag_collection." not in k}, strict=False)
    assert not unexpected and all(".embedding_bags." in k for k in missing)

    lr = 0.2  # plain SGD on both sides: the same update rule for rows and weights
    opts = [SparseSGD(model, lr=lr), torch.optim.SGD(model.parameters(), lr=lr),
            torch.optim.SGD(twin.parameters(), lr=lr)]
    for b in batches:
        out, ref = model(b["dense"], b["sparse"]), twin(b["dense"], _compact(b["sparse"], index))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        (loss_of(name, out, b["labels"]) + loss_of(name, ref, b["labels"])).backward()
        for o in opts:
            o.step()
            o.zero_grad()
    for t, ids in seen.items():
        rows = tables[t].gather(tables[t].find(torch.tensor(ids)))
        torch.testing.assert_close(rows, ebc.embedding_bags[t].weight.detach(), rtol=1e-5, atol=1e-6)
        assert not torch.equal(rows, tables[t].initial_rows(torch.tensor(ids)))  # the rows did train
    twin_dense = dict(twin.named_parameters())
    for k, p in model.named_parameters():
        torch.testing.assert_close(p, twin_dense[k], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- state, trainer, sharding


def _train(name, model, batches, fused=False, optimizers=None):
    sparse, dense = optimizers or (SparseRowwiseAdagrad(model, lr=0.1, fused=fused),
                                   torch.optim.Adam(model.parameters(), lr=0.01))
    for b in batches:
        loss = loss_of(name, model(b["dense"], b["sparse"]), b["labels"])
        dense.zero_grad()
        sparse.zero_grad()
        loss.backward()
        dense.step()
        sparse.step()
    return sparse, dense


def test_state_dict_round_trip(tmp_path):
    """A trained DLRM_DCN saved and loaded into a fresh one (other dense init, empty tables) holds
    the same tables and weights, and the two go on training in lockstep (optimizer slots too)."""
    task = Task()
    first, later = [task.batch(32) for _ in range(5)], [task.batch(32) for _ in range(3)]
    model, ec = build("DLRM_DCN")
    opts = _train("DLRM_DCN", model, first)
    torch.save({"model": model.state_dict(), "sparse": opts[0].state_dict(), "dense": opts[1].state_dict()},
               tmp_path / "model.pt")
    fresh, fresh_ec = build("DLRM_DCN", seed=99)
    fresh_opts = (SparseRowwiseAdagrad(fresh, lr=0.1), torch.optim.Adam(fresh.parameters(), lr=0.01))
    saved = torch.load(tmp_path / "model.pt")
    fresh.load_state_dict(saved["model"])
    fresh_opts[0].load_state_dict(saved["sparse"])
    fresh_opts[1].load_state_dict(saved["dense"])
    for name, t in ec.tables().items():
        a, b = t.export(), fresh_ec.tables()[name].export()
        oa, ob = torch.argsort(a["ids"]), torch.argsort(b["ids"])
        for k in ("ids", "rows", "slots"):
            assert torch.equal(a[k][oa], b[k][ob]), (name, k)
    _train("DLRM_DCN", model, later, optimizers=opts)
    _train("DLRM_DCN", fresh, later, optimizers=fresh_opts)
    probe = task.batch(64)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(probe["dense"], probe["sparse"]), fresh(probe["dense"], probe["sparse"]))


class _ForTrainer(torch.nn.Module):
    """recis.train.Trainer's contract (batch -> logits [B]) around a torchrec DLRM."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model(batch.dense, batch.sparse).squeeze(-1)


def test_recis_trainer_trains_a_torchrec_dlrm():
    from types import SimpleNamespace

    from recis.train import Trainer, TrainerConfig

    model = _ForTrainer(build("DLRM")[0])
    task = Task()
    train = [SimpleNamespace(size=64, **task.batch(64)) for _ in range(25)]
    held_out = [SimpleNamespace(size=512, **task.batch(512))]
    trainer = Trainer(model, SparseRowwiseAdagrad(model, lr=0.1), torch.optim.Adam(model.parameters(), lr=0.01),
                      config=TrainerConfig(epochs=2, progress=False))
    start = trainer.evaluate(held_out)["loss"]
    history = trainer.fit(train, eval_data=held_out)
    assert trainer.step == 50
    assert history[-1]["loss"] < 0.3 * start, (start, history[-1]["loss"])


def test_sharded_collection_keeps_the_interface():
    model, ec = build("DLRM")
    reference = copy.deepcopy(model)
    sharded = shard(model, verbose=False)  # one process: it owns every row
    inner = sharded.sparse_arch.embedding_bag_collection
    assert type(inner).__name__ == "ShardedEmbeddingCollection"
    assert [(c.name, c.feature_names, c.num_embeddings, c.pooling) for c in inner.embedding_bag_configs()] == \
        [(c.name, c.feature_names, c.num_embeddings, c.pooling) for c in ec.embedding_bag_configs()]
    assert inner.is_weighted() and inner.device == torch.device("cpu")
    task = Task()
    batches = [task.batch(32) for _ in range(4)]
    _train("DLRM", sharded, batches, fused=True)
    _train("DLRM", reference, batches, fused=True)
    probe = task.batch(64)
    sharded.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(sharded(probe["dense"], probe["sparse"]),
                                   reference(probe["dense"], probe["sparse"]), rtol=1e-5, atol=1e-6)


def _cat_examples(kjts):
    """One KJT holding the examples of `kjts` (same keys) one after another."""
    parts = [k.to_dict() for k in kjts]
    keys = kjts[0].keys()
    return KeyedJaggedTensor.from_lengths_sync(keys, torch.cat([p[f].values() for f in keys for p in parts]),
                                               torch.cat([p[f].lengths() for f in keys for p in parts]))


def _halves(steps, size):
    """Per step, the two halves of a global batch (the same on every rank)."""
    task = Task()
    return [(task.batch(size // 2), task.batch(size // 2)) for _ in range(steps)]


def _sharded_dlrm_rank(steps, size):
    """Rank body: a torchrec DLRM whose recis tables are sharded over the ranks, its dense part in
    DDP, trained on this rank's half of each global batch."""
    import _dist_workers as w

    env = ShardingEnv.current()
    model = shard(build("DLRM")[0], env, verbose=False)
    dense_model = wrap_dense(model, env)
    sparse = SparseRowwiseAdagrad(model, lr=0.1, fused=True)
    dense = torch.optim.Adam(model.parameters(), lr=0.01)
    for halves in _halves(steps, size):
        b = halves[env.rank]
        loss = loss_of("DLRM", dense_model(b["dense"], b["sparse"]), b["labels"])
        dense.zero_grad()
        sparse.zero_grad()
        loss.backward()
        dense.step()
        sparse.step()
    return w.table_contents(model), {k: p.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.slow
def test_two_ranks_train_a_sharded_torchrec_dlrm_like_one_process():
    import _dist_workers as w

    steps, size = 6, 32
    model = build("DLRM")[0]
    sparse = SparseRowwiseAdagrad(model, lr=0.1, fused=True)
    dense = torch.optim.Adam(model.parameters(), lr=0.01)
    for h in _halves(steps, size):
        b = dict(sparse=_cat_examples([h[0]["sparse"], h[1]["sparse"]]),
                 dense=torch.cat([h[0]["dense"], h[1]["dense"]]), labels=torch.cat([h[0]["labels"], h[1]["labels"]]))
        loss = loss_of("DLRM", model(b["dense"], b["sparse"]), b["labels"])
        dense.zero_grad()
        sparse.zero_grad()
        loss.backward()
        dense.step()
        sparse.step()
    results = [r.value for r in run_local(_sharded_dlrm_rank, 2, steps, size, timeout_s=240)]
    merged = w.merge_contents([tables for tables, _ in results])
    ref = w.table_contents(model)
    assert set(merged) == set(ref) == {"user", "item", "ctx"}
    for t in ref:
        assert torch.equal(merged[t]["ids"], ref[t]["ids"])
        torch.testing.assert_close(merged[t]["rows"], ref[t]["rows"], rtol=1e-5, atol=1e-6)
    for _, params in results:
        for k, p in model.named_parameters():
            torch.testing.assert_close(params[k], p.detach(), rtol=1e-5, atol=1e-6)
