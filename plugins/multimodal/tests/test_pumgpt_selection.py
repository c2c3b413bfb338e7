"""The choice of the number of training steps on validation (`recis.train.EarlyStopping` with
`restore_best`, as benchmarks/pumgpt.py uses it): in a PUMGPT YAML job it evaluates every K steps, stops after P evaluations
without improvement, and leaves the tower with the weights of the best evaluation (compared with a
copy taken by the test itself at that evaluation), the frozen LM untouched."""
import pyarrow.parquet as pq
import pytest
import torch

from recis.run import RunConfig

from recis.run.stages import run_stage
from recis.train import EarlyStopping
from recis_multimodal.pumgpt.fashion import evaluate_tower
from test_pumgpt_tower import catalogue, config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pumgpt_selection")
    pq.write_table(catalogue(48, 0, 0), d / "train.parquet")
    pq.write_table(catalogue(20, 1000, 1), d / "valid.parquet")
    return d


def trainable(tower):
    return {n: p.detach().clone() for n, p in tower.named_parameters() if p.requires_grad}


def test_training_stops_after_patience_and_keeps_the_best_evaluations_weights(workdir):
    cfg = RunConfig.from_dict(config(workdir, "select", steps=40), str(workdir))
    cfg.checkpoint.dir = None
    scores = iter([0.2, 0.6, 0.5, 0.6, 0.4, 0.9])  # best at the 2nd evaluation (step 4); the 4th only ties it
    seen, state = {}, {}

    def score(tower):
        seen[len(seen)] = trainable(tower)  # the test's own copy of the weights at each evaluation
        return next(scores)

    def hooks(job):
        state["sel"] = EarlyStopping(score=score, every=2, patience=3, restore_best=True)
        state["lm"] = {n: p.detach().clone() for n, p in job.model.named_parameters() if not p.requires_grad}
        return [state["sel"]]

    done = run_stage(cfg, hooks=hooks)
    sel, tower = state["sel"], done["job"].model
    # evaluations at 2, 4, 6, 8, 10: three without improvement after step 4 -> stopped at step 10
    assert done["job"].trainer.step == 10 and [s for s, _ in sel.curve] == [2, 4, 6, 8, 10]
    assert sel.best_step == 4 and sel.best == 0.6 and "3 evaluations" in sel.stopped
    now = trainable(tower)
    assert now.keys() == seen[1].keys() and all(torch.equal(now[k], seen[1][k]) for k in now)
    assert any(not torch.equal(seen[4][k], seen[1][k]) for k in now)  # training did move them after step 4
    assert all(torch.equal(p, state["lm"][n]) for n, p in tower.named_parameters() if not p.requires_grad)
    # the kept weights are what a later evaluation sees
    valid = pq.read_table(workdir / "valid.parquet")
    assert 0.0 <= evaluate_tower(tower, done["job"].engine, valid)["accuracy"] <= 1.0


def test_a_run_without_improvement_to_the_end_keeps_the_last_and_evaluates_a_partial_interval(workdir):
    cfg = RunConfig.from_dict(config(workdir, "budget", steps=5), str(workdir))
    cfg.checkpoint.dir = None
    scores = iter([0.1, 0.2, 0.3])
    state = {}

    def hooks(job):
        state["sel"] = EarlyStopping(score=lambda tower: next(scores), every=2, patience=1, restore_best=True)
        return [state["sel"]]

    done = run_stage(cfg, hooks=hooks)
    sel = state["sel"]
    assert done["job"].trainer.step == 5 and sel.curve == [(2, 0.1), (4, 0.2), (5, 0.3)]
    assert sel.best_step == 5 and sel.stopped == "step budget"

