"""Base class of the fused sparse optimizers. Their state lives in the tables' row slots.

By default the backward pass leaves per-unique-row gradients in each table and `step()`
applies them in place with one fused C++ call per table group (a table keeps gradients only
while a sparse optimizer is attached to it: without one it is not trained, and once its
optimizer is garbage-collected its pending gradients are dropped). Gradients from several
backward passes before a `step()` are summed (gradient accumulation); `zero_grad()` drops
them; a NaN/Inf gradient makes `step()` raise before any row of that table changes.

With `fused=True` the rows are updated during backward itself, as fbgemm's TBE does: each
unique row's gradient is summed and applied at once, with no gradient buffer. This is the
fastest mode; it has no gradient accumulation, `step()` has nothing left to do for those
tables, and a row whose gradient is NaN/Inf is left untouched while the other rows of that
backward are updated (the error, or warning, is raised from `backward()`). Under
torch.compile the deferred path is used.
"""
import warnings
from typing import Dict, Iterable, List, Sequence, Union

import torch

from recis._ops import OPTIM_KINDS, kernels
from recis.config_utils import Range, check_value
from recis.nn.hash_table import HashTable, TableGroup
from recis.optim.hyper import check_options
from recis.vocabulary import OPTIMIZERS


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


class SparseOptimizer(torch.optim.Optimizer):
    """Subclasses set `kind`, a name of recis.vocabulary.OPTIMIZERS: its layout gives the rows'
    slots (`slot_init`) and the kernels' hyperparameters (`hyper`) from each param group."""

    kind: str = ""
    rules: Dict[str, Range] = {}  # this optimizer's own rules for hyperparameters (recis.optim.hyper)

    def __init__(self, tables: Union[Iterable[HashTable], torch.nn.Module], defaults: Dict,
                 skip_nonfinite: bool = False, fused: bool = False):
        name = type(self).__name__
        if self.kind not in OPTIMIZERS:
            raise TypeError(f"{name}.kind must name an optimizer kind of the kernels {sorted(OPTIMIZERS)}, "
                            f"got {self.kind!r}")
        check_options(name, defaults, self.rules)
        check_value(f"{name}.skip_nonfinite", skip_nonfinite, bool)
        check_value(f"{name}.fused", fused, bool)
        if "betas" in defaults:
            defaults = dict(defaults, betas=tuple(defaults["betas"]))
        self._tables: List[TableGroup] = _groups_of(tables)
        self.skip_nonfinite = skip_nonfinite
        self.fused = fused
        self.nonfinite_rows = 0
        super().__init__([g.anchor for g in self._tables], defaults)
        self._by_anchor = {id(g.anchor): g for g in self._tables}
        self._group_of = {}
        for pg in self.param_groups:
            for anchor in pg["params"]:
                table = self._by_anchor[id(anchor)]
                self._group_of[id(anchor)] = pg
                table.attach_optimizer(self, self.kind, self.slot_init(table.embedding_dim, pg), fused)

    def slot_init(self, dim: int, group: Dict) -> Sequence[float]:
        """A new row's slots (the layout's, with this param group's initial values)."""
        return OPTIMIZERS[self.kind].slot_init(dim, group)

    def hyper(self, group: Dict, step: int) -> List[float]:
        """The kernels' hyperparameters for this param group, in the layout's order."""
        return OPTIMIZERS[self.kind].hyper_values(group, step)

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
                if table.pending_rows() == 0:
                    continue
                # The step count lives in the table (and its state_dict), like the slots.
                table.optimizer_step += 1
                applied, nonfinite = kernels(table).apply_update(
                    table.token, table.handle, OPTIM_KINDS[self.kind],
                    [float(h) for h in self.hyper(pg, table.optimizer_step)], self.skip_nonfinite).tolist()
                if nonfinite:
                    self._report_nonfinite(table, nonfinite, applied)
        return loss

    @torch.no_grad()
    def fused_backward(self, table: TableGroup, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch,
                       col_offsets, combiner) -> None:
        """Called from the lookup's backward in fused mode: sums and applies each row's gradient."""
        pg = self._group_of[id(table.anchor)]
        table.optimizer_step += 1
        applied, nonfinite = kernels(table).lookup_backward_apply(
            table.token, table.handle, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch,
            col_offsets, combiner, OPTIM_KINDS[self.kind],
            [float(h) for h in self.hyper(pg, table.optimizer_step)]).tolist()
        if nonfinite:
            self._report_nonfinite(table, nonfinite, applied, fused=True)

    def _report_nonfinite(self, table: TableGroup, nonfinite: int, applied: int, fused: bool = False) -> None:
        self.nonfinite_rows += nonfinite
        if not self.skip_nonfinite:
            if fused:
                raise FloatingPointError(
                    f"{type(self).__name__}: {nonfinite} rows of tables {table.names} got NaN/Inf gradients and were "
                    f"left untouched; {applied} other rows were updated (fused mode updates during backward)")
            table.optimizer_step -= 1
            raise FloatingPointError(
                f"{type(self).__name__}: {nonfinite} rows of tables {table.names} got NaN/Inf gradients; no row of "
                f"those tables was updated in this step (pass skip_nonfinite=True to skip only those rows)")
        warnings.warn(f"{type(self).__name__}: skipped {nonfinite} rows of tables {table.names} with NaN/Inf "
                      f"gradients; updated {applied}", RuntimeWarning, stacklevel=3)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for table in self._tables:
            kernels(table).clear_pending(table.token, table.handle)
