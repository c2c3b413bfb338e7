"""QECache: a bounded LRU cache of query-entity scores, keyed by (query, entity text).

>>> import torch
>>> cache = QECache(capacity=2)
>>> cache.put("red shoes", "colour: red", torch.tensor([2.0]))
>>> cache.get("red shoes", "colour: red"), cache.get("red shoes", "brand: acme")
(tensor([2.]), None)
>>> cache.stats()
{'hits': 1, 'misses': 1, 'hit_rate': 0.5, 'size': 1, 'capacity': 2, 'evictions': 0}
"""
from collections import OrderedDict
from typing import Dict, Hashable, Iterable, List, Optional, Tuple

import torch

__all__ = ["QECache"]


class QECache:
    """Least-recently-used (query, entity) -> score-vector cache with hit / miss / eviction counters."""

    def __init__(self, capacity: int = 100_000):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"QECache capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self._data: "OrderedDict[Tuple[str, str], torch.Tensor]" = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Tuple[str, str]) -> bool:
        return key in self._data

    def get(self, query: str, entity: str) -> Optional[torch.Tensor]:
        key = (query, entity)
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, query: str, entity: str, value: torch.Tensor) -> None:
        key = (query, entity)
        self._data[key] = value.detach()
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)
            self.evictions += 1

    def lookup(self, keys: Iterable[Tuple[str, str]]) -> Tuple[Dict[Hashable, torch.Tensor], List[Tuple[str, str]]]:
        """(found key -> value, missing keys in order) for many keys at once."""
        found, missing = {}, []
        for q, e in keys:
            v = self.get(q, e)
            if v is None:
                missing.append((q, e))
            else:
                found[(q, e)] = v
        return found, missing

    def clear(self) -> None:
        """Drops every entry (the model changed); the counters are kept."""
        self._data.clear()

    def reset_stats(self) -> None:
        self.hits = self.misses = self.evictions = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def stats(self) -> Dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate, "size": len(self),
                "capacity": self.capacity, "evictions": self.evictions}
