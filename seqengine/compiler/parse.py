"""Parse a cell declaration into a `Graph`, rejecting every malformed one.

The equations are read with Python's `ast` (they are never evaluated). Names:

- ``x``: the step input (size D); allowed only as the right operand of ``@``.
- ``<s>_prev``: state ``s`` at the previous step; ``<s>``: its new value.
- a name assigned earlier: that intermediate value.
- anything else: a parameter; a matrix when left of ``@``, else a vector of size H.
"""

from __future__ import annotations

import ast
import difflib
import math
import warnings

from ..cell import Cell, SpecError
from .graph import FUNCTIONS, Graph

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}
_OP_SYMBOL = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.BitAnd: "&", ast.BitOr: "|",
              ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}


# Deeper expressions are rejected: the parser and the code generator recurse over them, and Python's
# own compiler refuses deeply nested generated code. Real cells nest about 5 levels.
MAX_DEPTH = 32


def _depth(node: ast.AST) -> int:
    """Nesting depth of an expression tree, without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        n, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in ast.iter_child_nodes(n) if isinstance(c, ast.expr))
    return deepest


_STATEMENT_HINTS = {
    "AugAssign": "write the new value in full: `h = h_prev + ...`",
    "Expr": "give the value a name: `a = ...`",
    "Assign": "one name per line: `a = ...` then `b = ...`",
}
_EXPRESSION_HINTS = {
    "Compare": "comparisons have no derivative: use `relu`, `maximum` or `minimum`",
    "IfExp": "use `maximum`, `minimum` or a gate such as `g * a + (1 - g) * b`",
    "Subscript": "parameters are whole vectors and matrices: give each part its own name",
    "Attribute": "use the plain names of the language (`tanh`, not `np.tanh`)",
    "BoolOp": "`and`/`or` have no derivative: use `minimum`/`maximum` or a product of gates",
}


def _suggest(word: str, choices) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


class _Parser:
    def __init__(self, cell: Cell):
        self.cell = cell
        self.lines = cell.equations.splitlines()
        self.graph = Graph(cell=cell.name, states=tuple(cell.state))
        self.free_uses: dict[str, tuple[int, int]] = {}   # parameter -> first (line, col)
        self.param_kind: dict[str, str] = {}               # parameter -> "matrix" | "vector"
        self.products: dict[int, ast.AST] = {}             # matvec node id -> its first `@` in the text

    # -- errors ------------------------------------------------------------------
    def error(self, message: str, node: ast.AST | None = None, symbol: str | None = None,
              hint: str | None = None, line: int | None = None) -> SpecError:
        col = None
        if node is not None and hasattr(node, "lineno"):
            line, col = node.lineno, node.col_offset
        src = self.lines[line - 1] if line and 0 < line <= len(self.lines) else None
        return SpecError(self.cell.name, message, line=line, col=col, symbol=symbol,
                         source_line=src, hint=hint)

    # -- statements --------------------------------------------------------------
    def parse(self) -> Graph:
        cell, g = self.cell, self.graph
        for s in cell.state:
            if not isinstance(s, str) or not s.isidentifier():
                raise self.error(f"state name {s!r} is not an identifier", symbol=str(s))
            if s == "x" or s.endswith("_prev"):
                raise self.error(f"state name `{s}` is reserved", symbol=s,
                                 hint="`x` is the step input and `<s>_prev` a previous state: choose another name")
        if len(set(cell.state)) != len(cell.state):
            raise self.error("a state is declared twice in state=[...]", symbol=str(list(cell.state)))
        try:
            with warnings.catch_warnings():   # e.g. SyntaxWarning "invalid decimal literal": the error says more
                warnings.simplefilter("ignore")
                tree = ast.parse(cell.equations, mode="exec")
        except SyntaxError as e:
            line = e.lineno if e.lineno and 0 < e.lineno <= len(self.lines) else None
            col = e.offset - 1 if line is not None and e.offset and e.offset > 0 else None
            raise SpecError(cell.name, f"syntax error: {e.msg}", line=line, col=col, symbol=(e.text or "").strip(),
                            source_line=self.lines[line - 1] if line else None) from None
        except (ValueError, RecursionError, MemoryError) as e:
            raise self.error(f"cannot parse the equations: {type(e).__name__}: {e}") from None
        if not tree.body:
            raise self.error("the equations are empty")

        targets: dict[str, ast.stmt] = {}
        self.refs: dict[str, set[str]] = {}
        for stmt in tree.body:
            if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                hint = _STATEMENT_HINTS.get(type(stmt).__name__)
                raise self.error("each line must be one assignment `name = expression`", stmt, hint=hint,
                                 symbol=type(stmt).__name__)
            name = stmt.targets[0].id
            if _depth(stmt.value) > MAX_DEPTH:
                raise self.error(f"the expression of `{name}` nests {_depth(stmt.value)} levels deep "
                                 f"(at most {MAX_DEPTH})", stmt.value, symbol=name,
                                 hint="split it: give an inner part a name on a line of its own")
            if name == "x" or name.endswith("_prev") and name[:-5] in cell.state:
                hint = f"assign the new value to `{name[:-5]}`" if name != "x" else "name the value otherwise"
                raise self.error(f"`{name}` is an input of the step and cannot be assigned", stmt, symbol=name,
                                 hint=hint)
            if name in targets:
                what = "state" if name in cell.state else "name"
                raise self.error(f"{what} `{name}` is assigned twice (first on line {targets[name].lineno})",
                                 stmt, symbol=name, hint="give the second value a new name")
            targets[name] = stmt
            self.refs[name] = {n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)}
        self.targets = targets

        for stmt in tree.body:
            name = stmt.targets[0].id
            self.current = name
            g.names[name] = self.expr(stmt.value)
            self.reject_x(g.names[name], stmt.value)

        for s in cell.state:
            if s not in g.names:
                hint = f"add a line `{s} = ...` giving its new value"
                close = difflib.get_close_matches(s, [t for t in targets if t not in cell.state], n=1, cutoff=0.6)
                if close:   # `cc = ...` for state `c`: a misspelt assignment; point at it
                    raise self.error(f"state `{s}` is never assigned", targets[close[0]], symbol=s,
                                     hint=f"did you mean `{s} = ...` here instead of `{close[0]} = ...`?")
                raise self.error(f"state `{s}` is never assigned", symbol=s, hint=hint)
            g.new_state[s] = g.names[s]
        out = cell.output_name
        if out not in g.names:
            raise self.error(f"output `{out}` is neither a state nor an assigned value", symbol=out,
                             hint=_suggest(out, g.names))
        self.check_computed_results()
        g.new_state = {s: g.names[s] for s in cell.state}
        g.output = g.names[out]
        self.check_param_lists()
        g.params = list(self.free_uses)   # first-use order: the order of rnn.params
        return g

    def check_computed_results(self):
        """States and the output must be values the step computes, one node per state.

        A state that is a constant, a parameter or its own previous value is never computed by the step:
        an error. A state that copies another's previous value (a delay line), two states with one value,
        and a state that is also a product's operand each get a node of their own (an internal `copy`),
        because the kernels store every state from the loop that computes it. An output that is a
        previous state gets a copy the same way.
        """
        g, cell = self.graph, self.cell
        operands = {g.nodes[i].args[0] for i in self.products}
        owner: dict[int, str] = {}
        for s in cell.state:
            i, stmt = g.names[s], self.targets[s]
            n = g.nodes[i]
            if n.op == "const":
                raise self.error(f"state `{s}` is the constant {n.attr:g}: a state must be computed by the step",
                                 stmt.value, symbol=s, hint="use the number where it is needed and drop the state")
            if n.op == "param":
                raise self.error(f"state `{s}` is the parameter `{n.attr}`: a state must be computed by the step",
                                 stmt.value, symbol=s, hint=f"use `{n.attr}` where it is needed and drop the state")
            if n.op == "prev" and n.attr == s:
                raise self.error(f"state `{s}` is never updated (`{s} = {s}_prev`)", stmt.value, symbol=s,
                                 hint="give it a new value, or drop the state")
            while i in owner or i in operands or g.nodes[i].op == "prev":
                i = g.add("copy", (i,))
            owner[i] = s
            g.names[s] = i
        out = cell.output_name
        n = g.nodes[g.names[out]]
        if n.op in ("const", "param"):
            what = f"the constant {n.attr:g}" if n.op == "const" else f"the parameter `{n.attr}`"
            raise self.error(f"output `{out}` is {what}: the output must be computed by the step",
                             self.targets[out].value, symbol=out, hint="emit a value the step computes")
        if n.op == "prev":
            g.names[out] = g.add("copy", (n.id,))

    def check_param_lists(self):
        cell, used = self.cell, self.free_uses
        if cell.params is not None:
            for p in cell.params:
                if p not in used:
                    raise self.error(f"parameter `{p}` is listed in params but never used in the equations",
                                     symbol=p, hint=_suggest(p, used) or f"remove `{p}` from params")
            for p, (line, col) in used.items():
                if p not in cell.params:
                    hint = _suggest(p, list(self.targets) + list(cell.params))
                    raise SpecError(cell.name, f"`{p}` is not in params=[...] and is not assigned", line=line,
                                    col=col, symbol=p, source_line=self.lines[line - 1],
                                    hint=hint or f"add `{p}` to params if it is a parameter")
        for p in cell.init:
            if p not in used:
                raise self.error(f"init names `{p}`, which the equations never use as a parameter",
                                 symbol=p, hint=_suggest(p, used))

    # -- expressions -------------------------------------------------------------
    def expr(self, node: ast.AST) -> int:
        g = self.graph
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise self.error(f"constant {node.value!r} is not a real number", node, symbol=repr(node.value))
            if not math.isfinite(node.value):
                text = ast.get_source_segment(self.cell.equations, node) or ast.unparse(node)
                raise self.error(f"constant {text} is not finite", node, symbol=text,
                                 hint="float64 overflows past 1.8e308; use a finite number")
            return g.add("const", (), float(node.value), size="1")
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.UAdd):
                return self.expr(node.operand)
            if isinstance(node.op, ast.USub):
                a = self.expr(node.operand)
                self.reject_x(a, node)
                if g.nodes[a].op == "const":
                    return g.add("const", (), -g.nodes[a].attr, size="1")
                return g.add("neg", (a,), size=g.nodes[a].size)
            sym = {ast.Invert: "~", ast.Not: "not"}.get(type(node.op), type(node.op).__name__)
            raise self.error(f"unary operator `{sym}` is not supported", node, symbol=sym,
                             hint="the unary operators are `-` and `+`")
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.MatMult):
                return self.matvec(node)
            op = _BINOPS.get(type(node.op))
            if op is None:
                sym = _OP_SYMBOL.get(type(node.op), type(node.op).__name__)
                hint = "write `exp(b * log(a))` or a product" if sym == "**" else None
                raise self.error(f"operator `{sym}` is not supported (use + - * / @)", node, symbol=sym, hint=hint)
            a, b = self.expr(node.left), self.expr(node.right)
            if op == "div" and self.graph.nodes[b].op == "const" and self.graph.nodes[b].attr == 0.0:
                raise self.error("division by the constant 0", node.right, symbol=ast.unparse(node.right),
                                 hint="divide by a value that cannot be zero, e.g. `(1 + softplus(...))`")
            return self.elementwise(op, (a, b), node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.error(f"`{type(node).__name__}` expressions are not part of the equation language",
                         node, symbol=type(node).__name__, hint=_EXPRESSION_HINTS.get(type(node).__name__))

    def reject_x(self, i: int, node: ast.AST):
        if self.graph.nodes[i].size == "D":
            raise self.error("`x` is used outside `@`", node, symbol="x", hint="use it as `W @ x`")

    def elementwise(self, op: str, args: tuple[int, ...], node: ast.AST) -> int:
        g = self.graph
        sizes = {g.nodes[a].size for a in args} - {"1"}
        if "D" in sizes:
            if "H" in sizes:
                raise self.error("a vector of size D (`x`) meets a vector of size H elementwise", node,
                                 symbol="x", hint="project it first: `W @ x`")
            raise self.error("`x` is used outside `@`", node, symbol="x", hint="use it as `W @ x`")
        if not sizes:   # constant folding keeps the graph free of all-constant nodes
            vals = [g.nodes[a].attr for a in args]
            folded = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b}
            if op in folded:
                return g.add("const", (), folded[op](*vals), size="1")
            value = vals[0] / vals[1] if op == "div" and vals[1] != 0 else None
            raise self.error(f"`{op}` of constants only: write the number", node, symbol=op,
                             hint=f"write `{value!r}`" if value is not None else None)
        return g.add(op, args, size="H")

    def call(self, node: ast.Call) -> int:
        if not isinstance(node.func, ast.Name):
            attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
            hint = f"write `{attr}(...)`" if attr in FUNCTIONS else f"the functions are: {', '.join(FUNCTIONS)}"
            raise self.error("only the functions of the language can be called", node, symbol=ast.unparse(node.func),
                             hint=hint)
        fn = node.func.id
        if fn not in FUNCTIONS:
            raise self.error(f"unknown function `{fn}`", node, symbol=fn,
                             hint=_suggest(fn, FUNCTIONS) or f"the functions are: {', '.join(FUNCTIONS)}")
        if node.keywords or len(node.args) != FUNCTIONS[fn]:
            raise self.error(f"`{fn}` takes {FUNCTIONS[fn]} positional argument(s)", node, symbol=fn,
                             hint=f"write `{fn}({', '.join('ab'[:FUNCTIONS[fn]])})`")
        args = tuple(self.expr(a) for a in node.args)
        return self.elementwise(fn, args, node)

    def matvec(self, node: ast.BinOp) -> int:
        g, left = self.graph, node.left
        if not isinstance(left, ast.Name):
            hint = None
            if isinstance(left, ast.BinOp) and isinstance(left.op, (ast.Mult, ast.Div)):
                hint = "`*`, `/` and `@` bind equally tightly, left to right: write `a * (W @ v)`"
            raise self.error("the left operand of `@` must be a parameter matrix name", node,
                             symbol=ast.unparse(left), hint=hint)
        name = left.id
        if name == "x" or name in self.targets or name in self.cell.state or (
                name.endswith("_prev") and name[:-5] in self.cell.state):
            raise self.error(f"`{name}` is a value, not a parameter matrix, so it cannot stand left of `@`",
                             left, symbol=name, hint=f"the matrix comes first: `W @ {name}`")
        self.use_param(name, "matrix", left)
        right = self.expr(node.right)
        size = g.nodes[right].size
        if size == "1":
            raise self.error("the right operand of `@` must be a vector, not a constant", node.right,
                             hint="scale elementwise instead: `2 * b`")
        if g.nodes[right].op in ("param", "matvec"):
            # `U @ (V @ x)` (a low-rank factorization) or `W @ b`: the operand becomes a value of the step
            # of its own (an internal copy), which the schedule multiplies like any intermediate
            right = g.add("copy", (right,))
        seen = g.matrices.setdefault(name, size)
        if seen != size:
            raise self.error(f"matrix `{name}` multiplies vectors of sizes {seen} and {size}; "
                             "one matrix has one shape", node, symbol=name, hint="use two matrices")
        i = g.add("matvec", (right,), name, size="H")
        self.products.setdefault(i, node)
        return i

    def name(self, node: ast.Name) -> int:
        g, cell, name = self.graph, self.cell, node.id
        if name == "x":   # size D: only `@` accepts it (checked where it is consumed)
            return g.add("x", (), size="D")
        if name.endswith("_prev") and name[:-5] in cell.state:
            return g.add("prev", (), name[:-5])
        if name in g.names:
            return g.names[name]
        if name in self.targets:
            cycle = self.find_cycle(name)
            if cycle:
                raise self.error("the equations form a cycle: " + " -> ".join(cycle), node, symbol=name,
                                 hint="a value cannot depend on itself within a step: "
                                      "read the previous step's state as `<s>_prev`")
            hint = "move its line up"
            if name in cell.state:
                hint += f", or write `{name}_prev` for the previous step's value"
            raise self.error(f"`{name}` is used before it is assigned (on line {self.targets[name].lineno})",
                             node, symbol=name, hint=hint)
        if name in cell.state:
            raise self.error(f"state `{name}` is used before it is assigned", node, symbol=name,
                             hint=f"the previous value is `{name}_prev`")
        if name in FUNCTIONS:
            raise self.error(f"function `{name}` is used as a value", node, symbol=name,
                             hint=f"call it: `{name}(...)`")
        self.use_param(name, "vector", node)
        if name not in g.vectors:
            g.vectors.append(name)
        return g.add("param", (), name)

    def use_param(self, name: str, kind: str, node: ast.AST):
        seen = self.param_kind.setdefault(name, kind)
        if seen != kind:
            raise self.error(f"parameter `{name}` is used both as a matrix (left of `@`) and as a vector",
                             node, symbol=name, hint="give the vector a name of its own")
        self.free_uses.setdefault(name, (node.lineno, node.col_offset))

    def find_cycle(self, start: str) -> list[str] | None:
        """A path from `start` back to the line being parsed, through later assignments."""
        target, stack, seen = self.current, [(start, [self.current, start])], set()
        while stack:
            name, path = stack.pop()
            for ref in self.refs.get(name, ()):
                if ref == target:
                    return path + [target]
                if ref in self.refs and ref not in seen and ref not in self.graph.names:
                    seen.add(ref)
                    stack.append((ref, path + [ref]))
        return None


def parse_cell(cell: Cell) -> Graph:
    """The expression graph of one step of `cell`; raises `SpecError` if malformed."""
    return _Parser(cell).parse()
