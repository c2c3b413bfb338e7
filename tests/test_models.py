"""The model zoo: interaction layers against brute-force formulas, wiring, and that each model learns."""
import itertools
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.models import (DCNv2, DIN, DLRM, MODELS, CrossNetwork, DeepFM, TargetAttention, WideAndDeep,
                          dot_interaction, feature_tables, fm_interaction, jagged_to_padded)
from recis.optim import SparseAdagrad


def test_fm_interaction_is_the_sum_over_pairs():
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    ref = sum((x[:, i] * x[:, j]).sum(1) for i, j in itertools.combinations(range(6), 2))
    torch.testing.assert_close(fm_interaction(x), ref)


def test_dot_interaction_lists_every_pair_once():
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    ref = torch.stack([(x[:, i] * x[:, j]).sum(1) for i, j in itertools.combinations(range(5), 2)], dim=1)
    torch.testing.assert_close(dot_interaction(x), ref)


@pytest.mark.parametrize("low_rank", [None, 2])
def test_cross_network_follows_the_dcn_v2_recurrence(low_rank):
    net = CrossNetwork(6, 2, low_rank).double()
    x0 = torch.randn(3, 6, dtype=torch.float64)
    x = x0
    for layer in net.layers:
        w = layer.weight if low_rank is None else layer[1].weight @ layer[0].weight
        b = layer.bias if low_rank is None else layer[1].bias
        x = x0 * (x @ w.T + b) + x
    torch.testing.assert_close(net(x0), x)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=6), st.integers(1, 5))
def test_jagged_to_padded_matches_a_python_reference(lengths, max_len):
    lengths_t = torch.tensor(lengths)
    values = torch.randn(int(lengths_t.sum()), 2)
    padded, mask = jagged_to_padded(values, lengths_t, max_len)
    start = 0
    for b, n in enumerate(lengths):
        keep = min(n, max_len)
        torch.testing.assert_close(padded[b, :keep], values[start:start + keep])
        assert bool((padded[b, keep:] == 0).all())
        assert mask[b].tolist() == [i < keep for i in range(max_len)]
        start += n


def test_target_attention_ignores_padding_and_matches_the_formula():
    att = TargetAttention(4, (8,)).double()
    q, keys = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = att(q, keys, mask)
    noisy = keys.clone()
    noisy[~mask] = 99.0
    torch.testing.assert_close(att(q, noisy, mask), out)
    for b in range(2):
        ref = sum(att.score(torch.cat([k, q[b], k - q[b], k * q[b]])) * k
                  for k, real in zip(keys[b], mask[b]) if real)
        torch.testing.assert_close(out[b], ref)


def _batch(batch_size=64, seed=0, dense_dim=3):
    g = torch.Generator().manual_seed(seed)
    user = torch.randint(0, 50, (batch_size,), generator=g)
    item = torch.randint(0, 40, (batch_size,), generator=g)
    hist_len = torch.randint(0, 5, (batch_size,), generator=g)
    hist = torch.randint(0, 40, (int(hist_len.sum()),), generator=g)
    dense = torch.randn(batch_size, dense_dim, generator=g)
    # planted: user parity and item parity agree, plus a dense term
    logit = 2.0 * ((user % 2) == (item % 2)).float() - 1.0 + dense[:, 0]
    labels = (torch.rand(batch_size, generator=g) < torch.sigmoid(2 * logit)).float()
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["user", "item", "hist"], torch.cat([user, item, hist]),
        torch.cat([torch.ones(2 * batch_size, dtype=torch.long), hist_len]))
    return SimpleNamespace(sparse=kjt, dense=dense, labels=labels)


