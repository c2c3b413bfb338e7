"""Fault behaviour: a dead or stalled rank stops its peers with a clear error within the
timeout, the last complete checkpoint stays intact, and a restart resumes from it."""
import pytest
import torch

import _dist_workers as w
from recis.checkpoint import CheckpointManager
from recis.distributed.local import run_local

STEPS, BATCH = 8, 16


@pytest.mark.slow
def test_rank_killed_mid_save_then_restart_resumes_exactly(tmp_path):
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    # The survivor must stop on its peer's death, not on the collective timeout: that timeout is
    # longer than run_local lets a rank run, so a survivor that waited for it would be killed and
    # report no DistributedError (no wall-clock bound on start-up and training under load).
    results = run_local(w.trainer_run, 2, str(crashed), STEPS, BATCH, 2, collective_timeout_s=3600,
                        raise_on_error=False, timeout_s=300)
    assert results[1].exitcode == 17 and not results[1].ok
    assert not results[0].ok and "DistributedError" in results[0].error and "rank 0/2" in results[0].error
    # The save that rank 1 died in never became a checkpoint; the one before it is intact.
    latest = CheckpointManager(crashed).latest()
    assert latest.step == 2 and [i.step for i in CheckpointManager(crashed).checkpoints()] == [2]
    CheckpointManager(crashed).load("latest", w.make_model())
    # Restart (as torchrun would): both ranks resume from step 2 and finish like an uninterrupted run.
    resumed = run_local(w.trainer_run, 2, str(crashed), STEPS, BATCH, timeout_s=180)
    assert all(r.value[0] and r.value[1] == 2 and r.value[2] == STEPS for r in resumed)
    uninterrupted = run_local(w.trainer_run, 2, str(clean), STEPS, BATCH, timeout_s=180)
    for a, b in zip(resumed, uninterrupted):
        for name, want in b.value[3].items():
            got = a.value[3][name]
            assert torch.equal(got["ids"], want["ids"])
            torch.testing.assert_close(got["rows"], want["rows"], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(got["slots"], want["slots"], atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_stalled_rank_times_out_with_a_clear_error():
    results = run_local(w.stalled_peer, 2, 20.0, collective_timeout_s=4, timeout_s=90)
    kind, message, waited = results[0].value
    assert kind == "DistributedError"
    assert "rank 0/2" in message and "timeout 4 s" in message
    assert 3 <= waited < 15
