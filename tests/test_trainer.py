"""Trainer: it learns, accumulates exactly, stops on NaN, logs, and validates its config."""
import csv
import math
from types import SimpleNamespace

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.metrics import AUC, GAUC, LogLoss
from recis.models import DeepFM
from recis.optim import SparseAdagrad, SparseSGD
from recis.train import EarlyStopping, NonFiniteLossError, Trainer, TrainerConfig


def make_batches(n_batches=6, batch_size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        user = torch.randint(0, 40, (batch_size,), generator=g)
        item = torch.randint(0, 30, (batch_size,), generator=g)
        dense = torch.randn(batch_size, 2, generator=g)
        logit = 2.0 * ((user % 2) == (item % 2)).float() - 1.0 + dense[:, 0]
        labels = (torch.rand(batch_size, generator=g) < torch.sigmoid(2 * logit)).float()
        kjt = KeyedJaggedTensor.from_lengths_sync(["user", "item"], torch.cat([user, item]),
                                                  torch.ones(2 * batch_size, dtype=torch.long))
        out.append(SimpleNamespace(sparse=kjt, dense=dense, labels=labels, size=batch_size,
                                   extras={"user": user}))
    return out


def make_trainer(config, seed=0, sparse_cls=SparseAdagrad, lr=0.1, metrics=True):
    torch.manual_seed(seed)
    model = DeepFM(["user", "item"], 2, 8, hidden=(16,))
    ms = {"auc": AUC(), "gauc": GAUC(), "logloss": LogLoss()} if metrics else None
    return Trainer(model, sparse_cls(model, lr=lr), torch.optim.SGD(model.parameters(), lr=lr), metrics=ms,
                   config=config)


def test_fit_learns_and_reports_metrics(tmp_path):
    cfg = TrainerConfig(epochs=6, log_every=2, eval_every=6, log_dir=str(tmp_path), tensorboard=True,
                        progress=False, group_key="user")
    trainer = make_trainer(cfg)
    history = trainer.fit(make_batches(), make_batches(3, seed=1))
    assert trainer.step == 36 and trainer.epoch == 6
    assert history[-1]["auc"] > 0.65 and history[-1]["auc"] > history[0]["auc"]
    assert 0 < history[-1]["gauc"] <= 1 and math.isfinite(history[-1]["logloss"])
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert {r["split"] for r in rows} == {"train", "eval"}
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_gradient_accumulation_equals_the_big_batch():
    """Two micro-batches of 32 with accumulation give the same update as one batch of 64."""
    big = make_batches(2, 64)
    halves = []
    for b in big:
        for sl in (slice(0, 32), slice(32, 64)):
            kjt = KeyedJaggedTensor.from_lengths_sync(
                ["user", "item"], torch.cat([b.sparse["user"].values()[sl], b.sparse["item"].values()[sl]]),
                torch.ones(64, dtype=torch.long))
            halves.append(SimpleNamespace(sparse=kjt, dense=b.dense[sl], labels=b.labels[sl]))
    t1 = make_trainer(TrainerConfig(progress=False), sparse_cls=SparseSGD, metrics=False)
    t2 = make_trainer(TrainerConfig(progress=False, grad_accum_steps=2), sparse_cls=SparseSGD, metrics=False)
    t1.fit(big)
    t2.fit(halves)
    assert t1.step == t2.step == 2
    assert_same_model(t1.model, t2.model)


def assert_same_model(a, b, exact=False):
    """Dense parameters equal, and every table holds the same ids with the same rows (row order may differ)."""
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-6)
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(x, y, **tol, msg=n)
    for ec_a, ec_b in ((a.embeddings, b.embeddings), (a.linear, b.linear)):
        for name, table in ec_a.tables().items():
            other = ec_b.tables()[name]
            ids = table.export()["ids"]
            assert sorted(ids.tolist()) == sorted(other.export()["ids"].tolist())
            torch.testing.assert_close(table.lookup(ids), other.lookup(ids), **tol, msg=name)


