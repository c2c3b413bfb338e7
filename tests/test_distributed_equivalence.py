"""N ranks train exactly the model that one process trains on the same global batches
(real multi-process gloo groups on the CPU), with C++ tables and with the Triton kernels of GPU
tables (backend="triton": Triton's interpreter on the CPU) against one C++ process."""
import pytest
import torch

import _dist_workers as w
from recis.distributed import shard
from recis.distributed.local import run_local
from recis.nn import FrequencyAdmission

STEPS, BATCH = 4, 16


def reference(kind="rowwise_adagrad", fused=True, admission=None):
    model = w.make_model(admission=admission)
    batches = [w.slice_batch(b, 0, BATCH) for b in w.global_batches(STEPS, BATCH)]
    losses = w.train_steps(model, batches, kind, fused)
    dense = {k: v for k, v in model.state_dict().items() if k.split(".")[0] not in ("embeddings", "linear")}
    return losses, w.table_contents(model), dense


def assert_same_training(ref, results, replicated=()):
    ref_losses, ref_tables, ref_dense = ref
    for r in results:
        losses, _, dense = r.value
        assert losses == pytest.approx(ref_losses, abs=1e-5, rel=1e-5)
        for k, v in ref_dense.items():
            torch.testing.assert_close(dense[k], v, atol=1e-5, rtol=1e-5, msg=f"dense {k} on rank {r.rank}")
    merged = w.merge_contents([r.value[1] for r in results], replicated)
    assert sorted(merged) == sorted(ref_tables)
    for name, want in ref_tables.items():
        got = merged[name]
        assert torch.equal(got["ids"], want["ids"]), f"table {name}: ids differ"
        assert torch.equal(got["counts"], want["counts"]), f"table {name}: counts differ"
        for k in ("rows", "slots"):
            torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5, msg=f"table {name}.{k}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("kind,fused,overrides", [
    ("rowwise_adagrad", True, {}),
    ("adam", True, {"genre": "replicated", "linear_user": "table_wise:1", "item": "table_wise:0"}),
])
def test_two_ranks_train_the_single_process_model(kind, fused, overrides, backend):
    results = w_run(2, kind, fused, overrides, backend=backend)
    replicated = [t for t, s in overrides.items() if s == "replicated"]
    assert_same_training(reference(kind, fused), results, replicated)
    held = [r.value[1]["user"]["ids"].numel() for r in results]
    if overrides:  # user shares its table group with item, placed whole on rank 0
        assert held[0] > 0 and held[1] == 0
        assert results[0].value[1]["linear_user"]["ids"].numel() == 0
    else:  # row-wise: each rank holds a part
        assert all(0 < h < sum(held) for h in held)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_four_ranks_deferred_optimizer_and_admission(backend):
    admission = FrequencyAdmission(min_count=2)
    results = w_run(4, "rowwise_adagrad", False, {}, admission, backend=backend)
    assert_same_training(reference("rowwise_adagrad", False, admission), results)


@pytest.mark.slow
def test_triton_tables_table_wise_and_replicated_deferred_with_admission():
    overrides = {"genre": "replicated", "user": "table_wise:1", "linear_genre": "table_wise:0"}
    admission = FrequencyAdmission(min_count=2)
    results = w_run(2, "adam", False, overrides, admission, backend="triton")
    assert_same_training(reference("adam", False, admission), results, replicated=["genre"])


def w_run(world, kind, fused, overrides, admission=None, backend=None):
    return run_local(w.sharded_training, world, STEPS, BATCH, kind, fused, overrides, admission, backend,
                     timeout_s=240)


def test_one_process_needs_no_process_group():
    model = shard(w.make_model(), verbose=False)
    batches = [w.slice_batch(b, 0, BATCH) for b in w.global_batches(STEPS, BATCH)]
    losses = w.train_steps(model, batches)
    ref_losses, ref_tables, _ = reference()
    assert losses == pytest.approx(ref_losses, abs=1e-6)
    for name, want in ref_tables.items():
        got = w.table_contents(model)[name]
        assert torch.equal(got["ids"], want["ids"])
        torch.testing.assert_close(got["rows"], want["rows"], atol=1e-6, rtol=1e-6)
