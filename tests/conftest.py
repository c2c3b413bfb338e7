"""Shared fixtures and reference helpers for the recis hash-table tests.

The helpers here are deliberately independent of recis: they are plain Python / torch models
that the tests compare the library against.
"""
import math
from typing import Dict, Iterable, List

import pytest
import torch
from recis.testing import sorted_export  # noqa: F401  (tests import it from here too)

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1
EXTREME_IDS = [0, -1, 1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1]


@pytest.fixture
def restore_threads():
    """Lets a test change torch.set_num_threads and puts the original count back afterwards."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.fixture
def gen():
    """A seeded torch generator (fresh per test, so tests do not depend on each other's draws)."""
    g = torch.Generator()
    g.manual_seed(20240611)
    return g


def ids_tensor(ids: Iterable[int]) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.int64)


def random_int64(n: int, generator: torch.Generator) -> torch.Tensor:
    """n random ids over the whole int64 range (duplicates possible but vanishingly rare)."""
    return torch.randint(INT64_MIN, INT64_MAX, (n,), dtype=torch.int64, generator=generator)


def distinct_random_int64(n: int, generator: torch.Generator) -> torch.Tensor:
    """Exactly n distinct random int64 ids, in random order."""
    ids = torch.unique(random_int64(n + n // 50 + 16, generator))
    assert ids.numel() >= n
    ids = ids[torch.randperm(ids.numel(), generator=generator)[:n]]
    return ids


class DictModel:
    """Reference model of one logical table: {id: row values}.

    `first_values` remembers the value each id received the first time it was inserted; an id
    that is erased and comes back must get exactly that value again (deterministic init)."""

    def __init__(self):
        self.values: Dict[int, torch.Tensor] = {}
        self.first_values: Dict[int, torch.Tensor] = {}

    def __len__(self):
        return len(self.values)

    def __contains__(self, i):
        return i in self.values

    def ids(self) -> List[int]:
        return sorted(self.values)


def export_as_dict(state) -> Dict[int, tuple]:
    """{id: (row, slots, count, last_seen)} from a HashTable.export() dict (order-free view)."""
    ids = state["ids"].tolist()
    assert len(set(ids)) == len(ids), "export lists an id twice"
    out = {}
    for i, key in enumerate(ids):
        out[key] = (state["rows"][i], state["slots"][i], int(state["counts"][i]), int(state["last_seen"][i]))
    return out




def assert_exports_equal(a, b):
    a, b = sorted_export(a), sorted_export(b)
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def truncated_normal_std(cutoff: float) -> float:
    """Std of a standard normal truncated to [-cutoff, cutoff]."""
    phi = math.exp(-cutoff * cutoff / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cutoff / math.sqrt(2))
    return math.sqrt(1 - 2 * cutoff * phi / mass)


def offsets_for(lengths: Iterable[int]) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int64)
