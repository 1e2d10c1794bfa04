"""The backend-neutral plan of a cell's step kernels: names, storage and per-element equations.

Every backend runs the same per-element work of a step, one (batch row b, hidden unit j) at a
time; backends differ only in how they split the elements over threads, where per-thread
scratch lives, and how the in-loop products are computed. `KernelPlan` holds everything else,
derived once from the `Schedule`:

- naming: the local of node i (``h_``, ``v12_``), its arrays (``saved_<v>``, ``value_<v>``,
  ``d_cross_<v>``), the column of a product inside its group's block (``j``, ``2 * H + j``);
- storage: what a forward segment writes (new states, the output, saved values, values and
  products later segments read) and which values fold into their consumer's expression;
- forward: each segment's assignments, as lines of Python over the element (b, j);
- backward: each segment's adjoint equations (reverse mode over the derivative table: the terms
  of every node's adjoint, the contributions to previous states, vector parameters and earlier
  segments, the stores of product adjoints, and loads of only the forward values they read);
- padding: what a step past a sequence's length still writes.

A backend subclasses it and says how its per-thread arrays are indexed (`scratch`, `product`,
`d_gemm`, `d_operand`, `d_param`) and what its function helpers are called (`helper`), then
writes the loops, thread indexing and GEMMs around these lines.
"""

from __future__ import annotations

import ast
from contextlib import contextmanager

from .differentiate import FORWARD, Expr, adjoint_contributions
from .graph import FUNCTIONS
from .schedule import MatvecGroup, Schedule


