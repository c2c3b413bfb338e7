"""The Trainer's LR schedulers: each is stepped once per optimizer step (not per micro-batch),
the recis sparse optimizer and the dense one update with the scheduled LR of that step, and a
resume from a checkpoint continues the schedule where it stopped.

The model's loss is linear in its parameters (logits = sum(pooled rows * C) + dense @ w; loss =
sum of logits), so every gradient is known in closed form: C times the occurrences of a row's id,
and the sum of the dense inputs. The reference replays plain SGD with the schedules written out
here, and the LR each optimizer used at each step is read back from the parameter deltas.
"""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from recis.checkpoint import CheckpointManager
from recis.nn import HashEmbedding
from recis.optim import SparseAdagrad, SparseAdam, SparseAdamW, SparseFTRL, SparseRowwiseAdagrad, SparseSGD
from recis.train import Trainer, TrainerConfig
from recis.train.hooks import Hook

DIM = 3
C = torch.tensor([1.0, -2.0, 0.5])
SPARSE_LR, DENSE_LR = 0.5, 0.25


def expected_sparse_lr(t: int) -> float:
    """Linear warm-up over the first two steps from a third of the LR, then x0.6 per step."""
    return SPARSE_LR * ((t + 1) / 3 if t < 2 else 0.6 ** (t - 2))


def expected_dense_lr(t: int) -> float:
    """x0.1 at steps 2 and 4."""
    return DENSE_LR * [1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01][t]


def sparse_schedule(opt):
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 3, end_factor=1.0, total_iters=2)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.6)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warmup, decay], milestones=[2])


def dense_schedule(opt):
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)