def test_nan_loss_stops_with_the_step_number_and_updates_nothing():
    batches = make_batches(3)
    batches[2].dense = batches[2].dense.clone()
    batches[2].dense[0, 0] = float("nan")
    trainer = make_trainer(TrainerConfig(progress=False), metrics=False)
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        trainer.fit(batches)
    assert trainer.step == 2
    skip = make_trainer(TrainerConfig(progress=False, on_nonfinite="skip"), metrics=False)
    skip.fit(batches)
    assert skip.step == 2 and skip.skipped_nonfinite == 1


def test_a_skipped_nonfinite_batch_drops_only_itself_under_accumulation():
    """With grad_accum_steps=2, a NaN batch between two good micro-batches is dropped alone: the
    model equals one trained on the good batches only (the NaN batch repeats b0's ids, so the
    tables hold the same ids either way)."""
    good = make_batches(4)
    bad = SimpleNamespace(sparse=good[0].sparse, dense=good[0].dense.clone(), labels=good[0].labels)
    bad.dense[0, 0] = float("nan")
    cfg = dict(progress=False, grad_accum_steps=2)
    ref = make_trainer(TrainerConfig(**cfg), sparse_cls=SparseSGD, metrics=False)
    ref.fit(good)
    skip = make_trainer(TrainerConfig(on_nonfinite="skip", **cfg), sparse_cls=SparseSGD, metrics=False)
    skip.fit([good[0], bad, good[1], good[2], good[3]])
    assert skip.skipped_nonfinite == 1 and skip.step == ref.step == 2
    assert skip.examples == ref.examples == 4 * 64
    assert_same_model(ref.model, skip.model)


@pytest.mark.slow
def test_ranks_skip_a_nonfinite_batch_together():
    """Only rank 1 sees a NaN at step 2: both ranks drop that step's batch (rank 0 must not wait in
    the backward's collectives for a peer that skipped), take the same steps and stay in sync."""
    from recis.distributed.local import run_local

    import _dist_workers as w

    results = run_local(w.nonfinite_skip_run, 2, 5, 32, 2, 1, collective_timeout_s=20, timeout_s=180)
    (steps0, skipped0, params0), (steps1, skipped1, params1) = (r.value for r in results)
    assert steps0 == steps1 == 4 and skipped0 == skipped1 == 1
    for name, p in params0.items():
        torch.testing.assert_close(p, params1[name], rtol=0, atol=0, msg=name)


def test_max_steps_and_early_stopping():
    trainer = make_trainer(TrainerConfig(epochs=50, max_steps=7, progress=False), metrics=False)
    trainer.fit(make_batches())
    assert trainer.step == 7
    stopper = make_trainer(TrainerConfig(epochs=50, eval_every=1, progress=False, group_key="user"), lr=0.0)
    stopper.hooks.append(EarlyStopping("auc", patience=2))
    stopper.fit(make_batches(2), make_batches(1, seed=3))
    assert stopper.step == 3 and "early stopping" in stopper.stop_reason


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="group_key"):
        make_trainer(TrainerConfig(progress=False))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\] in trainer"):
        TrainerConfig.from_dict({"epoch": 2})
    with pytest.raises(TypeError, match="trainer.max_steps must be"):
        TrainerConfig.from_dict({"max_steps": "10"})
    with pytest.raises(ValueError, match="grad_accum_steps"):
        TrainerConfig(grad_accum_steps=0)


def test_resume_from_a_checkpoint_equals_uninterrupted_training(tmp_path):
    from recis.checkpoint import CheckpointManager

    data = make_batches(5)
    full = make_trainer(TrainerConfig(epochs=2, progress=False), metrics=False)
    full.fit(data)

    first = make_trainer(TrainerConfig(epochs=2, max_steps=7, checkpoint_every=7, progress=False), metrics=False)
    first.checkpoint = CheckpointManager(tmp_path)
    first.fit(data)
    assert first.step == 7 and first.epoch == 1

    second = make_trainer(TrainerConfig(epochs=2, progress=False), seed=123, metrics=False)
    second.checkpoint = CheckpointManager(tmp_path)
    assert second.resume(train=data)
    assert second.step == 7 and second.epoch_batches == 2
    second.fit(data)
    assert second.step == full.step == 10
    assert_same_model(full.model, second.model, exact=True)


