"""STREAM (methods notes §12): consistency filter, rule scorer, planted-rule recovery, experts."""
import math

import numpy as np
import pytest
import torch

from recis_online.stream.config import NONE, ClassifierConfig, RuleConfig, SpanConfig, StreamConfig
from recis_online.stream.experts import PromptConfig, ScriptedExpert, consistent_seeds, load_prompt_expert
from recis_online.stream.learner import STREAM, tag
from recis_online.stream.rules import Rule, propose_rules, score_candidates
from recis_online.stream.spans import KeyIndex, candidate_spans, span_text
from recis_online.stream.synthetic import PLANTED, planted_corpus


# ---------------------------------------------------------------------------------------------
# consistency filter


def test_consistent_seeds_matches_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    p1 = torch.softmax(3 * torch.randn(200, 4, generator=g), dim=1)
    p2 = torch.softmax(3 * torch.randn(200, 4, generator=g), dim=1)
    want = []
    for i in range(200):
        a, b = p1[i].tolist(), p2[i].tolist()
        ia, ib = a.index(max(a)), b.index(max(b))
        if ia == ib and max(a) >= 0.6 and max(b) >= 0.6:
            want.append((i, ia))
    assert consistent_seeds(p1, p2, 0.6) == want
    assert want  # the draw has agreeing rows


class _TwoTemplateExpert:
    """Answers class `first` under template 1 and class `second` under template 2 (conf 0.9)."""

    def __init__(self, first, second, classes=3):
        self.first, self.second, self.k, self.prompts = first, second, classes, 0

    def template_probs(self, sentences, spans):
        def probs(c):
            p = torch.full((len(spans), self.k), 0.1 / (self.k - 1))
            p[:, c] = 0.9
            return p
        return probs(self.first), probs(self.second)


def test_disagreeing_templates_give_no_seed_and_agreeing_ones_do():
    sents = [["the", "kaloine", "was", "fine"], ["dr.", "Smith", "came"]]
    cfg = StreamConfig(labels=("CHEM", "PER"), expert_budget=50)
    st = STREAM(cfg).prepare(sents)
    assert st.seed(_TwoTemplateExpert(0, 1)) == {}
    seeds = st.seed(_TwoTemplateExpert(0, 0))
    assert len(seeds) == len(st.spans) and set(seeds.values()) == {"CHEM"}
    # agreeing but under kappa: no seed
    assert STREAM(StreamConfig(labels=("CHEM", "PER"), kappa=0.95)).prepare(sents).seed(_TwoTemplateExpert(0, 0)) == {}


# ---------------------------------------------------------------------------------------------
# rule scorer


def _names(rng, n, avoid_suffix=None):
    out = set()
    while len(out) < n:
        w = "".join(rng.choice(list("bcdfgkmpqrstvz"), size=5)) + "o"
        if avoid_suffix is None or not w.endswith(avoid_suffix):
            out.add(w)
    return sorted(out)


def test_scorer_ranks_the_planted_precise_rule_above_noisy_and_rare_ones():
    rng = np.random.default_rng(0)
    sents, pool_labels = [], []
    for w in _names(rng, 40):                          # Suffix "ine": 38 CHEM, 2 NONE
        sents.append([w[:-1] + "ine"])
        pool_labels.append("CHEM" if len(pool_labels) < 38 else NONE)
    for k, w in enumerate(_names(rng, 200)):           # PreNgram "with": 120 CHEM, 80 NONE
        sents.append(["with", w])
        pool_labels += [None, "CHEM" if k < 120 else NONE]
    for _ in range(2):                                 # SurfaceForm "zzq": 2 CHEM
        sents.append(["zzq"])
        pool_labels.append("CHEM")
    cfg = StreamConfig(labels=("CHEM",), spans=SpanConfig(max_len=1, span_filter="all"),
                       rules=RuleConfig(affix_lengths=(3,), context_sizes=(1,)))
    spans = candidate_spans(sents, cfg.spans)
    assert len(spans) == len(pool_labels)
    pool = {i: y for i, y in enumerate(pool_labels) if y is not None}
    index = KeyIndex(sents, spans, cfg.rules)
    planted, noisy, rare = Rule("Suffix", "ine", "CHEM"), Rule("PreNgram", "with", "CHEM"), Rule("SurfaceForm", "zzq", "CHEM")

    # reference: precision on the pool and pool coverage, counted by hand
    def ref(match):
        hit = [y for i, y in pool.items() if match(i)]
        return sum(y == "CHEM" for y in hit) / len(hit), sum(y == "CHEM" for y in hit)

    refs = {planted: ref(lambda i: span_text(sents, spans[i]).endswith("ine")),
            noisy: ref(lambda i: spans[i, 1] > 0 and sents[spans[i, 0]][spans[i, 1] - 1] == "with"),
            rare: ref(lambda i: span_text(sents, spans[i]) == "zzq")}
    assert refs[planted] == (38 / 40, 38) and refs[noisy] == (0.6, 120) and refs[rare] == (1.0, 2)

    def ranking(scorer):
        c = RuleConfig(affix_lengths=(3,), context_sizes=(1,), scorer=scorer)
        scored = {sr.rule: sr for sr in score_candidates(index, pool, c, ["CHEM"])}
        for r, (p, cov) in refs.items():
            assert scored[r].precision == pytest.approx(p) and scored[r].coverage == cov
        return sorted(refs, key=lambda r: -scored[r].score), scored

    order, scored = ranking("precision_log_coverage")
    assert order[0] == planted
    assert scored[planted].score == pytest.approx(0.95 * math.log(38))
    assert scored[noisy].score == pytest.approx(0.6 * math.log(120))
    assert ranking("coverage")[0][0] == noisy       # coverage alone prefers the noisy rule
    assert ranking("precision")[0][0] == rare       # precision alone prefers the rare rule


