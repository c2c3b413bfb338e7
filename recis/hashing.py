"""The one hashing module: splitmix64, the ids' hashes, the counter RNG and row ownership.

The C++ core (csrc/common/hashing.h) and the Triton kernels (recis/gpu/kernels/hashing.py)
compute the same functions with the same `CONSTANTS`; tests/hash_vectors.json pins all three.

- `mix_int` / `mix` / `mix64`: splitmix64's finalizer on a Python int, a numpy uint64 array, and
  an int64 torch tensor (two's complement wrap-around).
- `hash_id(ids, ns)`: an id's hash inside namespace `ns` (the id map's and the sketch's);
  `seed_key(seed)`: a table seed's key of the initial rows (`row key = mix(seed_key ^ id)`).
- Counter RNG: every draw is a pure function of (key, counter): SplitMix64's output
  mix(counter * GOLDEN + key). A key names a stream (`stream_key(seed, *path)`); callers spread
  the counters once (`spread`) and draw many streams from them (`bits`, `uniform`).
- `owner_of(ids, seed, world_size)`: the rank owning each id, mix64(id ^ seed) mod world size;
  the same function places rows in training and in checkpoint resharding.

>>> hex(mix_int(1))
'0x5692161d100b05e5'
>>> owner_of(torch.tensor([0, 1, 2, -1]), seed=7, world_size=4).tolist()
[0, 0, 0, 3]
"""
import numpy as np
import torch

__all__ = ["GOLDEN", "SEED_SALT", "COLUMN_STEP", "ATTEMPT_STEP", "CONSTANTS", "mix_int", "mix", "mix64", "hash_id",
           "seed_key", "signed", "stream_key", "spread", "bits", "uniform", "uniform_scalar", "salt_of", "owner_of"]

_MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15        # splitmix64's increment (the counter RNG's gamma)
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's finalizer multipliers
SEED_SALT = 0x243F6A8885A308D3     # a table seed's salt in its initial rows' key
COLUMN_STEP = 0xD1B54A32D192ED03   # the initializer's counter step per column
ATTEMPT_STEP = 0xAEF17502108EF2D9  # the initializer's counter step per truncated-normal redraw
#: The constants by the names recis._C.vocabulary()["hashing"] exports them.
CONSTANTS = {"golden": GOLDEN, "mix1": _MIX1, "mix2": _MIX2, "seed_salt": SEED_SALT, "column_step": COLUMN_STEP,
             "attempt_step": ATTEMPT_STEP}


def signed(u: int) -> int:
    """A 64-bit unsigned value as the int64 of the same bits."""
    u &= _MASK
    return u - (1 << 64) if u >= 1 << 63 else u


def mix_int(x: int) -> int:
    """splitmix64's finalizer on one Python int (mod 2**64)."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK
    return x ^ (x >> 31)


def mix(x: np.ndarray) -> np.ndarray:
    """`mix_int` over a uint64 array, in place; returns `x`."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(_MIX1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_MIX2)
    x ^= x >> np.uint64(31)
    return x


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """`mix_int` on int64 values (the bits of the uint64s), elementwise."""
    x = x ^ _shift_right(x, 30)
    x = x * signed(_MIX1)
    x = x ^ _shift_right(x, 27)
    x = x * signed(_MIX2)
    return x ^ _shift_right(x, 31)


def hash_id(ids: torch.Tensor, ns) -> torch.Tensor:
    """mix64(id + GOLDEN * (ns + 1)) of int64 ids in namespace(s) `ns`, as int64 bits."""
    return mix64(ids + (torch.as_tensor(ns, dtype=torch.int64) + 1) * signed(GOLDEN))


def seed_key(seed: int) -> int:
    """The key of a namespace's initial rows: a row's key is mix(seed_key(seed) ^ id)."""
    return mix_int(int(seed) ^ SEED_SALT)


def stream_key(seed: int, *path: int) -> int:
    """A 64-bit key for the stream named by `(seed, *path)` (non-negative ints)."""
    key = mix_int(seed + GOLDEN)
    for part in path:
        key = mix_int(key ^ mix_int(part + GOLDEN))
    return key


def spread(counters: np.ndarray) -> np.ndarray:
    """counters * GOLDEN (uint64): the shared first step of every stream's draw."""
    return np.asarray(counters).astype(np.uint64) * np.uint64(GOLDEN)


def bits(key: int, spread_counters: np.ndarray) -> np.ndarray:
    """64 random bits (uint64) per counter: SplitMix64's output for state counter * GOLDEN + key."""
    return mix(spread_counters + np.uint64(key))


def uniform(key: int, spread_counters: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) per counter (the top 53 random bits)."""
    out = (bits(key, spread_counters) >> np.uint64(11)).astype(np.float64)
    out *= 1.0 / (1 << 53)
    return out


def uniform_scalar(key: int, counter: int) -> float:
    """`uniform` for one counter, in pure Python."""
    return (mix_int(counter * GOLDEN + key) >> 11) / (1 << 53)


def salt_of(seed: int) -> int:
    """A table seed as the signed int64 that is mixed into its ids."""
    return signed(int(seed))


def owner_of(ids: torch.Tensor, seed, world_size: int) -> torch.Tensor:
    """The owning rank (int64, in [0, world_size)) of each id of the table with `seed` (an int,
    or an int64 tensor of salts from `salt_of`, one per id)."""
    if world_size == 1:
        return torch.zeros_like(ids)
    salt = seed if isinstance(seed, torch.Tensor) else salt_of(seed)
    return torch.remainder(mix64(ids ^ salt), world_size)
