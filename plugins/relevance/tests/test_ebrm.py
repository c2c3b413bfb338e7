"""The EBRM tower on a tiny random BERT: aggregation against a reference, cache equivalence,
gradients, interventions, explanations, errors, and what its checkpoints hold."""
from relevance_testing import WORDS, tiny, tiny_encoder  # noqa: F401 (first: puts the plugin on the path)
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch

from recis.checkpoint import CheckpointManager
from recis.towers import BaseModelMismatchError, MissingTextColumnError
from recis_relevance import EBRMTower, EntityOverride, RuleOverride, soft_and, soft_or


QUERIES = ["comedy movies", "horror from the 1990s not drama", "comedy movies", "romance films"]
ENTITIES = [["genre: Comedy", "year: 1995"], ["genre: Horror", "genre: Drama", "year: 1988"],
            ["genre: Comedy", "genre: Romance", "year: 1999", "theme: love"], ["genre: Romance"]]


def batch(labels=(4, 1, 3, 4)):
    return SimpleNamespace(extras={"query": pa.array(QUERIES), "entities": pa.array(ENTITIES)},
                           labels=torch.tensor(labels, dtype=torch.float32), sparse=None)


def make(tiny, **kw):
    torch.manual_seed(0)
    opts = dict(grades=4, label_base=1, relevant_grade=3, or_types=["genre"], type_weights={"theme": 0.5})
    opts.update(kw)
    return EBRMTower(**tiny, **opts)


@pytest.mark.parametrize("tnorm", ["product", "godel", "lukasiewicz"])
def test_levels_equal_the_soft_logic_reference(tiny, tnorm):
    tower = make(tiny, tnorm=tnorm).eval()
    with torch.no_grad():
        out = tower.score(QUERIES, ENTITIES, use_cache=False)
        for i, (q, ents) in enumerate(zip(QUERIES, ENTITIES)):
            p = torch.sigmoid(tower.qe_logits([(q, e) for e in ents], use_cache=False))
            w = torch.tensor([0.5 if e.startswith("theme") else 1.0 for e in ents])
            genre = torch.tensor([e.startswith("genre") for e in ents])
            slot = soft_or(p[:, 0], genre, w, tnorm)
            prev = 1.0
            for k in range(3):
                terms = torch.cat([slot.view(1), p[:, 1:k + 2].reshape(-1)])
                ws = torch.cat([torch.ones(1), w.repeat_interleave(k + 1)])
                want = soft_and(terms, weights=ws, tnorm=tnorm)
                assert float(out["levels"][i, k]) == pytest.approx(float(want), abs=1e-6)
                assert float(out["levels"][i, k]) <= prev + 1e-7
                prev = float(out["levels"][i, k])
        assert torch.allclose(out["grade_probs"].sum(1), torch.ones(4), atol=1e-6)


def test_cached_inference_equals_uncached_and_repeats_hit(tiny):
    tower = make(tiny).eval()
    with torch.no_grad():
        plain = tower(batch()).outputs["grade_probs"]
        tower.clear_cache()
        tower.cache.reset_stats()
        cold = tower.score(QUERIES, ENTITIES, use_cache=True)["grade_probs"]
        misses = tower.cache.misses
        tower.cache.reset_stats()
        warm = tower.score(QUERIES, ENTITIES, use_cache=True)["grade_probs"]
    assert torch.allclose(plain, cold, atol=1e-6, rtol=0) and torch.allclose(plain, warm, atol=1e-6, rtol=0)
    assert misses == len({(q, e) for q, es in zip(QUERIES, ENTITIES) for e in es})
    assert tower.cache.hit_rate == 1.0
    tower.train()
    assert len(tower.cache) == len({(q, e) for q, es in zip(QUERIES, ENTITIES) for e in es})
    opt = torch.optim.SGD(tower.head.parameters(), lr=0.1)
    tower(batch()).loss.backward()
    opt.step()
    tower.eval()
    with torch.no_grad():
        assert torch.allclose(tower.score(QUERIES, ENTITIES, use_cache=True)["grade_probs"],
                              tower.score(QUERIES, ENTITIES, use_cache=False)["grade_probs"], atol=1e-6)
    assert tower.cache.misses > 0  # the step emptied the cache: stale scores are never served


def test_cache_is_bounded_lru():
    from recis_relevance import QECache

    c = QECache(2)
    for k in "abc":
        c.put(k, "e: x", torch.zeros(1))
    assert ("a", "e: x") not in c and len(c) == 2 and c.evictions == 1
    c.get("b", "e: x")
    c.put("d", "e: x", torch.zeros(1))
    assert ("b", "e: x") in c and ("c", "e: x") not in c


