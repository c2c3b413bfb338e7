"""DyKnow-RAG's stage chain: the pool step writes exactly the rows whose SFT label-token confidence
is below the threshold (checked against the judge's own label probabilities), balanced per cell;
the pipeline's stage lists; the example's YAMLs chain; and the example runs small (slow)."""
import relevance_testing  # noqa: F401  (first: makes the plugin importable)
import json
import os
import runpy
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from recis.checkpoint import CheckpointManager
from recis.rl import ConfidenceFilter
from recis.run import RunConfig

from recis_relevance.dyknow_stages import dyknow_pipeline, query_type, write_rl_pool
from recis_relevance.judge import JudgeTower
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.prompts import tokenizer_spec
from recis_relevance.task import build_task
from relevance_testing import synthetic_items
from test_judge_dyknow import LLAMA, with_context

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    table = with_context(build_task(synthetic_items(), queries=16, per_query=8, seed=0).train)
    pq.write_table(table, d / "train.parquet")
    return d, table


def test_the_pool_step_keeps_exactly_the_rows_below_the_threshold_and_balances_cells(rows_file):
    d, table = rows_file
    torch.manual_seed(0)
    tower = JudgeTower(JudgeConfig.from_options({"policy": LLAMA, "tokenizer": tokenizer_spec([table])}))
    rows = table.to_pylist()
    with torch.no_grad():  # the judge's deployment path: cumpt.label_probs over the four label tokens
        conf = tower.label_probabilities(tower.prompts(rows)).max(-1).values
    threshold = float(conf.median())  # both sides non-empty
    counts = write_rl_pool(tower, str(d / "train.parquet"), str(d / "pool.parquet"),
                           ConfidenceFilter(threshold=threshold, balance=False))
    pool = pq.read_table(d / "pool.parquet").to_pylist()
    expected = [r for r, c in zip(rows, conf.tolist()) if c < threshold]
    assert pool == expected and counts["pool"] == len(expected) == counts["unsure"]
    assert 0 < len(expected) < len(rows)

    counts = write_rl_pool(tower, str(d / "train.parquet"), str(d / "balanced.parquet"),
                           ConfidenceFilter(threshold=1.0, seed=1))
    balanced = pq.read_table(d / "balanced.parquet").to_pylist()
    cells = Counter((query_type(r), r["label"], r["context_decision"]) for r in balanced)
    every = Counter((query_type(r), r["label"], r["context_decision"]) for r in rows)
    assert set(cells) == set(every) and len(set(cells.values())) == 1  # every cell, the same count
    assert next(iter(cells.values())) == min(every.values()) and counts["pool"] == len(balanced)
    with pytest.raises(ValueError, match=r"the RL pool is empty.*ConfidenceFilter\.threshold"):
        write_rl_pool(tower, str(d / "train.parquet"), str(d / "none.parquet"), ConfidenceFilter(threshold=0.0))


def test_pipelines():
    assert [s.name for s in dyknow_pipeline()] == ["sft", "pool", "dyknow"]
    assert [(s.name, s.init_from, s.train) for s in dyknow_pipeline("sft")][-1] == ("dyknow", "sft", "pool")
    assert [s.name for s in dyknow_pipeline("dpo")] == ["sft", "pool", "dpo", "dyknow"]
    with pytest.raises(ValueError, match=r"base must be one of \('sft', 'dpo'\), got 'grpo'"):
        dyknow_pipeline("grpo")


def test_the_example_stage_yamls_chain_and_their_options_check():
    here = os.path.join(ROOT, "examples", "dyknow_movielens")
    stages = {n: RunConfig.from_yaml(os.path.join(here, f"{n}.yaml")) for n in ("sft", "dpo", "dyknow")}
    cfgs = {n: JudgeConfig.from_options(c.model.args) for n, c in stages.items()}
    assert [cfgs[n].objective for n in ("sft", "dpo", "dyknow")] == ["sft", "dpo", "dyknow"]
    assert all(c.prompt == "with_context" and c.format == "post_cot_context" for c in cfgs.values())
    assert stages["dpo"].checkpoint.init_from == stages["sft"].checkpoint.dir
    assert stages["dyknow"].checkpoint.init_from == stages["sft"].checkpoint.dir
    assert os.path.basename(stages["dyknow"].data.train) == "pool.parquet"
    dk = cfgs["dyknow"]
    assert dk.dyknow.gating == "posterior" and dk.dyknow.gap == "query" and dk.grpo.advantage_clip == 2.0
    assert (dk.dynamic_sampling.low, dk.dynamic_sampling.high) == (0.01, 0.9) and dk.grpo.beta == 0.02


@pytest.mark.slow
@pytest.mark.parametrize("base", ["sft", "dpo"])
def test_the_dyknow_example_runs_small(tmp_path, base):
    """examples/dyknow_movielens/run.py --small: the chain runs on the MovieLens catalogue with
    chunks (SFT -> pool -> [DPO ->] DyKnow) and the judge reports test metrics with and without
    the chunk."""
    example = runpy.run_path(os.path.join(ROOT, "examples", "dyknow_movielens", "run.py"))
    out = tmp_path / "run"
    result = example["main"](["--small", "--out", str(out), "--base", base])
    assert json.loads((out / "dyknow_result.json").read_text()) == json.loads(json.dumps(result))
    stages = ["sft", "dyknow"] + (["dpo"] if base == "dpo" else [])
    for stage in stages:
        assert {"accuracy", "macro_f1", "step"} <= set(result[stage]), stage
        assert CheckpointManager(out / stage / "checkpoints").latest() is not None, stage
    assert 0 < result["pool"]["pool"] <= result["pool"]["rows"]
    assert pq.read_metadata(out / "data" / "pool.parquet").num_rows == result["pool"]["pool"]
    for prompt in ("with_context", "no_context"):
        label = result[f"test_{prompt}"]["label"]
        assert label["items"] == result["task"]["test_rows"] and 0 <= label["macro_f1"] <= 1
    assert "full" in result["test_with_context"]
