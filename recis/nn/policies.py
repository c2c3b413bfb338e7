"""Admission and eviction policies of a hash table.

>>> FrequencyAdmission(min_count=3)
FrequencyAdmission(min_count=3, sketch_width=1048576, sketch_depth=4)
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class FrequencyAdmission:
    """An id gets a row only after `min_count` sightings, counted in a bounded count-min sketch
    (`sketch_depth` rows of `sketch_width` 32-bit counters). Until then its lookups read zeros or
    its initial value (the table's `missing` flag) and its gradients are dropped."""

    min_count: int = 2
    sketch_width: int = 1 << 20
    sketch_depth: int = 4

    def __post_init__(self):
        if self.min_count < 1:
            raise ValueError(f"FrequencyAdmission.min_count must be >= 1, got {self.min_count}")
        if self.sketch_width < 1:
            raise ValueError(f"FrequencyAdmission.sketch_width must be >= 1, got {self.sketch_width}")
        if not 1 <= self.sketch_depth <= 8:
            raise ValueError(f"FrequencyAdmission.sketch_depth must be in [1, 8], got {self.sketch_depth}")


@dataclass(frozen=True)
class TTLEviction:
    """Every `interval_steps` training steps, rows unseen for more than `ttl_steps` steps are
    erased. A returning id starts again from its deterministic initial row."""

    ttl_steps: int
    interval_steps: int = 100

    def __post_init__(self):
        if self.ttl_steps < 1:
            raise ValueError(f"TTLEviction.ttl_steps must be >= 1, got {self.ttl_steps}")
        if self.interval_steps < 1:
            raise ValueError(f"TTLEviction.interval_steps must be >= 1, got {self.interval_steps}")


@dataclass(frozen=True)
class LFUEviction:
    """Keeps at most `capacity` ids. When new ids would pass it, the least frequently seen rows
    (ties: least recently seen) that were not used in the current step are erased, at least
    `evict_fraction * capacity` at a time to amortize the scan."""

    capacity: int
    evict_fraction: float = 0.01

    def __post_init__(self):
        if self.capacity < 1:
            raise ValueError(f"LFUEviction.capacity must be >= 1, got {self.capacity}")
        if not 0.0 <= self.evict_fraction < 1.0:
            raise ValueError(f"LFUEviction.evict_fraction must be in [0, 1), got {self.evict_fraction}")
