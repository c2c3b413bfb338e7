"""Counter-based random numbers: every draw is a pure function of (key, counter).

A key names a stream (seed, purpose, feature); the counter is usually the row number. So row i of
a generated dataset depends only on (seed, i): any slice can be generated alone, in any order,
by any process. A draw is SplitMix64: mix(counter * GAMMA + key); numpy's uint64 arithmetic wraps
mod 2**64. Callers spread the counters once (`spread`) and draw many streams from them.
"""
import numpy as np

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def mix_int(x: int) -> int:
    """SplitMix64's finalizer on one Python int (mod 2**64).

    >>> hex(mix_int(1))
    '0x5692161d100b05e5'
    """
    x &= _MASK
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def mix(x: np.ndarray) -> np.ndarray:
    """`mix_int` over a uint64 array, in place; returns `x`."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(_M1)
    x ^= x >> np.uint64(27)
    x *= np.uint64(_M2)
    x ^= x >> np.uint64(31)
    return x


def stream_key(seed: int, *path: int) -> int:
    """A 64-bit key for the stream named by `(seed, *path)` (non-negative ints)."""
    key = mix_int(seed + _GAMMA)
    for part in path:
        key = mix_int(key ^ mix_int(part + _GAMMA))
    return key


def spread(counters: np.ndarray) -> np.ndarray:
    """counters * GAMMA (uint64): the shared first step of every stream's draw."""
    return np.asarray(counters).astype(np.uint64) * np.uint64(_GAMMA)


def bits(key: int, spread_counters: np.ndarray) -> np.ndarray:
    """64 random bits (uint64) per counter: SplitMix64's output for state counter * GAMMA + key."""
    return mix(spread_counters + np.uint64(key))


def uniform(key: int, spread_counters: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) per counter (the top 53 random bits)."""
    out = (bits(key, spread_counters) >> np.uint64(11)).astype(np.float64)
    out *= 1.0 / (1 << 53)
    return out


def uniform_scalar(key: int, counter: int) -> float:
    """`uniform` for one counter, in pure Python."""
    return (mix_int(counter * _GAMMA + key) >> 11) / (1 << 53)
