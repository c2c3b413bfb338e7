"""The EBRM tower on a tiny random BERT: aggregation against a reference, cache equivalence,
gradients, interventions, explanations, errors, and what its checkpoints hold."""
from relevance_testing import WORDS, tiny, tiny_encoder  # noqa: F401 (first: puts the plugin on the path)
import math
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch

from recis.checkpoint import CheckpointManager
from recis.towers import BaseModelMismatchError, MissingTextColumnError
from recis_relevance import EBRMTower, EntityOverride, RuleOverride


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


def _and(ps, tnorm):
    """Plain-Python t-norm AND (the reference; independent of recis_relevance.logic)."""
    if tnorm == "product":
        return math.prod(ps)
    if tnorm == "godel":
        return min(ps, default=1.0)
    return max(0.0, sum(ps) - (len(ps) - 1)) if ps else 1.0


def _reference_levels(p, ents, tnorm, weights=None, slot_types=("genre",), ids=None, ids_weight=1.0):
    """levels[k] = AND(OR-slot per slot type, 1 - w (1 - c_j(e)) for every entity e and j <= k, ids_j),
    from per-entity probabilities p (rows: entities, columns: [match, c_1 .. c_{G-1}])."""
    weights = weights or {}
    w = [weights.get(e.split(": ")[0], 1.0) for e in ents]
    slots = []
    for t in slot_types:
        inside = [wi * float(row[0]) for row, e, wi in zip(p, ents, w) if e.startswith(t + ": ")]
        slots.append(1 - _and([1 - x for x in inside], tnorm))
    slot_w = [weights.get(t, 1.0) for t in slot_types]
    out = []
    for k in range(len(p[0]) - 1):
        terms = [1 - sw * (1 - s) for s, sw in zip(slots, slot_w)]
        terms += [1 - wi * (1 - float(row[j])) for row, wi in zip(p, w) for j in range(1, k + 2)]
        if ids is not None:
            terms += [1 - ids_weight * (1 - float(ids[j])) for j in range(k + 1)]
        out.append(_and(terms, tnorm))
    return out


@pytest.mark.parametrize("tnorm", ["product", "godel", "lukasiewicz"])
def test_levels_equal_a_plain_python_reference(tiny, tnorm):
    tower = make(tiny, tnorm=tnorm).eval()
    with torch.no_grad():
        out = tower.score(QUERIES, ENTITIES, use_cache=False)
        for i, (q, ents) in enumerate(zip(QUERIES, ENTITIES)):
            p = torch.sigmoid(tower.qe_logits([(q, e) for e in ents], use_cache=False)).tolist()
            want = _reference_levels(p, ents, tnorm, {"theme": 0.5})
            assert out["levels"][i].tolist() == pytest.approx(want, abs=1e-6)
            grade_probs = [1 - want[0]] + [want[k] - want[k + 1] for k in range(2)] + [want[2]]
            assert out["grade_probs"][i].tolist() == pytest.approx([max(0.0, x) for x in grade_probs], abs=1e-6)


def _leaf_logits(tower, monkeypatch):
    """Makes the tower's QE logits a leaf tensor (recorded with its pairs), so a test reads the
    gradient each (query, entity) pair gets."""
    seen = {}
    real = tower.qe_logits

    def qe_logits(pairs, use_cache=None):
        leaf = real(pairs, use_cache=False).detach().requires_grad_()
        seen["pairs"], seen["logits"] = list(pairs), leaf
        return leaf

    monkeypatch.setattr(tower, "qe_logits", qe_logits)
    return seen


@pytest.mark.parametrize("tnorm", ["godel", "product"])
def test_under_goedel_only_the_argmin_pair_gets_a_gradient(tiny, tnorm, monkeypatch):
    """Binary EBRM (G = 2, no OR slot): the item score is AND_e c(q, e). Under the Gödel AND the
    gradient reaches the one entity with the lowest score; under product every entity's."""
    tower = make(tiny, tnorm=tnorm, grades=2, label_base=0, relevant_grade=None, or_types=[], type_weights={})
    seen = _leaf_logits(tower, monkeypatch)
    out = tower.score(QUERIES, ENTITIES)
    out["levels"][:, 0].sum().backward()
    grad = dict(zip(seen["pairs"], seen["logits"].grad[:, 1].tolist()))
    probs = dict(zip(seen["pairs"], torch.sigmoid(seen["logits"][:, 1]).tolist()))
    for q, ents in zip(QUERIES, ENTITIES):
        argmin = min(ents, key=lambda e: probs[(q, e)])
        for e in ents:
            if tnorm == "godel":
                assert (grad[(q, e)] != 0) == (e == argmin), (q, e)
            else:
                assert grad[(q, e)] > 0, (q, e)  # product: d/dp_e prod = prod of the others > 0
    assert all(g == 0 for g in seen["logits"].grad[:, 0].tolist())  # no OR slot: the match head is unread


def test_a_rule_override_changes_the_score_as_the_rule_says(tiny):
    tower = make(tiny).eval()
    with torch.no_grad():
        base = tower.score(QUERIES, ENTITIES)["levels"]
        p = [torch.sigmoid(tower.qe_logits([(q, e) for e in ents])).tolist() for q, ents in zip(QUERIES, ENTITIES)]
        cases = [((RuleOverride("year", weight=0.0),), {"theme": 0.5, "year": 0.0}, ("genre",)),
                 ((RuleOverride("theme", weight=1.0),), {}, ("genre",)),
                 ((RuleOverride("genre", required=False),), {"theme": 0.5}, ()),
                 ((RuleOverride("theme", required=True),), {"theme": 0.5}, ("genre", "theme"))]
        for overrides, weights, slots in cases:
            with tower.intervene(*overrides):
                ruled = tower.score(QUERIES, ENTITIES)["levels"]
            want = [_reference_levels(pi, ents, "product", weights, slots) for pi, ents in zip(p, ENTITIES)]
            assert torch.allclose(ruled, torch.tensor(want, dtype=ruled.dtype), atol=1e-6), overrides
            assert not torch.allclose(ruled, base, atol=1e-4), overrides  # the vanilla rules score otherwise
        assert torch.equal(tower.score(QUERIES, ENTITIES)["levels"], base)  # overrides end with the block


