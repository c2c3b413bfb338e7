"""Named plugins found through one entry-point group, plus in-process registrations: the discovery
that `recis.towers` (group `recis.towers`) and `recis.optim` (group `recis.optimizers`) share.

A plugin package lists its objects in its packaging metadata::

    [project.entry-points."recis.towers"]
    ebrm = "recis_relevance.tower:EBRMTower"

`Registry.load(name)` imports the one named (an in-process registration of that name shadows an
installed entry point); an unknown name is an error that lists the names there are.

>>> reg = Registry("recis.doctest", "widget")
>>> reg.register("spoon", dict)
>>> reg.load("spoon") is dict, reg.available()
(True, {'spoon': 'builtins:dict'})
>>> reg.load("fork")
Traceback (most recent call last):
...
LookupError: widget 'fork' is not installed; installed widgets (entry-point group 'recis.doctest'): ['spoon']
>>> reg.unregister("spoon")
"""
from importlib import metadata
from typing import Callable, Dict, Optional, Type

__all__ = ["Registry", "target_of"]


def target_of(obj) -> str:
    """'module:qualname', as an entry point spells its object."""
    return f"{obj.__module__}:{obj.__qualname__}"


class Registry:
    """The objects of entry-point group `group`, called `what` in messages. `check(name, obj,
    source)` (optional) vets an object before it is registered or returned (`source`: the entry
    point's 'module:attr', or None for an in-process registration) and raises naming it."""

    def __init__(self, group: str, what: str, error: Type[LookupError] = LookupError,
                 check: Optional[Callable[[str, object, Optional[str]], None]] = None):
        self.group, self.what, self.error, self.check = group, what, error, check
        self.local: Dict[str, object] = {}

    def entry_points(self) -> Dict[str, metadata.EntryPoint]:
        """Installed entry points of the group by name; one name with two targets is an error."""
        found: Dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=self.group):
            other = found.get(ep.name)
            if other is not None and other.value != ep.value:
                raise self.error(f"{self.what} {ep.name!r} is registered twice in entry-point group {self.group!r}: "
                                 f"{other.value} and {ep.value}; uninstall one of the plugins")
            found[ep.name] = ep
        return found

    def available(self) -> Dict[str, str]:
        """name -> 'module:attribute' of every installed entry point and in-process registration."""
        out = {name: ep.value for name, ep in self.entry_points().items()}
        out.update({name: target_of(obj) for name, obj in self.local.items()})
        return dict(sorted(out.items()))

    def register(self, name: str, obj) -> None:
        """Registers `obj` under `name` for this process (an installed entry point of that name is shadowed)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} name must be a non-empty string, got {name!r}")
        if self.check is not None:
            self.check(name, obj, None)
        self.local[name] = obj

    def unregister(self, name: str) -> None:
        self.local.pop(name, None)

    def load_entry_point(self, ep: metadata.EntryPoint):
        """The object of one installed entry point; an import error inside the plugin names it."""
        try:
            obj = ep.load()
        except Exception as e:
            raise ImportError(f"{self.what} {ep.name!r} ({ep.value}) failed to import: {e}") from e
        if self.check is not None:
            self.check(ep.name, obj, ep.value)
        return obj

    def load(self, name: str):
        """The object registered under `name`; the error lists the installed names."""
        if name in self.local:
            return self.local[name]
        eps = self.entry_points()
        if name not in eps:
            installed = sorted(set(eps) | set(self.local))
            raise self.error(f"{self.what} {name!r} is not installed; installed {self.what}s (entry-point group "
                             f"{self.group!r}): {installed or 'none'}")
        return self.load_entry_point(eps[name])