# ---------------------------------------------------------------------------------------------
# experts


def test_scripted_expert_has_its_accuracy_per_template():
    corpus = planted_corpus(300, seed=1)
    cfg = StreamConfig(labels=corpus.labels)
    spans = candidate_spans(corpus.sentences, SpanConfig(max_len=2))
    ex = ScriptedExpert(cfg.classes, corpus.label_of, accuracy=0.7, seed=3)
    p1, p2 = ex.template_probs(corpus.sentences, spans)
    truth = torch.tensor([cfg.classes.index(corpus.label_of(None, s)) for s in spans.tolist()])
    for p in (p1, p2):
        acc = float((p.argmax(dim=1) == truth).float().mean())
        assert abs(acc - 0.7) < 3 * math.sqrt(0.21 / len(spans))
    assert float((p1.argmax(1) == p2.argmax(1)).float().mean()) < 0.7  # independent templates
    again = ScriptedExpert(cfg.classes, corpus.label_of, accuracy=0.7, seed=3).template_probs(corpus.sentences, spans)
    assert torch.equal(again[0], p1) and torch.equal(again[1], p2)


_WORDS = ["the", "patient", "took", "caffeine", "dr", ".", "smith", "is", "a", "kind", "of", ",", "in", "sentence",
          "above", "\"", "chemical", "person", "thing", "drug", "doctor", "word"]
_VERBALIZER = {"chemical": "CHEM", "drug": "CHEM", "person": "PER", "doctor": "PER", "thing": NONE, "word": NONE}


def _reference_probs(model, tok, prompts, word_ids, classes, word_class, position):
    out = []
    with torch.no_grad():
        for text in prompts:
            ids = torch.tensor([tok(text, add_special_tokens=True)["input_ids"]])
            logits = model(input_ids=ids).logits[0]
            p = torch.softmax(logits[position(ids[0]), word_ids], dim=0)
            out.append([float(sum(p[k] for k in range(len(word_ids)) if word_class[k] == c)) for c in range(len(classes))])
    return torch.tensor(out)


@pytest.mark.parametrize("kind", ["masked", "causal"])
def test_prompt_expert_scores_the_verbalizer_like_a_reference_forward(kind):
    classes = ["CHEM", "PER", NONE]
    if kind == "masked":
        model = {"config": {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
                            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64}, "seed": 0}
        tok_spec = {"vocab": _WORDS}
    else:
        model = {"config": {"model_type": "llama", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 32,
                            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}, "seed": 0}
        tok_spec = {"words": _WORDS}
    cfg = PromptConfig(kind=kind, verbalizer=_VERBALIZER, batch_size=3)
    ex = load_prompt_expert(model, cfg, classes, tokenizer=tok_spec)
    sents = [["the", "patient", "took", "caffeine"], ["dr", ".", "smith", "took", "the", "caffeine"]]
    spans = np.array([[0, 3, 4], [1, 2, 3], [0, 1, 2], [1, 5, 6], [1, 0, 3]])
    p1, p2 = ex.template_probs(sents, spans)
    assert p1.shape == (5, 3) and torch.allclose(p1.sum(1), torch.ones(5))
    word_ids = [ex.tok(w if kind == "masked" else w, add_special_tokens=False)["input_ids"][0] for w in _VERBALIZER]
    word_class = [classes.index(c) for c in _VERBALIZER.values()]
    mask_id = ex.tok.mask_token_id
    position = (lambda ids: int((ids == mask_id).nonzero()[0])) if kind == "masked" else (lambda ids: len(ids) - 1)
    for t, p in enumerate((p1, p2)):
        prompts = [ex.prompt(t, " ".join(sents[s]), " ".join(sents[s][i:j])) for s, i, j in spans.tolist()]
        ref = _reference_probs(ex.model, ex.tok, prompts, word_ids, classes, word_class, position)
        assert torch.allclose(p, ref, atol=1e-5)
    assert ex.prompts == 10