def test_a_checkpoint_load_clears_the_qe_cache(tiny, tmp_path):
    trained = make(tiny)
    with torch.no_grad():
        trained.head.weight.add_(torch.randn(trained.head.weight.shape, generator=torch.Generator().manual_seed(1)))
        trained.head.bias.add_(1.0)
    CheckpointManager(tmp_path).save(1, trained)
    tower = make(tiny).eval()
    with torch.no_grad():
        tower.score(QUERIES, ENTITIES, use_cache=True)
        stale = {k: v.clone() for k, v in tower.cache._data.items()}
        assert stale
        CheckpointManager(tmp_path).load("latest", model=tower)
        assert len(tower.cache) == 0  # emptied by the load itself
        fresh = tower.score(QUERIES, ENTITIES, use_cache=False)
        cached = tower.score(QUERIES, ENTITIES, use_cache=True)
        fresh_rows = {k: v for k, v in zip(stale, trained.eval().qe_logits(list(stale), use_cache=False))}
    assert torch.allclose(cached["grade_probs"], fresh["grade_probs"], atol=1e-6)
    # what a cache kept across the load would have served: the old weights' scores
    assert all(not torch.allclose(stale[k], fresh_rows[k], atol=1e-3) for k in stale)
    tower.cache._data.update(stale)
    tower._cache_stamp = tower._weights_stamp()
    with torch.no_grad():
        served = tower.score(QUERIES, ENTITIES, use_cache=True)
    assert not torch.allclose(served["grade_probs"], fresh["grade_probs"], atol=1e-4)


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
        before = tower.score(QUERIES, ENTITIES)
        with tower.intervene(EntityOverride("year: 1995", 0.0, head=1)):
            out = tower.score(QUERIES, ENTITIES)
        after = tower.score(QUERIES, ENTITIES)
    assert float(before["levels"][0].max()) > 0.01  # the override, not the model, zeroes it
    assert float(out["levels"][0].max()) == 0.0 and float(out["grade_probs"][0, 0]) == 1.0
    assert torch.equal(out["levels"][1:], before["levels"][1:])  # other items do not carry the entity
    assert torch.equal(after["levels"], before["levels"])  # overrides end with the block


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


def _sparse_batch():
    """The rows of QUERIES / ENTITIES through the task's feature engine (hashed query, item and
    entity ids)."""
    from recis.features import FeatureEngine
    from recis_relevance.task import feature_config

    table = pa.table({"query": QUERIES, "entities": ENTITIES, "item_text": ["x"] * 4, "item_id": [1, 2, 3, 4],
                      "label": [4, 1, 3, 4]})
    return FeatureEngine.from_config(feature_config(sparse=True))(table)


def test_the_sparse_id_conjunct_enters_every_level(tiny):
    """With sparse features, levels[k] = AND(..., ids_1 .. ids_{k+1}); the conjunct moves the score
    (a tower without it scores otherwise), trains (gradients reach its head and tables), and
    sparse_weight 0 removes it."""
    feats = ["query_id", "item_id", "entity_ids"]
    b = _sparse_batch()
    tower = make(tiny, sparse_features=feats, sparse_dim=4)
    plain = make(tiny)  # the same seed: the same encoder and QE head, no ids
    assert torch.equal(plain.head.weight, tower.head.weight)
    with torch.no_grad():
        tower.ids_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
        tower.ids_head.bias.copy_(torch.tensor([1.0, -0.5, 0.0]))
    tower.eval(), plain.eval()
    with torch.no_grad():
        out = tower.score(QUERIES, ENTITIES, b.sparse)
        without = plain.score(QUERIES, ENTITIES)
        ids = torch.sigmoid(tower.ids_head(tower.ids(b.sparse).values()))
        for i, (q, ents) in enumerate(zip(QUERIES, ENTITIES)):
            p = torch.sigmoid(tower.qe_logits([(q, e) for e in ents], use_cache=False)).tolist()
            want = _reference_levels(p, ents, "product", {"theme": 0.5}, ids=ids[i].tolist())
            assert out["levels"][i].tolist() == pytest.approx(want, abs=1e-6)
    assert not torch.allclose(out["levels"], without["levels"], atol=1e-3)
    with torch.no_grad():
        tower.ids_head.bias.fill_(-30.0)  # ids object at every level: nothing is above grade 1
        tower.ids_head.weight.zero_()
        assert float(tower.score(QUERIES, ENTITIES, b.sparse)["levels"].max()) < 1e-6
    off = make(tiny, sparse_features=feats, sparse_dim=4, sparse_weight=0.0).eval()
    with torch.no_grad():
        assert torch.allclose(off.score(QUERIES, ENTITIES, b.sparse)["levels"], without["levels"], atol=1e-6)
    trainable = make(tiny, sparse_features=feats, sparse_dim=4)
    trainable(SimpleNamespace(extras=b.extras, labels=torch.tensor([4.0, 1.0, 3.0, 4.0]), sparse=b.sparse)).loss.backward()
    assert float(trainable.ids_head.bias.grad.abs().sum()) > 0
