"""The expression graph of one time step of a cell.

Nodes are hash-consed (the same op on the same arguments is one node), so a
product such as ``W_i @ x`` written twice is computed once and its gradient
accumulates once. Node ids are a topological order: every argument has a
smaller id than its consumer.

Sizes: ``"D"`` (the step input ``x``), ``"H"`` (everything else that is a
vector), ``"1"`` (numeric constants, broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# op name -> number of arguments; the pointwise vocabulary of the language.
FUNCTIONS = {
    "sigmoid": 1, "tanh": 1, "exp": 1, "log": 1, "relu": 1, "softplus": 1,
    "abs": 1, "sqrt": 1, "maximum": 2, "minimum": 2,
}
BINARY_OPS = ("add", "sub", "mul", "div")
UNARY_OPS = ("neg",)
LEAF_OPS = ("x", "prev", "param", "const")
# "copy" is internal: the parser gives a state that would share a node (a copied previous state, two
# states with one value, a state that is also a product's operand) a node of its own.
POINTWISE_OPS = BINARY_OPS + UNARY_OPS + tuple(FUNCTIONS) + ("copy",)


@dataclass(frozen=True)
class Node:
    id: int
    op: str               # a LEAF_OPS, POINTWISE_OPS entry, or "matvec"
    args: tuple[int, ...]
    attr: object = None   # prev: state name; param: name; const: value; matvec: matrix name
    size: str = "H"

    @property
    def is_leaf(self) -> bool:
        return self.op in LEAF_OPS


@dataclass
class Graph:
    cell: str
    nodes: list[Node] = field(default_factory=list)
    names: dict[str, int] = field(default_factory=dict)        # assigned name -> node id
    states: tuple[str, ...] = ()
    new_state: dict[str, int] = field(default_factory=dict)    # state -> node id of its new value
    output: int = -1
    matrices: dict[str, str] = field(default_factory=dict)     # matrix param -> operand size ("D"/"H")
    vectors: list[str] = field(default_factory=list)           # vector params, first-use order
    params: list[str] = field(default_factory=list)            # all params, first-use order
    _index: dict[tuple, int] = field(default_factory=dict)

    def add(self, op: str, args: tuple[int, ...] = (), attr=None, size: str = "H") -> int:
        key = (op, args, attr if op != "const" else float(attr))
        if key in self._index:
            return self._index[key]
        node = Node(len(self.nodes), op, args, attr, size)
        self.nodes.append(node)
        self._index[key] = node.id
        return node.id

    def consumers(self) -> dict[int, list[int]]:
        users: dict[int, list[int]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for a in n.args:
                users[a].append(n.id)
        return users

    def live(self) -> set[int]:
        """Nodes that new states or the output depend on (the rest is dead code)."""
        roots = list(self.new_state.values()) + [self.output]
        seen: set[int] = set()
        while roots:
            i = roots.pop()
            if i not in seen:
                seen.add(i)
                roots.extend(self.nodes[i].args)
        return seen

    def label(self, i: int) -> str:
        """A readable name for node i: its assigned name, or a description."""
        for name, j in self.names.items():
            if j == i:
                return name
        n = self.nodes[i]
        if n.op == "prev":
            return f"{n.attr}_prev"
        if n.op in ("param", "matvec"):
            return str(n.attr) if n.op == "param" else f"{n.attr} @ {self.label(n.args[0])}"
        if n.op == "x":
            return "x"
        return f"_{n.op}{i}"
