"""Emit the Numba CPU kernels of a scheduled cell as readable Python source.

Kernel strategy (see docs/ARCHITECTURE.md): the batch is split into chunks of
rows, one per Numba thread (``prange``). Each thread owns its rows for all T
steps, so steps need no synchronisation; its per-step recurrent products are
one-thread GEMMs (``gemm_packed(a, b, b_panels, out)`` = a @ b^T, from
``tiles.py``; the weights are packed once per call, not per step). Within a
step, each segment's pointwise work is one fused loop over (row, hidden
unit). Hoisted and deferred GEMMs run outside the kernels, per window of
steps ``t0 <= t < t1``.

Generated kernels (one module per cell and dtype):

- ``forward_train``: saves what backward needs; states kept for all steps.
- ``forward_infer``: saves nothing; states kept in two alternating slots.
- ``backward``: reverse time loop; writes dP of every product for the
  deferred weight GEMMs, propagates state adjoints, accumulates vector grads.
- ``<kernel>_team`` for each: the same work with the hidden units split over the
  members of one parallel region instead of the rows (``<kernel>_member``,
  units j0:j1 of all rows), meeting at ``team.barrier`` where a product reads
  what other members wrote (for batches too small to split by rows).

Array names in the kernels (all C-contiguous; shapes in the header comments):
``x_proj`` [W, B, Gx*H] products with x of the window's steps; ``state_<s>`` [T+1, B, H] (train) or
[2, B, H] (infer); ``param_<p>`` [H]; ``saved_<v>`` [T, B, H];
``weight_<g>`` [k*H, in] stacked matrices (forward: prod = operand @ weight^T);
``weight_t_<g>`` [in, k*H] their transpose, a view (backward: d_operand = d_prod @ weight = d_prod @ weight_t^T);
``weight_p_<g>``, ``weight_tp_<g>`` the same packed in panels for the register-block kernel (tiles.py);
``prod_<g>`` [NC, BC, k*H] per-thread products; ``value_<v>`` [NC, BC, H]
per-thread values crossing segments.
"""

from __future__ import annotations

import re

from ...compiler.differentiate import Expr
from ...compiler.graph import Graph
from ...compiler.kernelplan import KernelPlan, SourceWriter, load
from ...compiler.schedule import Schedule
from . import fastmath, team, tiles

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


# The gate loops' vector bodies are long dependency chains (peephole forward: exp, divide, then the
# cell state, then two more exps), so one iteration's latency bounds the loop. Interleaving two
# vectors per iteration gives the core two independent chains (LLVM chose one, with 16 lanes). Peephole
# 100x64x256, forward kernel: 11.7 -> 11.0 ms (RESULTS.md, session 5).
VECTOR_INTERLEAVE = 2


def compile_interleaved(module) -> None:
    """Compile every kernel of a generated `module` with LLVM's loop vectorizer interleaving
    VECTOR_INTERLEAVE vectors per iteration.

    The interleave count is a process-wide LLVM option, not a per-function one: it is set only while
    one of these kernels compiles (under Numba's compiler lock, so no other compile sees it) and reset
    to LLVM's default (0: its own cost model) after; kernels loaded from the disk cache do not compile."""
    import llvmlite.binding as llvm
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.registry import CPUDispatcher

    def interleaved(compile_signature):
        def compile(sig):
            with global_compiler_lock:
                llvm.set_option("seqengine", f"-force-vector-interleave={VECTOR_INTERLEAVE}")
                try:
                    return compile_signature(sig)
                finally:
                    llvm.set_option("seqengine", "-force-vector-interleave=0")
        return compile

    for value in vars(module).values():
        if isinstance(value, CPUDispatcher) and value.__module__ == module.__name__:
            value.compile = interleaved(value.compile)


def _digest(module) -> str:
    """Generated modules import fastmath and team; their digests in the source key Numba's cache to
    their versions (Numba's cache does not see a changed callee)."""
    import hashlib
    return hashlib.sha256(open(module.__file__, "rb").read()).hexdigest()[:16]