def test_gradients_reach_the_encoder_through_the_aggregator(tiny):
    tower = make(tiny)
    out = tower(batch())
    out.loss.backward()
    grads = [p.grad for p in tower.qe.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert tower.qe.tokenizer_calls == 1  # one tokenizer call for the whole batch


@pytest.mark.parametrize("tnorm", ["product", "godel"])
def test_intervention_to_zero_forces_zero(tiny, tnorm):
    tower = make(tiny, tnorm=tnorm).eval()
    with torch.no_grad():
        with tower.intervene(EntityOverride("year: 1995", 0.0, head=1)):
            out = tower.score(QUERIES, ENTITIES)
        after = tower.score(QUERIES, ENTITIES)
    assert float(out["levels"][0].max()) == 0.0 and float(out["grade_probs"][0, 0]) == 1.0
    assert float(after["levels"][0, 0]) > 0  # overrides end with the block
    with torch.no_grad(), tower.intervene(RuleOverride("genre", required=False), RuleOverride("theme", weight=0.0)):
        ruled = tower.score(QUERIES, ENTITIES)
    assert torch.all(ruled["levels"] >= after["levels"] - 1e-7)  # dropping a conjunct never lowers the AND


def test_explain_lists_every_entity(tiny):
    tower = make(tiny).eval()
    with tower.intervene(EntityOverride("genre: Comedy", 1.0, head="match", query="comedy movies")):
        ex = tower.explain("comedy movies", ENTITIES[0])
    assert [e["entity"] for e in ex["entities"]] == ENTITIES[0]
    assert ex["entities"][0]["match"] == 1.0 and len(ex["entities"][0]["levels"]) == 3
    assert ex["grade"] in (1, 2, 3, 4) and sum(ex["grade_probs"]) == pytest.approx(1.0, abs=1e-6)


def test_bad_input_is_named(tiny):
    tower = make(tiny)
    b = batch()
    del b.extras["entities"]
    with pytest.raises(MissingTextColumnError, match="'entities'"):
        tower(b)
    with pytest.raises(ValueError, match=r"integer grades in 1..4, found \[7.0\]"):
        tower(batch(labels=(4, 1, 7, 4)))
    with pytest.raises(ValueError, match="tnorm must be one of"):
        make(tiny, tnorm="max")
    with pytest.raises(ValueError, match="override head"):
        with tower.intervene(EntityOverride("genre: Comedy", 0.0, head=9)):
            pass
    with pytest.raises(ValueError, match="not 'type: value'"):
        EntityOverride("Comedy", 0.0)


def test_frozen_encoder_checkpoints_only_what_trains(tiny, tmp_path):
    tower = make(tiny, freeze="all")
    keys = set(tower.state_dict())
    assert not any(k.startswith("qe.model.") for k in keys) and "head.weight" in keys
    groups = {g.name: g.kind for g in tower.param_groups()}
    assert groups == {"encoder": "frozen", "head": "dense"}
    with torch.no_grad():
        tower.head.weight.add_(1.0)
    ckpt = CheckpointManager(tmp_path)
    ckpt.save(1, tower)
    fresh = make(tiny, freeze="all")
    ckpt.load("latest", model=fresh)
    assert torch.equal(fresh.head.weight, tower.head.weight)
    other = make({**tiny, "encoder": tiny_encoder(seed=1)}, freeze="all")
    with pytest.raises(Exception, match="base weights"):
        ckpt.load("latest", model=other)


def test_lora_trains_and_saves_only_adapters(tiny, tmp_path):
    tower = make(tiny, freeze="lora", lora={"rank": 2, "alpha": 4.0, "targets": ["query", "value"]})
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    saved = set(tower.state_dict()) - {"_extra_state"}
    assert saved == trainable
    before = {n: p.detach().clone() for n, p in tower.named_parameters()}
    opt = torch.optim.Adam([p for g in tower.optimizer_groups(lr=0.01) for p in g["params"]])
    tower(batch()).loss.backward()
    opt.step()
    changed = {n for n, p in tower.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    CheckpointManager(tmp_path).save(1, tower)
    fresh = make(tiny, freeze="lora", lora={"rank": 2, "alpha": 4.0, "targets": ["query", "value"]})
    CheckpointManager(tmp_path).load("latest", model=fresh)
    assert all(torch.equal(p, dict(tower.named_parameters())[n]) for n, p in fresh.named_parameters())
