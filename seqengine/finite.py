"""`check_finite`: stop at the first NaN/Inf with its step and the name of the value.

A declaration that divides by zero or takes the log of a negative number is the
author's business; this module tells them where it happened. ``se.RNN(...,
check_finite=True)`` calls `check_forward` after every forward and
`check_backward` after every backward:

- The fast path only scans arrays: the outputs, final states and gradients,
  and in training mode every state and saved value on the tape
  (``state_<s>`` [T + 1, B, H], ``saved_<v>`` [T, B, H]).
- When something is not finite, the first (layer, direction) that produced it
  is re-run by a small NumPy interpreter of the cell's graph, in the layer's
  dtype, with the same forward semantics (`differentiate.FORWARD`) and the same
  derivative rules (`differentiate.RULES`) as the generated kernels. Each step
  takes its states from the tape, so the first step is found directly and the
  first non-finite node in topological order (forward) or reverse topological
  order (backward) is named: an assigned name (``c``), or the sub-expression
  (``log(a - 1)``) with the equation line it belongs to.

The interpreter runs only to explain a failure; nothing here slows a finite run
beyond the ``np.isfinite`` scans.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .cell import Cell
from .compiler.differentiate import FORWARD, RULES, Expr
from .compiler.graph import Graph
from .compiler.parse import parse_cell


class NonFiniteError(FloatingPointError):
    """The first NaN or Inf that a forward or backward pass produced.

    Attributes: ``phase`` ("forward" | "backward"), ``step`` (the kernel's step, counted from the start of
    the direction's own sequence; None when it could not be located), ``time`` (that step's index in the
    caller's sequence for batch row ``row``: differs from ``step`` in a reverse direction), ``name`` (a
    readable name of the value: an assigned name, a sub-expression, ``x``, ``h_prev``, a parameter, or
    ``d<name>`` for an adjoint), ``kind`` ("value", "input", "initial state", "parameter", "adjoint",
    "gradient", "output"), ``value`` (the offending number), ``row``/``unit`` (batch row, hidden unit),
    ``layer``/``direction`` (0 forward, 1 reverse), ``equation`` (the equation line, when there is one).
    """

    def __init__(self, message: str, *, phase: str, step: int | None, name: str, kind: str, value: float,
                 row: int | None = None, unit: int | None = None, layer: int = 0, direction: int = 0,
                 time: int | None = None, equation: str | None = None, cell: str = ""):
        super().__init__(message)
        self.phase, self.step, self.name, self.kind, self.value = phase, step, name, kind, value
        self.row, self.unit, self.layer, self.direction = row, unit, layer, direction
        self.time, self.equation, self.cell = time, equation, cell


# -- the interpreter ----------------------------------------------------------------------------------

def _np_where(cond, a, b):
    return np.where(cond, a, b)


class _IfExpToWhere(ast.NodeTransformer):
    """`a if cond else b` (a scalar select in the kernels) -> `_where(cond, a, b)` over arrays."""

    def visit_IfExp(self, node):
        self.generic_visit(node)
        return ast.Call(ast.Name("_where", ast.Load()), [node.test, node.body, node.orelse], [])


def _namespace(dtype: np.dtype) -> dict:
    """NumPy versions of the backend helpers, with the kernels' NaN behaviour (`relu`, `maximum`, `minimum`
    select with a comparison, so a NaN argument may be dropped exactly as in the generated code)."""
    F = dtype.type

    def sigmoid(v):
        return F(1.0) / (F(1.0) + np.exp(-v))

    return {
        "F": F, "_where": _np_where, "sigmoid": sigmoid, "tanh": np.tanh, "exp": np.exp, "log": np.log,
        "relu": lambda v: np.where(v > F(0.0), v, F(0.0)),
        "softplus": lambda v: np.maximum(v, F(0.0)) + np.log1p(np.exp(-np.abs(v))),
        "abs": np.abs, "sqrt": np.sqrt,
        "maximum": lambda a, b: np.where(a >= b, a, b),
        "minimum": lambda a, b: np.where(a <= b, a, b),
    }


def _compile(expr: Expr, argnames: list[str], namespace: dict) -> Callable:
    """A NumPy function of `argnames` from one expression of the rule tables (never from user text)."""
    body = _IfExpToWhere().visit(expr.node)
    fn = ast.Expression(ast.Lambda(ast.arguments([], [ast.arg(a) for a in argnames], None, [], [], None, []), body))
    return eval(compile(ast.fix_missing_locations(fn), "<seqengine.finite>", "eval"), dict(namespace))


class StepInterpreter:
    """One time step of a cell's graph in NumPy, vectorized over the batch, in a given dtype."""

    def __init__(self, cell: Cell, dtype):
        self.cell = cell
        self.graph: Graph = parse_cell(cell)
        self.live = self.graph.live()
        self.dtype = np.dtype(dtype)
        ns = _namespace(self.dtype)
        self.forward_fns: dict[str, Callable] = {}
        self.rule_fns: dict[str, Callable] = {}
        for op, rule in RULES.items():
            n = 2 if op in ("add", "sub", "mul", "div", "maximum", "minimum") else 1
            args = [f"a{k}" for k in range(n)]
            self.forward_fns[op] = _compile(FORWARD[op](*[Expr.name(a) for a in args]), args, ns)
            grads = rule(Expr.name("g"), *[Expr.name(a) for a in args], Expr.name("y"))
            self.rule_fns[op] = [_compile(gk, ["g", *args, "y"], ns) for gk in grads]

    def forward(self, params: dict, x_t: np.ndarray, prev: dict) -> dict[int, np.ndarray]:
        """Values of every live node: x_t [B, D], prev {s: [B, H]} -> {node id: [B, H] (or a scalar)}."""
        g, F = self.graph, self.dtype.type
        vals: dict[int, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for n in g.nodes:
                if n.id not in self.live:
                    continue
                if n.op == "x":
                    v = x_t
                elif n.op == "prev":
                    v = prev[n.attr]
                elif n.op == "param":
                    v = params[n.attr]
                elif n.op == "const":
                    v = F(n.attr)
                elif n.op == "matvec":
                    v = vals[n.args[0]] @ params[n.attr].T
                else:
                    v = self.forward_fns[n.op](*[vals[a] for a in n.args])
                vals[n.id] = np.asarray(v, dtype=self.dtype)
        return vals

    def backward(self, params: dict, vals: dict, dy_t: np.ndarray, dnext: dict, on_adjoint=None):
        """Adjoints of one step. dy_t [B, H] (adjoint of the output), dnext {s: [B, H]} (of the new states)
        -> {node id: adjoint} for every node reached, including leaves (x, prev, param).

        `on_adjoint(node id, adjoint)` is called as each non-leaf node's adjoint becomes complete (reverse
        topological order) and for each leaf contribution, so the first non-finite one can stop the walk.
        """
        g = self.graph
        adj: dict[int, np.ndarray] = {}

        def add(i, v):
            v = np.asarray(v, dtype=self.dtype)
            adj[i] = v if i not in adj else adj[i] + v

        with np.errstate(all="ignore"):
            add(g.output, dy_t)
            for s, i in g.new_state.items():
                add(i, dnext[s])
            for n in reversed(g.nodes):
                if n.id not in self.live or n.id not in adj or n.is_leaf:
                    continue
                d = np.broadcast_to(adj[n.id], vals[n.id].shape if np.ndim(vals[n.id]) else np.shape(adj[n.id]))
                if on_adjoint is not None:
                    on_adjoint(n.id, d)
                if n.op == "matvec":
                    a = n.args[0]
                    add(a, d @ params[n.attr])
                    continue
                contribs = [fn(d, *[vals[a] for a in n.args], vals[n.id]) for fn in self.rule_fns[n.op]]
                for a, c in zip(n.args, contribs):
                    if g.nodes[a].op != "const":
                        add(a, c)
        return adj


# -- naming ---------------------------------------------------------------------------------------------

def describe(graph: Graph, i: int, depth: int = 4) -> str:
    """A readable name of node i: its assigned name, or the expression that computes it (`log(a + k)`),
    written as a Python expression (so with the fewest parentheses) and cut at `depth` levels."""
    named = {j: name for name, j in graph.names.items()}
    binops = {"add": ast.Add, "sub": ast.Sub, "mul": ast.Mult, "div": ast.Div}

    def tree(j: int, d: int) -> ast.expr:
        n = graph.nodes[j]
        if j in named and j != i:
            return ast.Name(named[j], ast.Load())
        if n.op in ("x", "prev", "param"):
            return ast.Name(graph.label(j), ast.Load())
        if n.op == "const":
            v = float(n.attr)
            return ast.Constant(int(v) if v.is_integer() else v)
        if d <= 0:
            return ast.Name("...", ast.Load())
        if n.op == "matvec":
            return ast.BinOp(ast.Name(str(n.attr), ast.Load()), ast.MatMult(), tree(n.args[0], d - 1))
        if n.op == "neg":
            return ast.UnaryOp(ast.USub(), tree(n.args[0], d - 1))
        if n.op in binops:
            return ast.BinOp(tree(n.args[0], d - 1), binops[n.op](), tree(n.args[1], d - 1))
        return ast.Call(ast.Name(n.op, ast.Load()), [tree(a, d - 1) for a in n.args], [])

    if i in named:
        return named[i]
    return ast.unparse(tree(i, depth))


def equation_of(cell: Cell, graph: Graph, i: int) -> str | None:
    """The equation line (1-based number and text) in which node i is computed first."""
    named = {j for j in graph.names.values()}
    for name, root in graph.names.items():   # assignment order
        stack, seen = [root], set()
        while stack:
            j = stack.pop()
            if j == i:
                for k, line in enumerate(cell.equations.splitlines(), 1):
                    if re.match(rf"\s*{re.escape(name)}\s*=", line):
                        return f"line {k}: {line.strip()}"
                return None
            if j in seen or (j in named and j != root):
                continue
            seen.add(j)
            stack.extend(graph.nodes[j].args)
    return None


# -- the checks -----------------------------------------------------------------------------------------

def _all_finite(arrays) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


def _first_bad(a: np.ndarray) -> tuple[int, ...]:
    return tuple(int(k) for k in np.argwhere(~np.isfinite(a))[0])


def _time_index(step: int, row: int, direction: int, T: int, lengths) -> int:
    if direction == 0:
        return step
    n = T if lengths is None else int(lengths[row])
    return n - 1 - step if step < n else step


def _where_text(layer: int, direction: int, num_layers: int, num_dirs: int) -> str:
    if num_layers == 1 and num_dirs == 1:
        return ""
    return f" (layer {layer}{', reverse direction' if direction else ''})"


def _raise(cell: Cell, graph: Graph | None, *, phase: str, step, name: str, kind: str, value: float, row, unit,
           layer: int, direction: int, num_layers: int, num_dirs: int, T: int, lengths, node: int | None = None,
           detail: str = ""):
    time = None if step is None or row is None else _time_index(step, row, direction, T, lengths)
    equation = equation_of(cell, graph, node) if (graph is not None and node is not None) else None
    what = "NaN" if np.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    where = f"step {step}" if step is not None else "an unknown step"
    if time is not None and time != step:
        where += f" (time index {time} of batch row {row})"
    msg = (f"check_finite: cell {cell.name!r}: {phase} {where}{_where_text(layer, direction, num_layers, num_dirs)}: "
           f"{kind} `{name}` is {what}")
    if row is not None:
        msg += f" at batch row {row}" + (f", unit {unit}" if unit is not None else "")
    if equation:
        msg += f"\n    {equation}"
    if detail:
        msg += f"\n  {detail}"
    raise NonFiniteError(msg, phase=phase, step=step, name=name, kind=kind, value=float(value), row=row, unit=unit,
                         layer=layer, direction=direction, time=time, equation=equation, cell=cell.name)


def _inputs_text(interp: StepInterpreter, vals: dict, i: int, row: int, unit) -> str:
    """`arg = value` for the arguments of node i at (row, unit): what the failing operation was given."""
    g, parts = interp.graph, []
    for a in g.nodes[i].args:
        v = vals.get(a)
        if v is None:
            continue
        v = np.asarray(v)
        num = v[row, unit] if v.ndim == 2 and unit is not None and unit < v.shape[1] else (v if v.ndim == 0 else None)
        if num is not None:
            parts.append(f"{describe(g, a)} = {float(num):.6g}")
    return ("its arguments: " + ", ".join(parts)) if parts else ""


MODES = (False, True, "all")


def check_forward(cell: Cell, params, x: np.ndarray, state0: dict, y: np.ndarray, final: dict, tape, *,
                  lengths=None, backend: str = "cpu", mode=True):
    """Raise `NonFiniteError` at the first NaN/Inf of a forward of `seqengine.layers.forward`.

    params [layer][direction] {name: array}; x [T, B, D]; state0 {s: [L*Dn, B, H]}; y, final: its results;
    tape: its `StackTape` (None in inference: the layers are then re-run in training mode to locate the value).
    mode True scans the outputs and the tape; "all" also replays every step in the interpreter, which finds a
    NaN/Inf that no output, state or saved value carries (``tanh(log(0))`` is a finite -1).
    """
    if mode == "all":
        if tape is None:
            from . import layers
            _, _, tape = layers.forward(cell, params, x, state0, True, lengths=lengths, backend=backend)
        _locate_forward(cell, params, state0, tape, lengths, y, final, every_step=True)
        return
    if tape is None and _all_finite([y, *final.values()]):
        return
    if tape is not None and _all_finite([y, *final.values()]) and _all_finite(
            a for row in tape.tapes for t in row for k, a in t.arrays.items()
            if k.startswith(("state_", "saved_"))):
        return
    if tape is None:   # inference saved nothing: replay in training mode (inference has no dropout)
        from . import layers
        _, _, tape = layers.forward(cell, params, x, state0, True, lengths=lengths, backend=backend)
    _locate_forward(cell, params, state0, tape, lengths, y, final)


def _locate_forward(cell, params, state0, tape, lengths, y, final, every_step=False):
    num_layers, num_dirs = len(params), len(params[0])
    graph = parse_cell(cell)
    T = tape.input_shape[0]
    for k in range(num_layers):
        for d in range(num_dirs):
            t_ = tape.tapes[k][d]
            p = params[k][d]
            ctx = dict(layer=k, direction=d, num_layers=num_layers, num_dirs=num_dirs, T=T, lengths=lengths)
            for name, a in p.items():
                if not np.isfinite(a).all():
                    idx = _first_bad(a)
                    _raise(cell, graph, phase="forward", step=0, name=name, kind="parameter", value=a[idx],
                           row=None, unit=idx[0], **ctx)
            for s in cell.state:
                a = state0[s][k * num_dirs + d]
                if not np.isfinite(a).all():
                    r, j = _first_bad(a)
                    _raise(cell, graph, phase="forward", step=0, name=f"{s}_prev", kind="initial state",
                           value=a[r, j], row=r, unit=j, **ctx)
            states = {s: t_.arrays[f"state_{s}"] for s in cell.state}               # [T + 1, B, H]
            saved = {n: a for n, a in t_.arrays.items() if n.startswith("saved_")}   # [T, B, H]
            bad_steps = [np.flatnonzero(~np.isfinite(a[1:]).reshape(a.shape[0] - 1, -1).all(axis=1))
                         for a in states.values()]
            bad_steps += [np.flatnonzero(~np.isfinite(a).reshape(a.shape[0], -1).all(axis=1)) for a in saved.values()]
            bad_steps += [np.flatnonzero(~np.isfinite(t_.x).reshape(T, -1).all(axis=1))]
            bad = [int(b[0]) for b in bad_steps if b.size]
            if not bad and not every_step:
                continue
            step = min(bad, default=T)
            interp = StepInterpreter(cell, t_.x.dtype)
            for t in (range(step + 1) if every_step else [step]):
                if t < T:
                    _interpret_step(cell, graph, interp, p, t_.x[t], {s: a[t] for s, a in states.items()}, t,
                                    lengths, k, ctx)
            if not bad:
                continue
            # the interpreter stayed finite (the kernels' float32 functions differ in the last bits): name the array
            for name, a in list(saved.items()) + [(f"state_{s}", a[1:]) for s, a in states.items()]:
                if not np.isfinite(a[step]).all():
                    r, j = _first_bad(a[step])
                    label = name[len("saved_"):] if name.startswith("saved_") else name[len("state_"):]
                    if re.fullmatch(r"v\d+", label):   # an anonymous value: saved_v12 -> its expression
                        label = describe(graph, int(label[1:]))
                    _raise(cell, graph, phase="forward", step=step, name=label, kind="value", value=a[step][r, j],
                           row=r, unit=j, **ctx)
    # nothing on the tapes: an output array itself
    for name, a in [("y", y)] + [(f"final {s}", v) for s, v in final.items()]:
        if not np.isfinite(a).all():
            idx = _first_bad(a)
            _raise(cell, graph, phase="forward", step=None, name=name, kind="output", value=a[idx], row=None,
                   unit=None, layer=0, direction=0, num_layers=num_layers, num_dirs=num_dirs, T=T, lengths=lengths)


def _interpret_step(cell, graph, interp, p, x_t, prev, step, lengths, layer, ctx):
    """Raise at the first non-finite input or node value of one forward step (topological order)."""
    if not np.isfinite(x_t).all():
        r, j = _first_bad(x_t)
        _raise(cell, graph, phase="forward", step=step, name="x" if layer == 0 else f"x (the output of layer "
               f"{layer - 1})", kind="input", value=x_t[r, j], row=r, unit=j, **ctx)
    vals = interp.forward(p, x_t, prev)
    active = np.ones(x_t.shape[0], bool) if lengths is None else step < lengths
    for n in graph.nodes:
        v = vals.get(n.id)
        if v is None or n.is_leaf or np.ndim(v) != 2:
            continue
        bad_rows = ~np.isfinite(v) & active[:, None]
        if bad_rows.any():
            r, j = (int(q) for q in np.argwhere(bad_rows)[0])
            _raise(cell, graph, phase="forward", step=step, name=describe(graph, n.id), kind="value",
                   value=v[r, j], row=r, unit=j, node=n.id, detail=_inputs_text(interp, vals, n.id, r, j), **ctx)


def check_backward(cell: Cell, params, tape, dy: np.ndarray, dfinal: dict, dx: np.ndarray, dstate0: dict,
                   grads, *, backend: str = "cpu"):
    """Raise `NonFiniteError` at the first NaN/Inf of a `seqengine.layers.backward`.

    Arguments: those of `layers.backward` and its results (grads [layer][direction] {name: array}). "First"
    is in the order backward computes: the last layer first, and within a direction from step T - 1 down.
    """
    if _all_finite([dx, *dstate0.values(), *(a for row in grads for g in row for a in g.values())]):
        return
    _locate_backward(cell, params, tape, dy, dfinal, backend)


def _locate_backward(cell, params, tape, dy, dfinal, backend):
    from . import functional
    from .layers import reverse_within_lengths
    num_layers, num_dirs = len(params), len(params[0])
    graph = parse_cell(cell)
    T, B, _ = tape.input_shape
    H = dy.shape[2] // num_dirs
    lengths = tape.lengths
    d_out = dy
    for k in reversed(range(num_layers)):   # the loop of layers.backward, checking each direction's results
        d_in = None
        for d in range(num_dirs):
            ctx = dict(layer=k, direction=d, num_layers=num_layers, num_dirs=num_dirs, T=T, lengths=lengths)
            dy_d = np.ascontiguousarray(d_out[:, :, d * H:(d + 1) * H])
            if d == 1:
                dy_d = reverse_within_lengths(dy_d, lengths)
            dfin = {s: np.ascontiguousarray(dfinal[s][k * num_dirs + d]) for s in cell.state}
            dx_d, ds0, g = functional.backward(cell, params[k][d], tape.tapes[k][d], dy_d, dfin, backend)
            if not _all_finite([dx_d, *ds0.values(), *g.values()]):
                _locate_direction_backward(cell, graph, params[k][d], tape.tapes[k][d], dy_d, dfin, ctx)
                bad = next((n, a) for n, a in [("dx", dx_d), *((f"d{s}_0", a) for s, a in ds0.items()),
                                               *((f"grad {p}", a) for p, a in g.items())] if not np.isfinite(a).all())
                idx = _first_bad(bad[1])
                _raise(cell, graph, phase="backward", step=None, name=bad[0], kind="gradient", value=bad[1][idx],
                       row=None, unit=None, **ctx)
            if d == 1:
                dx_d = reverse_within_lengths(dx_d, lengths)
            d_in = dx_d if d_in is None else d_in + dx_d
        if tape.masks[k] is not None:
            d_in = d_in * tape.masks[k]
        d_out = d_in


def _locate_direction_backward(cell, graph, p, t_, dy_d, dfin, ctx):
    """Reverse steps of one direction in the interpreter; raise at the first non-finite adjoint."""
    states = {s: t_.arrays[f"state_{s}"] for s in cell.state}
    x = t_.x
    T, B = dy_d.shape[:2]
    lengths = ctx["lengths"]
    lens = np.full(B, T) if lengths is None else np.asarray(lengths)
    interp = StepInterpreter(cell, dy_d.dtype)
    zero = {s: np.zeros_like(dfin[s]) for s in cell.state}
    dnext = dict(zero)
    consumers = graph.consumers()
    for step in range(T - 1, -1, -1):
        active = step < lens
        last = (step == lens - 1)[:, None]
        dnext = {s: np.where(last, dfin[s], dnext[s]) for s in cell.state}
        dy_t = np.where(active[:, None], dy_d[step], 0).astype(dy_d.dtype)
        for s in cell.state:
            if not np.isfinite(dnext[s][active]).all():
                r, j = _first_bad(np.where(active[:, None], dnext[s], 0))
                _raise(cell, graph, phase="backward", step=step, name=f"d{s}", kind="adjoint", value=dnext[s][r, j],
                       row=r, unit=j, detail=f"the adjoint of the final state `{s}` passed in", **ctx)
        if not np.isfinite(dy_t).all():
            r, j = _first_bad(dy_t)
            _raise(cell, graph, phase="backward", step=step, name="dy", kind="adjoint", value=dy_t[r, j], row=r,
                   unit=j, detail="the adjoint of the output passed in to backward", **ctx)
        vals = interp.forward(p, x[step], {s: a[step] for s, a in states.items()})

        def on_adjoint(i, adj, step=step, vals=vals, active=active):
            a = np.asarray(adj)
            if a.ndim != 2:
                return
            bad = ~np.isfinite(a) & active[:, None]
            if not bad.any():
                return
            r, j = (int(q) for q in np.argwhere(bad)[0])
            users = [describe(graph, u) for u in consumers.get(i, ()) if u in interp.live]
            here = np.asarray(vals[i])
            detail = (f"where `{describe(graph, i)}` = {float(here[r, j]):.6g}" if here.ndim == 2 else "")
            if users:
                detail += f"{'; ' if detail else ''}its adjoint comes from " + ", ".join(f"`{u}`" for u in users)
            name = describe(graph, i)
            _raise(cell, graph, phase="backward", step=step, name=f"d{name}" if name.isidentifier() else f"d({name})",
                   kind="adjoint", value=a[r, j], row=r, unit=j, node=i, detail=detail, **ctx)

        adj = interp.backward(p, vals, dy_t, dnext, on_adjoint)
        # leaves: the adjoints of the previous states, x, and vector parameters
        for n in graph.nodes:
            if n.is_leaf and n.op != "const" and n.id in adj:
                a = np.asarray(adj[n.id])
                bad = ~np.isfinite(a) & active[:, None] if a.ndim == 2 else ~np.isfinite(a)
                if bad.any():
                    where = [int(q) for q in np.argwhere(bad)[0]]
                    r, j = (where[0], where[1]) if a.ndim == 2 else (None, where[0])
                    kind = {"param": "gradient", "x": "gradient", "prev": "adjoint"}[n.op]
                    _raise(cell, graph, phase="backward", step=step, name=f"d{graph.label(n.id)}", kind=kind,
                           value=a[r, j] if r is not None else a[j], row=r, unit=j, node=n.id, **ctx)
        new = {}
        for s in cell.state:
            i = _prev_node(graph, s)
            v = adj[i] if i is not None and i in adj else zero[s]
            new[s] = np.where(active[:, None], v, 0).astype(dy_d.dtype)
        dnext = new


def _prev_node(graph: Graph, s: str) -> int | None:
    return next((n.id for n in graph.nodes if n.op == "prev" and n.attr == s), None)
