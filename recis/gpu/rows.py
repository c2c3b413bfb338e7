"""DeviceRows: embeddings, optimizer slots and per-row metadata (count, last seen) in device
tensors, with the C++ RowStore's allocation order (free list first, newest freed first, then
fresh rows), so that the same inserts give the same row numbers on every device."""
from typing import Sequence

import torch

MAX_ROWS = 2**31 - 2  # tags keep row + 1 in 32 bits; int32 inverse indices elsewhere
UINT32_MAX = 2**32 - 1


class DeviceRows:
    def __init__(self, dim: int, device: torch.device):
        self.dim, self.device = dim, device
        self.width = 0
        self.slot_init: Sequence[float] = []
        self.high_water = 0
        self._free = torch.empty(0, dtype=torch.int64, device=device)
        self._alloc(0)

    def _alloc(self, cap: int) -> None:
        self.cap = cap
        self.emb = torch.zeros(cap, self.dim, device=self.device)
        self.slots = torch.zeros(cap, self.width, device=self.device)
        self.counts = torch.zeros(cap, dtype=torch.int64, device=self.device)
        self.last_seen = torch.zeros(cap, dtype=torch.int64, device=self.device)

    def row_bytes(self) -> int:
        return 8 + 4 * (self.dim + self.width)

    def memory_bytes(self) -> int:
        return self.high_water * self.row_bytes() + self._free.numel() * 8

    @property
    def free_count(self) -> int:
        return self._free.numel()

    def reserve(self, n: int) -> None:
        """Room for n more rows past the high-water mark without growing on the way."""
        want = self.high_water + n
        if want > MAX_ROWS:
            raise RuntimeError(f"recis: a GPU table holds at most {MAX_ROWS} rows")
        if want <= self.cap:
            return
        cap = max(1024, self.cap)
        while cap < want:
            cap *= 2
        old = (self.emb, self.slots, self.counts, self.last_seen)
        hw = self.high_water
        self._alloc(cap)
        for new, prev in zip((self.emb, self.slots, self.counts, self.last_seen), old):
            new[:hw] = prev[:hw]

    def allocate(self, n: int) -> torch.Tensor:
        """n row numbers: the most recently freed first, then fresh rows."""
        take = min(n, self._free.numel())
        reused = self._free[self._free.numel() - take:].flip(0)
        self._free = self._free[:self._free.numel() - take]
        fresh_n = n - take
        self.reserve(fresh_n)
        fresh = torch.arange(self.high_water, self.high_water + fresh_n, dtype=torch.int64, device=self.device)
        self.high_water += fresh_n
        return torch.cat([reused, fresh])

    def release(self, rows: torch.Tensor) -> None:
        """Pushes rows (in order) onto the free list."""
        if rows.numel():
            self._free = torch.cat([self._free, rows.to(torch.int64)])

    def relayout(self, width: int, slot_init: Sequence[float]) -> None:
        """New slot width: every row's slots restart from slot_init (as RowStore::relayout)."""
        if width != self.width:
            self.width = width
            self.slots = torch.tensor([list(slot_init)], dtype=torch.float32,
                                      device=self.device).reshape(1, width).repeat(self.cap, 1)
        self.slot_init = list(slot_init)

    def reset_slots(self, rows: torch.Tensor) -> None:
        if self.width and rows.numel():
            self.slots[rows] = self.slot_init_tensor()

    def slot_init_tensor(self) -> torch.Tensor:
        return torch.tensor(self.slot_init, dtype=torch.float32, device=self.device)

    def touch(self, rows: torch.Tensor, add: torch.Tensor, step: int) -> None:
        """count += add (saturating at 2^32 - 1) and last_seen = step for distinct rows."""
        if rows.numel():
            self.counts[rows] = (self.counts[rows] + add).clamp_(max=UINT32_MAX)
            self.last_seen[rows] = step

    def clear(self) -> None:
        self.high_water = 0
        self._free = self._free[:0]
        self._alloc(0)
