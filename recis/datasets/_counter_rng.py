"""Counter-based random numbers: every draw is a pure function of (key, counter) (recis.hashing).

A key names a stream (seed, purpose, feature); the counter is usually the row number. So row i of
a generated dataset depends only on (seed, i): any slice can be generated alone, in any order,
by any process. A draw is SplitMix64: mix(counter * GAMMA + key); numpy's uint64 arithmetic wraps
mod 2**64. Callers spread the counters once (`spread`) and draw many streams from them.

>>> hex(mix_int(1))
'0x5692161d100b05e5'
"""
from recis.hashing import bits, mix, mix_int, spread, stream_key, uniform, uniform_scalar

__all__ = ["mix_int", "mix", "stream_key", "spread", "bits", "uniform", "uniform_scalar"]
