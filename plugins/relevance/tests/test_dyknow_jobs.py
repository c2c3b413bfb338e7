"""The DyKnow-RAG stage as a YAML-style job (`recis.run.Job`): SFT -> dyknow chained by
checkpoint.init_from, and a dyknow stage killed inside a rollout and resumed by a new Job,
bit-identical to an uninterrupted one (weights, optimizer state, sampling generator, reference).
Tiny random Llama, the synthetic catalogue with a chunk and a context decision per row, label-only
completions (so that a few SFT steps give groups that mix right and wrong labels)."""
import relevance_testing  # noqa: F401  (first: makes the plugin importable)
import copy
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from recis.run import Job, RunConfig
from recis.testing import KillAt, Killed, StepLogs
from recis.train import Hook

from recis_relevance.judge import ROW_COLUMNS
from recis_relevance.prompts import tokenizer_spec
from recis_relevance.task import build_task
from relevance_testing import assert_same_job_state, synthetic_items, tiny_llama, weights
from test_judge_dyknow import with_context

FEATURES = [{"name": c, "kind": "passthrough", "column": c} for c in ROW_COLUMNS + ("chunk", "context_decision")] + \
    [{"name": "label", "kind": "label", "column": "label"}]
DYKNOW = {"objective": "dyknow", "grpo": {"beta": 0.05, "inner_steps": 2, "std": "population"}, "minibatch_size": 16,
          "dyknow": {"gating": "posterior", "gap": "query"},
          "dynamic_sampling": {"low": 0.0, "high": 1.0, "max_refills": 2}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyknow_jobs")
    task = build_task(synthetic_items(), queries=16, per_query=8, seed=0)
    train, test = with_context(task.train), with_context(task.test.slice(0, 24))
    pq.write_table(train, d / "train.parquet")
    pq.write_table(test, d / "eval.parquet")
    return d, tokenizer_spec([train, test])


def job(workdir, name, objective="sft", steps=12, lr=0.02, init_from=None, **model):
    d, spec = workdir
    return RunConfig.from_dict({
        "data": {"train": "train.parquet", "eval": "eval.parquet", "batch_size": 8, "eval_batch_size": 64,
                 "shuffle_buffer": 64, "seed": 0},
        "features": {"features": FEATURES},
        "model": {"name": "relevance_judge", "objective": objective, "format": "label_only",
                  "policy": tiny_llama(positions=160), "tokenizer": spec, "max_completion_length": 2, "max_prompt_length": 96,
                  "sampling": {"group_size": 4, "max_new_tokens": 2, "seed": 3}, **model},
        "metrics": {"confusion": {"labels": [1, 2, 3, 4]}},
        "optim": {"dense": {"name": "adamw", "lr": lr, "weight_decay": 0.0}},
        "trainer": {"epochs": 100, "max_steps": steps, "progress": False, "seed": 0, "log_every": 1},
        "checkpoint": {"dir": str(d / name), "every": 2, "keep_last": 20, "init_from": init_from},
    }, str(d))


class Reseed(Hook):
    def on_fit_start(self, trainer):
        assert trainer.step == 4  # resumed
        trainer.model.generator.manual_seed(3)


def test_sft_then_dyknow_and_a_killed_dyknow_stage_resumes_bit_identical(workdir):
    sft = Job(job(workdir, "sft"))
    sft.train()
    sft_dir, sft_state = workdir[0] / "sft", copy.deepcopy(sft.model.state_dict())

    def stage(name):
        return Job(job(workdir, name, steps=10, lr=1e-3, init_from=str(sft_dir), **DYKNOW))

    full = stage("dyknow_full")
    assert type(full.model).__name__ == "DyKnowJudge"
    for k, v in weights(full).items():  # the stage starts from the SFT weights
        assert torch.equal(v, sft_state[k]), k
    rec = StepLogs()
    full.trainer.hooks.append(rec)
    full.train()
    assert full.trainer.step == 10
    assert [c.step for c in full.trainer.checkpoint.checkpoints()] == [4, 8, 10]  # never inside a rollout
    rollouts = [log for log in rec.logs if "kept_groups" in log]
    assert rollouts and all(log["kept_groups"] > 0 for log in rollouts)
    assert any(log.get("inter_group", 0) != 0 for log in rec.logs)  # the inter-group term is on
    moved = [k for k, v in weights(full).items() if not torch.equal(v, sft_state[k])]
    assert moved

    killed = stage("dyknow_cut")
    killed.trainer.hooks.append(KillAt(6))
    with pytest.raises(Killed):
        killed.train()
    assert [c.step for c in killed.trainer.checkpoint.checkpoints()] == [4]
    shutil.copytree(workdir[0] / "dyknow_cut", workdir[0] / "dyknow_cut_reseeded")
    resumed = stage("dyknow_cut")
    resumed.train()
    assert resumed.trainer.step == 10
    assert_same_job_state(full, resumed)

    # the check catches a resume that restores everything but the sampling generator
    reseeded = stage("dyknow_cut_reseeded")
    reseeded.trainer.hooks.append(Reseed())
    reseeded.train()
    assert not all(torch.equal(v, weights(full)[k]) for k, v in weights(reseeded).items())
