"""Discovery of installed towers through the entry-point group `recis.towers` (the discovery
itself is `recis.registry`, shared with the optimizers' group `recis.optimizers`).

A plugin package registers its towers in its packaging metadata::

    [project.entry-points."recis.towers"]
    ebrm = "recis_relevance.tower:EBRMTower"

and a `recis train` config names them: ``model: {name: ebrm, ...}``. `register_tower` adds one
in-process (tests, notebooks).

>>> class Nothing(Tower):
...     def forward(self, batch):
...         return batch.dense.sum(1)   # logits, as a CTR model returns
>>> register_tower("nothing_doctest", Nothing)
>>> load_tower("nothing_doctest") is Nothing, "nothing_doctest" in available_towers()
(True, True)
>>> unregister_tower("nothing_doctest")
"""
from typing import Dict, Optional, Type

from recis.registry import Registry
from recis.towers.base import Tower

__all__ = ["GROUP", "TowerNotFoundError", "available_towers", "load_tower", "register_tower", "unregister_tower"]

GROUP = "recis.towers"


class TowerNotFoundError(LookupError):
    """No tower of that name is installed."""


def _check(name: str, cls, source: Optional[str]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Tower)):
        if source is not None:
            raise TypeError(f"entry point {name!r} ({source}) is not a recis.towers.Tower subclass")
        raise TypeError(f"tower {name!r} must be a recis.towers.Tower subclass, got {cls!r}")


_REGISTRY = Registry(GROUP, "tower", TowerNotFoundError, _check)


def available_towers() -> Dict[str, str]:
    """Installed tower name -> 'module:attribute' (in-process registrations included)."""
    return _REGISTRY.available()


def register_tower(name: str, cls: Type[Tower]) -> None:
    """Registers `cls` under `name` for this process (an installed entry point of that name is shadowed)."""
    _REGISTRY.register(name, cls)


def unregister_tower(name: str) -> None:
    _REGISTRY.unregister(name)


def load_tower(name: str) -> Type[Tower]:
    """The Tower class registered under `name`; the error lists the installed ones."""
    return _REGISTRY.load(name)
