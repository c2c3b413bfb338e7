"""Incremental checkpoints: a chain (full + incrementals) loads into exactly the state of a full
checkpoint taken at the same point, and of the live model, through training, TTL eviction,
explicit erases and inserts, ids that come back, and saves between a forward and its update.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from recis.checkpoint import CheckpointError, CheckpointManager
from test_checkpoint_common import assert_same_training, make_training, train_step


class Twins:
    """An incremental manager and a full one saving the same model at the same points."""

    def __init__(self, root: Path, model, opts):
        self.model, self.opts = model, opts
        self.inc = CheckpointManager(root / "inc", keep_last=None, full_every=1000)
        self.full = CheckpointManager(root / "full", keep_last=None)
        self.steps = []

    def save(self, step):
        inc = self.inc.save(step, self.model, self.opts, {"at": step})
        self.full.save(step, self.model, self.opts, {"at": step})
        self.steps.append(step)
        return inc

    def assert_chain_equals_full(self, step):
        a, a_opts = make_training(seed=1)
        b, b_opts = make_training(seed=2)
        name = f"step-{step:012d}"
        assert CheckpointManager(self.inc.directory).load(name, a, a_opts) == {"at": step}
        assert CheckpointManager(self.full.directory).load(name, b, b_opts) == {"at": step}
        assert_same_training(a, a_opts, b, b_opts)
        return a, a_opts


def live_ids(model, table):
    return set(model.ec.tables()[table].export()["ids"].tolist())


def test_chain_with_evictions_erases_and_returning_ids_equals_full(tmp_path):
    model, opts = make_training()
    twins = Twins(tmp_path, model, opts)
    for s in range(4):
        train_step(model, opts, s)
    twins.save(4)  # the chain's full base
    users_at_base, items_at_base = live_ids(model, "user"), live_ids(model, "item")

    # Between saves: erase some items explicitly, evict stale users, train on.
    items = model.ec.tables()["item"]
    erased = sorted(items_at_base)[:4]
    items.erase(torch.tensor(erased))
    for s in range(4, 8):
        train_step(model, opts, s)
    model.ec.groups[0].evict_expired()
    gone_users = users_at_base - live_ids(model, "user")
    assert gone_users, "the scenario needs users evicted since the base"
    inc = twins.save(8)
    twins.assert_chain_equals_full(8)

    # The incremental file holds only rows touched since the base, the ids gone since the base
    # and the number of live ids.
    sparse = load_file(str(inc / "sparse.safetensors"))
    assert sparse["ec.item.ids"].numel() < len(live_ids(model, "item")) == int(sparse["ec.item.live_count"])
    assert set(sparse["ec.user.removed_ids"].tolist()) == gone_users
    assert set(sparse["ec.item.removed_ids"].tolist()) == set(erased) - live_ids(model, "item")
    assert int(sparse["ec.user.live_count"]) == len(live_ids(model, "user"))
    base_step = 4
    expected = {i for i, seen in zip(*(model.ec.tables()["item"].export()[k].tolist() for k in ("ids", "last_seen")))
                if seen >= base_step}
    assert set(sparse["ec.item.ids"].tolist()) == expected

    # Ids come back: erased items and evicted users are inserted again (explicitly and by training).
    items.find_or_insert(torch.tensor(erased[:2]))
    for s in list(range(8)) * 2:  # batches 0..7 again: their users and items return
        train_step(model, opts, s)
    assert gone_users & live_ids(model, "user") and set(erased) & live_ids(model, "item")
    twins.save(24)
    twins.assert_chain_equals_full(24)
    assert [i.kind for i in twins.inc.checkpoints()] == ["full", "incremental", "incremental"]


def test_save_between_forward_and_update_misses_no_row(tmp_path):
    """A training forward advances the step and stamps its rows before the optimizer moves
    them, so rows with last_seen == the saved step still change after the save."""
    model, opts = make_training()
    twins = Twins(tmp_path, model, opts)
    for s in range(3):
        train_step(model, opts, s)
    twins.save(3)
    finish = train_step(model, opts, 3, forward_only=True)
    twins.save(4)  # rows of batch 3 are stamped with this step but not updated yet
    finish()
    twins.save(5)  # nothing else touched them since
    twins.assert_chain_equals_full(5)


def test_loaded_chain_is_a_baseline_for_further_increments(tmp_path):
    model, opts = make_training()
    mgr = CheckpointManager(tmp_path, keep_last=None, full_every=10)
    for s in range(3):
        train_step(model, opts, s)
        mgr.save(s, model, opts)
    resumed, resumed_opts = make_training(seed=5)
    other = CheckpointManager(tmp_path, keep_last=None, full_every=10)
    other.load("latest", resumed, resumed_opts)
    rng = torch.get_rng_state()  # both runs draw the same dropout masks
    for s in range(3, 6):
        train_step(model, opts, s)
    torch.set_rng_state(rng)
    for s in range(3, 6):
        train_step(resumed, resumed_opts, s)
    path = other.save(6, resumed, resumed_opts)
    info = other.latest()
    assert info.path == path and info.kind == "incremental" and info.parent == "step-000000000002"
    fresh, fresh_opts = make_training(seed=6)
    CheckpointManager(tmp_path).load("latest", fresh, fresh_opts)
    assert_same_training(fresh, fresh_opts, model, opts)


def test_incremental_needs_a_baseline_of_the_same_model(tmp_path):
    model, opts = make_training()
    mgr = CheckpointManager(tmp_path, full_every=5)
    with pytest.raises(CheckpointError, match="has not saved or loaded this model"):
        mgr.save(1, model, opts, incremental=True)
    mgr.save(1, model, opts)
    other, other_opts = make_training()
    assert mgr.save(2, other, other_opts).name == "step-000000000002"
    assert mgr.latest().kind == "full"  # another model: full, not an increment of step 1
    elsewhere = CheckpointManager(tmp_path / "elsewhere", full_every=5)
    elsewhere.load(mgr.latest().path, other)  # a baseline, but in another directory
    assert elsewhere.save(3, other, other_opts) and elsewhere.latest().kind == "full"
    with pytest.raises(CheckpointError, match="has not saved or loaded this model"):
        elsewhere.save(4, model, opts, incremental=True)
    assert elsewhere.save(5, other, other_opts, incremental=True) and elsewhere.latest().kind == "incremental"


def test_missing_or_replaced_parent_is_named(tmp_path):
    model, opts = make_training()
    mgr = CheckpointManager(tmp_path, keep_last=None, full_every=5)
    train_step(model, opts, 0)
    base = mgr.save(1, model, opts)
    train_step(model, opts, 1)
    mgr.save(2, model, opts)
    shutil.rmtree(base)
    with pytest.raises(FileNotFoundError, match="step-000000000002 is incremental on .*step-000000000001, which is "
                                                "missing"):
        mgr.load("latest", make_training()[0])
    # another checkpoint under the parent's name (saved elsewhere: a root refuses a step below its newest)
    planted = CheckpointManager(tmp_path / "elsewhere").save(1, model, opts)
    os.rename(planted, base)
    with pytest.raises(CheckpointError, match="not the checkpoint that .*step-000000000002 was built on"):
        mgr.load("step-000000000002", make_training()[0])


OPS = st.one_of(
    st.tuples(st.just("train"), st.integers(0, 30)),
    st.tuples(st.just("erase"), st.sampled_from(["user", "item", "cate"]), st.integers(1, 5)),
    st.tuples(st.just("insert"), st.sampled_from(["user", "item", "cate"]),
              st.lists(st.integers(-3, 200), min_size=1, max_size=4)),
    st.tuples(st.just("evict")),
    st.tuples(st.just("split_save"), st.integers(0, 30)),
    st.tuples(st.just("save")),
)


@settings(max_examples=6, deadline=None)
@given(st.lists(OPS, min_size=3, max_size=9))
def test_random_histories_chain_equals_full_and_live(ops):
    model, opts = make_training()
    with tempfile.TemporaryDirectory() as root:
        twins = Twins(Path(root), model, opts)
        train_step(model, opts, 100)
        twins.save(0)
        step = 0
        for op in ops:
            if op[0] == "train":
                train_step(model, opts, op[1])
            elif op[0] == "erase":
                table = model.ec.tables()[op[1]]
                table.erase(table.export()["ids"][: op[2]])
            elif op[0] == "insert":
                model.ec.tables()[op[1]].find_or_insert(torch.tensor(op[2]))
            elif op[0] == "evict":
                model.ec.groups[0].evict_expired()
            else:
                finish = train_step(model, opts, op[1], forward_only=True) if op[0] == "split_save" else None
                step += 1
                twins.save(step)
                if finish is not None:
                    finish()
        step += 1
        twins.save(step)
        restored, restored_opts = twins.assert_chain_equals_full(step)
        assert_same_training(restored, restored_opts, model, opts)
        if len(twins.steps) > 2:
            twins.assert_chain_equals_full(twins.steps[len(twins.steps) // 2])
