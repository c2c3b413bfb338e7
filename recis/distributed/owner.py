"""Which rank owns an id: a 64-bit mix of (id, table seed), mod the world size (recis.hashing).

The same function places rows in training and in checkpoint resharding, so a checkpoint saved
by W ranks loads onto any W' by filtering ids with `owner_of(ids, seed, W')`.

>>> owner_of(torch.tensor([0, 1, 2, -1]), seed=7, world_size=4).tolist()
[0, 0, 0, 3]
"""
import torch  # noqa: F401  (doctest namespace)

from recis.hashing import mix64, owner_of, salt_of

__all__ = ["mix64", "owner_of", "salt_of"]
