"""Row ownership: owner_of(ids, seed, W) against a pure-Python splitmix64 written out from its
published constants, and a real 2-rank gloo group placing every row on the rank that this
reference names (so a change made consistently on both sides of the hash is caught too).

The definition pinned here: owner = signed_int64(splitmix64_finalizer(id ^ seed)) mod W
(Python's non-negative mod; checkpoints saved by W ranks are resharded with it).
"""
import random

import pytest
import torch

import _dist_workers as w
from conftest import EXTREME_IDS, INT64_MAX, INT64_MIN
from recis.distributed import owner_of
from recis.distributed.local import run_local
from recis.nn import EmbeddingCollection

MASK = (1 << 64) - 1


def finalizer(z: int) -> int:
    """splitmix64's output function (Vigna, splitmix64.c), on unsigned 64-bit ints."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def splitmix64_stream(seed: int, n: int):
    """The generator itself: state += golden gamma, output finalizer(state)."""
    state, out = seed & MASK, []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        out.append(finalizer(state))
    return out


def reference_owner(id_: int, seed: int, world: int) -> int:
    h = finalizer((id_ & MASK) ^ (seed & MASK))
    signed = h - (1 << 64) if h >= 1 << 63 else h
    return signed % world


def test_reference_finalizer_matches_published_splitmix64_vectors():
    # splitmix64.c seeded with 0, and with 1234567 (the vectors quoted in the xoshiro test suites)
    assert splitmix64_stream(0, 4) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
                                       0xF88BB8A8724C81EC]
    assert splitmix64_stream(1234567, 5) == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                             4593380528125082431, 16408922859458223821]


SEEDS = [0, 7, 1, 12, 2**31 - 1, 3735928559, INT64_MAX, -1, INT64_MIN, 2**64 - 1, 2**63 + 5, -123456789]
WORLDS = [2, 3, 4, 5, 7, 8, 16, 1000003]


def ids_under_test():
    r = random.Random(20240611)
    ids = EXTREME_IDS + list(range(-40, 40)) + [1 << k for k in range(63)] + [-(1 << k) for k in range(64)]
    ids += [r.randrange(INT64_MIN, INT64_MAX + 1) for _ in range(2000)]
    return ids


@pytest.mark.parametrize("seed", SEEDS)
def test_owner_of_equals_the_reference_splitmix64_mod_world(seed):
    ids = ids_under_test()
    t = torch.tensor(ids, dtype=torch.int64)
    for world in WORLDS:
        got = owner_of(t, seed, world)
        assert got.dtype == torch.int64
        want = [reference_owner(i, seed, world) for i in ids]
        bad = [(i, g, e) for i, g, e in zip(ids, got.tolist(), want) if g != e]
        assert not bad, f"seed {seed}, world {world}: (id, owner_of, reference) {bad[:5]} ({len(bad)} differ)"
    assert torch.equal(owner_of(t, seed, 1), torch.zeros_like(t))


def test_owner_of_with_one_salt_per_id():
    """The sharded exchange passes a tensor of salts (one per id, from each id's table seed)."""
    from recis.distributed.owner import salt_of

    ids = ids_under_test()
    r = random.Random(5)
    seeds = [r.choice(SEEDS) for _ in ids]
    salts = torch.tensor([salt_of(s) for s in seeds], dtype=torch.int64)
    for world in (2, 3, 6):
        got = owner_of(torch.tensor(ids, dtype=torch.int64), salts, world).tolist()
        assert got == [reference_owner(i, s, world) for i, s in zip(ids, seeds)]


def test_owners_are_spread_evenly():
    ids = ids_under_test()
    t = torch.tensor(ids, dtype=torch.int64)
    for world in (2, 3, 5):
        counts = torch.bincount(owner_of(t, 12, world), minlength=world)
        assert counts.min() > 0.8 * len(ids) / world, counts


# ---- the sharded collection places rows where the reference says -------------------------------
SEED_A, SEED_B = 12, -987654321  # two tables of one group, so the exchange's per-id salts differ


@pytest.mark.slow
def test_two_ranks_hold_exactly_the_rows_the_reference_assigns_them():
    """Rows present before sharding are kept by their owner only (`owned`, the int-seed path);
    rows a training forward inserts are routed to their owner (the per-id salt path); every
    rank's lookup returns the rows one process would."""
    preloaded = [5, -5, INT64_MIN, INT64_MAX, 0, 1 << 40, 77, 78, 79, 80]
    results = run_local(w.owner_placement, 2, SEED_A, SEED_B, preloaded, timeout_s=180)
    seeds = {"a": SEED_A, "b": SEED_B}
    batches = {r.rank: w.owner_batch(r.rank) for r in results}
    for r in results:
        before, after, out = r.value
        for name, seed in seeds.items():
            want = sorted(i for i in preloaded if reference_owner(i, seed, 2) == r.rank)
            assert before[name] == want, f"rank {r.rank} table {name}: kept {before[name]}, reference {want}"
        fed = {name: set(preloaded) | {i for b in batches.values() for i in b[name]} for name in seeds}
        for name, seed in seeds.items():
            want = sorted(i for i in fed[name] if reference_owner(i, seed, 2) == r.rank)
            assert after[name] == want, f"rank {r.rank} table {name}: holds {after[name]}, reference {want}"
        # One process with the same configs looks up the same rows (rows depend on (seed, id) only).
        single = EmbeddingCollection(w.owner_tables(SEED_A, SEED_B), output="dict")
        expected = single(w.owner_kjt(batches[r.rank]))
        for name in seeds:
            torch.testing.assert_close(out[name], expected[name], rtol=0, atol=0, msg=f"rank {r.rank} {name}")
    for name in seeds:  # both ranks hold some rows of each table
        assert results[0].value[1][name] and results[1].value[1][name]


def test_owner_tables_share_one_group():
    """The placement test's two tables form one group: the exchange mixes two seeds in one call."""
    ec = EmbeddingCollection(w.owner_tables(SEED_A, SEED_B))
    assert len(ec.groups) == 1 and [int(s) for s in ec.groups[0].config["seeds"]] == [SEED_A, SEED_B]