_ELEMENT = re.compile(r"\b([A-Za-z_]\w*)\[([^\[\]]*)\]")


def unit_views(lines: list[str], j0: str = "j0", j1: str = "j1",
               only: str = "") -> tuple[list[tuple[str, str, bool]], list[str]]:
    """Rewrite element lines over units j0:j1 to index 1-D views by j = 0 .. j1 - j0 - 1 (only the arrays
    whose names start with `only`, if given). Returns the views as (name, source, per_row: whether the
    source depends on the row or step, b, r or t), and the rewritten lines.

    Every array element of a line is indexed by unit j in its last axis (``a[j]``, ``a[t, b, j]``,
    ``a[c, r, 2 * H + j]``); each becomes ``a_u<k>[j]`` with ``a_u<k> = a[t, b, 2 * H + j0:2 * H + j1]``
    defined before the loop. Over ``range(j0, j1)`` LLVM could not rule out negative (wrapping)
    indices and kept the loop scalar or gathered (LSTM, 128 units: 1.8 vs 0.14 us a step); over a
    zero-based loop into 1-D views it emits the same packed code as the all-units loop."""
    views: dict[tuple[str, str], str] = {}
    per_row: dict[str, bool] = {}

    def view(m: re.Match) -> str:
        name, index = m.group(1), m.group(2)
        if not name.startswith(only):
            return m.group(0)
        *lead, last = [part.strip() for part in index.split(",")]
        if last == "j":
            lo, hi = ("" if j0 == "0" else j0), j1
        elif last.endswith(" * H + j"):
            k = last[:-len(" + j")]
            lo, hi = (k if j0 == "0" else f"{k} + {j0}"), f"{k} + {j1}"
        else:
            raise ValueError(f"element {m.group(0)!r} is not indexed by unit j in its last axis")
        source = f"{name}[{', '.join(lead + [f'{lo}:{hi}'])}]"
        key = (name, source)
        if key not in views:
            views[key] = f"{name}_u{len(views)}"
            per_row[views[key]] = any(re.search(r"\b[btr]\b", part) for part in lead)
        return f"{views[key]}[j]"

    out = [_ELEMENT.sub(view, line) for line in lines]
    for line in out:
        bare = re.sub(r"\w+_u\d+\[j\]", "", line) if not only else ""
        if re.search(r"\bj\b", bare):
            raise ValueError(f"unit index j outside an array element in {line!r}")
    return [(name, source, per_row[name]) for (_, source), name in views.items()], out


