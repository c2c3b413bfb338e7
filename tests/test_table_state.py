"""state_dict / load_state_dict of HashEmbedding and EmbeddingCollection, and HashTable export/load.

A round trip must restore ids, rows, optimizer slots, counts, last_seen, the step counter and
the admission sketch, so that the original and the restored module train identically.
"""
import copy
import io
import random
import re

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from conftest import INT64_MAX, INT64_MIN, assert_exports_equal, export_as_dict, ids_tensor, offsets_for
from recis.nn import (EmbeddingCollection, FrequencyAdmission, HashEmbedding, TableConfig, TableGroup, TTLEviction,
                      Uniform, sparse_tables)
from recis.optim import SparseAdam, SparseRowwiseAdagrad, SparseSGD

DIM = 4
POOL = list(range(-5, 15)) + [INT64_MIN, INT64_MAX]
STATE_KEYS = ("ids", "rows", "slots", "counts", "last_seen")


def make_emb(**kw):
    kw.setdefault("initializer", Uniform(-0.5, 0.5))
    return HashEmbedding(DIM, combiner="mean", seed=13, **kw)


def batches(n, seed, pool=POOL):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        lengths = [r.randint(1, 4) for _ in range(3)]
        out.append((ids_tensor(r.choice(pool) for _ in range(sum(lengths))), offsets_for(lengths)))
    return out


def train_step(emb, opt, ids, offsets, target):
    out = emb(ids, offsets)
    ((out - target) ** 2).sum().backward()
    opt.step()
    opt.zero_grad()
    return out.detach()


def targets(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, DIM, generator=g) for _ in range(n)]


def trained_embedding(steps=5, opt_cls=SparseAdam):
    emb = make_emb()
    opt = opt_cls(emb.group.tables, lr=0.05)
    for (ids, offsets), tgt in zip(batches(steps, 1), targets(steps, 1)):
        train_step(emb, opt, ids, offsets, tgt)
    return emb, opt


# ============================================================================ HashEmbedding
def test_state_dict_contents_match_an_independent_model():
    emb, _ = trained_embedding(steps=6)
    sd = emb.state_dict()
    assert set(sd) == {f"table.{k}" for k in STATE_KEYS} | {"table._group.step", "table._group.slot_kind", "table._group.optimizer_step"}
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    # Python model of what the table has seen: counts per occurrence, last training step.
    count, last = {}, {}
    for step, (ids, _) in enumerate(batches(6, 1), start=1):
        for i in ids.tolist():
            count[i] = count.get(i, 0) + 1
            last[i] = step
    state = {k: sd[f"table.{k}"] for k in STATE_KEYS}
    exported = export_as_dict(state)
    assert set(exported) == set(count)
    assert {i: e[2] for i, e in exported.items()} == count
    assert {i: e[3] for i, e in exported.items()} == last
    assert int(sd["table._group.step"]) == 6
    n = len(count)
    assert state["rows"].shape == (n, DIM)
    assert state["slots"].shape == (n, 2 * DIM)  # Adam: m and v per column
    assert bool((state["slots"][:, DIM:] > 0).all())  # every live row was updated: v > 0
    # Rows moved away from their initial values.
    init = TableGroup(DIM, names=["o"], seeds=[13], initializer=Uniform(-0.5, 0.5)).tables[0]
    assert not torch.allclose(state["rows"], init.initial_rows(state["ids"]))


@pytest.mark.parametrize("opt_cls", [SparseAdam, SparseRowwiseAdagrad])
@pytest.mark.parametrize("optimizer_first", [False, True])
def test_round_trip_into_fresh_module_and_identical_training(optimizer_first, opt_cls):
    """Only the module state is restored (docs: "Loading it into a fresh module, before or after
    creating the optimizer, restores training exactly")."""
    steps = 5
    emb, opt = trained_embedding(steps, opt_cls)
    sd = copy.deepcopy(emb.state_dict())
    fresh = make_emb()
    if optimizer_first:
        opt2 = opt_cls(fresh.group.tables, lr=0.05)
        fresh.load_state_dict(sd)
    else:
        fresh.load_state_dict(sd)
        opt2 = opt_cls(fresh.group.tables, lr=0.05)  # created after loading: keeps the slots
    assert_exports_equal(fresh.table.export(), emb.table.export())
    assert fresh.table.export()["slots"].abs().sum() > 0
    assert fresh.group.step == emb.group.step == steps
    restored = fresh.state_dict()
    assert set(restored) == set(sd)
    for k in sd:
        if k.startswith("table._group"):
            assert torch.equal(restored[k], sd[k]), k
    # Both keep training on the same batches: outputs and tables stay identical.
    for (ids, offsets), tgt in zip(batches(4, 2, POOL + [999, 1000]), targets(4, 2)):
        a = train_step(emb, opt, ids, offsets, tgt)
        b = train_step(fresh, opt2, ids, offsets, tgt)
        assert torch.equal(a, b)
    assert_exports_equal(fresh.table.export(), emb.table.export())