class SourceWriter:
    """Lines of Python source at the current indentation (4 spaces per level)."""

    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line: str = ""):
        self.lines.append("    " * self.depth + line if line else "")

    @contextmanager
    def indent(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def text(self) -> str:
        return "\n".join(self.lines)


def load(src: str) -> Expr:
    """The expression of a source fragment (an array element, a local, a sum of them)."""
    return Expr(ast.parse(src, mode="eval").body)


def total(exprs: list[Expr]) -> Expr:
    """exprs[0] + exprs[1] + ..., left to right (the order fixes the rounding, so keep it)."""
    out = exprs[0]
    for e in exprs[1:]:
        out = out + e
    return out


def block_column(k: int) -> str:
    """The column of unit j in block k of a stacked group: ``j``, ``H + j`` written as ``1 * H + j``."""
    return "j" if k == 0 else f"{k} * H + j"


class KernelPlan:
    """Naming, storage decisions and per-element equations of one scheduled cell's kernels.

    Backend hooks (override): `scratch`, `share_x_adjoint`, `products_cross_launches`, `helper`,
    `product`, `d_gemm`, `d_operand`, `d_param`.
    """

    scratch = "b, j"   # index of element (b, j) in a per-row scratch array (value_, d_cross_, d_state_ slot)
    share_x_adjoint = False   # honour sched.x_adjoint_groups: no d_x_proj store when they hold it
    # time index of x_proj, d_x_proj and d_prod_<g>: a backend that keeps only a window of steps of
    # them (the CPU: steps t0 <= t < t1) indexes them relative to its start
    window_t = "t"
    products_cross_launches = False   # True: a product lives only in its segment (one launch each), so
                                      # products a later segment reads go through value_ arrays

    def __init__(self, sched: Schedule, dtype: str):
        self.s, self.g, self.dtype = sched, sched.graph, dtype
        g, s = self.g, sched
        self.consumers = {k: [c for c in v if c in s.live] for k, v in g.consumers().items()}
        self.named = {i: name for name, i in g.names.items()}
        self.state_of = {i: st for st, i in g.new_state.items()}
        self.vec_index = {p: k for k, p in enumerate(g.vectors)}
        self.operands = {grp.operand for grp in s.operand_groups()}
        self.saved = set(s.saved)
        # products read by a later segment than their own: where a segment is its own launch, the
        # thread's product does not survive it, so it goes through a value array
        self.late_products = {i for grp in s.groups for i in grp.members
                              if any(s.segment_of[u] > grp.level for u in self.consumers[i])
                              } if self.products_cross_launches else set()
        self.prev_users = self._prev_contrib_segments()
        self._inlinable: dict[bool, set[int]] = {}

    # -- backend hooks -----------------------------------------------------------------------------
    def helper(self, fn: str) -> str:
        """The name the kernels call function `fn` of the language by."""
        return fn

    def product(self, i: int, seg: int, training: bool) -> Expr:
        """In-loop product node i (element b, block column of j) as read by segment `seg`."""
        raise NotImplementedError

    def d_gemm(self, st: str) -> Expr:
        """The part of state st's adjoint at t + 1 that flows back through its recurrent product."""
        raise NotImplementedError

    def d_operand(self, i: int) -> Expr:
        """The adjoint of intermediate operand i through its group's products (d_prod_g @ weight_g)."""
        raise NotImplementedError

    def d_param(self, p: str) -> str:
        """The element (b, j) of vector parameter p's gradient accumulator."""
        raise NotImplementedError

    # -- naming ------------------------------------------------------------------------------------
    def local(self, i: int) -> str:
        """The local variable of node i's value (its name in the declaration when it has one)."""
        n = self.g.nodes[i]
        if i in self.named:
            return f"{self.named[i]}_"
        return f"{n.attr}_prev_" if n.op == "prev" else f"v{i}_"

    def stem(self, i: int) -> str:
        return self.local(i).rstrip("_")

    def saved_array(self, i: int) -> str:
        return f"saved_{self.stem(i)}"

    def value_array(self, i: int) -> str:
        return f"value_{self.stem(i)}"

    def block(self, i: int) -> str:
        """`j` offset by the product's block inside its group."""
        return block_column(self.s.group_of[i].members.index(i))

    def is_output_state(self) -> bool:
        return self.g.output in self.state_of

    def writes_y(self, training: bool) -> bool:
        """Whether forward writes `y` (in training an output that is a state is a view of its rows)."""
        return not (training and self.is_output_state())

    def state_group(self, st: str) -> MatvecGroup | None:
        """The in-loop group whose operand is state st's previous value, if any."""
        return next((grp for grp in self.s.groups
                     if grp.kind == "state" and self.g.nodes[grp.operand].attr == st), None)

    @staticmethod
    def slots(training: bool) -> tuple[str, str]:
        """(previous, new) state slot at step t: all T + 1 steps kept in training, two alternating
        slots in inference."""
        return ("t", "t + 1") if training else ("t & 1", "(t + 1) & 1")

    def calls(self, e: Expr) -> Expr:
        """Calls of the language's functions in `e` renamed to the backend's helpers."""
        for n in ast.walk(e.node):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in FUNCTIONS:
                n.func.id = self.helper(n.func.id)
        return e

    def leaf(self, i: int, prev_slot: str) -> Expr:
        n = self.g.nodes[i]
        if n.op == "prev":
            return load(f"state_{n.attr}[{prev_slot}, b, j]")
        if n.op == "param":
            return load(f"param_{n.attr}[j]")
        if n.op == "const":
            return Expr.num(n.attr)
        raise AssertionError(f"no pointwise load for {n.op}")

    # -- forward -----------------------------------------------------------------------------------
    def scratch_values(self, training: bool) -> list[int]:
        """Nodes kept in a per-row value array (read by a later segment or a GEMM, not saved)."""
        s = self.s
        return sorted(i for i in (s.cross_values | self.operands | self.late_products)
                      if not (training and i in self.saved))

    def forward_arrays(self, training: bool, weight: str) -> list[str]:
        """The arrays of a forward step kernel every backend passes, in order (weights named
        `<weight>_<g>`: each backend lays them out for its GEMMs); backends add their scratch."""
        s = self.s
        args = ["x_proj"] + [f"state_{st}" for st in s.states] + [f"{weight}_{grp.name}" for grp in s.groups]
        args += [f"param_{p}" for p in self.g.vectors]
        if self.writes_y(training):
            args.append("y")
        if training:
            args += [self.saved_array(i) for i in s.saved]
        return args

    def stored_value(self, i: int, training: bool) -> str:
        """Where forward keeps value i for a later segment: its saved array, else per-row scratch."""
        if training and i in self.saved:
            return f"{self.saved_array(i)}[t, b, j]"
        return f"{self.value_array(i)}[{self.scratch}]"

    def forward_stores(self, i: int, training: bool) -> list[str]:
        """The array elements forward writes node i's value to."""
        targets = []
        if i in self.state_of:
            targets.append(f"state_{self.state_of[i]}[{self.slots(training)[1]}, b, j]")
        if i == self.g.output and not (training and i in self.state_of):
            targets.append("y[t, b, j]")
        if ((training and i in self.saved) or i in self.s.cross_values or i in self.operands
                or i in self.late_products):
            targets.append(self.stored_value(i, training))
        return targets

    def inlinable(self, training: bool) -> set[int]:
        """Anonymous single-use values folded into their consumer's expression."""
        if training not in self._inlinable:
            s, out = self.s, set()
            for n in self.g.nodes:
                i = n.id
                if i not in s.live or n.is_leaf or n.op == "matvec" or i in self.named:
                    continue
                users = self.consumers[i]
                if (len(users) == 1 and s.segment_of[users[0]] == s.segment_of[i]
                        and self.g.nodes[users[0]].args.count(i) == 1 and not self.forward_stores(i, training)):
                    out.add(i)
            self._inlinable[training] = out
        return self._inlinable[training]

    def forward_expr(self, i: int, seg: int, training: bool) -> Expr:
        """Node i's value as segment `seg` reads it (a load, a local, or an inlined expression)."""
        n = self.g.nodes[i]
        if n.is_leaf:
            return self.leaf(i, self.slots(training)[0])
        if n.op == "matvec":
            grp = self.s.group_of[i]
            if grp.kind == "x":
                return load(f"x_proj[{self.window_t}, b, {self.block(i)}]")
            return self.product(i, seg, training)
        if self.s.segment_of[i] < seg:
            return load(self.stored_value(i, training))
        if i in self.inlinable(training):
            return self.compute(i, seg, training)
        return Expr.name(self.local(i))

    def compute(self, i: int, seg: int, training: bool) -> Expr:
        """Node i's op applied to its arguments' values."""
        n = self.g.nodes[i]
        return self.calls(FORWARD[n.op](*[self.forward_expr(a, seg, training) for a in n.args]))

    def forward_lines(self, seg: int, training: bool) -> list[str]:
        """Segment `seg`'s pointwise work at element (b, j): each value into its local, then its stores."""
        lines, inlined = [], self.inlinable(training)
        for i in self.s.segments[seg]:
            targets = self.forward_stores(i, training)
            if self.g.nodes[i].op == "matvec":   # a product read straight from its GEMM
                if targets:
                    lines.append(f"{self.local(i)} = {self.forward_expr(i, seg, training).source()}")
            elif i not in inlined:
                lines.append(f"{self.local(i)} = {self.compute(i, seg, training).source()}")
            lines += [f"{target} = {self.local(i)}" for target in targets]
        return lines

    def forward_padding_lines(self, seg: int, training: bool) -> list[str]:
        """What a step past a sequence's length writes at (b, j); only the last segment writes.

        Training zeroes the state rows (the output may be a view of them) and every saved value: the
        operands of the deferred weight GEMMs, and the rest so that the tape holds nothing a reused
        buffer held before (check_finite scans it); inference carries the state forward so slot T & 1
        ends as the final state.
        """
        if seg != len(self.s.segments) - 1:
            return []
        prev_slot, new_slot = self.slots(training)
        lines = []
        for st in self.s.states:
            if training:
                lines.append(f"state_{st}[{new_slot}, b, j] = F(0.0)")
            else:
                lines.append(f"state_{st}[{new_slot}, b, j] = state_{st}[{prev_slot}, b, j]")
        if self.writes_y(training):
            lines.append("y[t, b, j] = F(0.0)")
        if training:
            lines += [f"{self.saved_array(i)}[t, b, j] = F(0.0)" for i in sorted(self.saved | self.operands)]
        return lines

    # -- backward ----------------------------------------------------------------------------------
    def _prev_contrib_segments(self) -> dict[str, set[int]]:
        """For each state, the segments whose loops add to the adjoint of its previous value."""
        s, g = self.s, self.g
        out: dict[str, set[int]] = {st: set() for st in s.states}
        for n in g.nodes:
            if n.id in s.live and not n.is_leaf and n.op != "matvec":
                for a in n.args:
                    if g.nodes[a].op == "prev":
                        out[g.nodes[a].attr].add(s.segment_of[n.id])
        return out

    def accumulated_states(self) -> list[str]:
        """States whose previous-value adjoint several segments add to: cleared at the start of a step
        (with one contributing segment, that segment assigns it)."""
        return [st for st in self.s.states if len(self.prev_users[st]) != 1]

    def d_state(self, st: str, slot: str) -> str:
        return f"d_state_{st}[{slot}, {self.scratch}]"

    def d_cross(self, i: int) -> str:
        return f"d_cross_{self.stem(i)}[{self.scratch}]"

    def writes_d_x_proj(self) -> bool:
        """Whether backward stores the x products' adjoints (else an in-loop group's d_prod holds them)."""
        return self.s.x_group is not None and not (self.share_x_adjoint and self.s.x_adjoint_groups)

    def backward_arrays(self, weight: str = "weight") -> list[str]:
        """The arrays of a backward step kernel every backend passes, in order (weights named
        `<weight>_<g>`, laid out by the backend); backends add their scratch."""
        s = self.s
        args = ["d_y", "d_x_proj"] + [f"d_prod_{grp.name}" for grp in s.groups] + ["d_params"]
        args += [f"state_{st}" for st in s.states] + [f"{weight}_{grp.name}" for grp in s.groups]
        args += [f"param_{p}" for p in self.g.vectors]
        args += [self.saved_array(i) for i in s.saved]
        return args + [f"d_state_{st}" for st in s.states]

    def backward_value(self, i: int) -> Expr:
        """Forward value i at step t, as backward has it: a leaf, a state, recomputed, or saved."""
        g, s = self.g, self.s
        n = g.nodes[i]
        if n.is_leaf:
            return self.leaf(i, "t")
        if i in self.state_of:
            return load(f"state_{self.state_of[i]}[t + 1, b, j]")
        if i in s.recomputed:   # one op on states/parameters: cheaper to recompute than to keep
            return self.calls(FORWARD[n.op](*[self.backward_value(a) for a in n.args]))
        assert i in self.saved, f"backward needs value {g.label(i)} that was not saved"
        return load(f"{self.saved_array(i)}[t, b, j]")

    def backward_padding_lines(self, seg: int) -> list[str]:
        """Product adjoints of a step past a sequence's length: zero, so the weight GEMMs ignore it.
        (The backend carries the final state's adjoint to step `lengths[b]`.)"""
        s, lines = self.s, []
        for grp in s.groups:
            if grp.level == seg:
                lines += [f"d_prod_{grp.name}[{self.window_t}, b, {self.block(m)}] = F(0.0)" for m in grp.members]
        if seg == 0 and self.writes_d_x_proj():
            lines += [f"d_x_proj[{self.window_t}, b, {self.block(m)}] = F(0.0)" for m in s.x_group.members]
        return lines

    def backward_lines(self, seg: int) -> list[str]:
        """Segment `seg`'s adjoint equations at element (b, j), in reverse order of the forward values.

        Each node's adjoint is the sum of its terms: the incoming state adjoint (plus its GEMM part),
        d_y, adjoints from later segments and through products of it; products store theirs for the
        weight GEMMs, other ops pass contributions to their arguments by the derivative table. Previous
        states, vector parameters and earlier segments' values accumulate into arrays. Forward values
        are loaded first, and only those the equations read.
        """
        s, g = self.s, self.g
        nodes = s.segments[seg]
        terms: dict[int, list[Expr]] = {i: [] for i in nodes}
        prev_terms: dict[str, list[Expr]] = {}
        param_terms: dict[str, list[Expr]] = {}
        cross_terms: dict[int, list[Expr]] = {}
        body: list[str] = []
        loads: dict[str, int] = {}   # candidate value locals; loaded only where referenced

        def value_name(i: int) -> Expr:
            if g.nodes[i].op in ("const", "param"):
                return self.backward_value(i)
            loads[self.local(i)] = i
            return Expr.name(self.local(i))

        for i in nodes:
            if i in self.state_of:
                st = self.state_of[i]
                d = load(self.d_state(st, "(t + 1) & 1"))
                terms[i].append(d + self.d_gemm(st) if self.state_group(st) else d)
            if i == g.output:
                terms[i].append(load("d_y[t, b, j]"))
            if i in s.cross_adjoints:
                terms[i].append(load(self.d_cross(i)))
            if i in self.operands:
                terms[i].append(self.d_operand(i))

        for i in reversed(nodes):
            n = g.nodes[i]
            if not terms[i]:
                continue
            d = "d_" + self.local(i)
            body.append(f"{d} = {total(terms[i]).source()}")
            if n.op == "matvec":
                grp = s.group_of[i]
                if grp.kind != "x" or self.writes_d_x_proj():
                    target = "d_x_proj" if grp.kind == "x" else f"d_prod_{grp.name}"
                    body.append(f"{target}[{self.window_t}, b, {self.block(i)}] = {d}")
                continue
            contribs = adjoint_contributions(n.op, Expr.name(d), [value_name(a) for a in n.args], value_name(i))
            for a, contrib in zip(n.args, contribs):
                an = g.nodes[a]
                contrib = self.calls(contrib)
                if an.op == "const":
                    continue
                if an.op == "prev":
                    prev_terms.setdefault(an.attr, []).append(contrib)
                elif an.op == "param":
                    param_terms.setdefault(an.attr, []).append(contrib)
                elif s.segment_of[a] < seg:
                    cross_terms.setdefault(a, []).append(contrib)
                else:
                    terms[a].append(contrib)

        for st, exprs in prev_terms.items():
            op = "=" if len(self.prev_users[st]) == 1 else "+="
            body.append(f"{self.d_state(st, 't & 1')} {op} {total(exprs).source()}")
        for p, exprs in param_terms.items():
            body.append(f"{self.d_param(p)} += {total(exprs).source()}")
        for a, exprs in cross_terms.items():
            body.append(f"{self.d_cross(a)} += {total(exprs).source()}")

        referenced = {n.id for line in body for n in ast.walk(ast.parse(line)) if isinstance(n, ast.Name)}
        value_loads = [f"{name} = {self.backward_value(loads[name]).source()}"
                       for name in sorted(loads, key=loads.get) if name in referenced]
        return value_loads + body
