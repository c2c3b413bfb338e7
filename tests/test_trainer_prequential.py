"""Prequential evaluation and the per-batch hook: each batch is scored by the model before the
update on it, which equals an offline recomputation (a NumPy logistic regression replaying the
same SGD updates, scored with brute-force AUC and log loss formulas written here)."""
import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recis.checkpoint.codec import decode, encode
from recis.towers import Tower, TowerOutput
from recis.train import Hook, Trainer, TrainerConfig

DIM, LR = 4, 0.5


def batches(sizes, seed=0):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=DIM)
    out = []
    for i, n in enumerate(sizes):
        x = rng.normal(size=(n, DIM)).astype(np.float32)
        shift = 1.5 if i >= len(sizes) // 2 else 0.0  # drift: the optimum moves half-way
        y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w_true + shift)))).astype(np.float32)
        out.append(SimpleNamespace(dense=torch.from_numpy(x), labels=torch.from_numpy(y), size=n))
    return out


class Logistic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(DIM, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, batch):
        return self.linear(batch.dense).squeeze(1)


def trainer(**cfg):
    model = Logistic()
    return Trainer(model, None, torch.optim.SGD(model.parameters(), lr=LR),
                   config=TrainerConfig(progress=False, prequential=True, **cfg))


def reference(data, accum=1):
    """(logits before the update, logits after it) per batch: logistic regression by SGD on the
    mean BCE, in float64 NumPy (the update after every `accum` batches, gradients summed over
    them, each divided by accum)."""
    w, b = np.zeros(DIM), 0.0
    before, after = [], []
    gw, gb, pending = np.zeros(DIM), 0.0, []
    for i, batch in enumerate(data):
        x, y = batch.dense.numpy().astype(np.float64), batch.labels.numpy().astype(np.float64)
        before.append(x @ w + b)
        p = 1 / (1 + np.exp(-(x @ w + b)))
        gw, gb = gw + x.T @ (p - y) / len(y) / accum, gb + (p - y).mean() / accum
        pending.append(x)
        if (i + 1) % accum == 0 or i == len(data) - 1:
            w, b = w - LR * gw, b - LR * gb
            gw, gb = np.zeros(DIM), 0.0
            after += [xx @ w + b for xx in pending]
            pending = []
    return before, after


def logloss(z, y):
    p = 1 / (1 + np.exp(-z))
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def auc(z, y):
    """Share of (positive, negative) pairs ranked right, ties one half: brute force."""
    pos, neg = z[y == 1], z[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def windows(z, y, size):
    return [(z[i:i + size], y[i:i + size]) for i in range(0, len(z) - size + 1, size)]


@pytest.mark.parametrize("accum", [1, 2])
def test_prequential_metrics_equal_an_offline_recomputation_of_loss_before_update(tmp_path, accum):
    sizes = [37, 50, 23, 64, 41, 55, 30, 48, 60, 52]   # windows of 70 end inside batches
    data = batches(sizes)
    t = trainer(prequential_window=70, log_every=1, log_dir=str(tmp_path), tensorboard=False,
                grad_accum_steps=accum)
    t.fit(data)
    before, after = reference(data, accum)
    y = np.concatenate([b.labels.numpy() for b in data]).astype(np.float64)
    z, z_after = np.concatenate(before), np.concatenate(after)
    logs = list(csv.DictReader(open(tmp_path / "metrics.csv")))[-1]
    assert float(logs["preq_logloss"]) == pytest.approx(logloss(z, y), abs=1e-6)
    assert float(logs["preq_auc"]) == pytest.approx(auc(z, y), abs=1e-6)
    assert float(logs["preq_examples"]) == len(y) == sum(sizes)
    expected = windows(z, y, 70)
    assert len(t.prequential_history) == len(expected) == sum(sizes) // 70
    ends = np.cumsum(sizes)
    for k, (h, (zw, yw)) in enumerate(zip(t.prequential_history, expected)):
        assert h["window"] == k + 1 and h["examples"] == 70 * (k + 1)
        batch = int(np.searchsorted(ends, 70 * (k + 1)))   # the batch holding the window's last example
        assert h["step"] == batch // accum + 1
        assert h["logloss"] == pytest.approx(logloss(zw, yw), abs=1e-6)
        assert h["auc"] == pytest.approx(auc(zw, yw), abs=1e-6)
    last = t.prequential_history[-1]
    assert float(logs["preq_window_logloss"]) == last["logloss"] and float(logs["preq_window_auc"]) == last["auc"]
    # the test tells "before the update" apart: scoring after it (the vanilla training-loss
    # bookkeeping of a model that has just trained on the batch) gives another logloss
    assert abs(logloss(z_after, y) - logloss(z, y)) > 1e-3
    assert (tmp_path / "prequential.png").stat().st_size > 1000


def test_prequential_state_resumes_the_open_window_exactly():
    data = batches([37, 50, 23, 64, 41, 55, 30, 48])
    full = trainer(prequential_window=60, max_steps=8)
    full.fit(data)
    first = trainer(prequential_window=60, max_steps=3)
    first.fit(data[:3])
    assert first.prequential.in_window > 0   # the checkpoint falls inside a window
    tensors = {}
    doc = json.loads(json.dumps(encode(first.state_dict(), tensors)))   # as a checkpoint holds it
    second = trainer(prequential_window=60, max_steps=8)
    second.model.load_state_dict(first.model.state_dict())
    second.dense_optimizer.load_state_dict(first.dense_optimizer.state_dict())
    second.load_state_dict(decode(doc, tensors))
    second.fit(data[3:])
    assert second.prequential_history == full.prequential_history
    assert second.prequential.logs() == full.prequential.logs()
    other = trainer(prequential_window=50)
    with pytest.raises(ValueError, match="prequential_window=60; this trainer has 50"):
        other.load_state_dict(decode(doc, tensors))


def test_cumulative_auc_can_be_dropped():
    t = trainer(prequential_window=40, prequential_cumulative_auc=False, log_every=1)
    t.fit(batches([30, 30, 30]))
    logs = t.prequential.logs()
    assert "preq_auc" not in logs and "preq_logloss" in logs and "preq_window_auc" in logs


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def on_batch(self, trainer, batch, output, loss):
        # the parameters the batch's forward used: nothing was updated on it yet
        w = trainer.model.linear.weight.detach().clone()
        self.calls.append((trainer.step, batch.size, output.detach().clone(), float(loss), w,
                           trainer.model.linear.weight.grad is None))


def test_on_batch_sees_each_finite_batch_before_its_update():
    data = batches([16, 16, 16, 16, 16])
    data[2].labels = data[2].labels * float("nan")   # a NaN loss: skipped, not shown
    model = Logistic()
    rec = Recorder()
    t = Trainer(model, None, torch.optim.SGD(model.parameters(), lr=LR), hooks=[rec],
                config=TrainerConfig(progress=False, on_nonfinite="skip"))
    t.fit(data)
    assert [c[0] for c in rec.calls] == [0, 1, 2, 3] and t.skipped_nonfinite == 1
    before, _ = reference([data[i] for i in (0, 1, 3, 4)])
    for (step, size, out, loss, w, no_grad), z, i in zip(rec.calls, before, (0, 1, 3, 4)):
        np.testing.assert_allclose(out.numpy(), z, rtol=1e-5, atol=1e-6)   # the raw logits, before the update
        assert loss == pytest.approx(logloss(z, data[i].labels.numpy()), abs=1e-6)
        assert no_grad   # before its backward


class ValueTower(Tower):
    """A tower without a binary logit: its own loss, and one value per example."""

    has_logits = False

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(DIM))

    def forward(self, batch):
        err = (batch.dense @ self.w - batch.labels) ** 2
        return TowerOutput(loss=err.mean(), values={"sq_err": err.detach()})