def test_round_trip_with_optimizer_state_dict_too():
    emb, opt = trained_embedding(5)
    fresh = make_emb()
    fresh.load_state_dict(emb.state_dict())
    opt2 = SparseAdam(fresh.group.tables, lr=0.05)
    opt2.load_state_dict(opt.state_dict())
    for (ids, offsets), tgt in zip(batches(3, 3), targets(3, 3)):
        assert torch.equal(train_step(emb, opt, ids, offsets, tgt), train_step(fresh, opt2, ids, offsets, tgt))
    assert_exports_equal(fresh.table.export(), emb.table.export())


def test_state_dict_survives_torch_save_and_overwrites_existing_rows():
    emb, _ = trained_embedding(4)
    buf = io.BytesIO()
    torch.save(emb.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    # A module that already has other rows: loading replaces its content entirely.
    other = make_emb()
    opt = SparseAdam(other.group.tables, lr=0.05)
    with torch.no_grad():
        other(ids_tensor([12345, 1, 2]), offsets_for([3]))
    other.load_state_dict(sd)
    assert_exports_equal(other.table.export(), emb.table.export())
    assert int(other.table.find(ids_tensor([12345]))) == -1
    assert other.group.step == emb.group.step
    del opt


def test_load_with_other_optimizer_kind_attached_is_an_error():
    emb, _ = trained_embedding(2)
    fresh = make_emb()
    SparseRowwiseAdagrad(fresh.group.tables)
    with pytest.raises((ValueError, RuntimeError)):
        fresh.load_state_dict(emb.state_dict())


def test_missing_keys_are_reported():
    emb, _ = trained_embedding(2)
    sd = emb.state_dict()
    del sd["table.rows"]
    with pytest.raises(RuntimeError, match="table.rows"):
        make_emb().load_state_dict(sd)


def test_admission_sketch_round_trip():
    adm = FrequencyAdmission(min_count=3, sketch_width=1 << 10, sketch_depth=2)
    emb = make_emb(admission=adm)
    with torch.no_grad():
        emb(ids_tensor([1, 1, 2]), offsets_for([3]))  # 1 seen twice, 2 once: no rows yet
    sd = emb.state_dict()
    assert "table._group.sketch" in sd
    assert len(emb.table) == 0
    fresh = make_emb(admission=adm)
    fresh.load_state_dict(sd)
    for m in (emb, fresh):
        with torch.no_grad():
            m(ids_tensor([1, 2]), offsets_for([2]))  # 1: third sighting -> admitted; 2: second
        assert m.table.find(ids_tensor([1, 2])).tolist()[1] == -1
        assert int(m.table.find(ids_tensor([1]))) >= 0
    assert_exports_equal(fresh.table.export(), emb.table.export())


def test_ttl_state_round_trip_keeps_expiry_schedule():
    """last_seen and the step counter are restored, so rows expire at the same step."""
    ev = TTLEviction(ttl_steps=1, interval_steps=3)
    emb = make_emb(eviction=ev)
    with torch.no_grad():
        emb(ids_tensor([1, 2]), offsets_for([2]))  # step 1
        emb(ids_tensor([2]), offsets_for([1]))     # step 2
    fresh = make_emb(eviction=ev)
    fresh.load_state_dict(emb.state_dict())
    for m in (emb, fresh):
        with torch.no_grad():
            m(ids_tensor([3]), offsets_for([1]))    # step 3
            m(ids_tensor([3]), offsets_for([1]))    # step 4: eviction at 3 drops id 1 (3 - 1 > 1), keeps 2
        assert m.table.find(ids_tensor([1, 2, 3])).tolist()[0] == -1
        assert int((m.table.find(ids_tensor([2, 3])) >= 0).sum()) == 2
    assert_exports_equal(fresh.table.export(), emb.table.export())


# ============================================================================ EmbeddingCollection
def make_ec():
    return EmbeddingCollection([
        TableConfig("user", DIM, ["user_id"], initializer=Uniform(-0.5, 0.5), seed=1),
        TableConfig("item", DIM, ["item_id", "clicked"], initializer=Uniform(-0.5, 0.5), seed=2),
        TableConfig("geo", 2, ["geo_id"], combiner="mean", seed=3,
                    admission=FrequencyAdmission(min_count=2, sketch_width=1 << 10)),
    ])


def ec_batches(n, seed):
    r = random.Random(seed)
    keys = ["user_id", "item_id", "clicked", "geo_id"]
    out = []
    for _ in range(n):
        lengths = [r.randint(0, 3) for _ in range(len(keys) * 2)]  # batch of 2
        values = ids_tensor(r.choice(POOL) for _ in range(sum(lengths)))
        out.append(KeyedJaggedTensor.from_lengths_sync(keys, values, torch.tensor(lengths)))
    return out


def ec_step(ec, opt, kjt, seed):
    out = ec(kjt).values()
    g = torch.Generator().manual_seed(seed)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    opt.step()
    return out.detach()


def test_embedding_collection_round_trip_and_identical_training():
    ec = make_ec()
    assert len(ec.groups) == 2
    opt = SparseAdam(sparse_tables(ec), lr=0.05)
    for k, kjt in enumerate(ec_batches(6, 10)):
        ec_step(ec, opt, kjt, k)
    sd = ec.state_dict()
    expected_keys = {f"{t}.{k}" for t in ("user", "item", "geo") for k in STATE_KEYS}
    expected_keys |= {"user._group.step", "user._group.slot_kind", "geo._group.step", "geo._group.slot_kind",
                      "user._group.optimizer_step", "geo._group.optimizer_step",
                      "geo._group.sketch"}
    assert set(sd) == expected_keys
    # Each logical table's entry equals that table's export.
    for name, table in ec.tables().items():
        assert_exports_equal({k: sd[f"{name}.{k}"] for k in STATE_KEYS}, table.export())
    assert len(ec.tables()["user"]) > 0 and len(ec.tables()["geo"]) > 0
    fresh = make_ec()
    fresh.load_state_dict(copy.deepcopy(sd))
    opt2 = SparseAdam(sparse_tables(fresh), lr=0.05)  # after loading: the slots are kept
    for name in ec.tables():
        assert_exports_equal(fresh.tables()[name].export(), ec.tables()[name].export())
    # Adam's bias correction counts optimizer steps: restore them too (the HashEmbedding tests
    # cover restoring the module state alone).
    opt2.load_state_dict(opt.state_dict())
    for g1, g2 in zip(ec.groups, fresh.groups):
        assert g1.step == g2.step
    for k, kjt in enumerate(ec_batches(4, 11)):
        assert torch.equal(ec_step(ec, opt, kjt, 100 + k), ec_step(fresh, opt2, kjt, 100 + k))
    for name in ec.tables():
        assert_exports_equal(fresh.tables()[name].export(), ec.tables()[name].export())


def test_embedding_collection_tables_keep_their_own_ids_in_state():
    ec = make_ec()
    kjt = KeyedJaggedTensor.from_lengths_sync(["user_id", "item_id", "clicked", "geo_id"], ids_tensor([7, 8, 7, 9]),
                                              torch.tensor([1, 0, 1, 0, 1, 0, 0, 1]))
    with torch.no_grad():
        ec(kjt)
    sd = ec.state_dict()
    assert sd["user.ids"].tolist() == [7]
    assert sorted(sd["item.ids"].tolist()) == [7, 8]
    assert sd["geo.ids"].tolist() == []  # not admitted yet
    # The same id in two logical tables has two different rows.
    assert not torch.equal(sd["user.rows"][0], sd["item.rows"][sd["item.ids"].tolist().index(7)])


# ============================================================================ HashTable export / load
def test_hash_table_export_load_into_fresh_table():
    g = TableGroup(DIM, names=["a", "b"], seeds=[1, 2], initializer=Uniform(-1.0, 1.0))
    opt = SparseRowwiseAdagrad(g.tables, lr=0.1)
    a, b = g.tables
    a.find_or_insert(ids_tensor([0, -1, INT64_MIN, INT64_MAX, 5]))
    b.find_or_insert(ids_tensor([0, 1]))
    state = a.export()
    assert set(state) == set(STATE_KEYS)
    assert state["slots"].shape == (5, 1)
    # Make the state distinctive, then load it elsewhere.
    state["rows"] = torch.arange(5 * DIM, dtype=torch.float32).reshape(5, DIM)
    state["slots"] = torch.arange(5, dtype=torch.float32).reshape(5, 1) + 0.5
    state["counts"] = torch.tensor([1, 2, 3, 4, 5])
    state["last_seen"] = torch.tensor([9, 8, 7, 6, 5])
    g2 = TableGroup(DIM, names=["a", "b"], seeds=[1, 2], initializer=Uniform(-1.0, 1.0))
    SparseRowwiseAdagrad(g2.tables, lr=0.1)
    g2.tables[1].load(state)  # into the *other* namespace of a fresh group
    assert len(g2.tables[0]) == 0
    assert_exports_equal(g2.tables[1].export(), state)
    rows = g2.tables[1].find(state["ids"])
    assert torch.equal(g2.tables[1].gather(rows), state["rows"])
    del opt


def test_hash_table_load_inserts_or_overwrites():
    g = TableGroup(DIM, names=["t"], seeds=[4], initializer=Uniform(-1.0, 1.0))
    t = g.tables[0]
    t.find_or_insert(ids_tensor([1, 2, 3]))
    keep = t.lookup(ids_tensor([3]))
    t.load({"ids": ids_tensor([2, 10]), "rows": torch.full((2, DIM), 7.0)})
    assert len(t) == 4
    assert torch.equal(t.lookup(ids_tensor([2, 10])), torch.full((2, DIM), 7.0))
    assert torch.equal(t.lookup(ids_tensor([3])), keep)
    # clear() then load(export) is the identity.
    state = t.export()
    t.clear()
    assert len(t) == 0
    t.load(state)
    assert_exports_equal(t.export(), state)


def test_hash_table_load_rejects_bad_states():
    g = TableGroup(DIM, names=["t"], seeds=[4])
    SparseAdam(g.tables)
    t = g.tables[0]
    with pytest.raises(KeyError):
        t.load({"ids": ids_tensor([1])})
    with pytest.raises(ValueError):
        t.load({"ids": ids_tensor([1]), "rows": torch.zeros(1, DIM), "slots": torch.zeros(1, 3)})
    with pytest.raises((ValueError, RuntimeError)):
        t.load({"ids": ids_tensor([1, 2]), "rows": torch.zeros(1, DIM)})
    assert len(t) == 0


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_hash_table_load_refuses_duplicate_ids(backend):
    """Two entries for one id: whichever came last used to win without a word."""
    g = TableGroup(DIM, names=["users"], seeds=[4], initializer=Uniform(-1.0, 1.0), backend=backend)
    t = g.tables[0]
    t.find_or_insert(ids_tensor([1, 2]))
    before = t.export()
    ids = ids_tensor([7, 3, 7, 9, INT64_MIN, 3, INT64_MIN, 7])
    with pytest.raises(ValueError) as err:
        t.load({"ids": ids, "rows": torch.arange(8 * DIM, dtype=torch.float32).reshape(8, DIM)})
    msg = str(err.value)
    assert "'users'" in msg
    listed = re.search(r"more than once \(([^)]*)\)", msg).group(1)
    assert sorted(int(x) for x in listed.split(", ")) == [INT64_MIN, 3, 7]
    assert_exports_equal(t.export(), before)  # nothing was loaded


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_hash_table_load_refuses_per_row_fields_of_the_wrong_length(backend):
    g = TableGroup(DIM, names=["users"], seeds=[4], backend=backend)
    t = g.tables[0]
    state = {"ids": ids_tensor([1, 2, 3]), "rows": torch.zeros(3, DIM)}
    for key, bad in (("counts", torch.tensor([5])), ("last_seen", torch.tensor([1, 2])),
                     ("counts", torch.zeros(3, 1, dtype=torch.int64))):
        with pytest.raises(ValueError, match=key):
            t.load(dict(state, **{key: bad}))
    assert len(t) == 0


def test_unknown_keys_under_a_table_are_unexpected_not_ignored():
    """A misspelt per-table or group field used to be dropped silently, even with strict=True."""
    emb = make_emb()
    with torch.no_grad():
        emb(ids_tensor([1, 2]), offsets_for([2]))
    state = emb.state_dict()
    state["table.last_sen"] = state["table.last_seen"]
    state["table._group.stepp"] = torch.tensor(3)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\).*"table.last_sen", "table._group.stepp"'):
        make_emb().load_state_dict(state)
    result = make_emb().load_state_dict(state, strict=False)
    assert sorted(result.unexpected_keys) == ["table._group.stepp", "table.last_sen"]
    ec = EmbeddingCollection([TableConfig("a", DIM, ["fa"]), TableConfig("b", DIM, ["fb"])])
    state = ec.state_dict()
    state["b.rowz"] = state["b.rows"]
    assert ec.load_state_dict(state, strict=False).unexpected_keys == ["b.rowz"]


