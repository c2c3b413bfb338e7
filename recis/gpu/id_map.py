"""DeviceIdMap: the GPU id map of one table group (all its namespaces in one open-addressing
map), driving the kernels of kernels/id_map.py. Grows by rehash to keep its load <= 1/2."""
import torch

from recis.gpu._flavors import flavor

MIN_CAP = 16
MAX_LOAD = 0.5
BLOCK = 128


def _grid(n: int, block: int = BLOCK):
    return (max(1, -(-n // block)),)


class DeviceIdMap:
    """Slots are int64 pairs [id, tag]; tag 0 = empty, -1 = erased, (ns << 32) | (row + 1)."""

    def __init__(self, num_ns: int, device: torch.device):
        self.device = device
        self.k = flavor(device)
        self.sizes = [0] * num_ns
        self.used = 0  # live + erased slots: a tombstone still lengthens probe runs
        self._alloc(0)

    def _alloc(self, cap: int) -> None:
        self.cap = cap
        self.slots = torch.zeros(2 * cap, dtype=torch.int64, device=self.device)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def _shape(self):
        return self.cap - 1, 64 - (self.cap.bit_length() - 1)

    def memory_bytes(self) -> int:
        return self.slots.numel() * 8

    def reserve(self, live: int) -> None:
        """Makes room for `live` ids (and the current tombstones) without a rehash on the way."""
        need = live + (self.used - self.size)
        if need <= MAX_LOAD * self.cap and self.cap:
            return
        cap = MIN_CAP
        while live > MAX_LOAD * cap:
            cap *= 2
        self._rehash(cap)

    def _rehash(self, cap: int) -> None:
        old, old_cap = self.slots, self.cap
        self._alloc(cap)
        mask, shift = self._shape()
        if old_cap:
            self.k.id_map.rehash_kernel[_grid(old_cap)](old, old_cap, self.slots, mask, shift, BLOCK=BLOCK)
        self.used = self.size

    def find(self, ids: torch.Tensor, ns: torch.Tensor, touch=None) -> torch.Tensor:
        """Row of each key, -1 where absent. touch = (counts, add, last_seen, step) updates the
        metadata of hits (keys must then be distinct)."""
        n = ids.numel()
        rows = torch.empty(n, dtype=torch.int64, device=self.device)
        if n == 0:
            return rows
        if self.cap == 0:
            return rows.fill_(-1)
        mask, shift = self._shape()
        if touch is None:
            dummy = rows
            self.k.id_map.find_kernel[_grid(n)](self.slots, ids, ns, rows, n, mask, shift, dummy, dummy, dummy, 0,
                                                TOUCH=False, BLOCK=BLOCK)
        else:
            counts, add, last, step = touch
            self.k.id_map.find_kernel[_grid(n)](self.slots, ids, ns, rows, n, mask, shift, counts, add, last, step,
                                                TOUCH=True, BLOCK=BLOCK)
        return rows

    def insert(self, ids: torch.Tensor, ns: torch.Tensor, rows: torch.Tensor, per_ns) -> None:
        """Places distinct absent keys; per_ns[s] counts those of namespace s."""
        n = ids.numel()
        if n == 0:
            return
        self.reserve(self.size + n)
        mask, shift = self._shape()
        self.k.id_map.insert_kernel[_grid(n)](self.slots, ids, ns, rows, n, mask, shift, BLOCK=BLOCK)
        for s, c in enumerate(per_ns):
            self.sizes[s] += c
        self.used += n

    def erase(self, ids: torch.Tensor, ns: torch.Tensor) -> torch.Tensor:
        """Erases distinct keys; returns their rows (-1 where absent)."""
        n = ids.numel()
        rows = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        if n == 0 or self.cap == 0:
            return rows
        mask, shift = self._shape()
        self.k.id_map.erase_kernel[_grid(n)](self.slots, ids, ns, rows, n, mask, shift, BLOCK=BLOCK)
        return rows

    def note_erased(self, ns: int, count: int) -> None:
        self.sizes[ns] -= count

    def live(self, ns: int):
        """(ids, rows) of namespace ns, in slot order."""
        keys, tags = self.slots[0::2], self.slots[1::2]
        sel = (tags > 0) & ((tags >> 32) == ns)
        return keys[sel], (tags[sel] & 0xFFFFFFFF) - 1

    def clear(self) -> None:
        self.sizes = [0] * len(self.sizes)
        self.used = 0
        self._alloc(0)
