"""Which rank owns an id: a 64-bit mix of (id, table seed), mod the world size.

The same function places rows in training and in checkpoint resharding, so a checkpoint saved
by W ranks loads onto any W' by filtering ids with `owner_of(ids, seed, W')`.

>>> owner_of(torch.tensor([0, 1, 2, -1]), seed=7, world_size=4).tolist()
[0, 0, 0, 3]
"""
import torch

_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64 finalizer constants, as signed int64
_M2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 values (two's complement wrap-around), elementwise."""
    x = x ^ _shift_right(x, 30)
    x = x * _M1
    x = x ^ _shift_right(x, 27)
    x = x * _M2
    return x ^ _shift_right(x, 31)


def salt_of(seed: int) -> int:
    """A table seed as the signed int64 that is mixed into its ids."""
    salt = int(seed) & ((1 << 64) - 1)
    return salt - (1 << 64) if salt >= 1 << 63 else salt


def owner_of(ids: torch.Tensor, seed, world_size: int) -> torch.Tensor:
    """The owning rank (int64, in [0, world_size)) of each id of the table with `seed` (an int,
    or an int64 tensor of salts from `salt_of`, one per id)."""
    if world_size == 1:
        return torch.zeros_like(ids)
    salt = seed if isinstance(seed, torch.Tensor) else salt_of(seed)
    return torch.remainder(mix64(ids ^ salt), world_size)