def test_resume_without_checkpoints_reports_false(tmp_path):
    from recis.checkpoint import CheckpointManager

    trainer = make_trainer(TrainerConfig(progress=False), metrics=False)
    trainer.checkpoint = CheckpointManager(tmp_path)
    assert trainer.resume() is False


def test_bf16_autocast_profiler_and_table_stats_hooks(tmp_path):
    from recis.train import Profiler, TableStats

    trainer = make_trainer(TrainerConfig(epochs=2, bf16=True, log_every=1, progress=False), metrics=False)
    logged = []

    class Capture(TableStats):
        def on_step_end(self, trainer, step, logs):
            super().on_step_end(trainer, step, logs)
            logged.append(dict(logs))

    trace = tmp_path / "trace.json"
    trainer.hooks += [Profiler(str(trace), start=2, steps=3), Capture(every=4, evict=False)]
    trainer.fit(make_batches(4))
    assert trainer.step == 8 and math.isfinite(logged[-1]["loss"])
    assert trace.stat().st_size > 0  # a Chrome trace of steps 2-4
    live = {k: v for row in logged for k, v in row.items() if k.endswith("/live")}
    from recis.nn import sparse_tables

    assert sum(live.values()) == sum(len(t) for t in sparse_tables(trainer.model)) > 0



def _tables_of(model):
    """{table: (sorted ids, their rows)} through the tables' own export."""
    from recis.nn import sparse_tables

    out = {}
    for t in sparse_tables(model):
        e = t.export()
        order = torch.argsort(e["ids"])
        out[t.name] = (e["ids"][order].clone(), e["rows"][order].clone())
    return out


def test_early_stopping_on_its_own_score_restores_the_best_evaluations_weights():
    trainer = make_trainer(TrainerConfig(epochs=50, max_steps=12, progress=False, group_key="user"))
    seen, tables = {}, {}
    scores = iter([0.2, 0.6, 0.5, 0.6, 0.4, 0.9])  # best at the 2nd evaluation (step 4); the 4th only ties it

    def score(model):
        tables[len(seen)] = _tables_of(model)
        seen[len(seen)] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return next(scores)

    stop = EarlyStopping(score=score, every=2, patience=3, restore_best=True)
    trainer.hooks.append(stop)
    trainer.fit(make_batches())
    assert trainer.step == 10 and [s for s, _ in stop.curve] == [2, 4, 6, 8, 10]
    assert stop.best_step == 4 and stop.best == 0.6 and "3 evaluations" in stop.stopped == trainer.stop_reason
    now = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(now[k], seen[1][k]) for k in now)
    assert any(not torch.equal(seen[4][k], seen[1][k]) for k in now)  # training moved them after step 4
    # the hash tables too: exactly the ids and rows they held at step 4 (rows inserted later are gone)
    after = _tables_of(trainer.model)
    assert after.keys() == tables[1].keys()
    for name, (ids, rows) in after.items():
        assert torch.equal(ids, tables[1][name][0]) and torch.equal(rows, tables[1][name][1]), name
    assert any(len(tables[4][n][0]) != len(tables[1][n][0]) or not torch.equal(tables[4][n][1], tables[1][n][1])
               for n in after)  # training moved or added rows after step 4


def test_early_stopping_options_are_named():
    for kwargs, match in (({"patience": 0}, "patience"), ({"mode": "up"}, "mode"), ({"every": 2}, "together"),
                          ({"score": float, "every": 0}, "every")):
        with pytest.raises(ValueError, match=match):
            EarlyStopping(**kwargs)
