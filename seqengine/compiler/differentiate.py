"""Reverse-mode differentiation: one derivative rule per op.

Each rule maps the adjoint ``g`` of an op's output, the argument values and the
output value ``y`` to the adjoint contribution of each argument. Rules build
symbolic scalar expressions (`Expr`, thin wrappers of Python `ast` nodes) that a
backend prints into its kernels. Which values the backward pass must keep
from the forward pass is read off these same expressions (`values_needed`), so
the table is the single source of truth. Matrix products are not in the
table: the schedule turns them into GEMMs (dP -> dv = dP @ A, dA = sum dP^T v).
"""

from __future__ import annotations

import ast
from typing import Callable

from .graph import Graph


class Expr:
    """A scalar expression of the generated code (an `ast.expr`) with operators."""

    __slots__ = ("node",)

    def __init__(self, node: ast.expr):
        self.node = node

    @staticmethod
    def name(n: str) -> "Expr":
        return Expr(ast.Name(n, ast.Load()))

    @staticmethod
    def num(v: float) -> "Expr":
        """A constant of the kernel's float type: ``F(0.5)`` (F is np.float32 or np.float64)."""
        return Expr(ast.Call(ast.Name("F", ast.Load()), [ast.Constant(float(v))], []))

    @staticmethod
    def call(fn: str, *args: "Expr") -> "Expr":
        return Expr(ast.Call(ast.Name(fn, ast.Load()), [a.node for a in args], []))

    @staticmethod
    def where(cond: "Expr", a: "Expr", b: "Expr") -> "Expr":
        return Expr(ast.IfExp(cond.node, a.node, b.node))

    def _bin(self, op, other, reflect=False):
        other = other if isinstance(other, Expr) else Expr.num(other)
        left, right = (other, self) if reflect else (self, other)
        return Expr(ast.BinOp(left.node, op, right.node))

    def _cmp(self, op, other):
        other = other if isinstance(other, Expr) else Expr.num(other)
        return Expr(ast.Compare(self.node, [op], [other.node]))

    def __add__(self, o): return self._bin(ast.Add(), o)
    def __radd__(self, o): return self._bin(ast.Add(), o, True)
    def __sub__(self, o): return self._bin(ast.Sub(), o)
    def __rsub__(self, o): return self._bin(ast.Sub(), o, True)
    def __mul__(self, o): return self._bin(ast.Mult(), o)
    def __rmul__(self, o): return self._bin(ast.Mult(), o, True)
    def __truediv__(self, o): return self._bin(ast.Div(), o)
    def __rtruediv__(self, o): return self._bin(ast.Div(), o, True)
    def __neg__(self): return Expr(ast.UnaryOp(ast.USub(), self.node))
    def __gt__(self, o): return self._cmp(ast.Gt(), o)
    def __lt__(self, o): return self._cmp(ast.Lt(), o)
    def eq(self, o): return self._cmp(ast.Eq(), o)

    def source(self) -> str:
        return ast.unparse(ast.fix_missing_locations(self.node))

    def names(self) -> set[str]:
        return {n.id for n in ast.walk(self.node) if isinstance(n, ast.Name)}


# Forward: op -> expression of its arguments. Functions are helpers that each
# backend defines (`sigmoid`, `tanh`, ...), so a backend can choose its own
# implementation of each without touching the graph.
FORWARD: dict[str, Callable[..., Expr]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "neg": lambda a: -a,
    "copy": lambda a: a,
    **{fn: (lambda fn: lambda *args: Expr.call(fn, *args))(fn) for fn in (
        "sigmoid", "tanh", "exp", "log", "relu", "softplus", "abs", "sqrt", "maximum", "minimum")},
}


def _tie(cond_win: Expr, tie: Expr, g: Expr) -> Expr:
    """g where this argument wins, g/2 on a tie (as torch.maximum splits it), else 0."""
    return Expr.where(cond_win, g, Expr.where(tie, 0.5 * g, Expr.num(0.0)))


# Backward: op -> (g, args, y) -> adjoint contribution per argument.
RULES: dict[str, Callable[..., tuple[Expr, ...]]] = {
    "add": lambda g, a, b, y: (g, g),
    "sub": lambda g, a, b, y: (g, -g),
    "mul": lambda g, a, b, y: (g * b, g * a),
    "div": lambda g, a, b, y: (g / b, -(g * a) / (b * b)),
    "neg": lambda g, a, y: (-g,),
    "copy": lambda g, a, y: (g,),
    "sigmoid": lambda g, a, y: (g * (y * (1.0 - y)),),
    "tanh": lambda g, a, y: (g * (1.0 - y * y),),
    "exp": lambda g, a, y: (g * y,),
    "log": lambda g, a, y: (g / a,),
    "relu": lambda g, a, y: (Expr.where(a > 0.0, g, Expr.num(0.0)),),
    "softplus": lambda g, a, y: (g * Expr.call("sigmoid", a),),
    "abs": lambda g, a, y: (Expr.where(a > 0.0, g, Expr.where(a < 0.0, -g, Expr.num(0.0))),),
    "sqrt": lambda g, a, y: ((0.5 * g) / y,),
    "maximum": lambda g, a, b, y: (_tie(a > b, a.eq(b), g), _tie(b > a, a.eq(b), g)),
    "minimum": lambda g, a, b, y: (_tie(a < b, a.eq(b), g), _tie(b < a, a.eq(b), g)),
}


def adjoint_contributions(op: str, g: Expr, args: list[Expr], y: Expr) -> tuple[Expr, ...]:
    rule = RULES.get(op)
    if rule is None:
        raise NotImplementedError(f"no derivative rule for op {op!r}")
    return rule(g, *args, y)


def values_needed(graph: Graph, live: set[int]) -> set[int]:
    """Node ids whose forward values the backward pass reads (for non-constant arguments)."""
    needed: set[int] = set()
    for n in graph.nodes:
        if n.id not in live or n.op not in RULES:
            continue
        args = [Expr.name(f"a{k}") for k in range(len(n.args))]
        grads = adjoint_contributions(n.op, Expr.name("g"), args, Expr.name("y"))
        for k, (arg, grad) in enumerate(zip(n.args, grads)):
            if graph.nodes[arg].op == "const":
                continue
            used = grad.names()
            needed |= {n.args[m] for m in range(len(n.args)) if f"a{m}" in used}
            if "y" in used:
                needed.add(n.id)
    return needed
