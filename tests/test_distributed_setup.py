"""Start-up checks, the planner's printed choice, and the pipelined input (real gloo ranks)."""
import pytest
import torch

import _dist_workers as w
from recis.distributed import Planner, shard
from recis.distributed.local import run_local
from recis.nn import EmbeddingCollection, TableConfig


@pytest.mark.slow
def test_mismatched_table_configs_are_refused_naming_table_and_rank():
    results = run_local(w.mismatched_tables, 2, timeout_s=120)
    for r in results:
        kind, message = r.value
        assert kind == "ConfigMismatchError"
        assert "'item'" in message and "rank 1" in message and "'dim': 4" in message and "'dim': 8" in message


def test_plan_is_printed_and_can_be_overridden(capsys):
    ec = EmbeddingCollection([TableConfig("user", 8), TableConfig("country", 4, capacity=300),
                              TableConfig("item", 16, capacity=200_000)])
    shard(torch.nn.Sequential(ec), planner=Planner(overrides={"item": "replicated"}))
    printed = capsys.readouterr().out
    assert "recis sharding plan for 1 rank(s)" in printed
    lines = {line.split()[0]: line for line in printed.splitlines()[1:]}
    assert "row_wise" in lines["user"] and "unbounded" in lines["user"]
    assert "replicated" in lines["country"]
    assert "replicated" in lines["item"] and "override" in lines["item"]
    plan = Planner().plan([ec], world_size=4)
    assert plan.for_table("item").sharding == "table_wise" and plan.for_table("item").rank == 0


def test_bad_overrides_are_refused():
    ec = EmbeddingCollection([TableConfig("user", 8)])
    with pytest.raises(ValueError, match=r"tables \['usr'\].*user"):
        Planner(overrides={"usr": "row_wise"}).plan(ec, 2)
    with pytest.raises(ValueError, match="rank must be in"):
        Planner(overrides={"user": "table_wise:2"}).plan(ec, 2)
    with pytest.raises(ValueError, match="use one of"):
        Planner(overrides={"user": "column_wise"}).plan(ec, 2)


@pytest.mark.slow
def test_pipelined_training_equals_unpipelined():
    piped = run_local(w.pipelined_losses, 2, True, 6, 16, timeout_s=180)
    plain = run_local(w.pipelined_losses, 2, False, 6, 16, timeout_s=180)
    for a, b in zip(piped, plain):
        assert a.value[0] == pytest.approx(b.value[0], abs=1e-6)
        for name, want in b.value[1].items():
            assert torch.equal(a.value[1][name]["ids"], want["ids"])
            torch.testing.assert_close(a.value[1][name]["rows"], want["rows"], atol=1e-6, rtol=1e-6)
        assert len(a.value[2]) == 6


@pytest.mark.slow
def test_fsdp2_dense_trains_the_single_process_model():
    results = run_local(w.fsdp2_training, 2, 4, 16, timeout_s=180)
    model = w.make_model()
    want = w.train_steps(model, [w.slice_batch(b, 0, 16) for b in w.global_batches(4, 16)])
    for r in results:
        assert r.value[0] == pytest.approx(want, abs=1e-5)