class CpuEmitter(KernelPlan):
    """The CPU kernels: per-thread scratch is indexed by (chunk c, row r = b - b0 in the chunk)."""

    hoisted: dict | None = None   # while emitting a team member: view source -> name, made before its loops

    scratch = "c, r, j"
    share_x_adjoint = True   # the runtime takes d_x_proj from the d_prods of sched.x_adjoint_groups
    window_t = "t - t0"      # each call runs steps t0 <= t < t1; x_proj / d_prod hold only those
    # products_cross_launches stays False: prod_<g> [NC, BC, k*H] holds a chunk's products all step

    def helper(self, fn: str) -> str:
        return HELPER_NAME.get(fn, fn)

    def product(self, i: int, seg: int, training: bool) -> Expr:
        """From the chunk's products of this step (gemm_nt's output), whichever segment reads it."""
        return load(f"prod_{self.s.group_of[i].name}[c, r, {self.block(i)}]")

    def d_gemm(self, st: str) -> Expr:
        return load(f"d_gemm_{st}[{self.scratch}]")

    def d_operand(self, i: int) -> Expr:
        return load(f"d_operand_{self.stem(i)}[{self.scratch}]")

    def d_param(self, p: str) -> str:
        return f"d_params[c, {self.vec_index[p]}, j]"

    # -- forward -----------------------------------------------------------------
    def forward_args(self, training: bool) -> list[str]:
        """The row-split forward kernel's arguments (the team kernel's after its first)."""
        s = self.s
        args = ["chunks", "lengths", "t0", "t1"] + self.forward_arrays(training, "weight")
        args += [f"weight_p_{grp.name}" for grp in s.groups]
        args += [f"prod_{grp.name}" for grp in s.groups]
        return args + [self.value_array(i) for i in self.scratch_values(training)]

    def forward(self, training: bool) -> tuple[str, list[str]]:
        w = SourceWriter()
        name = "forward_train" if training else "forward_infer"
        args = self.forward_args(training)

        w(JIT)
        w(f"def {name}_rows(c, b0, b1, {', '.join(args[1:])}):")
        with w.indent():
            w('"""One thread\'s share: batch rows b0:b1 (chunk c) for steps t0 <= t < t1."""')
            self.header_comments(w, args, training)
            self.forward_steps(w, training, team=False)
        self.driver(w, name, args)
        return w.text(), args

    def forward_team(self, training: bool) -> tuple[str, list[str]]:
        """The forward with the hidden units split over the members of one parallel region (team.py):
        member m owns units j0:j1 of every row, multiplies by its columns of each weight (which stay
        in its cache) and does their pointwise work; the members meet after every segment, before
        anyone multiplies by a vector the others wrote."""
        name = "forward_train" if training else "forward_infer"
        return self.team_kernel(name, self.forward_args(training), lambda w: self.forward_steps(w, training, team=True),
                                f"hidden units j0:j1 of all rows for steps t0 <= t < t1 ({'training' if training else 'inference'})",
                                training)

    def team_kernel(self, name: str, rows_args: list[str], steps, what: str, training: bool):
        """A team kernel `<name>_team(units, sync, limit, ...)` running `<name>_member` on every member:
        the rows kernel's arguments, chunk 0 holding all rows of the per-thread arrays."""
        w = SourceWriter()
        args = ["units", "sync", "limit"] + rows_args[1:]
        w(JIT)
        w(f"def {name}_member(m, n, j0, j1, {', '.join(args[1:])}):")
        with w.indent():
            w(f'"""Member m of n: {what}.')
            w('Returns False if the team gave up waiting (sync[1] set; the caller reruns the window)."""')
            w("# units: [n + 1] unit bounds (multiples of a panel's NR columns); sync: [2] team.new_sync()")
            self.header_comments(w, args, training)
            w("c, b0, b1 = 0, 0, lengths.shape[0]")
            w(f"H = state_{self.s.states[0]}.shape[2]")
            w("meetings = 0")
            body = SourceWriter()
            body.depth = w.depth
            self.hoisted = {}                    # views that depend on no row or step, made once
            steps(body)
            for source, view in self.hoisted.items():
                w(f"{view} = {source}")
            self.hoisted = None
            w.lines += body.lines
            w("return True")
        w("")
        w("")
        w("@njit(parallel=True, cache=True)")
        w(f"def {name}_team({', '.join(args)}):")
        with w.indent():
            w("n = units.shape[0] - 1")
            w("for m in prange(n):")
            with w.indent():
                w(f"{name}_member(m, n, units[m], units[m + 1], {', '.join(args[1:])})")
        return w.text(), args

    def meeting(self, w: SourceWriter):
        """All members meet (a team kernel gives up and returns False if they cannot)."""
        w("meetings += 1")
        w("if not barrier(sync, n, meetings, limit):")
        with w.indent():
            w("return False")

    def forward_steps(self, w: SourceWriter, training: bool, team: bool):
        """The time loop of a forward kernel: per segment, its products, then its pointwise loop over
        rows b0:b1 and units (all H, or a team member's j0:j1 followed by a meeting)."""
        s, g = self.s, self.g
        if not team:                             # (a team member's prologue has it)
            w(f"H = state_{s.states[0]}.shape[2]")
        w("for t in range(t0, t1):")
        with w.indent():
            for seg in range(len(s.segments)):
                for grp in s.groups:
                    if grp.level != seg:
                        continue
                    op = self.operand_rows(grp, training)
                    label = f"   # {' ; '.join(grp.matrices)} @ {g.label(grp.operand)}"
                    if not team:
                        w(f"gemm_packed({op}, weight_{grp.name}, weight_p_{grp.name}, prod_{grp.name}[c, :b1 - b0], False)"
                          + label)
                        continue
                    w(f"for k in range({len(grp.members)}):   # this member's columns of each gate block" + label)
                    with w.indent():
                        w("q0, q1 = k * H + j0, k * H + j1")
                        w(f"NR = weight_p_{grp.name}.shape[2]")
                        w(f"gemm_packed({op}, weight_{grp.name}[q0:q1], weight_p_{grp.name}[q0 // NR:q1 // NR], "
                          f"prod_{grp.name}[c, :b1 - b0, q0:q1], False)")
                self.rows_loop(w, self.forward_padding_lines(seg, training), self.forward_lines(seg, training),
                               "j0, j1" if team else "H")
                if team:
                    self.meeting(w)

    def rows_loop(self, w: SourceWriter, padding: list[str], lines: list[str], units: str = "H"):
        """For each row b of the chunk: `padding` past its sequence's end, else `lines`; each over the
        hidden units j in range(units)."""
        w("for b in range(b0, b1):")
        with w.indent():
            w("r = b - b0")
            w("if t >= lengths[b]:   # past the end of this sequence")
            with w.indent():
                self.element_loop(w, padding, units)
                w("continue")
            self.element_loop(w, lines, units)

    def element_loop(self, w: SourceWriter, lines: list[str], units: str = "H"):
        """`lines` for every hidden unit j of row b (one loop, which LLVM vectorizes): all H units, or a
        team member's j0:j1 (`units` "j0, j1"), through 1-D views (`unit_views`).

        Over all units only the state arrays go through views: reading the previous state in place
        (GRU backward: ``state_h[t, b, j]``) left the loop scalar (LLVM's remark: "unsafe dependent
        memory operations ... Unsafe indirect dependence"); through a row view it vectorizes (GRU
        backward without its products, 100x64x256: 0.43 -> 0.14 ms a window). Views for every array
        made the LSTM backward slower (0.56 -> 1.28 ms): one view per array and row costs more than
        it saves where LLVM already vectorized."""
        if not lines:
            return
        views, lines = unit_views(lines, "0", "H", only="state_") if units == "H" else unit_views(lines)
        for name, source, per_row in views:
            if self.hoisted is not None and not per_row:                          # a member's own parameters:
                lines = [re.sub(rf"\b{name}\[", f"{self.hoisted.setdefault(source, f'own{len(self.hoisted)}')}[", ln)
                         for ln in lines]                                         # one view for all steps
                continue
            w(f"{name} = {source}")
        if units != "H":
            units = "j1 - j0"
        w(f"for j in range({units}):")
        with w.indent():
            for line in lines:
                w(line)

    def operand_rows(self, grp, training: bool) -> str:
        n = self.g.nodes[grp.operand]
        if grp.kind == "state":
            return f"state_{n.attr}[{self.slots(training)[0]}, b0:b1]"
        if training:
            return f"{self.saved_array(grp.operand)}[t, b0:b1]"
        return f"{self.value_array(grp.operand)}[c, :b1 - b0]"

    def header_comments(self, w, args, training):
        s = self.s
        kx = len(s.x_group.members) if s.x_group else 0
        shapes = {"chunks": "[NC + 1] batch row bounds per thread", "x_proj": f"[W, B, {kx}*H] x products of steps t0.. (W >= t1 - t0)",
                  "y": "[T, B, H] output"}
        for a in args:
            if a.startswith("state_"):
                shapes[a] = "[T + 1, B, H]" if training else "[2, B, H] (slot t & 1 holds step t)"
            elif a in {f"weight_{g.name}" for g in s.groups}:
                grp = next(g for g in s.groups if a == f"weight_{g.name}")
                shapes[a] = f"[{len(grp.members)}*H, in] = [{'; '.join(grp.matrices)}]"
            elif a.startswith("weight_p_"):
                shapes[a] = "[k*H // NR, in, NR] the same, packed in panels (or no panel: one-step calls)"
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
    def backward_args(self) -> list[str]:
        """The row-split backward kernel's arguments (the team kernel's after its first)."""
        s, g = self.s, self.g
        args = ["chunks", "lengths", "t0", "t1"] + self.backward_arrays("weight_t")
        args += [f"weight_tp_{grp.name}" for grp in s.groups]
        args += [f"d_final_{st}" for st in s.states] + [f"d_init_{st}" for st in s.states]
        args += [f"d_gemm_{g.nodes[grp.operand].attr}" for grp in s.groups if grp.kind == "state"]
        args += [f"d_cross_{self.stem(i)}" for i in sorted(s.cross_adjoints)]
        return args + [f"d_operand_{self.stem(grp.operand)}" for grp in s.operand_groups()]

    def backward(self) -> tuple[str, list[str]]:
        w = SourceWriter()
        args = self.backward_args()

        w(JIT)
        w(f"def backward_rows(c, b0, b1, {', '.join(args[1:])}):")
        with w.indent():
            w('"""One thread\'s share: batch rows b0:b1 (chunk c), steps t1-1 down to t0 (windows of steps are')
            w('called from the last to the first: state adjoints carry over in d_state/d_gemm)."""')
            self.backward_steps(w, team=False)
        self.driver(w, "backward", args)
        return w.text(), args

    def backward_team(self) -> tuple[str, list[str]]:
        """The backward with hidden units split over a team: a member's pointwise work on its units writes
        its columns of each product adjoint; the members meet before multiplying them by the weights,
        each into its own units of the state (or operand) adjoint."""
        return self.team_kernel("backward", self.backward_args(), lambda w: self.backward_steps(w, team=True),
                                "hidden units j0:j1 of all rows, steps t1-1 down to t0", True)

    def backward_steps(self, w: SourceWriter, team: bool):
        """The reverse time loop of a backward kernel over rows b0:b1 and units (all, or j0:j1)."""
        s, g = self.s, self.g
        units = "j0, j1" if team else "H"
        own = ", j0:j1" if team else ""
        gemm_states = [g.nodes[grp.operand].attr for grp in s.groups if grp.kind == "state"]
        w("# d_y: [T, B, H] adjoint of the outputs; d_final_<s>/d_init_<s>: [B, H] state adjoints at T / at 0")
        w("# d_x_proj: [W, B, Gx*H], d_prod_<g>: [W, B, k*H] adjoints of the products of steps t0.. (W >= t1 - t0),")
        w("#   kept for the weight GEMMs")
        w("# d_params: [NC, P, H] per-thread vector gradients; d_state_<s>: [2, NC, BC, H] adjoint of the state")
        w("#   at t + 1 (slot (t + 1) & 1) and at t (slot t & 1); d_gemm_<s>: [NC, BC, H] its GEMM part")
        w("T = d_y.shape[0]")
        if not team:
            w(f"H = state_{s.states[0]}.shape[2]")
        w("if t1 == T:   # the last window: start from the final states' adjoints")
        with w.indent():
            w("for b in range(b0, b1):")
            with w.indent():
                w("r = b - b0")
                self.element_loop(w, [f"{self.d_state(st, 'T & 1')} = d_final_{st}[b, j]" for st in s.states]
                                  + [f"{self.d_gemm(st).source()} = F(0.0)" for st in gemm_states], units)
        w("for t in range(t1 - 1, t0 - 1, -1):")
        with w.indent():
            for st in self.accumulated_states():
                w(f"d_state_{st}[t & 1, c, :b1 - b0{own}] = F(0.0)")
            for i in sorted(s.cross_adjoints):
                w(f"d_cross_{self.stem(i)}[c, :b1 - b0{own}] = F(0.0)")
            for seg in range(len(s.segments) - 1, -1, -1):
                # past the end, the final state's adjoint waits until step lengths[b]
                waits = [f"{self.d_state(st, 't & 1')} = d_final_{st}[b, j]" for st in s.states if seg == 0]
                self.rows_loop(w, self.backward_padding_lines(seg) + waits, self.backward_lines(seg), units)
                groups = [grp for grp in s.groups if grp.level == seg]
                if team and groups:
                    self.meeting(w)
                for grp in groups:
                    if grp.kind == "state":
                        target = f"d_gemm_{g.nodes[grp.operand].attr}[c, :b1 - b0{own}]"
                    else:
                        target = f"d_operand_{self.stem(grp.operand)}[c, :b1 - b0{own}]"
                    label = f"   # d {g.label(grp.operand)} from {' ; '.join(grp.matrices)}"
                    if team:
                        w(f"NR = weight_tp_{grp.name}.shape[2]")
                        w(f"gemm_packed(d_prod_{grp.name}[t - t0, b0:b1], weight_t_{grp.name}[j0:j1], "
                          f"weight_tp_{grp.name}[j0 // NR:j1 // NR], {target}, False)" + label)
                    else:
                        w(f"gemm_packed(d_prod_{grp.name}[t - t0, b0:b1], weight_t_{grp.name}, weight_tp_{grp.name}, "
                          f"{target}, False)" + label)
        w("if t0 == 0:   # the first window: the initial states' adjoints")
        with w.indent():
            w("for b in range(b0, b1):")
            with w.indent():
                w("r = b - b0")
                self.element_loop(w, [f"d_init_{st}[b, j] = {self.d_state(st, '0')}"
                                  + (f" + {self.d_gemm(st).source()}" if st in gemm_states else "")
                                  for st in s.states], units)

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


