"""Base class of the fused sparse optimizers. Their state lives in the tables' row slots.

The backward pass leaves per-unique-row gradients in each table; `step()` applies them in
place with one fused C++ call per table group. Gradients from several backward passes
before a `step()` are summed (gradient accumulation); `zero_grad()` drops them.
"""
import abc
import warnings
from typing import Dict, Iterable, List, Sequence, Union

import torch

from recis._ops import OPTIM_KINDS, ops
from recis.nn.hash_table import HashTable, TableGroup


def _groups_of(tables) -> List[TableGroup]:
    if isinstance(tables, torch.nn.Module):
        from recis.nn import sparse_tables

        tables = sparse_tables(tables)
    groups, seen = [], set()
    for t in tables:
        group = t.group if isinstance(t, HashTable) else t
        if not isinstance(group, TableGroup):
            raise TypeError(f"sparse optimizers take recis hash tables (see recis.nn.sparse_tables), got {t!r}")
        if id(group) not in seen:
            seen.add(id(group))
            groups.append(group)
    if not groups:
        raise ValueError("sparse optimizer got an empty list of tables")
    return groups


class SparseOptimizer(torch.optim.Optimizer, metaclass=abc.ABCMeta):
    """Subclasses set `kind` and define `slot_init(dim, group)` and `hyper(group, step)`."""

    kind: str = ""

    def __init__(self, tables: Union[Iterable[HashTable], torch.nn.Module], defaults: Dict,
                 skip_nonfinite: bool = False):
        self._tables: List[TableGroup] = _groups_of(tables)
        self.skip_nonfinite = skip_nonfinite
        self.nonfinite_rows = 0
        super().__init__([g.anchor for g in self._tables], defaults)
        self._by_anchor = {id(g.anchor): g for g in self._tables}
        for pg in self.param_groups:
            for anchor in pg["params"]:
                table = self._by_anchor[id(anchor)]
                table.attach_optimizer(self, self.kind, self.slot_init(table.embedding_dim, pg))

    def slot_init(self, dim: int, group: Dict) -> Sequence[float]:
        return []

    @abc.abstractmethod
    def hyper(self, group: Dict, step: int) -> List[float]:
        """The C++ kernel's hyperparameters for this param group (see csrc/optim/sparse_update.h)."""

    @property
    def tables(self) -> List[TableGroup]:
        return list(self._tables)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for pg in self.param_groups:
            for anchor in pg["params"]:
                table = self._by_anchor[id(anchor)]
                if table._impl.pending_rows() == 0:
                    continue
                # The step count lives in the table (and its state_dict), like the slots.
                table.optimizer_step += 1
                applied, nonfinite = ops.apply_update(table.token, table.handle, OPTIM_KINDS[self.kind],
                                                      [float(h) for h in self.hyper(pg, table.optimizer_step)],
                                                      self.skip_nonfinite).tolist()
                if nonfinite:
                    self._report_nonfinite(table, nonfinite, applied)
        return loss

    def _report_nonfinite(self, table: TableGroup, nonfinite: int, applied: int) -> None:
        self.nonfinite_rows += nonfinite
        if not self.skip_nonfinite:
            table.optimizer_step -= 1
            raise FloatingPointError(
                f"{type(self).__name__}: {nonfinite} rows of tables {table.names} got NaN/Inf gradients; no row of "
                f"those tables was updated in this step (pass skip_nonfinite=True to skip only those rows)")
        warnings.warn(f"{type(self).__name__}: skipped {nonfinite} rows of tables {table.names} with NaN/Inf "
                      f"gradients; updated {applied}", RuntimeWarning, stacklevel=3)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for table in self._tables:
            ops.clear_pending(table.token, table.handle)
