"""keep_last: exactly which checkpoints remain after every save, against a reference model of
the rule written out here: the `keep_last` newest complete checkpoints stay, with every
checkpoint their incremental chains build on; with the default `save(incremental=None)` a save
is full when it is the first or when the previous one's chain already has `full_every` links."""
from typing import Dict, List, Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recis.checkpoint import CheckpointManager
from recis.checkpoint.manager import checkpoint_name
from recis.nn import HashEmbedding


class RetentionReference:
    """{step: (kind, parent step, chain length)} of the checkpoints that should be on disk."""

    def __init__(self, keep_last: Optional[int], full_every: int):
        self.keep_last, self.full_every = keep_last, full_every
        self.disk: Dict[int, tuple] = {}
        self.last: Optional[int] = None  # the step of the previous save (the model's baseline)

    def save(self, step: int, incremental: Optional[bool]) -> None:
        chain = self.disk[self.last][2] if self.last is not None else None
        full = (incremental is False or chain is None
                or (incremental is None and chain >= self.full_every))
        self.disk[step] = ("full", None, 1) if full else ("incremental", self.last, chain + 1)
        self.last = step
        if self.keep_last is None:
            return
        needed = set()
        for s in sorted(self.disk)[-self.keep_last:]:
            while s is not None:
                needed.add(s)
                s = self.disk[s][1]
        self.disk = {s: v for s, v in self.disk.items() if s in needed}

    def listing(self) -> List[tuple]:
        return [(s, k, checkpoint_name(p) if p is not None else None, n) for s, (k, p, n) in sorted(self.disk.items())]


def on_disk(mgr: CheckpointManager, root) -> List[tuple]:
    infos = mgr.checkpoints()
    assert sorted(p.name for p in root.iterdir()) == [i.path.name for i in infos], "stray entries in the root"
    return [(i.step, i.kind, i.parent, i.chain_length) for i in infos]


def run_saves(root, keep_last, full_every, plan):
    """Saves (step, incremental) in order, touching a few rows in between; after every save the
    directory must hold exactly the reference's checkpoints."""
    torch.manual_seed(0)
    model = HashEmbedding(2)
    mgr = CheckpointManager(root, keep_last=keep_last, full_every=full_every)
    ref = RetentionReference(keep_last, full_every)
    for i, (step, incremental) in enumerate(plan):
        model(torch.tensor([i, 100 + i % 3]), torch.tensor([0, 1, 2]))
        mgr.save(step, model, incremental=incremental)
        ref.save(step, incremental)
        assert on_disk(mgr, root) == ref.listing(), f"after save {i + 1} (step {step})"
    return ref


@pytest.mark.parametrize("full_every", [1, 2, 3])
@pytest.mark.parametrize("keep_last", [1, 2, 3, 4, None])
def test_after_each_of_eight_saves_exactly_the_reference_checkpoints_remain(tmp_path, keep_last, full_every):
    run_saves(tmp_path, keep_last, full_every, [(10 * k, None) for k in range(1, 9)])


def test_worked_example_keep_2_full_every_3(tmp_path):
    """Written out by hand: saves 1..7 are F I I F I I F; the newest two are 6 and 7, and 6 needs
    5 and 4. keep_last=3 would also keep these four; keep_last=1 would keep 7 alone."""
    run_saves(tmp_path, 2, 3, [(s, None) for s in range(1, 8)])
    assert [p.name for p in sorted(tmp_path.iterdir())] == [checkpoint_name(s) for s in (4, 5, 6, 7)]


def test_keep_last_1_with_full_saves_keeps_only_the_newest(tmp_path):
    run_saves(tmp_path, 1, 1, [(s, None) for s in range(1, 5)])
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint_name(4)]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep_last=st.one_of(st.none(), st.integers(1, 4)), full_every=st.integers(1, 4),
       plan=st.lists(st.tuples(st.integers(1, 5), st.sampled_from([None, None, True, False])), min_size=1,
                     max_size=9))
def test_any_sequence_of_full_and_incremental_saves(tmp_path_factory, keep_last, full_every, plan):
    """Random step gaps and forced kinds (incremental=True needs a previous save: the first is None)."""
    steps, step = [], 0
    for gap, incremental in plan:
        step += gap
        steps.append((step, None if not steps and incremental else incremental))
    run_saves(tmp_path_factory.mktemp("ckpt"), keep_last, full_every, steps)


@pytest.mark.parametrize("keep_last", [1, 3, None])
def test_saving_a_step_below_one_on_disk_is_refused_and_nothing_is_removed(tmp_path, keep_last):
    """A run rewound to step 5 (or restarted with resume off) must not save step 6 next to step 10:
    retention by step would delete the new checkpoint, and 'latest' would resume the old branch."""
    from recis.checkpoint import CheckpointError

    model = HashEmbedding(2)
    model(torch.tensor([1, 2]), torch.tensor([0, 1, 2]))
    first = CheckpointManager(tmp_path, keep_last=None)
    first.save(5, model)
    first.save(10, model)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match=rf"cannot save step 6 .*\['{checkpoint_name(10)}'\]"):
        CheckpointManager(tmp_path, keep_last=keep_last).save(6, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