def test_a_tower_without_logits_is_scored_by_its_values():
    data = batches([20, 25, 15])
    tower = ValueTower()
    t = Trainer(tower, None, torch.optim.SGD(tower.parameters(), lr=0.1),
                config=TrainerConfig(progress=False, prequential=True, prequential_window=30))
    t.fit(data)
    w, errs = np.zeros(DIM), []
    for b in data:   # the same SGD by hand: squared error before each update
        x, y = b.dense.numpy().astype(np.float64), b.labels.numpy().astype(np.float64)
        r = x @ w - y
        errs.append(r ** 2)
        w = w - 0.1 * 2 * x.T @ r / len(y)
    errs = np.concatenate(errs)
    logs = t.prequential.logs()
    assert logs["preq_sq_err"] == pytest.approx(errs.mean(), rel=1e-5)
    assert [h["sq_err"] for h in t.prequential_history] == pytest.approx([errs[:30].mean(), errs[30:60].mean()],
                                                                         rel=1e-5)
    assert "preq_logloss" not in logs


def test_prequential_config_is_checked():
    with pytest.raises(TypeError, match="trainer.prequential_window must be an integer >= 1"):
        TrainerConfig.from_dict({"prequential_window": 0.5})
    with pytest.raises(ValueError, match="trainer.prequential_window must be an integer >= 1, got 0"):
        TrainerConfig.from_dict({"prequential_window": 0})
    with pytest.raises(ValueError, match="trainer.checkpoint_every_minutes must be a finite number > 0"):
        TrainerConfig.from_dict({"checkpoint_every_minutes": 0})
    assert math.isfinite(TrainerConfig(prequential=True).prequential_window)


def test_two_ranks_score_one_merged_stream():
    """Under torch.distributed each micro-step's batches of all ranks are scored in rank order:
    both ranks hold the windows and metrics of that merged stream (batches of unequal sizes,
    windows that end inside a rank's batch), equal to the formulas over the scores the ranks
    saw; each rank's own stream alone gives other windows."""
    from recis.distributed.local import run_local

    import _dist_workers as w

    sizes, window = [[13, 7, 20, 9], [5, 16, 11, 8]], 17
    (seen0, hist0, logs0), (seen1, hist1, logs1) = (r.value for r in run_local(w.prequential_run, 2, sizes, window,
                                                                              collective_timeout_s=20, timeout_s=180))
    assert hist0 == hist1 and logs0 == logs1
    z = np.concatenate([t.numpy() for a, b in zip(seen0, seen1) for t in (a[0], b[0])])
    y = np.concatenate([t.numpy() for a, b in zip(seen0, seen1) for t in (a[1], b[1])])
    assert len(z) == sum(map(sum, sizes)) and len(hist0) == len(z) // window
    for k, h in enumerate(hist0):
        part = slice(k * window, (k + 1) * window)
        assert h["examples"] == (k + 1) * window
        assert h["logloss"] == pytest.approx(logloss(z[part], y[part]), rel=1e-9)
        assert h["auc"] == pytest.approx(auc(z[part], y[part]), rel=1e-12)
    assert logs0["preq_logloss"] == pytest.approx(logloss(z, y), rel=1e-9)
    assert logs0["preq_auc"] == pytest.approx(auc(z, y), rel=1e-12)
    assert logs0["preq_examples"] == len(z)
    own = np.concatenate([a[0].numpy() for a in seen0]), np.concatenate([a[1].numpy() for a in seen0])
    assert logloss(own[0][:window], own[1][:window]) != pytest.approx(hist0[0]["logloss"], rel=1e-6)
