"""The rollout phase of a tower that trains by rollouts (`Tower.rollout`), and its generators.

For each training batch the Trainer calls `run_rollout` (eval mode, no gradients: sample,
score, old-policy log-probs), then trains on the returned `RolloutPhase`: `inner_steps` passes
over its minibatches, one backward and optimizer step per minibatch (with grad_accum_steps).
`Refill` hands the tower further training batches while its rollout runs (and only then).

>>> from recis.towers import RolloutPhase, Tower
>>> class Bandit(Tower):
...     def __init__(self):
...         super().__init__()
...         self.w = torch.nn.Parameter(torch.zeros(2))
...         self.g = torch.Generator().manual_seed(0)
...     def rollout(self, batch, refill):
...         more = refill()                      # one extra batch from the data
...         return RolloutPhase([batch, more], inner_steps=2, stats={"seen": 2})
...     def generators(self):
...         return {"sampling": self.g}
>>> t = Bandit()
>>> has_rollout(t), has_rollout(torch.nn.Linear(1, 1))
(True, False)
>>> data = Refill(iter(["b0", "b1", "b2"]))
>>> phase = run_rollout(t, t, next(data), data)
>>> phase.minibatches, data.taken, t.training
(['b0', 'b1'], 1, True)
>>> data()
Traceback (most recent call last):
...
RuntimeError: refill() is only available while Tower.rollout runs
>>> states = generator_states(t)
>>> _ = torch.rand(3, generator=t.g)
>>> load_generator_states(t, states, "checkpoint x"); torch.equal(t.g.get_state(), states["sampling"])
True
"""
from typing import Any, Callable, ContextManager, Dict, Iterator, Mapping, Optional

import torch
from torch import nn

from recis.towers.base import RolloutPhase, Tower

__all__ = ["has_rollout", "Refill", "run_rollout", "generator_states", "load_generator_states"]


def has_rollout(model: nn.Module) -> bool:
    """Whether `model` is a Tower that overrides `Tower.rollout` (and so trains by rollouts)."""
    return isinstance(model, Tower) and type(model).rollout is not Tower.rollout


class Refill:
    """The epoch's batches, with the extra ones a rollout takes through `refill()`.

    Iterating hands out the next batch; calling the object (what the tower receives as
    `refill`) does too, but only while `open` (during `Tower.rollout`), and returns None at the
    end of the data. `on_take` is called for every batch taken by a refill (the Trainer counts
    them as consumed); `taken` counts them in the current rollout. Under torch.distributed every
    rank must refill the same number of times (ranks take batches in lockstep)."""

    def __init__(self, batches: Iterator, on_take: Optional[Callable[[Any], None]] = None):
        self._it, self._on_take = batches, on_take
        self.open, self.taken = False, 0

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def __call__(self):
        if not self.open:
            raise RuntimeError("refill() is only available while Tower.rollout runs")
        batch = next(self._it, None)
        if batch is not None:
            self.taken += 1
            if self._on_take is not None:
                self._on_take(batch)
        return batch


def run_rollout(module: nn.Module, tower: Tower, batch, refill: Refill,
                autocast: Callable[[], ContextManager] = None) -> RolloutPhase:
    """`tower.rollout(batch, refill)` with `module` (the tower, or a wrapper around it) in eval
    mode and without gradients; `module` is back in train mode afterwards, and `refill` closed."""
    module.eval()
    refill.open, refill.taken = True, 0
    try:
        with torch.no_grad():
            if autocast is not None:
                with autocast():
                    phase = tower.rollout(batch, refill)
            else:
                phase = tower.rollout(batch, refill)
    finally:
        refill.open = False
        module.train()
    if not isinstance(phase, RolloutPhase):
        raise TypeError(f"{type(tower).__name__}.rollout must return a recis.towers.RolloutPhase (minibatches, "
                        f"inner_steps, stats), got {type(phase).__name__}")
    return phase


def generator_states(model: nn.Module) -> Dict[str, torch.Tensor]:
    """name -> state (a uint8 CPU tensor) of each of the tower's `generators()`."""
    if not isinstance(model, Tower):
        return {}
    gens = _generators(model)
    return {name: g.get_state().clone() for name, g in gens.items()}


def load_generator_states(model: nn.Module, states: Mapping[str, Any], where: str) -> None:
    """Restores the tower's generators from `states` (as `generator_states` made them); the
    names must match exactly (`where` names the checkpoint in the error)."""
    gens = _generators(model) if isinstance(model, Tower) else {}
    states = dict(states or {})
    if sorted(gens) != sorted(states):
        raise ValueError(f"{where} holds the states of generators {sorted(states)}, but "
                         f"{type(model).__name__}.generators() has {sorted(gens)}: is it a checkpoint of "
                         "another model?")
    for name, g in gens.items():
        state = states[name]
        state = state if isinstance(state, torch.Tensor) else torch.tensor(state)
        g.set_state(state.to(device="cpu", dtype=torch.uint8))


def _generators(tower: Tower) -> Dict[str, torch.Generator]:
    gens = tower.generators()
    if not isinstance(gens, Mapping):
        raise TypeError(f"{type(tower).__name__}.generators() must return a dict name -> torch.Generator, got "
                        f"{type(gens).__name__}")
    for name, g in gens.items():
        if not isinstance(name, str) or not isinstance(g, torch.Generator):
            raise TypeError(f"{type(tower).__name__}.generators(): {name!r} must name a torch.Generator, got "
                            f"{type(g).__name__}")
    return dict(gens)
