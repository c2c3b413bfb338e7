"""Admission and eviction policies of a hash table (each field's rule is stated next to it and
checked on construction, naming the field).

>>> FrequencyAdmission(min_count=3)
FrequencyAdmission(min_count=3, sketch_width=1048576, sketch_depth=4)
>>> TTLEviction(ttl_steps=0)
Traceback (most recent call last):
...
ValueError: TTLEviction.ttl_steps must be an integer in [1, 2**32), got 0
"""
from dataclasses import dataclass

from recis.config_utils import bounded, check_types

_U32 = 1 << 32  # the C++ table counts sightings and steps in 32 bits


@dataclass(frozen=True)
class FrequencyAdmission:
    """An id gets a row only after `min_count` sightings, counted in a bounded count-min sketch
    (`sketch_depth` rows of `sketch_width` 32-bit counters). Until then its lookups read zeros or
    its initial value (the table's `missing` flag) and its gradients are dropped."""

    min_count: int = bounded(2, ge=1, lt=_U32)
    sketch_width: int = bounded(1 << 20, ge=1, lt=_U32)
    sketch_depth: int = bounded(4, ge=1, le=8)

    def __post_init__(self):
        check_types(self, "FrequencyAdmission")


@dataclass(frozen=True)
class TTLEviction:
    """Every `interval_steps` training steps, rows unseen for more than `ttl_steps` steps are
    erased, by the table itself (C++ or Triton) as the training lookup of the next step starts.
    A returning id starts again from its deterministic initial row."""

    ttl_steps: int = bounded(ge=1, lt=_U32)
    interval_steps: int = bounded(100, ge=1)

    def __post_init__(self):
        check_types(self, "TTLEviction")


@dataclass(frozen=True)
class LFUEviction:
    """Keeps at most `capacity` ids. When new ids would pass it, the least frequently seen rows
    (ties: least recently seen) that were not used in the current step are erased, at least
    `evict_fraction * capacity` at a time to amortize the scan (0: only as many as needed)."""

    capacity: int = bounded(ge=1, lt=1 << 63)
    evict_fraction: float = bounded(0.01, ge=0, lt=1)

    def __post_init__(self):
        check_types(self, "LFUEviction")