class LinearCTR(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = HashEmbedding(DIM, combiner="sum", seed=5, name="items")
        self.dense = nn.Linear(2, 1, bias=False)

    def forward(self, b):
        return (self.emb(b.ids, b.offsets) * C).sum(1) + self.dense(b.dense).squeeze(1)


def make_batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(1, 3, (4,), generator=g)
        ids = torch.randint(0, 8, (int(lengths.sum()),), generator=g) * 101
        out.append(SimpleNamespace(ids=ids, offsets=torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
                                   dense=torch.randn(4, 2, generator=g), labels=torch.zeros(4)))
    return out


class Snapshot(Hook):
    """The table rows and the dense weights after every optimizer step, and the step's logs."""

    def __init__(self):
        self.rows, self.dense, self.logs = [], [], []

    def on_step_end(self, trainer, step, logs):
        e = trainer.model.emb.table.export()
        self.rows.append(dict(zip(e["ids"].tolist(), e["rows"].clone())))
        self.dense.append(trainer.model.dense.weight.detach().squeeze(0).clone())
        self.logs.append(dict(logs))


def make_trainer(config, fused=False, checkpoint=None):
    torch.manual_seed(0)
    model = LinearCTR()
    sparse = SparseSGD(model, lr=SPARSE_LR, fused=fused)
    dense = torch.optim.SGD(model.parameters(), lr=DENSE_LR)
    snap = Snapshot()
    trainer = Trainer(model, sparse, dense, sparse_scheduler=sparse_schedule(sparse),
                      dense_scheduler=dense_schedule(dense),
                      loss_fn=lambda logits, labels: logits.sum(), hooks=[snap], checkpoint=checkpoint,
                      config=config)
    return trainer, snap


def windows(batches, accum, epochs=1):
    """The micro-batches of each optimizer step: `accum` at a time, each epoch's last window
    holding what is left of the epoch."""
    return [batches[i:i + accum] for _ in range(epochs) for i in range(0, len(batches), accum)]


def reference(steps, accum, initial_rows, w0):
    """Plain SGD with the scheduled LRs, in float64: (rows by id, dense weights) after each step.
    `steps`: the micro-batches of each step; every micro-batch's loss is divided by `accum`."""
    rows, w, out = {}, w0.double().clone(), []
    for t, micro in enumerate(steps):
        grad_rows, grad_w = defaultdict(lambda: torch.zeros(DIM, dtype=torch.float64)), torch.zeros(2).double()
        for b in micro:
            for i in b.ids.tolist():
                rows.setdefault(i, initial_rows(i).double())
                grad_rows[i] += C.double() / accum
            grad_w += b.dense.double().sum(0) / accum
        for i, g in grad_rows.items():
            rows[i] = rows[i] - expected_sparse_lr(t) * g
        w = w - expected_dense_lr(t) * grad_w
        out.append(({i: r.clone() for i, r in rows.items()}, w.clone()))
    return out


def initial_rows_of(trainer):
    table = trainer.model.emb.table
    return lambda i: table.initial_rows(torch.tensor([i]))[0]


def lrs_used(snap, steps, accum, before_rows, before_w, initial_rows):
    """The LR each optimizer applied at each recorded step, read back from the delta of one row
    of the step (delta = -lr * C * count / accum; a row new in the step starts from its initial
    value) and from the delta of the dense weights."""
    sparse, dense = [], []
    prev_rows, prev_w = before_rows, before_w
    for rows, w, micro in zip(snap.rows, snap.dense, steps):
        counts = defaultdict(int)
        for b in micro:
            for i in b.ids.tolist():
                counts[i] += 1
        i = max(counts, key=lambda j: (counts[j], j))
        before = prev_rows[i] if i in prev_rows else initial_rows(i)
        sparse.append(float(((before - rows[i]) / (C * counts[i] / accum)).mean()))
        grad_w = sum(b.dense.sum(0) for b in micro) / accum
        dense.append(float(((prev_w - w) / grad_w).mean()))
        prev_rows, prev_w = rows, w
    return sparse, dense


def check_trajectory(snap, ref, offset=0):
    assert len(snap.rows) == len(ref) - offset
    for k, (rows, w, (ref_rows, ref_w)) in enumerate(zip(snap.rows, snap.dense, ref[offset:])):
        step = offset + k + 1
        assert sorted(rows) == sorted(ref_rows), f"ids after step {step}"
        for i, r in ref_rows.items():
            torch.testing.assert_close(rows[i].double(), r, rtol=1e-5, atol=1e-6, msg=f"row {i} after step {step}")
        torch.testing.assert_close(w.double(), ref_w, rtol=1e-5, atol=1e-6, msg=f"dense weights after step {step}")


@pytest.mark.parametrize("fused", [False, True])
def test_both_schedulers_drive_the_updates_once_per_step(fused):
    """Two epochs of three batches: six steps, the schedules continue across the epoch boundary."""
    batches = make_batches(3)
    trainer, snap = make_trainer(TrainerConfig(epochs=2, log_every=1, progress=False), fused=fused)
    w0 = trainer.model.dense.weight.detach().squeeze(0).clone()
    init = initial_rows_of(trainer)
    trainer.fit(batches)
    assert trainer.step == 6 and len(snap.rows) == 6
    sparse, dense = lrs_used(snap, windows(batches, 1, 2), 1, {}, w0, init)
    assert sparse == pytest.approx([expected_sparse_lr(t) for t in range(6)], rel=1e-3)
    assert dense == pytest.approx([expected_dense_lr(t) for t in range(6)], rel=1e-3)
    check_trajectory(snap, reference(windows(batches, 1, 2), 1, init, w0))
    # The logged LR after step t is the one the next step will use.
    assert [s["lr_sparse"] for s in snap.logs] == pytest.approx([expected_sparse_lr(t) for t in range(1, 7)])
    assert [s["lr_dense"] for s in snap.logs] == pytest.approx([expected_dense_lr(t) for t in range(1, 7)])


def test_gradient_accumulation_steps_the_schedulers_once_per_optimizer_step():
    """Three micro-batches per optimizer step: 12 batches give 4 steps at the LRs of steps 0-3
    (stepping per micro-batch would reach step 9's LR)."""
    batches = make_batches(12, seed=1)
    trainer, snap = make_trainer(TrainerConfig(grad_accum_steps=3, log_every=1, progress=False))
    w0 = trainer.model.dense.weight.detach().squeeze(0).clone()
    init = initial_rows_of(trainer)
    trainer.fit(batches)
    assert trainer.step == 4
    sparse, dense = lrs_used(snap, windows(batches, 3), 3, {}, w0, init)
    assert sparse == pytest.approx([expected_sparse_lr(t) for t in range(4)], rel=1e-3)
    assert dense == pytest.approx([expected_dense_lr(t) for t in range(4)], rel=1e-3)
    check_trajectory(snap, reference(windows(batches, 3), 3, init, w0))
    assert trainer.sparse_scheduler.last_epoch == trainer.dense_scheduler.last_epoch == 4


def test_an_epoch_ending_mid_accumulation_steps_on_what_it_accumulated(tmp_path):
    """Five micro-batches per epoch with grad_accum_steps=2: each epoch's fifth micro-batch makes
    a step of its own (its loss divided by 2, as Lightning and the HF Trainer do) instead of being
    trained and dropped; the schedulers step with it, nothing is left pending after fit, and the
    final checkpoint can be saved."""
    batches = make_batches(5, seed=3)
    trainer, snap = make_trainer(TrainerConfig(grad_accum_steps=2, epochs=2, log_every=1, progress=False),
                                 checkpoint=CheckpointManager(tmp_path))
    w0 = trainer.model.dense.weight.detach().squeeze(0).clone()
    init = initial_rows_of(trainer)
    trainer.fit(batches)
    steps = windows(batches, 2, epochs=2)
    assert [len(m) for m in steps] == [2, 2, 1, 2, 2, 1]
    assert trainer.step == 6 and trainer.examples == 40
    sparse, dense = lrs_used(snap, steps, 2, {}, w0, init)
    assert sparse == pytest.approx([expected_sparse_lr(t) for t in range(6)], rel=1e-3)
    assert dense == pytest.approx([expected_dense_lr(t) for t in range(6)], rel=1e-3)
    check_trajectory(snap, reference(steps, 2, init, w0))
    assert trainer.model.emb.group.pending_rows() == 0
    assert trainer.save_checkpoint().name == "step-000000000006"


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_mid_schedule_continues_the_schedule(tmp_path, accum):
    """Stop after step 3 (checkpointed), resume into a fresh trainer whose schedulers start over,
    and train on: steps 4-6 use the LRs of steps 3-5 and the model equals the uninterrupted run."""
    batches = make_batches(6 * accum, seed=2)
    first, _ = make_trainer(TrainerConfig(grad_accum_steps=accum, max_steps=3, checkpoint_every=3, log_every=1,
                                          progress=False), checkpoint=CheckpointManager(tmp_path / "ckpt"))
    w0 = first.model.dense.weight.detach().squeeze(0).clone()
    init = initial_rows_of(first)
    first.fit(batches)
    assert first.step == 3

    second, snap = make_trainer(TrainerConfig(grad_accum_steps=accum, log_every=1, progress=False),
                                checkpoint=CheckpointManager(tmp_path / "ckpt"))
    assert second.sparse_optimizer.param_groups[0]["lr"] == pytest.approx(expected_sparse_lr(0))
    assert second.resume(train=batches)
    assert second.step == 3
    assert second.sparse_optimizer.param_groups[0]["lr"] == pytest.approx(expected_sparse_lr(3))
    assert second.dense_optimizer.param_groups[0]["lr"] == pytest.approx(expected_dense_lr(3))
    e = second.model.emb.table.export()
    at_resume = dict(zip(e["ids"].tolist(), e["rows"].clone()))
    second.fit(batches)
    assert second.step == 6 and len(snap.rows) == 3
    ref = reference(windows(batches, accum), accum, init, w0)
    sparse, dense = lrs_used(snap, windows(batches, accum)[3:], accum, at_resume, ref[2][1].float(), init)
    assert sparse == pytest.approx([expected_sparse_lr(t) for t in range(3, 6)], rel=1e-3)
    assert dense == pytest.approx([expected_dense_lr(t) for t in range(3, 6)], rel=1e-3)
    check_trajectory(snap, ref, offset=3)


@pytest.mark.parametrize("cls,kwargs", [
    (SparseSGD, {}), (SparseAdagrad, {}), (SparseRowwiseAdagrad, {}), (SparseAdam, {}),
    (SparseAdamW, {"weight_decay": 0.1}), (SparseFTRL, {"l1": 0.01}),
])
@pytest.mark.parametrize("fused", [False, True])
def test_a_torch_scheduler_sets_the_lr_every_sparse_optimizer_applies(cls, kwargs, fused):
    """Each sparse optimizer, driven by a torch scheduler from 4x the LR down to 1x, updates its
    rows exactly as the same optimizer built with 1x the LR; a scheduler-less 4x one does not."""
    ids, offsets = torch.tensor([3, 9, 3, 27]), torch.tensor([0, 2, 4])
    grad_of = torch.tensor([[1.0, -2.0], [0.5, 3.0]])

    def run(lr, schedule):
        emb = HashEmbedding(2, seed=1)
        opt = cls(emb, lr=lr, fused=fused, **kwargs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.25 if t else 1.0) if schedule else None
        if sched is not None:
            opt.step()  # nothing pending: no row changes
            sched.step()  # from here on: lr / 4
        for _ in range(2):
            (emb(ids, offsets) * grad_of).sum().backward()
            opt.step()
            opt.zero_grad()
            if sched is not None:
                sched.step()
        return emb.table.export()

    plain, scheduled, unscheduled = run(0.125, False), run(0.5, True), run(0.5, False)
    assert torch.equal(scheduled["ids"], plain["ids"])
    torch.testing.assert_close(scheduled["rows"], plain["rows"], rtol=0, atol=0)
    assert not torch.allclose(unscheduled["rows"], plain["rows"])
