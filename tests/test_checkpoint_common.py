"""Shared pieces of the checkpoint tests (no tests here): a small CTR model with an
EmbeddingCollection (admission, TTL eviction, two table groups) and dense layers, its sparse
and dense optimizers, deterministic batches, one training step, and state comparisons."""
import random

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.testing import sorted_export
from recis.nn import EmbeddingCollection, FrequencyAdmission, TableConfig, TTLEviction, Uniform
from recis.nn.hash_table import STATE_KEYS
from recis.optim import SparseAdam, SparseRowwiseAdagrad
from recis.testing import assert_bitwise_equal

KEYS = ["user_id", "item_id", "hist_item", "cate_id"]
USER_DIM, ITEM_DIM = 8, 4


def table_configs(user_dim=USER_DIM):
    return [
        TableConfig("user", user_dim, ["user_id"], initializer=Uniform(-0.1, 0.1), seed=11,
                    admission=FrequencyAdmission(min_count=2, sketch_width=1 << 8, sketch_depth=2),
                    eviction=TTLEviction(ttl_steps=3, interval_steps=2)),
        TableConfig("item", ITEM_DIM, ["item_id", "hist_item"], initializer=Uniform(-0.1, 0.1), seed=12),
        TableConfig("cate", ITEM_DIM, ["cate_id"], initializer=Uniform(-0.1, 0.1), seed=13),
    ]


class TinyCTR(nn.Module):
    def __init__(self, user_dim=USER_DIM):
        super().__init__()
        self.ec = EmbeddingCollection(table_configs(user_dim))
        width = user_dim + 3 * ITEM_DIM
        self.norm = nn.BatchNorm1d(width)
        self.mlp = nn.Sequential(nn.Linear(width, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, kjt):
        return self.mlp(self.norm(self.ec(kjt).values())).squeeze(-1)


def make_training(user_dim=USER_DIM, fused=False, seed=0):
    """(model, optimizers): row-wise Adagrad on the user group, Adam on the item/cate group,
    torch Adam + a StepLR schedule on the dense layers."""
    torch.manual_seed(seed)
    model = TinyCTR(user_dim)
    user_group, item_group = model.ec.groups
    dense = torch.optim.Adam([p for n, p in model.named_parameters()], lr=0.01)
    opts = {
        "user": SparseRowwiseAdagrad(user_group.tables, lr=0.1, fused=fused),
        "item": SparseAdam(item_group.tables, lr=0.05, fused=fused),
        "dense": dense,
        "schedule": torch.optim.lr_scheduler.StepLR(dense, step_size=2, gamma=0.5),
    }
    return model, opts


def make_batch(seed, batch=6, users=12, items=20):
    r = random.Random(seed)
    lengths = [r.randint(1, 1) for _ in range(batch)] + [r.randint(1, 2) for _ in range(batch)] + \
              [r.randint(0, 3) for _ in range(batch)] + [r.randint(1, 1) for _ in range(batch)]
    pools = [users, items, items, 5]
    values = []
    for f in range(4):
        for b in range(batch):
            values += [r.randrange(pools[f]) * 7919 + f for _ in range(lengths[f * batch + b])]
    kjt = KeyedJaggedTensor.from_lengths_sync(KEYS, torch.tensor(values, dtype=torch.int64), torch.tensor(lengths))
    labels = torch.tensor([float(r.random() < 0.4) for _ in range(batch)])
    return kjt, labels


def train_step(model, opts, seed, forward_only=False):
    """One step on batch `seed`: returns the loss. With `forward_only`, returns a callable that
    finishes the step (backward + optimizer steps), to save between forward and update."""
    model.train()
    kjt, labels = make_batch(seed)
    loss = nn.functional.binary_cross_entropy_with_logits(model(kjt), labels)

    def finish():
        loss.backward()
        for name in ("user", "item", "dense"):
            opts[name].step()
            opts[name].zero_grad()
        opts["schedule"].step()
        return loss.detach()

    return finish if forward_only else finish()


def model_state(model):
    """state_dict with each table's entries sorted by id (export order is not part of the state)."""
    sd = model.state_dict()
    for name in model.ec.tables():
        key = f"ec.{name}"
        for k, v in sorted_export({k: sd[f"{key}.{k}"] for k in STATE_KEYS}).items():
            sd[f"{key}.{k}"] = v
    return sd


def assert_same_state(a, b):
    """Bitwise equality of two models' state, or of two optimizer/scheduler state_dicts."""
    if isinstance(a, nn.Module):
        a, b = model_state(a), model_state(b)
    assert_bitwise_equal(a, b, "state")


def assert_same_training(model_a, opts_a, model_b, opts_b):
    assert_same_state(model_a, model_b)
    for name in opts_a:
        assert_same_state(opts_a[name].state_dict(), opts_b[name].state_dict())

