"""Emit the Numba CPU kernels of a scheduled cell as readable Python source.

Kernel strategy (see docs/ARCHITECTURE.md): the batch is split into chunks of
rows, one per Numba thread (``prange``). Each thread owns its rows for all T
steps, so steps need no synchronisation; its per-step recurrent products are
single-threaded GEMMs (``np.dot(a, b, out)``, BLAS limited to one thread by
the caller). Within a step, each segment's pointwise work is one fused loop
over (row, hidden unit). Hoisted and deferred GEMMs run outside the kernels.

Generated kernels (one module per cell and dtype):

- ``forward_train``: saves what backward needs; states kept for all steps.
- ``forward_infer``: saves nothing; states kept in two alternating slots.
- ``backward``: reverse time loop; writes dP of every product for the
  deferred weight GEMMs, propagates state adjoints, accumulates vector grads.

Array names in the kernels (all C-contiguous; shapes in the header comments):
``x_proj`` [T, B, Gx*H] products with x; ``state_<s>`` [T+1, B, H] (train) or
[2, B, H] (infer); ``param_<p>`` [H]; ``saved_<v>`` [T, B, H];
``weight_<g>`` [k*H, in] stacked matrices (forward multiplies by its transpose, a BLAS flag);
``prod_<g>`` [NC, BC, k*H] per-thread products; ``value_<v>`` [NC, BC, H]
per-thread values crossing segments.
"""

from __future__ import annotations

import ast

from ...compiler.differentiate import FORWARD, Expr, adjoint_contributions
from ...compiler.graph import Graph
from ...compiler.schedule import Schedule

FASTMATH = '{"nsz", "arcp", "contract", "afn", "reassoc"}'   # keeps NaN/Inf semantics
# error_model="numpy": no ZeroDivisionError check per division, which would keep loops scalar
JIT = '@njit(cache=True, fastmath=FASTMATH, error_model="numpy")'

# Scalar helpers, written per dtype (F is np.float32 or np.float64) so that no
# float64 constant promotes a float32 loop.
HELPERS = {
    "sigmoid": "def sigmoid(v):\n    return F(1.0) / (F(1.0) + math.exp(-v))",
    "tanh": "def tanh(v):\n    return math.tanh(v)",
    "exp": "def exp(v):\n    return math.exp(v)",
    "log": "def log(v):\n    return math.log(v)",
    "relu": "def relu(v):\n    return v if v > F(0.0) else F(0.0)",
    "softplus": "def softplus(v):\n    # log(1 + e^v) without overflow for large v\n"
                "    return max(v, F(0.0)) + math.log1p(exp(-abs(v)))",
    "abs": "def abs_(v):\n    return abs(v)",
    "sqrt": "def sqrt(v):\n    return math.sqrt(v)",
    "maximum": "def maximum(a, b):\n    return a if a >= b else b",
    "minimum": "def minimum(a, b):\n    return a if a <= b else b",
}
HELPER_NAME = {"abs": "abs_"}
# float32: vectorizable versions (seqengine.backends.cpu.fastmath) instead of libm calls
FAST32 = {"exp": "exp32", "tanh": "tanh32", "sigmoid": "sigmoid32"}


def raise_vectorizer_limits():
    """Let LLVM vectorize a fused loop that touches many arrays.

    Numba cannot mark array arguments `noalias`, so LLVM guards a vectorized loop with runtime
    overlap checks, one per pair of arrays, and by default gives up beyond a few dozen: every
    gate loop of an LSTM stayed scalar. The limit is a process-wide LLVM option that only widens
    which loops may vectorize (each check still runs, and falls back to the scalar loop).
    """
    import llvmlite.binding as llvm
    if llvm.llvm_version_info[0] >= 14:   # the option's name since LLVM 14; unknown options exit LLVM
        llvm.set_option("seqengine", "-vectorize-memory-check-threshold=4096")


def _fastmath_digest() -> str:
    """Generated modules import fastmath; its digest in their source keys Numba's cache to its version."""
    import hashlib
    from . import fastmath
    return hashlib.sha256(open(fastmath.__file__, "rb").read()).hexdigest()[:16]


class _Writer:
    def __init__(self):
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line: str = ""):
        self.lines.append("    " * self.depth + line if line else "")

    def indent(self):
        w = self

        class _Block:
            def __enter__(self):
                w.depth += 1

            def __exit__(self, *exc):
                w.depth -= 1
        return _Block()


