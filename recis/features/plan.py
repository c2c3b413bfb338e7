"""Compiles feature specs into a DAG of nodes: sources (columns), ops and crosses.

With cse=True, identical sub-chains (same column, same op prefix) are one node, and nodes of
the same op at the same depth run as one fused kernel call. With cse=False every feature keeps
its own nodes (the unfused engine).

>>> from recis.features.spec import load_specs
>>> specs = load_specs({"features": [
...     {"name": "a", "kind": "sparse", "column": "c", "ops": [{"op": "hash"}, {"op": "mod", "n": 10}]},
...     {"name": "b", "kind": "sparse", "column": "c", "ops": [{"op": "hash"}, {"op": "mod", "n": 99}]}]})
>>> print(Plan(specs).explain())
level 1: hash x1 [#1 hash(c)]
level 2: mod x2 [#2 mod(hash(c)), #3 mod(hash(c))]
outputs: sparse a=#2, b=#3
>>> len(Plan(specs, cse=False).nodes), len(Plan(specs).nodes)   # sources included
(6, 4)
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from recis.features.ops import FillMissing, Hash, MultiHash, Op
from recis.features.spec import CrossInput, FeatureSpec, check_specs

__all__ = ["Node", "Plan"]


@dataclass(eq=False)
class Node:
    """A source column, an op over one input, or a cross over several."""

    id: int
    kind: str  # "source" | "op" | "cross"
    op: Optional[Op] = None
    inputs: Tuple["Node", ...] = ()
    column: Optional[str] = None
    cap: int = 0
    seed: int = 0
    level: int = 0
    users: List[str] = field(default_factory=list)  # features whose chain holds the node
    consumers: List["Node"] = field(default_factory=list)
    is_output: bool = False
    root: Optional["Node"] = None  # the source under a run of elementwise ops (dictionary cache)
    cacheable: bool = False  # keeps its dictionary-domain output across batches (set by Plan)
    nan_to_null: bool = False  # a source whose non-finite floats read as nulls (features with nan: fill)

    @property
    def group(self) -> str:
        """Nodes of one group and level run as one kernel call."""
        if self.kind != "op":
            return self.kind
        return "hash" if isinstance(self.op, (Hash, MultiHash)) else self.op.name

    @property
    def elementwise(self) -> bool:
        return self.kind == "op" and not self.op.structural

    def label(self) -> str:
        if self.kind == "source":
            return f"{self.column} (NaN as null)" if self.nan_to_null else self.column
        if self.kind == "cross":
            return "cross(" + ", ".join(i.label() for i in self.inputs) + ")"
        return f"{self.op.name}({self.inputs[0].label()})"


class Plan:
    """The compiled DAG. `levels[k]` holds the nodes at depth k + 1, in creation order."""

    def __init__(self, specs: Sequence[FeatureSpec], cse: bool = True):
        check_specs(specs)
        self.specs = list(specs)
        self.cse = cse
        self.nodes: List[Node] = []
        self._keys: Dict[tuple, Node] = {}
        self._by_name = {s.name: s for s in specs}
        self.outputs: Dict[str, Node] = {}
        for s in specs:
            self.outputs[s.name] = self._feature(s, scope=s.name)
        for s in specs:
            self.outputs[s.name].is_output = True
        for n in self.nodes:  # the ends of elementwise runs keep their dictionary-domain results
            n.cacheable = (n.elementwise and n.root is not None and not isinstance(n.op, FillMissing)
                           and (n.is_output or any(not c.elementwise for c in n.consumers)))
        self.levels: List[List[Node]] = [[] for _ in range(max((n.level for n in self.nodes), default=0))]
        for n in self.nodes:
            if n.level:
                self.levels[n.level - 1].append(n)
        self.sources = [n for n in self.nodes if n.kind == "source"]

    def _node(self, key: tuple, scope: str, **kw) -> Node:
        key = key if self.cse else (scope,) + key
        node = self._keys.get(key)
        if node is None:
            inputs = kw.get("inputs", ())
            node = Node(id=len(self.nodes), level=1 + max((i.level for i in inputs), default=-1), **kw)
            if node.kind == "op" and not node.op.structural:
                node.root = inputs[0] if inputs[0].kind == "source" else inputs[0].root
            for i in inputs:
                i.consumers.append(node)
            self._keys[key] = node
            self.nodes.append(node)
        return node

    def _chain(self, node: Node, ops: Sequence[Op], scope: str) -> Node:
        for op in ops:
            node = self._node(("op", type(op).__name__, repr(op), node.id), scope, kind="op", op=op, inputs=(node,))
        return node

    def _cross_input(self, c: CrossInput, scope: str) -> Node:
        target = self._by_name.get(c.name) if c.source != "column" else None
        if target is not None and target.kind == "sparse":
            return self._feature(target, scope)
        return self._chain(self._node(("column", c.name), scope, kind="source", column=c.name), [Hash(0)], scope)

    def _feature(self, s: FeatureSpec, scope: str) -> Node:
        if s.cross is not None:
            inputs = tuple(self._cross_input(c, scope) for c in s.cross)
            start = self._node(("cross", s.cross_cap, s.cross_seed) + tuple(i.id for i in inputs), scope,
                               kind="cross", inputs=inputs, cap=s.cross_cap, seed=s.cross_seed)
        else:
            fill = s.nan == "fill"  # its own source node: the column with non-finite floats masked as nulls
            start = self._node(("column", s.column) + (("nan_to_null",) if fill else ()), scope, kind="source",
                               column=s.column, nan_to_null=fill)
        out = self._chain(start, s.ops, scope)
        if self.cse or scope == s.name:  # unfused copies inside a cross belong to the cross only
            self._mark(out, s.name)
        return out

    def _mark(self, node: Node, name: str):
        if name not in node.users:
            node.users.append(name)
            for i in node.inputs:
                self._mark(i, name)

    def closure(self, name: str) -> List[Node]:
        """The nodes that feature `name` depends on, in creation (topological) order."""
        return [n for n in self.nodes if name in n.users]

    def explain(self) -> str:
        """One line per level and op: the fused calls the engine makes, then the outputs."""
        lines = []
        for k, level in enumerate(self.levels):
            groups: Dict[str, List[Node]] = {}
            for n in level:
                groups.setdefault(n.group, []).append(n)
            for g, ns in groups.items():
                lines.append(f"level {k + 1}: {g} x{len(ns)} [" + ", ".join(f"#{n.id} {n.label()}" for n in ns) + "]")
        by_kind: Dict[str, List[str]] = {}
        for s in self.specs:
            by_kind.setdefault(s.kind, []).append(f"{s.name}=#{self.outputs[s.name].id}")
        lines.append("outputs: " + "; ".join(f"{k} {', '.join(v)}" for k, v in by_kind.items()))
        return "\n".join(lines)
