"""Schedule one step's graph for a time loop: what is hoisted, fused, saved.

- Products with ``x`` form one *x group*: a single GEMM over all T*B rows before
  the time loop (and, in backward, dW_x and dx as two GEMMs after it).
- Products of the same operand (``U_i @ h_prev``, ``U_f @ h_prev``, ...) form one
  in-loop *group*: one GEMM per step against the concatenated matrices
  ``[U_i; U_f; ...]`` (shape [k*H, in]).
- A group whose operand is an intermediate (``U_n @ (r * h_prev)``) splits the
  step into *segments*: the GEMM of level L runs between the pointwise loop of
  segment L-1 and that of segment L. Each segment is one fused loop.
- The backward pass reads the values the derivative rules name
  (`differentiate.values_needed`); those that are not states, parameters or
  constants are *saved* as [T, B, H] arrays in training mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .differentiate import values_needed
from .graph import Graph


@dataclass
class MatvecGroup:
    index: int
    operand: int                 # node id of the right operand (x, a prev state, or a value)
    members: list[int]           # matvec node ids; member k is block [k*H:(k+1)*H]
    matrices: list[str]          # matrix name per member
    kind: str                    # "x" | "state" | "value"
    level: int = 0               # segment whose loop first reads the products

    @property
    def name(self) -> str:
        return "x" if self.kind == "x" else f"g{self.index}"


@dataclass
class Schedule:
    graph: Graph
    live: set[int]
    x_group: MatvecGroup | None
    groups: list[MatvecGroup]                      # in-loop GEMM groups, by level
    segments: list[list[int]]                      # pointwise node ids per segment
    segment_of: dict[int, int]
    needed: set[int]                               # values backward reads
    saved: list[int]                               # nodes stored [T, B, H] in training
    cross_values: set[int] = field(default_factory=set)    # pointwise values read by later segments
    cross_adjoints: set[int] = field(default_factory=set)  # nodes with consumers in later segments
    group_of: dict[int, MatvecGroup] = field(default_factory=dict)   # matvec node -> its group
    x_adjoint_groups: list[MatvecGroup] = field(default_factory=list)   # groups whose d_prods, side by side,
                                                   # equal d_x_proj block by block (none: d_x_proj is stored)
    recomputed: set[int] = field(default_factory=set)  # needed values recomputed in backward, not saved

    @property
    def states(self):
        return self.graph.states

    def operand_groups(self):
        return [g for g in self.groups if g.kind == "value"]

    def x_adjoint_sources(self, H: int) -> list[tuple[str, int, int]]:
        """(array, lo, hi): backward's array holding the adjoints of the x products of rows lo:hi of the
        stacked x weights [Gx*H, D], where both backends take dW_x and dx from. Each of
        `x_adjoint_groups` gives its `d_prod_<g>` (the backends share the x adjoints:
        KernelPlan.share_x_adjoint); without such groups, `d_x_proj` holds them all. Empty: no x group."""
        if self.x_group is None:
            return []
        rows, lo = [], 0
        for g in self.x_adjoint_groups:
            rows.append((f"d_prod_{g.name}", lo, lo + len(g.members) * H))
            lo += len(g.members) * H
        return rows or [("d_x_proj", 0, len(self.x_group.members) * H)]


def schedule(graph: Graph, recompute: bool = False) -> Schedule:
    """Schedule `graph`. recompute: needed values that are one op on states, parameters or constants
    are recomputed in backward instead of saved (LSTM: tanh(c), one [T, B, H] array less)."""
    nodes, live = graph.nodes, graph.live()
    groups_by_operand: dict[int, MatvecGroup] = {}
    x_group = None
    segment_of: dict[int, int] = {}
    for n in nodes:
        if n.id not in live or n.is_leaf:
            continue
        if n.op == "matvec":
            operand = nodes[n.args[0]]
            kind = {"x": "x", "prev": "state"}.get(operand.op, "value")
            group = groups_by_operand.get(operand.id)
            if group is None:
                group = MatvecGroup(len(groups_by_operand), operand.id, [], [], kind)
                groups_by_operand[operand.id] = group
            group.members.append(n.id)
            group.matrices.append(n.attr)
            level = segment_of[operand.id] + 1 if kind == "value" else 0
            group.level = level
            segment_of[n.id] = level
        else:
            segment_of[n.id] = max((segment_of.get(a, 0) for a in n.args), default=0)

    groups = []
    for group in groups_by_operand.values():
        if group.kind == "x":
            x_group = group
        else:
            groups.append(group)
    for k, group in enumerate(sorted(groups, key=lambda g: (g.level, g.index))):
        group.index = k
    groups.sort(key=lambda g: g.index)

    if x_group:   # a product with x is free to load anywhere: place it where it is first read
        for m in x_group.members:
            users = [c.id for c in nodes if c.id in live and m in c.args]
            segment_of[m] = min((segment_of[u] for u in users), default=0)

    n_segments = max(segment_of.values(), default=0) + 1
    segments: list[list[int]] = [[] for _ in range(n_segments)]
    for n in nodes:
        if n.id in segment_of:
            segments[segment_of[n.id]].append(n.id)

    needed = values_needed(graph, live)
    operands = {g.operand for g in groups if g.kind == "value"}
    stored_elsewhere = set(graph.new_state.values())
    recomputed: set[int] = set()
    if recompute:   # in id (topological) order, so an argument's own fate is already decided
        available = stored_elsewhere | {n.id for n in nodes if n.op in ("prev", "param", "const")}
        for i in sorted(needed | operands):
            n = nodes[i]
            if n.is_leaf or i in available:
                continue
            if (n.op != "matvec" and i not in operands and i in live
                    and all(a in available and a not in recomputed for a in n.args)):
                recomputed.add(i)   # one op on values backward has anyway: no chains of recomputation
            available.add(i)
    saved = sorted(i for i in (needed | operands)
                   if i in live and not nodes[i].is_leaf and i not in stored_elsewhere and i not in recomputed)

    sched = Schedule(graph, live, x_group, groups, segments, segment_of, needed, saved)
    sched.recomputed = recomputed
    for g in groups + ([x_group] if x_group else []):
        for m in g.members:
            sched.group_of[m] = g
    sched.x_adjoint_groups = _groups_with_the_x_adjoints(graph, live, x_group, groups)
    for n in nodes:
        if n.id not in live or n.is_leaf or n.op == "matvec":   # operands flow through GEMMs
            continue
        for a in n.args:
            if a in segment_of and segment_of[a] < segment_of[n.id]:
                sched.cross_adjoints.add(a)
                if nodes[a].op != "matvec":
                    sched.cross_values.add(a)
    return sched


def _adjoint_source(graph: Graph, live: set[int], i: int) -> int:
    """The node whose adjoint equals node i's: follow single uses through `+` (and the left of `-`).

    In ``W_i @ x + b + U_i @ h_prev`` both products have the adjoint of the sum, so backward can
    store it once and use it for dW_i, dx and dU_i alike.
    """
    outputs = set(graph.new_state.values()) | {graph.output}
    while i not in outputs:
        users = [n for n in graph.nodes if n.id in live and i in n.args]
        if len(users) != 1 or users[0].args.count(i) != 1:
            break
        user = users[0]
        if not (user.op == "add" or (user.op == "sub" and user.args[0] == i)):
            break
        i = user.id
    return i


def _groups_with_the_x_adjoints(graph, live, x_group, groups) -> list[MatvecGroup]:
    """In-loop groups whose products have, side by side and block by block, the adjoints of the x products
    (LSTM: one group, U_i..U_o; GRU after Cho: [U_r; U_z] on h_prev, then U_n on r * h_prev); [] if none."""
    if x_group is None:
        return []
    x_sources = [_adjoint_source(graph, live, m) for m in x_group.members]
    sources = [(g, [_adjoint_source(graph, live, m) for m in g.members]) for g in groups]
    found, at = [], 0
    while at < len(x_sources):
        match = next((g for g, src in sources if g not in found and src == x_sources[at:at + len(src)]), None)
        if match is None:
            return []
        found.append(match)
        at += len(match.members)
    return found
