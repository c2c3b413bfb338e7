"""Table options in one home: TableConfig builds every table; TTL sweeps run inside the table
backends (C++ and Triton), not in Python or in a hook; a job's data section embeds the loader's
options."""
import dataclasses
import gc

import pytest
import torch

from conftest import ids_tensor
from recis.io import LoaderOptions
from recis.nn import (EmbeddingCollection, FrequencyAdmission, HashEmbedding, LFUEviction, TableConfig, TableGroup,
                      TTLEviction, Uniform)
from recis.nn.functional import hash_lookup
from recis.run.config import DataConfig, RunConfig

DIM = 3
INIT = Uniform(-1.0, 1.0)


def rows_of(group):
    return {t.name: {k: v.tolist() for k, v in t.export().items()} for t in group.tables}


# ----------------------------------------------------------------------------- TableConfig -> tables
def test_table_group_from_configs_is_the_short_form():
    opts = dict(initializer=INIT, admission=FrequencyAdmission(min_count=1), eviction=LFUEviction(capacity=50),
                missing="init")
    configs = [TableConfig("a", DIM, seed=1, **opts), TableConfig("b", DIM, seed=2, **opts)]
    full, short = TableGroup(configs), TableGroup(DIM, ["a", "b"], [1, 2], **opts)
    for g in (full, short):
        for t in g.tables:
            t.find_or_insert(ids_tensor([5, -7, 1 << 62]))
    assert full.config == short.config and full.capacity == short.capacity == 50
    assert rows_of(full) == rows_of(short)
    assert [c.name for c in full.configs] == ["a", "b"] and full.configs[1] is configs[1]


def test_a_group_names_the_option_its_configs_disagree_on():
    with pytest.raises(ValueError, match="missing is 'zeros' for table 'a' and 'init' for table 'b'"):
        TableGroup([TableConfig("a", DIM), TableConfig("b", DIM, missing="init")])
    with pytest.raises(ValueError, match="duplicate table names"):
        TableGroup([TableConfig("a", DIM), TableConfig("a", DIM)])
    with pytest.raises(ValueError, match="at least one TableConfig"):
        TableGroup([])
    with pytest.raises(TypeError, match="takes TableConfigs"):
        TableGroup([TableConfig("a", DIM), "b"])
    with pytest.raises(TypeError, match=r"got TableConfigs and \['missing'\]"):
        TableGroup([TableConfig("a", DIM)], missing="init")
    with pytest.raises(TypeError, match=r"unknown table option\(s\) \['combinr'\]"):
        TableGroup(DIM, ["a"], [1], combinr="sum")


def test_hash_embedding_from_a_config_or_its_options():
    config = TableConfig("clicks", DIM, combiner="mean", initializer=INIT, seed=9)
    a = HashEmbedding(config)
    b = HashEmbedding(DIM, name="clicks", combiner="mean", initializer=INIT, seed=9)
    assert a.config == b.config == config and a.combiner == "mean" and a.table.name == "clicks"
    values, offsets = ids_tensor([3, 4, 3, 8]), torch.tensor([0, 3, 4])
    assert torch.equal(a(values, offsets), b(values, offsets))
    assert HashEmbedding(DIM).config == TableConfig("table", DIM, seed=0)  # the keyword form's defaults
    with pytest.raises(TypeError, match="set them in the TableConfig"):
        HashEmbedding(config, combiner="sum")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['combinr'\]"):
        HashEmbedding(DIM, combinr="sum")


def test_table_config_checks_admission_once_for_every_table():
    for make in (lambda: TableConfig("t", DIM, admission=2), lambda: HashEmbedding(DIM, name="t", admission=2),
                 lambda: TableGroup(DIM, ["t"], [1], admission=2)):
        with pytest.raises(TypeError, match="table 't': admission must be a FrequencyAdmission or None"):
            make()


