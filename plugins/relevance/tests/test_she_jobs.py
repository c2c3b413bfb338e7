"""TaoSR-SHE as YAML-style jobs: SFT -> SHE by checkpoint.init_from, a SHE stage killed mid-run
and resumed bit-identically (weights, optimizer, the sampling and the step judge's generators),
the curriculum (disjoint stages, non-decreasing difficulty, SFT pass rates), and the example's
stage YAMLs. Tiny Llama, synthetic catalogue, no download.

Nothing here may hang on one lucky initialisation of the tiny policy (a vocabulary change moves
it): the curriculum's binning is checked on constructed pass rates, the SFT pass rates on how
they are computed, and the SHE stage is sized so that its rollouts score steps whatever the
policy seed (RECIS_TEST_POLICY_SEED, default 0, to check another)."""
import relevance_testing  # noqa: F401  (first: makes the plugin importable)
import json
import os
import runpy
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.checkpoint import CheckpointManager
from recis.run import Job, RunConfig
from recis.testing import KillAt, Killed, StepLogs
from recis.train import Hook

from recis_relevance import formats
from recis_relevance.judge import ROW_COLUMNS
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.prompts import tokenizer_spec
from recis_relevance.she_curriculum import CurriculumConfig, curriculum_stages, sft_pass_rates
from recis_relevance.task import build_task
from relevance_testing import (assert_same_job_state, one_thread,  # noqa: F401 (one_thread: a fixture)
                               synthetic_items, tiny_llama)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LLAMA = tiny_llama()
FEATURES = [{"name": c, "kind": "passthrough", "column": c} for c in ROW_COLUMNS] + \
    [{"name": "label", "kind": "label", "column": "label"}]