def emit_module(sched: Schedule, dtype: str, doc: str = "") -> tuple[str, dict[str, list[str]]]:
    """The source of the kernel module, and each kernel's argument names."""
    em = CpuEmitter(sched, dtype)
    g: Graph = sched.graph
    kernels = {"forward_train": em.forward(True), "forward_infer": em.forward(False), "backward": em.backward(),
               "forward_train_team": em.forward_team(True), "forward_infer_team": em.forward_team(False),
               "backward_team": em.backward_team()}
    used = {n.op for n in g.nodes if n.id in sched.live and n.op in HELPERS}
    if "softplus" in used:
        used |= {"sigmoid", "exp"}   # its derivative, its body
    fast = {fn: FAST32[fn] for fn in used if fn in FAST32} if dtype == "float32" else {}
    header = f"{doc}\n\nfloat32 exp/tanh/sigmoid: seqengine.backends.cpu.fastmath {_digest(fastmath)}" if fast else doc
    parts = [f'"""seqengine CPU kernels for cell {g.cell!r} ({dtype}). Generated; do not edit.\n\n{header}\n"""',
             "import math", "", "import numpy as np", "from numba import njit, prange", "",
             f"from seqengine.backends.cpu.tiles import gemm_packed   # tiles {tiles.SOURCE_HASH}",
             f"from seqengine.backends.cpu.team import barrier   # team {_digest(team)}", ""]
    if fast:
        parts.append("from seqengine.backends.cpu.fastmath import "
                     + ", ".join(f"{src} as {fn}" for fn, src in sorted(fast.items())))
        parts.append("")
    parts += [f"F = np.{dtype}", f"FASTMATH = {FASTMATH}",
              f"VECTOR_INTERLEAVE = {VECTOR_INTERLEAVE}   # (emit.compile_interleaved: here to key the disk cache)", ""]
    for fn in sorted(used - set(fast)):
        parts += ["", JIT, HELPERS[fn], ""]
    for name, (src, args) in kernels.items():
        parts += ["", f"{name.upper()}_ARGS = {tuple(args)!r}", "", src, ""]
    return "\n".join(parts), {name: args for name, (src, args) in kernels.items()}