def _models(dense_dim=3):
    feats = ["user", "item", "hist"]
    return {
        "deepfm": DeepFM(feats, dense_dim, 8, hidden=(16,), combiners={"hist": "mean"}),
        "wide_deep": WideAndDeep(feats, dense_dim, 8, hidden=(16,)),
        "dlrm": DLRM(feats, dense_dim, 8, bottom=(8,), top=(16,)),
        "dcnv2": DCNv2(feats, dense_dim, 8, cross_layers=2, low_rank=4, hidden=(16,), structure="parallel"),
        "din": DIN(["user"], "item", "hist", dense_dim, 8, max_len=4, attention_hidden=(8,), hidden=(16,)),
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_learns_a_planted_signal(name):
    torch.manual_seed(0)
    model = _models()[name]
    sparse = SparseAdagrad(model, lr=0.1)
    dense = torch.optim.Adam(model.parameters(), lr=0.01)  # hash tables are not nn.Parameters
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batches = [_batch(seed=s) for s in range(8)]
    first = None
    for epoch in range(15):
        total = 0.0
        for b in batches:
            loss = loss_fn(model(b), b.labels)
            dense.zero_grad()
            sparse.zero_grad()
            loss.backward()
            dense.step()
            sparse.step()
            total += loss.item()
        first = total if first is None else first
    assert total < 0.8 * first, (name, first, total)
    probs = model.predict(batches[0])
    assert probs.shape == (64,) and bool(((probs >= 0) & (probs <= 1)).all())


def test_deepfm_logit_is_bias_plus_linear_plus_fm_plus_deep():
    model = DeepFM(["user", "item", "hist"], 3, 4, hidden=(8,)).eval()
    b = _batch(8)
    fields = model.embeddings(b.sparse).values().view(8, 3, 4)
    ref = (model.bias + model.linear(b.sparse).values().sum(1) + model.dense_linear(b.dense).squeeze(1)
           + fm_interaction(fields) + model.deep(torch.cat([fields.flatten(1), b.dense], 1)).squeeze(1))
    torch.testing.assert_close(model(b), ref)


def test_din_attends_only_over_the_real_behaviours():
    model = DIN([], "item", "hist", 0, 4, max_len=3, attention_hidden=(8,), hidden=(8,)).eval()
    kjt = KeyedJaggedTensor.from_lengths_sync(["item", "hist"], torch.tensor([1, 2, 10, 11, 12, 13, 20]),
                                              torch.tensor([1, 1, 4, 1]))
    out = model(SimpleNamespace(sparse=kjt, dense=None))
    # the 4th behaviour of example 0 is cut by max_len=3: replacing it changes nothing
    kjt2 = KeyedJaggedTensor.from_lengths_sync(["item", "hist"], torch.tensor([1, 2, 10, 11, 12, 99, 20]),
                                               torch.tensor([1, 1, 4, 1]))
    torch.testing.assert_close(model(SimpleNamespace(sparse=kjt2, dense=None)), out)


def test_models_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"batch.dense of shape \[B, 3\]"):
        DeepFM(["user", "item", "hist"], 3, 4)(SimpleNamespace(sparse=_batch(4).sparse, dense=torch.zeros(4, 2)))
    with pytest.raises(ValueError, match="different combiners"):
        feature_tables(["a", "b"], 4, combiners={"a": "mean"}, shared={"t": ["a", "b"]})
    with pytest.raises(ValueError, match="not in the model's features"):
        feature_tables(["a"], 4, combiners={"zz": "mean"})
    with pytest.raises(ValueError, match="structure"):
        DCNv2(["a"], 0, 4, structure="diagonal")


def test_wide_and_deep_parts_take_the_features_only_the_other_part_serves():
    """A cross feature only in wide_features, a sequence only in deep_features: each collection
    skips the other's features; a key that neither part serves is still an error."""
    b = _batch(8)
    cross = KeyedJaggedTensor.from_lengths_sync(["user", "item", "hist", "user_x_item"],
                                                torch.cat([b.sparse.values(), torch.arange(8)]),
                                                torch.cat([b.sparse.lengths(), torch.ones(8, dtype=torch.long)]))
    model = WideAndDeep(["user", "item", "hist", "user_x_item"], 3, 4, hidden=(8,),
                        wide_features=["user", "item", "user_x_item"], deep_features=["user", "item", "hist"])
    assert model(SimpleNamespace(sparse=cross, dense=b.dense)).shape == (8,)
    assert sorted(model.linear.feature_names()) == ["item", "user", "user_x_item"]
    assert len(model.linear.tables()["linear_user_x_item"]) == 8
    typo = KeyedJaggedTensor.from_lengths_sync(["user", "item", "hist", "user_x_item", "usr"],
                                               torch.cat([cross.values(), torch.arange(8)]),
                                               torch.cat([cross.lengths(), torch.ones(8, dtype=torch.long)]))
    with pytest.raises(KeyError, match="usr"):
        model(SimpleNamespace(sparse=typo, dense=b.dense))
