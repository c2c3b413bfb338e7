"""Sharded checkpoints: saved by W ranks, loaded by any W' (rows, optimizer slots, dense and
optimizer state), through full and incremental checkpoints (real gloo groups on the CPU)."""
import pytest
import torch

import _dist_workers as w
from recis.checkpoint import CheckpointManager
from recis.checkpoint.errors import CheckpointNotFoundError
from recis.distributed.local import run_local

BATCH = 16


def reference(steps):
    model = w.make_model()
    w.train_steps(model, [w.slice_batch(b, 0, BATCH) for b in w.global_batches(steps, BATCH)])
    model.eval()
    with torch.no_grad():
        logits = model(w.slice_batch(w.global_batches(1, BATCH, seed=99)[0], 0, BATCH))
    return w.table_contents(model), logits


def stage(directory, world, load, first, last, incremental=False):
    if world == 1:
        return [w.checkpoint_stage(str(directory), load, first, last, BATCH, incremental)]
    return [r.value for r in run_local(w.checkpoint_stage, world, str(directory), load, first, last, BATCH,
                                       incremental, timeout_s=240)]


def check_against_reference(parts, steps):
    want_tables, want_logits = reference(steps)
    got = w.merge_contents([p[0] for p in parts], replicated=["genre"])
    for name, want in want_tables.items():
        assert torch.equal(got[name]["ids"], want["ids"]), f"{name}: ids after {steps} steps"
        for k in ("rows", "slots", "counts"):
            torch.testing.assert_close(got[name][k], want[k], atol=1e-5, rtol=1e-5, msg=f"{name}.{k}")
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), want_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_resharding_round_trip_2_1_4_2(tmp_path):
    check_against_reference(stage(tmp_path, 2, False, 0, 3), 3)
    check_against_reference(stage(tmp_path, 1, True, 3, 4), 4)
    check_against_reference(stage(tmp_path, 4, True, 4, 5, incremental=True), 5)
    manifest = CheckpointManager(tmp_path).latest()
    assert manifest.kind == "incremental" and manifest.chain_length == 2
    check_against_reference(stage(tmp_path, 2, True, 5, 7), 7)


@pytest.mark.slow
def test_missing_shard_is_refused_naming_the_file(tmp_path):
    stage(tmp_path, 2, False, 0, 1)
    path = CheckpointManager(tmp_path).latest().path
    (path / "sparse-00001-of-00002.safetensors").unlink()
    model = w.make_model()
    with pytest.raises(CheckpointNotFoundError, match="sparse-00001-of-00002.safetensors"):
        CheckpointManager(tmp_path).load("latest", model)