def _load(src: str) -> Expr:
    return Expr(ast.parse(src, mode="eval").body)


def _rename_helpers(e: Expr) -> Expr:
    for n in ast.walk(e.node):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in HELPER_NAME:
            n.func.id = HELPER_NAME[n.func.id]
    return e


class CpuEmitter:
    def __init__(self, sched: Schedule, dtype: str):
        self.s, self.g, self.dtype = sched, sched.graph, dtype
        g = self.g
        self.consumers = {k: [c for c in v if c in sched.live] for k, v in g.consumers().items()}
        self.named = {i: name for name, i in g.names.items()}
        self.state_of = {i: s for s, i in g.new_state.items()}
        self.vec_index = {p: k for k, p in enumerate(g.vectors)}
        self.operands = {grp.operand for grp in sched.operand_groups()}
        self.saved = set(sched.saved)

    # -- naming ------------------------------------------------------------------
    def local(self, i: int) -> str:
        n = self.g.nodes[i]
        if i in self.named:
            return f"{self.named[i]}_"
        return f"{n.attr}_prev_" if n.op == "prev" else f"v{i}_"

    def saved_array(self, i: int) -> str:
        return "saved_" + self.local(i).rstrip("_")

    def value_array(self, i: int) -> str:
        return "value_" + self.local(i).rstrip("_")

    def block(self, i: int) -> str:
        """`j` offset by the product's block inside its group."""
        grp = self.s.group_of[i]
        k = grp.members.index(i)
        return "j" if k == 0 else f"{k} * H + j"

    def is_output_state(self) -> bool:
        return self.g.output in self.state_of

    # -- value loads (shared by forward and backward) ----------------------------
    def leaf(self, i: int, state_slot) -> Expr:
        n = self.g.nodes[i]
        if n.op == "prev":
            return _load(f"state_{n.attr}[{state_slot(False)}, b, j]")
        if n.op == "param":
            return _load(f"param_{n.attr}[j]")
        if n.op == "const":
            return Expr.num(n.attr)
        raise AssertionError(f"no pointwise load for {n.op}")

    # -- forward -----------------------------------------------------------------
    def forward(self, training: bool) -> tuple[str, list[str]]:
        s, g, w = self.s, self.g, _Writer()
        name = "forward_train" if training else "forward_infer"

        def slot(new: bool) -> str:
            if training:
                return "t + 1" if new else "t"
            return "(t + 1) & 1" if new else "t & 1"

        def stored_value(i: int) -> str:
            if training and i in self.saved:
                return f"{self.saved_array(i)}[t, b, j]"
            return f"{self.value_array(i)}[c, r, j]"

        args = ["chunks", "lengths", "x_proj"]
        args += [f"state_{st}" for st in s.states]
        args += [f"weight_{grp.name}" for grp in s.groups]
        args += [f"param_{p}" for p in g.vectors]
        out_y = not (training and self.is_output_state())
        if out_y:
            args.append("y")
        if training:
            args += [self.saved_array(i) for i in s.saved]
        args += [f"prod_{grp.name}" for grp in s.groups]
        scratch_values = sorted(i for i in (s.cross_values | self.operands)
                                if not (training and i in self.saved))
        args += [self.value_array(i) for i in scratch_values]

        inlined = self.inlinable(training)

        def expr_of(i: int, seg: int) -> Expr:
            n = g.nodes[i]
            if n.is_leaf:
                return self.leaf(i, slot)
            if n.op == "matvec":
                grp = s.group_of[i]
                if grp.kind == "x":
                    return Expr(ast.parse(f"x_proj[t, b, {self.block(i)}]", mode="eval").body)
                return Expr(ast.parse(f"prod_{grp.name}[c, r, {self.block(i)}]", mode="eval").body)
            if s.segment_of[i] < seg:
                return Expr(ast.parse(stored_value(i), mode="eval").body)
            if i in inlined:
                return compute(i, seg)
            return Expr.name(self.local(i))

        def compute(i: int, seg: int) -> Expr:
            n = g.nodes[i]
            return _rename_helpers(FORWARD[n.op](*[expr_of(a, seg) for a in n.args]))

        w(JIT)
        w(f"def {name}_rows(c, b0, b1, {', '.join(args[1:])}):")
        with w.indent():
            w('"""One thread\'s share: batch rows b0:b1 (chunk c) for all T steps."""')
            self.header_comments(w, args, training)
            w("T = x_proj.shape[0]")
            w(f"H = state_{s.states[0]}.shape[2]")
            w("for t in range(T):")
            with w.indent():
                for seg, nodes in enumerate(s.segments):
                    for grp in s.groups:
                        if grp.level != seg:
                            continue
                        op = self.operand_rows(grp, training, slot)
                        w(f"np.dot({op}, weight_{grp.name}.T, prod_{grp.name}[c, :b1 - b0])"
                          f"   # {' ; '.join(grp.matrices)} @ {g.label(grp.operand)}")
                    w("for b in range(b0, b1):")
                    with w.indent():
                        w("r = b - b0")
                        self.forward_padding(w, seg, training, slot)
                        w("for j in range(H):")
                        with w.indent():
                            for i in nodes:
                                n = g.nodes[i]
                                targets = self.forward_stores(i, training, slot, stored_value)
                                if n.op == "matvec":   # a product read straight from its GEMM
                                    if targets:
                                        w(f"{self.local(i)} = {expr_of(i, seg).source()}")
                                elif i not in inlined:
                                    w(f"{self.local(i)} = {compute(i, seg).source()}")
                                for target in targets:
                                    w(f"{target} = {self.local(i)}")
        self.driver(w, name, args)
        return "\n".join(w.lines), args

    def forward_padding(self, w, seg: int, training: bool, slot):
        """Steps past a sequence's length: no work; the last segment writes what later steps read.

        Training zeroes the state rows (the output may be a view of them) and the saved operands of the
        deferred weight GEMMs; inference carries the state forward so slot T & 1 ends as the final state.
        """
        w("if t >= lengths[b]:   # past the end of this sequence")
        with w.indent():
            if seg == len(self.s.segments) - 1:
                w("for j in range(H):")
                with w.indent():
                    for st in self.s.states:
                        if training:
                            w(f"state_{st}[t + 1, b, j] = F(0.0)")
                        else:
                            w(f"state_{st}[(t + 1) & 1, b, j] = state_{st}[t & 1, b, j]")
                    if not (training and self.is_output_state()):
                        w("y[t, b, j] = F(0.0)")
                    if training:
                        for i in sorted(self.operands):
                            w(f"{self.saved_array(i)}[t, b, j] = F(0.0)")
            w("continue")

    def backward_padding(self, w, seg: int):
        """Steps past a sequence's length: the adjoint of the final state waits at step `lengths[b]`,
        and the product adjoints are zero, so the weight GEMMs ignore the padding."""
        s = self.s
        w("if t >= lengths[b]:   # past the end of this sequence")
        with w.indent():
            w("for j in range(H):")
            with w.indent():
                for grp in s.groups:
                    if grp.level == seg:
                        for k in range(len(grp.members)):
                            w(f"d_prod_{grp.name}[t, b, {'j' if k == 0 else f'{k} * H + j'}] = F(0.0)")
                if seg == 0:
                    if s.x_group and not s.x_shares_adjoint_with:
                        for k in range(len(s.x_group.members)):
                            w(f"d_x_proj[t, b, {'j' if k == 0 else f'{k} * H + j'}] = F(0.0)")
                    for st in s.states:
                        w(f"d_state_{st}[t & 1, c, r, j] = d_final_{st}[b, j]")
            w("continue")

    def operand_rows(self, grp, training: bool, slot) -> str:
        n = self.g.nodes[grp.operand]
        if grp.kind == "state":
            return f"state_{n.attr}[{slot(False)}, b0:b1]"
        if training:
            return f"{self.saved_array(grp.operand)}[t, b0:b1]"
        return f"{self.value_array(grp.operand)}[c, :b1 - b0]"

    def forward_stores(self, i: int, training: bool, slot, stored_value) -> list[str]:
        targets = []
        if i in self.state_of:
            targets.append(f"state_{self.state_of[i]}[{slot(True)}, b, j]")
        if i == self.g.output and not (training and i in self.state_of):
            targets.append("y[t, b, j]")
        if (training and i in self.saved) or i in self.s.cross_values or i in self.operands:
            targets.append(stored_value(i))
        return targets

    def inlinable(self, training: bool) -> set[int]:
        """Anonymous single-use values folded into their consumer's expression."""
        s, out = self.s, set()
        for n in self.g.nodes:
            i = n.id
            if i not in s.live or n.is_leaf or n.op == "matvec" or i in self.named:
                continue
            users = self.consumers[i]
            if (len(users) == 1 and s.segment_of[users[0]] == s.segment_of[i]
                    and self.g.nodes[users[0]].args.count(i) == 1
                    and not self.forward_stores(i, training, lambda new: "", lambda i: "")):
                out.add(i)
        return out

    def header_comments(self, w, args, training):
        s = self.s
        kx = len(s.x_group.members) if s.x_group else 0
        shapes = {"chunks": "[NC + 1] batch row bounds per thread", "x_proj": f"[T, B, {kx}*H] x products",
                  "y": "[T, B, H] output"}
        for a in args:
            if a.startswith("state_"):
                shapes[a] = "[T + 1, B, H]" if training else "[2, B, H] (slot t & 1 holds step t)"
            elif a.startswith("weight_"):
                grp = next(g for g in s.groups if a.endswith(g.name))
                shapes[a] = f"[{len(grp.members)}*H, in] = [{'; '.join(grp.matrices)}]"
            elif a.startswith("param_"):
                shapes[a] = "[H]"
            elif a.startswith("saved_"):
                shapes[a] = "[T, B, H] saved for backward"
            elif a.startswith("prod_"):
                grp = next(g for g in s.groups if a.endswith(g.name))
                shapes[a] = f"[NC, BC, {len(grp.members)}*H] per-thread products"
            elif a.startswith("value_"):
                shapes[a] = "[NC, BC, H] per-thread values read by a later segment"
        for a in args:
            if a in shapes:
                w(f"# {a}: {shapes[a]}")

    # -- backward ----------------------------------------------------------------
    def backward(self) -> tuple[str, list[str]]:
        s, g, w = self.s, self.g, _Writer()
        out_is_state = self.is_output_state()
        prev_users = self.prev_contrib_segments()

        args = ["chunks", "lengths", "d_y"]
        args += [f"d_final_{st}" for st in s.states] + [f"d_init_{st}" for st in s.states]
        args.append("d_x_proj")
        args += [f"d_prod_{grp.name}" for grp in s.groups]
        args += ["d_params"]
        args += [f"state_{st}" for st in s.states]
        args += [f"weight_{grp.name}" for grp in s.groups]
        args += [f"param_{p}" for p in g.vectors]
        args += [self.saved_array(i) for i in s.saved]
        # per-thread scratch
        args += [f"d_state_{st}" for st in s.states]
        gemm_states = [g.nodes[grp.operand].attr for grp in s.groups if grp.kind == "state"]
        args += [f"d_gemm_{st}" for st in gemm_states]
        args += [f"d_cross_{self.local(i).rstrip('_')}" for i in sorted(s.cross_adjoints)]
        args += [f"d_operand_{self.local(grp.operand).rstrip('_')}" for grp in s.operand_groups()]

        def slot(new: bool) -> str:
            return "t + 1" if new else "t"

        def value(i: int) -> Expr:
            n = g.nodes[i]
            if n.is_leaf:
                return self.leaf(i, slot)
            if i in self.state_of:
                return Expr(ast.parse(f"state_{self.state_of[i]}[t + 1, b, j]", mode="eval").body)
            if i in s.recomputed:   # one op on states/parameters: cheaper to recompute than to keep
                return _rename_helpers(FORWARD[n.op](*[value(a) for a in n.args]))
            assert i in self.saved, f"backward needs value {g.label(i)} that was not saved"
            return Expr(ast.parse(f"{self.saved_array(i)}[t, b, j]", mode="eval").body)

        w(JIT)
        w(f"def backward_rows(c, b0, b1, {', '.join(args[1:])}):")
        with w.indent():
            w('"""One thread\'s share: batch rows b0:b1 (chunk c), steps T-1 down to 0."""')
            w("# d_y: [T, B, H] adjoint of the outputs; d_final_<s>/d_init_<s>: [B, H] state adjoints at T / at 0")
            w("# d_x_proj: [T, B, Gx*H], d_prod_<g>: [T, B, k*H] adjoints of the products, kept for the weight GEMMs")
            w("# d_params: [NC, P, H] per-thread vector gradients; d_state_<s>: [2, NC, BC, H] adjoint of the state")
            w("#   at t + 1 (slot (t + 1) & 1) and at t (slot t & 1); d_gemm_<s>: [NC, BC, H] its GEMM part")
            w("T = d_y.shape[0]")
            w(f"H = state_{s.states[0]}.shape[2]")
            w("for b in range(b0, b1):")
            with w.indent():
                w("r = b - b0")
                w("for j in range(H):")
                with w.indent():
                    for st in s.states:
                        w(f"d_state_{st}[T & 1, c, r, j] = d_final_{st}[b, j]")
                    for st in gemm_states:
                        w(f"d_gemm_{st}[c, r, j] = F(0.0)")
            w("for t in range(T - 1, -1, -1):")
            with w.indent():
                for st in s.states:
                    if len(prev_users[st]) != 1:
                        w(f"d_state_{st}[t & 1, c, :b1 - b0] = F(0.0)")
                for i in sorted(s.cross_adjoints):
                    w(f"d_cross_{self.local(i).rstrip('_')}[c, :b1 - b0] = F(0.0)")
                for seg in range(len(s.segments) - 1, -1, -1):
                    self.backward_segment(w, seg, value, prev_users, out_is_state)
                    for grp in s.groups:
                        if grp.level != seg:
                            continue
                        if grp.kind == "state":
                            target = f"d_gemm_{g.nodes[grp.operand].attr}[c, :b1 - b0]"
                        else:
                            target = f"d_operand_{self.local(grp.operand).rstrip('_')}[c, :b1 - b0]"
                        w(f"np.dot(d_prod_{grp.name}[t, b0:b1], weight_{grp.name}, {target})"
                          f"   # d {g.label(grp.operand)} from {' ; '.join(grp.matrices)}")
            w("for b in range(b0, b1):")
            with w.indent():
                w("r = b - b0")
                w("for j in range(H):")
                with w.indent():
                    for st in s.states:
                        gemm = f" + d_gemm_{st}[c, r, j]" if st in gemm_states else ""
                        w(f"d_init_{st}[b, j] = d_state_{st}[0, c, r, j]{gemm}")
        self.driver(w, "backward", args)
        return "\n".join(w.lines), args

    def driver(self, w, name: str, args: list[str]):
        """The parallel entry point: one chunk of batch rows per Numba thread, no per-step barrier."""
        rest = ", ".join(args[1:])
        w("")
        w("")
        w("@njit(parallel=True, cache=True)")
        w(f"def {name}({', '.join(args)}):")
        with w.indent():
            w("for c in prange(chunks.shape[0] - 1):")
            with w.indent():
                w(f"{name}_rows(c, chunks[c], chunks[c + 1], {rest})")

    def prev_contrib_segments(self) -> dict[str, set[int]]:
        """For each state, the segments whose loops add to the adjoint of its previous value."""
        s, g = self.s, self.g
        out: dict[str, set[int]] = {st: set() for st in s.states}
        for n in g.nodes:
            if n.id in s.live and not n.is_leaf and n.op != "matvec":
                for a in n.args:
                    if g.nodes[a].op == "prev":
                        out[g.nodes[a].attr].add(s.segment_of[n.id])
        return out

    def backward_segment(self, w, seg: int, value, prev_users, out_is_state):
        s, g = self.s, self.g
        nodes = s.segments[seg]
        terms: dict[int, list[Expr]] = {i: [] for i in nodes}
        prev_terms: dict[str, list[Expr]] = {}
        param_terms: dict[str, list[Expr]] = {}
        cross_terms: dict[int, list[Expr]] = {}
        body: list[str] = []
        loads: dict[str, int] = {}   # candidate value locals; loaded only where referenced

        def value_name(i: int) -> Expr:
            n = g.nodes[i]
            if n.op in ("const", "param"):
                return value(i)
            loads[self.local(i)] = i
            return Expr.name(self.local(i))

        for i in nodes:
            if i in self.state_of:
                st = self.state_of[i]
                gemm = f" + d_gemm_{st}[c, r, j]" if any(
                    grp.kind == "state" and g.nodes[grp.operand].attr == st for grp in s.groups) else ""
                terms[i].append(Expr(ast.parse(f"d_state_{st}[(t + 1) & 1, c, r, j]{gemm}", mode="eval").body))
            if i == g.output:
                terms[i].append(Expr(ast.parse("d_y[t, b, j]", mode="eval").body))
            if i in s.cross_adjoints:
                terms[i].append(Expr(ast.parse(f"d_cross_{self.local(i).rstrip('_')}[c, r, j]", mode="eval").body))
            if i in self.operands:
                terms[i].append(Expr(ast.parse(f"d_operand_{self.local(i).rstrip('_')}[c, r, j]",
                                               mode="eval").body))

        for i in reversed(nodes):
            n = g.nodes[i]
            if not terms[i]:
                continue
            d = "d_" + self.local(i)
            total = terms[i][0]
            for t in terms[i][1:]:
                total = total + t
            body.append(f"{d} = {total.source()}")
            if n.op == "matvec":
                grp = s.group_of[i]
                if grp.kind != "x" or not s.x_shares_adjoint_with:   # else d_prod of that group holds it
                    target = "d_x_proj" if grp.kind == "x" else f"d_prod_{grp.name}"
                    body.append(f"{target}[t, b, {self.block(i)}] = {d}")
                continue
            contribs = adjoint_contributions(n.op, Expr.name(d), [value_name(a) for a in n.args], value_name(i))
            for a, contrib in zip(n.args, contribs):
                an = g.nodes[a]
                contrib = _rename_helpers(contrib)
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

        def flush(target: str, exprs: list[Expr], assign: bool):
            total = exprs[0]
            for e in exprs[1:]:
                total = total + e
            body.append(f"{target} {'=' if assign else '+='} {total.source()}")
        for st, exprs in prev_terms.items():
            flush(f"d_state_{st}[t & 1, c, r, j]", exprs, assign=len(prev_users[st]) == 1)
        for p, exprs in param_terms.items():
            flush(f"d_params[c, {self.vec_index[p]}, j]", exprs, assign=False)
        for a, exprs in cross_terms.items():
            flush(f"d_cross_{self.local(a).rstrip('_')}[c, r, j]", exprs, assign=False)

        referenced = {n.id for line in body for n in ast.walk(ast.parse(line)) if isinstance(n, ast.Name)}
        w("for b in range(b0, b1):")
        with w.indent():
            w("r = b - b0")
            self.backward_padding(w, seg)
            w("for j in range(H):")
            with w.indent():
                for name in sorted(loads, key=loads.get):
                    if name in referenced:
                        w(f"{name} = {value(loads[name]).source()}")
                for line in body:
                    w(line)