def test_prompt_config_refuses_bad_options():
    with pytest.raises(ValueError, match="verbalizer"):
        PromptConfig(kind="causal")
    with pytest.raises(ValueError, match="kind"):
        PromptConfig(kind="seq2seq", verbalizer={"a": "X"})
    with pytest.raises(ValueError, match=r"templates\[1\]"):
        PromptConfig(kind="masked", verbalizer={"a": "X"}, templates=("{span} is a {mask}", "{span} is"))
    with pytest.raises(ValueError, match="stream.classifier.epochs"):
        ClassifierConfig(epochs=0)
    with pytest.raises(ValueError, match="stream.rules.scorer"):
        RuleConfig(scorer="f1")


# ---------------------------------------------------------------------------------------------
# the loop on a corpus generated from planted rules


def _learn(scorer="precision_log_coverage", seed=0):
    corpus = planted_corpus(300, seed=seed)
    cfg = StreamConfig(labels=corpus.labels, spans=SpanConfig(max_len=2), expert_budget=800,
                       expert_selection="random", rules=RuleConfig(scorer=scorer, min_precision=0.8), seed=seed)
    expert = ScriptedExpert(cfg.classes, corpus.label_of, accuracy=0.7, seed=seed)
    return corpus, cfg, STREAM(cfg).fit(corpus.sentences, expert)


@pytest.mark.slow
def test_planted_rules_are_recovered_and_the_pool_grows_to_convergence():
    corpus, cfg, res = _learn()
    recovered = [r for r in PLANTED if r in res.rules]
    assert len(recovered) >= 0.8 * len(PLANTED), [str(r) for r in res.rules]
    sizes = res.pool_sizes
    assert all(b >= a for a, b in zip(sizes, sizes[1:])) and sizes[-1] > sizes[0]
    assert res.converged and res.iterations < cfg.max_iterations
    assert sizes[-1] - sizes[-2] < 0.01 * sizes[-2]
    # the learned rules tag the corpus better than chance: precision and recall against the gold spans
    pred = {(s, i, j): y for s, i, j, y in tag(corpus.sentences, res.rules, cfg)}
    tp = sum(corpus.gold.get(k) == y for k, y in pred.items())
    assert tp / len(pred) > 0.6 and tp / len(corpus.gold) > 0.8


@pytest.mark.slow
def test_a_precision_only_scorer_misses_the_planted_rules():
    """The same loop ranking rules by precision alone (rare, exact surface forms first) recovers
    fewer than 80 % of the planted rules: the log-coverage factor is what finds them."""
    _, _, res = _learn(scorer="precision")
    assert sum(r in res.rules for r in PLANTED) < 0.8 * len(PLANTED)


def test_cached_expert_asks_each_span_once(tmp_path):
    from recis_online.stream.experts import CachedExpert

    corpus = planted_corpus(20, seed=2)
    classes = list(corpus.labels) + [NONE]
    spans = candidate_spans(corpus.sentences, SpanConfig(max_len=2))
    inner = ScriptedExpert(classes, corpus.label_of, accuracy=0.7, seed=0)
    first = CachedExpert(inner, tmp_path / "answers.json").template_probs(corpus.sentences, spans[:10])
    assert inner.prompts == 20
    again = CachedExpert(inner, tmp_path / "answers.json")       # read back from the file
    p1, p2 = again.template_probs(corpus.sentences, spans[:15])
    assert inner.prompts == 30                                    # only the 5 new spans were asked
    assert torch.allclose(p1[:10], first[0].float()) and torch.allclose(p2[:10], first[1].float())
    ref = ScriptedExpert(classes, corpus.label_of, accuracy=0.7, seed=0).template_probs(corpus.sentences, spans[:15])
    assert torch.allclose(p1, ref[0].float()) and torch.allclose(p2, ref[1].float())


