"""SIGKILL in the middle of a save: the previous checkpoint still loads and nothing
half-written is picked as latest.

The test trains 3 steps, saves step 3, trains a 4th step, then forks a child that saves step 4
and stops at a chosen point: half of a data file on disk, half of the manifest, everything
written but not renamed, or (keep_last=1) the new checkpoint complete and the old one half
deleted. The child signals and is SIGKILLed there. (A fork, so the child needs no imports;
it runs one thread and does no training, only the save.)
"""
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import recis.checkpoint.files as ckfiles
from recis.checkpoint import CheckpointManager
from test_checkpoint_common import assert_same_state, make_training, model_state, train_step

POINTS = ["data", "manifest", "rename", "retention"]


def hang(work: Path):
    (work / "ready").write_text(str(os.getpid()))
    time.sleep(600)


def stop_at(point: str, work: Path) -> None:
    """Patches the child's file layer so that the save stops at `point`."""
    if point == "data":
        real = ckfiles.save_file

        def half_then_hang(tensors, filename):
            real(tensors, filename)
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            hang(work)
        ckfiles.save_file = half_then_hang
    elif point == "manifest":
        real_write = ckfiles.write_text

        def write_then_hang(path, text):
            if path.name == ckfiles.MANIFEST:
                real_write(path, text[: len(text) // 2])
                hang(work)
            real_write(path, text)
        ckfiles.write_text = write_then_hang
    elif point == "rename":
        real_rename = os.rename

        def hang_before_commit(src, dst):  # the commit renames TMP_PREFIX.../step-N to step-N
            if Path(src).parent.name.startswith(ckfiles.TMP_PREFIX + "step-") and Path(dst).name == Path(src).name:
                hang(work)
            real_rename(src, dst)
        os.rename = hang_before_commit
    elif point == "retention":
        def delete_half_then_hang(path, ignore_errors=False):
            victims = sorted(Path(path).iterdir())
            for p in victims[: len(victims) // 2]:
                p.unlink()
            hang(work)
        ckfiles.shutil.rmtree = delete_half_then_hang


def save_in_killed_child(point, work, mgr, model, opts):
    pid = os.fork()
    if pid == 0:  # child: save, stopping at `point`; never returns into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            stop_at(point, work)
            mgr.save(4, model, opts, {"step": 4})
            (work / "finished").write_text("save returned")
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while not (work / "ready").exists():
        done, status = os.waitpid(pid, os.WNOHANG)
        assert done == 0, f"child for {point!r} exited early with status {status}"
        assert time.monotonic() < deadline, f"child for {point!r} never reached its kill point"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not (work / "finished").exists()


def snapshot(model):
    return {k: v.clone() for k, v in model_state(model).items()}


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_mid_save_leaves_the_last_good_checkpoint(tmp_path, point):
    root = tmp_path / "ckpt"
    model, opts = make_training()
    mgr = CheckpointManager(root, keep_last=1)
    for s in range(3):
        train_step(model, opts, s)
    mgr.save(3, model, opts, {"step": 3})
    step3 = snapshot(model)
    train_step(model, opts, 3)
    step4 = snapshot(model)

    save_in_killed_child(point, tmp_path, mgr, model, opts)

    leftovers = [p.name for p in root.iterdir() if p.name.startswith(ckfiles.TMP_PREFIX)]
    assert leftovers  # the interrupted save (or delete) left its temporary directory
    fresh_mgr = CheckpointManager(root, keep_last=1)
    restored, restored_opts = make_training(seed=7)
    extra = fresh_mgr.load("latest", restored, restored_opts)
    if point == "retention":  # the new checkpoint was complete before the old one was touched
        assert fresh_mgr.latest().step == 4 and extra == {"step": 4}
        assert_same_state(model_state(restored), step4)
    else:
        assert [i.step for i in fresh_mgr.checkpoints()] == [3] and extra == {"step": 3}
        assert_same_state(model_state(restored), step3)
    # The next save clears the debris and works.
    train_step(restored, restored_opts, 10)
    fresh_mgr.save(20, restored, restored_opts)
    assert sorted(p.name for p in root.iterdir()) == ["step-000000000020"]
