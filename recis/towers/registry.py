"""Discovery of installed towers through the entry-point group `recis.towers`.

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
from importlib import metadata
from typing import Dict, Type

from recis.towers.base import Tower

__all__ = ["GROUP", "TowerNotFoundError", "available_towers", "load_tower", "register_tower", "unregister_tower"]

GROUP = "recis.towers"
_LOCAL: Dict[str, type] = {}


class TowerNotFoundError(LookupError):
    """No tower of that name is installed."""


def _entry_points() -> Dict[str, metadata.EntryPoint]:
    found: Dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise TowerNotFoundError(f"tower {ep.name!r} is registered twice in entry-point group {GROUP!r}: "
                                     f"{other.value} and {ep.value}; uninstall one of the plugins")
        found[ep.name] = ep
    return found


def available_towers() -> Dict[str, str]:
    """Installed tower name -> 'module:attribute' (in-process registrations included)."""
    out = {name: ep.value for name, ep in _entry_points().items()}
    out.update({name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in _LOCAL.items()})
    return dict(sorted(out.items()))


def register_tower(name: str, cls: Type[Tower]) -> None:
    """Registers `cls` under `name` for this process (an installed entry point of that name is shadowed)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tower name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Tower)):
        raise TypeError(f"tower {name!r} must be a recis.towers.Tower subclass, got {cls!r}")
    _LOCAL[name] = cls


def unregister_tower(name: str) -> None:
    _LOCAL.pop(name, None)


def load_tower(name: str) -> Type[Tower]:
    """The Tower class registered under `name`; the error lists the installed ones."""
    if name in _LOCAL:
        return _LOCAL[name]
    eps = _entry_points()
    if name not in eps:
        installed = sorted(set(eps) | set(_LOCAL))
        raise TowerNotFoundError(f"tower {name!r} is not installed; installed towers (entry-point group {GROUP!r}): "
                                 f"{installed or 'none'}")
    try:
        cls = eps[name].load()
    except Exception as e:  # an import error inside the plugin: say which plugin
        raise ImportError(f"tower {name!r} ({eps[name].value}) failed to import: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Tower)):
        raise TypeError(f"entry point {name!r} ({eps[name].value}) is not a recis.towers.Tower subclass")
    return cls