def test_affix_forms_counting_stops_an_affix_that_one_word_supports():
    # pool: "dress" x20 GARMENT and "less" x1 NONE (suffix "ess": one GARMENT word), "skirt" x2 and
    # "shirt" x2 GARMENT (suffix "irt": two GARMENT words); "guess" and "unless" are not in the pool
    words = ["dress"] * 20 + ["less"] + ["skirt", "shirt"] * 2 + ["guess", "unless", "flirt"]
    labels = ["GARMENT"] * 20 + [NONE] + ["GARMENT"] * 4 + [None] * 3
    sents = [[w] for w in words]

    def run(affix_count):
        cfg = StreamConfig(labels=("GARMENT",), spans=SpanConfig(max_len=1, span_filter="all"),
                           rules=RuleConfig(affix_lengths=(3,), context_sizes=(1,), types=("Suffix",), top_k=10,
                                            min_precision=0.6, min_matches=2, affix_count=affix_count))
        spans = candidate_spans(sents, cfg.spans)
        index = KeyIndex(sents, spans, cfg.rules)
        pool = {i: y for i, y in enumerate(labels) if y is not None}
        scored = {sr.rule: sr for sr in score_candidates(index, pool, cfg.rules, ["GARMENT"])}
        new = [sr.rule for sr in propose_rules(index, pool, cfg.rules, ["GARMENT"])]
        tagged = sorted({span_text(sents, (s, i, j)) for s, i, j, y in tag(sents, new, cfg)})
        return scored, new, tagged

    ess, irt = Rule("Suffix", "ess", "GARMENT"), Rule("Suffix", "irt", "GARMENT")
    # reference, counted by hand: instances 20 of 21 for "ess"; forms {dress: GARMENT, less: NONE}
    scored, new, tagged = run("instances")
    assert (scored[ess].hits, scored[ess].matched) == (20, 21) and (scored[irt].hits, scored[irt].matched) == (4, 4)
    assert new == [ess, irt]
    assert tagged == ["dress", "flirt", "guess", "less", "shirt", "skirt", "unless"]   # the affix over-generalises
    scored, new, tagged = run("forms")
    assert (scored[ess].hits, scored[ess].matched) == (1, 2) and (scored[irt].hits, scored[irt].matched) == (2, 2)
    assert scored[ess].precision == pytest.approx(0.5)
    assert new == [irt]
    assert tagged == ["flirt", "shirt", "skirt"]
    with pytest.raises(ValueError, match="affix_count"):
        RuleConfig(affix_count="words")


class _PriorExpert:
    """An expert whose every answer leans to NONE (a prompt prior), with a small lift of the true class."""

    def __init__(self, rows):
        self.rows, self.prompts = torch.tensor(rows, dtype=torch.float64), 0

    def template_probs(self, sentences, spans):
        self.prompts += 2 * len(spans)
        return self.rows[: len(spans)], self.rows[: len(spans)]


def test_batch_calibration_lets_a_prior_dominated_expert_seed():
    sents = [["aspirin"], ["table"], ["chair"], ["ibuprofen"]]
    rows = [[0.30, 0.70], [0.05, 0.95], [0.06, 0.94], [0.28, 0.72]]        # CHEM, NONE
    # reference (numpy): divide by the column means, renormalise, argmax with confidence >= kappa
    p = np.asarray(rows)
    q = p / p.mean(axis=0)
    q = q / q.sum(axis=1, keepdims=True)
    ref = {i: ("CHEM" if q[i, 0] > q[i, 1] else NONE) for i in range(4) if q[i].max() >= 0.5}
    assert ref == {0: "CHEM", 1: NONE, 2: NONE, 3: "CHEM"}

    def seeds(calibration):
        cfg = StreamConfig(labels=("CHEM",), spans=SpanConfig(max_len=1, span_filter="all"), expert_budget=4,
                           expert_calibration=calibration)
        learner = STREAM(cfg).prepare(sents)
        return learner.seed(_PriorExpert(rows))

    assert seeds("none") == {0: NONE, 1: NONE, 2: NONE, 3: NONE}          # the prior wins every answer
    assert seeds("batch") == ref
    with pytest.raises(ValueError, match="expert_calibration"):
        StreamConfig(labels=("CHEM",), expert_calibration="platt")