MAX_NEW_TOKENS = 12
#: G = 4 (more mixed groups than 2) and every step of a right completion critical (decisive all):
#: a kept group carries a step term whatever the policy seed
SHE = {"grpo": {"beta": 0.05, "inner_steps": 2}, "minibatch_size": 8,
       "sampling": {"group_size": 4, "max_new_tokens": MAX_NEW_TOKENS, "seed": 3},
       "she": {"lam": 0.5, "verifier_coverage": 0.25, "judge_error": 0.5, "judge_seed": 4, "min_paths": 2,
               "max_refills": 3, "decisive": "all"}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("she_jobs")
    task = build_task(synthetic_items(), queries=16, per_query=8, seed=0)
    # the rows whose teacher completion fits the sampling budget: a sampled completion can be right
    fits = [len(formats.tokens(formats.gold_completion("post_cot", r))) <= MAX_NEW_TOKENS
            for r in task.train.to_pylist()]
    pq.write_table(task.train.filter(pa.array(fits)), d / "train.parquet")
    pq.write_table(task.test.slice(0, 24), d / "eval.parquet")
    return d, tokenizer_spec(task)


def job(workdir, name, objective="sft", steps=12, lr=0.02, init_from=None, batch_size=8, **model):
    d, spec = workdir
    return RunConfig.from_dict({
        "data": {"train": "train.parquet", "eval": "eval.parquet", "batch_size": batch_size, "eval_batch_size": 64,
                 "shuffle_buffer": 64, "seed": 0},
        "features": {"features": FEATURES},
        "model": {"name": "relevance_judge", "objective": objective, "format": "post_cot", "policy": LLAMA,
                  "tokenizer": spec, "max_completion_length": 16,
                  "sampling": {"group_size": 2, "max_new_tokens": MAX_NEW_TOKENS, "seed": 3}, **model},
        "metrics": {"confusion": {"labels": [1, 2, 3, 4]}},
        "optim": {"dense": {"name": "adamw", "lr": lr, "weight_decay": 0.0}},
        "trainer": {"epochs": 100, "max_steps": steps, "progress": False, "seed": 0, "log_every": 1},
        "checkpoint": {"dir": str(d / name), "every": 2, "keep_last": 20, "init_from": init_from},
    }, str(d))


@pytest.fixture(scope="module")
def sft(workdir):
    """A short post-CoT SFT: its completions have steps, some right, some wrong (most malformed:
    the tests below ask no more of it)."""
    j = Job(job(workdir, "sft", steps=40))
    j.train()
    return workdir[0] / "sft", j


class ReseedJudge(Hook):
    def on_fit_start(self, trainer):
        assert 0 < trainer.step < 6  # resumed
        trainer.model.step_judge.generator.manual_seed(99)


def test_a_killed_she_stage_resumes_bit_identical(workdir, sft):
    """SHE from the SFT checkpoint (scripted judge over half the steps, diversified filter with
    refills, 4 rows x G = 4, mu = 2 over two minibatches, KL): killed at step 6 inside its second rollout (steps
    5..8), a new Job resumes from the last checkpoint before it
    and ends where the uninterrupted job ends, the step judge's generator included: a resume that
    reseeds only that generator ends elsewhere."""
    sft_dir, _ = sft

    def stage(name):
        return Job(job(workdir, name, objective="she", steps=8, lr=1e-3, init_from=str(sft_dir), batch_size=4,
                   **SHE))

    full = stage("she_full")
    rec = StepLogs()
    full.trainer.hooks.append(rec)
    full.train()
    assert full.trainer.step == 8
    rollouts = [log for log in rec.logs if "kept_groups" in log]
    assert rollouts and all(log["kept_groups"] > 0 for log in rollouts)
    assert sum(log["steps_per_completion"] for log in rollouts) > 0  # completions with steps were scored
    assert 0 < sum(log["verifier_share"] for log in rollouts) < len(rollouts)  # judge and verifier both decided
    assert max(log["step_term_abs"] for log in rollouts) > 0

    killed = stage("she_cut")
    killed.trainer.hooks.append(KillAt(6))
    with pytest.raises(Killed):
        killed.train()
    saved = [c.step for c in killed.trainer.checkpoint.checkpoints()]
    assert saved and max(saved) < 6  # never inside a rollout: the resume starts before the kill
    shutil.copytree(workdir[0] / "she_cut", workdir[0] / "she_cut_reseeded")
    resumed = stage("she_cut")
    resumed.train()
    assert resumed.trainer.step == 8
    assert_same_job_state(full, resumed)

    reseeded = stage("she_cut_reseeded")
    reseeded.trainer.hooks.append(ReseedJudge())
    reseeded.train()
    assert not all(torch.equal(v, full.model.state_dict()[k]) for k, v in reseeded.model.state_dict().items()
                   if isinstance(v, torch.Tensor))


def test_curriculum_stages_are_disjoint_cover_the_rows_and_get_harder(workdir):
    """The stages cut from pass rates are disjoint, cover every row, and no row of a later stage is
    easier than any row of an earlier one. The same rows split in their file order (no
    curriculum) are not ordered so. Constructed pass rates (every value a 4-sample pass rate takes,
    ties across the cuts, not in file order): the binning does not hang on what a tiny SFT samples."""
    table = pq.read_table(workdir[0] / "train.parquet").slice(0, 48)
    g = torch.Generator().manual_seed(0)
    rates = (torch.randint(0, 5, (48,), generator=g).float() / 4).tolist()
    assert len(set(rates)) == 5 and rates != sorted(rates, reverse=True)
    stages = curriculum_stages(table, rates, 3)
    assert [s.num_rows for s in stages] == [16, 16, 16]
    keys = [list(zip(s["query"].to_pylist(), s["title"].to_pylist())) for s in stages]
    flat = [k for ks in keys for k in ks]
    pairs = list(zip(table["query"].to_pylist(), table["title"].to_pylist()))
    assert len(set(flat)) == len(flat) == 48 and set(flat) == set(pairs)
    got = [s["sft_pass_rate"].to_pylist() for s in stages]
    assert [rates[pairs.index(k)] for k in flat] == [r for rs in got for r in rs]  # each row keeps its rate
    for easier, harder in zip(got, got[1:]):
        assert min(easier) >= max(harder)
    assert sum(got[0]) / 16 > sum(got[-1]) / 16
    plain = [rates[i:i + 16] for i in (0, 16, 32)]  # the vanilla split: file order
    assert not all(min(a) >= max(b) for a, b in zip(plain, plain[1:]))
    with pytest.raises(ValueError, match=r"the number of stages must be an integer in \[1, 2\]"):
        curriculum_stages(pa.table({"q": [1, 2]}), [0.5, 0.5], 3)


def test_sft_pass_rates_score_seeded_samples_of_every_row(workdir, sft, monkeypatch):
    """The SFT model's pass rates (sampled completions, seeded): each row's is the mean reward of
    its `samples` completions scored against its own gold grade, so it takes the values k / 4;
    the label pass rate is the gold label's probability. Checked on how they are computed, not on
    what a 40-step tiny SFT happens to get right."""
    _, j = sft
    table = pq.read_table(workdir[0] / "train.parquet").slice(0, 48)
    cfg = CurriculumConfig(samples=4, seed=1)
    calls = []
    real = formats.score

    def spy(fmt, texts, golds):
        out = real(fmt, texts, golds)
        calls.append((list(texts), list(golds), out.rewards.tolist()))
        return out

    monkeypatch.setattr(formats, "score", spy)
    rates = sft_pass_rates(j.model, table, cfg)
    assert len(rates) == 48 and all(r in (0.0, 0.25, 0.5, 0.75, 1.0) for r in rates)
    texts = [t for c in calls for t in c[0]]
    golds = [x for c in calls for x in c[1]]
    rewards = [x for c in calls for x in c[2]]
    assert golds == [int(y) for y in table["label"].to_pylist() for _ in range(4)]  # each row's own gold, 4 times
    assert rates == [sum(rewards[4 * i:4 * i + 4]) / 4 for i in range(48)]
    assert len(set(texts)) > 1  # sampled, not one greedy string
    calls.clear()
    assert sft_pass_rates(j.model, table, cfg) == rates  # seeded
    assert [t for c in calls for t in c[0]] == texts
    calls.clear()
    sft_pass_rates(j.model, table, CurriculumConfig(samples=4, seed=2))
    assert [t for c in calls for t in c[0]] != texts  # the seed draws the samples
    label = sft_pass_rates(j.model, table, CurriculumConfig(pass_rate="label"))
    assert all(0.0 < p < 1.0 for p in label) and len(set(label)) > 1
    with pytest.raises(ValueError, match=r"curriculum.pass_rate must be one of \('sampled', 'label'\)"):
        CurriculumConfig(pass_rate="greedy")


EXAMPLE = os.path.join(ROOT, "examples", "she_movielens")


def test_the_example_stage_yamls_chain_and_their_options_check():
    names = ["sft", "she_stage1", "she_stage2"]
    cfgs = [RunConfig.from_yaml(os.path.join(EXAMPLE, f"{n}.yaml")) for n in names]
    judged = [JudgeConfig.from_options(c.model.args) for c in cfgs]
    assert [c.objective for c in judged] == ["sft", "she", "she"]
    assert [c.checkpoint.init_from for c in cfgs] == [None, cfgs[0].checkpoint.dir, cfgs[1].checkpoint.dir]
    assert [os.path.basename(c.data.train) for c in cfgs] == ["train.parquet", "she_stage1.parquet",
                                                              "she_stage2.parquet"]
    for c in cfgs:
        assert os.path.normpath(c.data.eval) == os.path.join(ROOT, "runs", "she_movielens", "data", "val.parquet")
    assert all(c.she.filtering and c.she.lam > 0 for c in judged[1:])


@pytest.mark.slow
def test_the_she_example_runs_small(tmp_path):
    """examples/she_movielens/run.py --small: SFT, the curriculum bins, two SHE stages each from the
    previous checkpoint, and the test metrics of the deployed judge."""
    example = runpy.run_path(os.path.join(EXAMPLE, "run.py"))
    out = tmp_path / "run"
    result = example["main"](["--small", "--out", str(out)])
    assert json.loads((out / "she_result.json").read_text()) == json.loads(json.dumps(result))
    for stage in ("sft", "she1", "she2"):
        assert {"accuracy", "macro_f1"} <= set(result["stages"][stage]), stage
        assert CheckpointManager(out / stage / "checkpoints").latest() is not None, stage
    bins = result["curriculum"]
    assert [b["stage"] for b in bins] == [1, 2] and bins[0]["pass_rate_min"] >= bins[1]["pass_rate_max"]
    assert sum(b["rows"] for b in bins) == result["task"]["train_rows"]
    label = result["test"]["label"]
    assert label["items"] == result["task"]["test_rows"] and 0 <= label["macro_f1"] <= 1