def emit_module(sched: Schedule, dtype: str, doc: str = "") -> tuple[str, dict[str, list[str]]]:
    """The source of the kernel module, and each kernel's argument names."""
    em = CpuEmitter(sched, dtype)
    g: Graph = sched.graph
    kernels = {"forward_train": em.forward(True), "forward_infer": em.forward(False), "backward": em.backward()}
    used = {n.op for n in g.nodes if n.id in sched.live and n.op in HELPERS}
    if "softplus" in used:
        used |= {"sigmoid", "exp"}   # its derivative, its body
    fast = {fn: FAST32[fn] for fn in used if fn in FAST32} if dtype == "float32" else {}
    header = f"{doc}\n\nfloat32 exp/tanh/sigmoid: seqengine.backends.cpu.fastmath {_fastmath_digest()}" if fast else doc
    parts = [f'"""seqengine CPU kernels for cell {g.cell!r} ({dtype}). Generated; do not edit.\n\n{header}\n"""',
             "import math", "", "import numpy as np", "from numba import njit, prange", ""]
    if fast:
        parts.append("from seqengine.backends.cpu.fastmath import "
                     + ", ".join(f"{src} as {fn}" for fn, src in sorted(fast.items())))
        parts.append("")
    parts += [f"F = np.{dtype}", f"FASTMATH = {FASTMATH}", ""]
    for fn in sorted(used - set(fast)):
        parts += ["", JIT, HELPERS[fn], ""]
    for name, (src, args) in kernels.items():
        parts += ["", f"{name.upper()}_ARGS = {tuple(args)!r}", "", src, ""]
    return "\n".join(parts), {name: args for name, (src, args) in kernels.items()}