def test_collection_groups_are_built_from_their_configs():
    user = TableConfig("user", DIM, ["u"], eviction=TTLEviction(ttl_steps=4, interval_steps=2))
    item = TableConfig("item", DIM, ["i"], eviction=TTLEviction(ttl_steps=4, interval_steps=2))
    other = TableConfig("other", DIM, ["o"])
    ec = EmbeddingCollection([user, item, other])
    assert [g.configs for g in ec.groups] == [[user, item], [other]]
    assert ec.groups[0].ttl == TTLEviction(4, 2) and ec.groups[1].ttl is None


# ----------------------------------------------------------------------------- TTL inside the backends
def ttl_reference(batches, ttl, interval):
    """Live ids after each training step of a last-seen model: the sweep due when step s starts
    (s - 1 a positive multiple of `interval`) erases ids unseen for more than `ttl` steps."""
    last, live_after = {}, []
    for step, batch in enumerate(batches, start=1):
        prev = step - 1
        if prev > 0 and prev % interval == 0:
            last = {i: s for i, s in last.items() if prev - s <= ttl}
        for i in batch:
            last[i] = step
        live_after.append(sorted(last))
    return live_after


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_the_backend_sweeps_ttl_at_its_step_boundary(backend):
    """The op itself sweeps (hash_lookup straight into the table's kernel, no TableGroup.lookup
    in between), on both backends, as the last-seen model says."""
    ttl, interval = 2, 3
    group = TableGroup([TableConfig("t", DIM, eviction=TTLEviction(ttl, interval))], backend=backend)
    batches = [[1, 2], [2], [3], [3], [4], [4], [4], [5], [5], [5], [5]]
    live = []
    with torch.no_grad():
        for batch in batches:
            values = ids_tensor(batch)
            hash_lookup(group, values, torch.tensor([0, len(batch)]), None, [0], 1, [0], DIM, 0, True)
            ids = group.tables[0].export()["ids"]
            live.append(sorted(ids.tolist()))
    assert live == ttl_reference(batches, ttl, interval)
    assert group.stats()["evictions"] == 3 and group.step == len(batches)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_the_resolve_op_sweeps_ttl_at_its_step_boundary(backend):
    """The owner side of a sharded lookup resolves keys with the `resolve` op: its training
    calls start the table's steps too, with the sweeps due."""
    from recis.distributed.owner_rows import resolve
    from recis.nn.functional import LOOKUP_TRAIN

    ttl, interval = 1, 2
    group = TableGroup([TableConfig("t", DIM, eviction=TTLEviction(ttl, interval))], backend=backend)
    batches = [[1, 2], [2], [3], [3, 4], [4], [5]]
    live = []
    for batch in batches:
        n = len(batch)
        resolve(group, torch.zeros(n, dtype=torch.int64), ids_tensor(batch), torch.ones(n, dtype=torch.int64),
                LOOKUP_TRAIN)
        live.append(sorted(group.tables[0].export()["ids"].tolist()))
    assert live == ttl_reference(batches, ttl, interval) and group.stats()["evictions"] == 2


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_ttl_survives_a_move_between_backends(backend):
    """The TTL schedule is part of the table: a table moved to the other backend keeps sweeping."""
    other = "triton" if backend == "cpp" else "cpp"
    group = TableGroup([TableConfig("t", DIM, eviction=TTLEviction(1, 3))], backend=backend)
    with torch.no_grad():
        for ids in ([1], [2], [3]):
            hash_lookup(group, ids_tensor(ids), torch.tensor([0, 1]), None, [0], 1, [0], DIM, 0, True)
        group.to("cpu", backend=other)
        hash_lookup(group, ids_tensor([4]), torch.tensor([0, 1]), None, [0], 1, [0], DIM, 0, True)  # sweeps at 3
    assert sorted(group.tables[0].export()["ids"].tolist()) == [2, 3, 4] and group.backend == other