def test_hash_table_load_refuses_unknown_fields():
    t = TableGroup(DIM, names=["t"], seeds=[4]).tables[0]
    with pytest.raises(KeyError, match=r"unknown keys \['cnts'\]"):
        t.load({"ids": ids_tensor([1]), "rows": torch.zeros(1, DIM), "cnts": torch.tensor([3])})
    with pytest.raises(KeyError, match=r"unknown keys \['stepp'\]"):
        t.group.load_group_state({"stepp": torch.tensor(3)})
    assert len(t) == 0 and t.group.step == 0


def test_load_state_dict_with_duplicate_ids_is_an_error():
    emb = make_emb()
    with torch.no_grad():
        emb(ids_tensor([1, 2]), offsets_for([2]))
    state = emb.state_dict()
    for k in STATE_KEYS:  # the saved table lists every id twice
        state[f"table.{k}"] = torch.cat([state[f"table.{k}"], state[f"table.{k}"]])
    with pytest.raises(RuntimeError, match="more than once"):
        make_emb().load_state_dict(state)


def test_optimizer_attached_after_rows_exist_starts_slots_fresh_and_keeps_rows():
    g = TableGroup(DIM, names=["t"], seeds=[4], initializer=Uniform(-1.0, 1.0))
    t = g.tables[0]
    t.find_or_insert(ids_tensor([1, 2]))
    before = t.export()
    SparseRowwiseAdagrad(g.tables, initial_accumulator_value=0.5)
    after = t.export()
    assert torch.equal(sorted_rows(after), sorted_rows(before))
    assert torch.equal(after["slots"], torch.full((2, 1), 0.5))