def test_ttl_tables_compile_without_graph_breaks_and_still_sweep():
    """The sweep is part of the lookup op (no Python tick behind torch.compiler.disable): a
    training forward of a TTL table compiles as one graph, and sweeps as the eager one does."""
    def make():
        return HashEmbedding(DIM, combiner="sum", initializer=INIT, seed=3, eviction=TTLEviction(1, 1)).train()

    torch._dynamo.reset()
    compiled, eager = make(), make()
    run = torch.compile(compiled, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    offsets = torch.tensor([0, 1, 2])
    for ids in ([1, 2], [3, 4], [5, 6], [7, 8]):  # training steps: forward and backward
        a, b = run(ids_tensor(ids), offsets), eager(ids_tensor(ids), offsets)
        assert torch.equal(a, b)
        (a.sum() + b.sum()).backward()
        del a, b  # their rows are free to go once the step is over
        gc.collect()  # the compiled forward's graph sits in a reference cycle: only the collector frees it
    torch._dynamo.reset()
    assert sorted(compiled.table.export()["ids"].tolist()) == [3, 4, 5, 6, 7, 8]  # 1, 2 swept at step 4
    assert compiled.group.stats() == eager.group.stats() and compiled.group.stats()["evictions"] == 2


def test_eval_lookups_start_no_step_and_sweep_nothing():
    emb = HashEmbedding(DIM, combiner=None, eviction=TTLEviction(1, 1))
    with torch.no_grad():
        emb(ids_tensor([1]))
        emb(ids_tensor([2]))  # the sweep at step 1 keeps 1 (unseen for 0 steps)
        emb.eval()
        for _ in range(5):
            emb(ids_tensor([7]))
    assert emb.group.step == 2 and sorted(emb.table.export()["ids"].tolist()) == [1, 2]


def test_the_stats_hook_only_reads():
    from recis.train import TableStats

    with pytest.raises(ValueError, match="TTLEviction.interval_steps"):
        TableStats(evict=True)

    class Trainer:
        model = HashEmbedding(DIM, combiner=None, eviction=TTLEviction(1, 1000))

    with torch.no_grad():
        for ids in ([1], [2], [3], [4]):
            Trainer.model(ids_tensor(ids))
    logs = {}
    TableStats(every=1).on_step_end(Trainer, 4, logs)
    assert logs == {"table/table/live": 4.0, "table/table/inserts": 4.0, "table/table/evictions": 0.0}
    assert len(Trainer.model.table) == 4  # expired rows stay until the table's own sweep (or evict_expired)


# ----------------------------------------------------------------------------- DataConfig embeds LoaderOptions
def test_data_config_embeds_the_loader_options():
    loader = {f.name for f in dataclasses.fields(LoaderOptions)}
    data = {f.name for f in dataclasses.fields(DataConfig)}
    assert issubclass(DataConfig, LoaderOptions) and loader <= data
    d = DataConfig(train="x", batch_size=7, drop_last=True, read_batch_size=100)
    assert d.loader_options() == dict(LoaderOptions(batch_size=7, drop_last=True, read_batch_size=100,
                                                    prefetch=2).loader_options())
    assert DataConfig(train="x").prefetch == 2 and LoaderOptions().prefetch == 0  # the job's default


@pytest.mark.parametrize("values,message", [
    ({"on_error": "ignore"}, r"data.on_error must be one of \('raise', 'skip'\), got 'ignore'"),
    ({"pin_memory": "yes"}, r"data.pin_memory must be 'auto', True or False, got 'yes'"),
    ({"read_batch_size": 0}, r"data.read_batch_size must be an integer >= 1, got 0"),
    ({"drop_last": "no"}, r"data.drop_last must be true or false, got str"),
    ({"yield_state": True}, r"unknown key\(s\) \['yield_state'\] in data"),
])
def test_data_errors_name_the_option(values, message):
    with pytest.raises((TypeError, ValueError), match=message):
        RunConfig.from_dict({"data": dict({"dataset": "movielens"}, **values), "model": {"name": "deepfm"}})