def sorted_rows(state):
    return state["rows"][torch.argsort(state["ids"])]


def test_sgd_state_has_no_slots():
    emb = make_emb()
    SparseSGD(emb.group.tables)
    with torch.no_grad():
        emb(ids_tensor([1, 2]), offsets_for([2]))
    sd = emb.state_dict()
    assert sd["table.slots"].shape == (2, 0)
    fresh = make_emb()
    fresh.load_state_dict(sd)
    SparseSGD(fresh.group.tables)
    assert_exports_equal(fresh.table.export(), emb.table.export())


def test_deepcopy_gives_an_independent_table_with_the_same_state():
    emb = HashEmbedding(4, seed=2)
    opt = SparseAdam([emb.table], lr=0.1)
    emb(torch.tensor([1, 2, 3]), torch.tensor([0, 3])).sum().backward()
    opt.step()
    twin = copy.deepcopy(emb)
    a, b = emb.table.export(), twin.table.export()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert twin.group.optimizer_step == emb.group.optimizer_step == 1
    twin.table.erase(torch.tensor([1]))
    assert len(twin.table) == 2 and len(emb.table) == 3


def test_pickling_a_table_is_refused_with_a_pointer_to_state_dict():
    import pickle

    with pytest.raises(TypeError, match="state_dict"):
        pickle.dumps(HashEmbedding(4))
