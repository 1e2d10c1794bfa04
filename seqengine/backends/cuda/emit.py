"""Emit the Numba CUDA kernels of a scheduled cell as readable Python source.

Same declaration, same schedule, same derivative table as the CPU emitter; only
the parallel decomposition differs (see docs/CUDA.md):

- The work of one segment of step t for thread (b, j) is a device function (the
  *body*): first the in-loop products of its level (each thread: its blockDim.z
  slice of the dot products of operand row b with weight column j of each of its
  k gate blocks, the operand rows staged in shared memory one tile of columns at
  a time; the slices' partial sums meet in shared memory), then, on slice 0, the
  fused pointwise work of its segment. A cell with a reset-before product
  (``U_n @ (r * h_prev)``) has a second segment: its product needs every unit of
  ``r * h_prev`` of the row.
- Two kinds of kernel call the bodies: a *persistent kernel* per mode runs every
  step in one cooperative launch, blocks walking the (rows, units) tiles and the
  grid meeting after each segment; a *step kernel* per segment does one segment of
  one step, one thread per (b, j), for LaunchConfig(persistent=False).
- Backward mirrors it: per step, segments in reverse; each body first computes the
  GEMM adjoints that need a whole row of product adjoints written by the previous
  segment (``d_prod_g @ weight_g``), then the pointwise adjoints of its segment.
- The hoisted input projection and the deferred weight-gradient products run in
  the register-tiled GEMM kernel of `gemm.py` (one per block shape, shared by all
  cells), with transpose flags and an optional split of the sum over grid z.

Shared memory is dynamic (``cuda.shared.array(0, FT)``), sized by the launch, so
block shapes stay runtime arguments. Array names follow the CPU kernels; per-row
scratch is [B, H] (each thread owns one element across segments, so no races).
"""

from __future__ import annotations

import ast
import re

from ...compiler.differentiate import Expr
from ...compiler.graph import Graph
from ...compiler.kernelplan import KernelPlan, SourceWriter, load
from ...compiler.schedule import Schedule
from .config import STEP_MAX_THREADS

# Device helpers, one per function of the language; F is the kernel's float type so
# that no float64 constant promotes a float32 kernel.
HELPERS = {
    "sigmoid": "def _gpu_sigmoid(v):\n    return F(1.0) / (F(1.0) + math.exp(-v))",
    "tanh": "def _gpu_tanh(v):\n    return math.tanh(v)",
    "exp": "def _gpu_exp(v):\n    return math.exp(v)",
    "log": "def _gpu_log(v):\n    return math.log(v)",
    "relu": "def _gpu_relu(v):\n    return v if v > F(0.0) else F(0.0)",
    "softplus": "def _gpu_softplus(v):\n    # log(1 + e^v) without overflow for large v\n"
                "    return max(v, F(0.0)) + math.log1p(math.exp(-abs(v)))",
    "abs": "def _gpu_abs(v):\n    return abs(v)",
    "sqrt": "def _gpu_sqrt(v):\n    return math.sqrt(v)",
    "maximum": "def _gpu_maximum(a, b):\n    return a if a >= b else b",
    "minimum": "def _gpu_minimum(a, b):\n    return a if a <= b else b",
}

# Operand values a thread of a step kernel takes per pass of its dot products. The step kernels are
# bound by load latency (H200: 250 us a backward step at 100x64x256 with one weight load in flight);
# unrolled, each pass issues UNROLL loads per product before it waits.
UNROLL = 8

# An array subscript: a name (not an attribute such as `.shape`) and its opening bracket.
_SUBSCRIPT = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\[")


def unsigned_subscripts(source: str) -> str:
    """`source` with every index of every array subscript unsigned: ``a[t, b, 2 * H + j]`` ->
    ``a[U(t), U(b), U(2 * H + j)]`` (comments left alone).

    Why: Numba adds negative-index wraparound to every signed index (a sign test, a masked add of the
    axis length, 64-bit arithmetic), even where the index cannot be negative, and every index in these
    kernels is a position (a step, a row, a unit, a slot, an offset in shared memory), never counted
    from the end. A negative one would now read out of bounds; the simulator, which checks bounds,
    runs every kernel in the tests. sm_90 SASS of lstm's forward pass of dot products: 364
    instructions for 32 weight loads with wraparound, 183 without.
    """
    lines = []
    for line in source.split("\n"):
        code, hash_, comment = line.partition("#")
        lines.append(_unsigned(code) + hash_ + comment)
    return "\n".join(lines)


def _unsigned(code: str) -> str:
    out, pos = [], 0
    while True:
        m = _SUBSCRIPT.search(code, pos)
        if m is None:
            return "".join(out) + code[pos:]
        depth, end = 1, m.end()
        while depth:                      # the matching bracket
            depth += {"[": 1, "]": -1}.get(code[end], 0)
            end += 1
        inner = _unsigned(code[m.end():end - 1])
        parts, depth, start = [], 0, 0
        for k, ch in enumerate(inner):    # top-level commas
            depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                parts.append(inner[start:k])
                start = k + 1
        parts.append(inner[start:])
        wrapped = [p if ":" in p else f"U({p.strip()})" for p in parts]
        out.append(code[pos:m.end()] + ", ".join(wrapped) + "]")
        pos = end


# Loads of a step's pointwise work issued before its products (at most this many values a thread): the
# step's latency chain otherwise waits for them after the products (see `hoist_loads`).
PREFETCH_LOADS = 8
# Arrays whose elements the pointwise work loads from memory that may be far (written by another kernel or
# another step); vector parameters ([H], hot in cache) and the lengths (a branch) stay where they are.
_PREFETCHED = re.compile(r"^(x_proj|state_|saved_|value_|d_y|d_state_|d_cross_)")
_STORE = re.compile(r"^\s*([A-Za-z_]\w*\[[^\]]*\])\s*(?:[-+*/]?=)(?!=)")


def hoist_loads(tail: list[str], limit: int = PREFETCH_LOADS) -> tuple[list[str], list[str]]:
    """Move the first `limit` distinct array loads of a body's pointwise part (`tail`, lines after its
    products) to variables ``pf<k>`` loaded before the products: (loads, tail with the variables).

    Why: a step is a chain of dependent phases (operand rows, dot products, partial sums, pointwise
    work, grid barrier); a load of x_proj or a saved value waits a memory latency (~0.5-1 us) where the
    pointwise work starts. Issued first, it arrives while the products run. Only loads every step
    makes are moved (not those under a condition, such as the padding branch), and only if no line
    before stores to the same element: every element the pointwise part reads is this thread's
    (b, j) or was written before the step's last barrier.
    """
    stored, hoisted, out = set(), {}, []
    top = min((len(line) - len(line.lstrip()) for line in tail if line.strip()), default=0)
    for line in tail:
        code, hash_, comment = line.partition("#")
        target = _STORE.match(code)
        rhs_start = target.end() if target else 0
        unconditional = len(line) - len(line.lstrip()) == top

        def replace(m):
            text = m.group(0)
            key = ast.unparse(ast.parse(text, mode="eval"))   # one spelling per element: (t + 1) & 1
            if not unconditional or key in stored or not _PREFETCHED.match(text):
                return text
            if key not in hoisted:
                if len(hoisted) == limit:
                    return text
                hoisted[key] = (f"pf{len(hoisted)}", text)
            return hoisted[key][0]
        rhs = re.sub(r"(?<![\w.])[A-Za-z_]\w*\[[^\[\]]*\]", replace, code[rhs_start:])
        out.append(code[:rhs_start] + rhs + hash_ + comment)
        if target:
            stored.add(ast.unparse(ast.parse(target.group(1), mode="eval")))
    if not hoisted:
        return [], out
    loads = ["if active and cuda.threadIdx.z == 0:   # the pointwise work's loads, in flight during the products"]
    loads += [f"    {name} = {text}" for name, text in hoisted.values()]
    loads += ["else:"] + [f"    {name} = F(0.0)" for name, _ in hoisted.values()]
    return loads, out


# Kernels that do not depend on the cell (typed per dtype through F).
SUPPORT_KERNELS = '''
@cuda.jit(cache=True)
def stack_kernel(mats, dst, transpose):
    # mats: k matrices [R, C] (a tuple; blockIdx.z picks one) -> dst [k*R, C] (rows of a stacked
    # matrix), or dst [C, k*R] (its transpose): a whole group in one launch
    k = cuda.blockIdx.z
    src = mats[k]
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    r = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if r < src.shape[0] and c < src.shape[1]:
        if transpose:
            dst[c, k * src.shape[0] + r] = src[r, c]
        else:
            dst[k * src.shape[0] + r, c] = src[r, c]


@cuda.jit(cache=True)
def sum_slices_kernel(parts, c, accumulate):
    # c [M, N] (+)= sum over z of parts [S, M, N] (the K slices of a split GEMM, added in a fixed order)
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    i = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if i < c.shape[0] and j < c.shape[1]:
        acc = c[i, j] if accumulate else F(0.0)
        for z in range(parts.shape[0]):
            acc += parts[z, i, j]
        c[i, j] = acc


@cuda.jit(cache=True)
def fill_kernel(a, value):
    # a [N] = value
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = value


@cuda.jit(cache=True)
def add_kernel(a, b):
    # a [N] += b [N]
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] += b[i]


@cuda.jit(cache=True)
def mask_padding_kernel(x, lengths, out):
    # x, out [T, B, D]: out = x before each sequence's length, 0 after (padding never reaches a GEMM)
    d = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tb = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    B = x.shape[1]
    if d < x.shape[2] and tb < x.shape[0] * B:
        t = tb // B
        b = tb - t * B
        out[t, b, d] = x[t, b, d] if t < lengths[b] else F(0.0)


@cuda.jit(cache=True)
def gather_final_kernel(state, lengths, out):
    # state [T + 1, B, H], out [B, H]: the state at each sequence's own end
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    b = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if b < out.shape[0] and j < out.shape[1]:
        out[b, j] = state[lengths[b], b, j]


@cuda.jit(cache=True)
def sum_rows_kernel(per_row, out):
    # per_row [P, B, H] -> out [P, H]: vector-parameter gradients summed over batch rows
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    p = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y
    if p < out.shape[0] and j < out.shape[1]:
        acc = F(0.0)
        for b in range(per_row.shape[1]):
            acc += per_row[p, b, j]
        out[p, j] = acc
'''

# Argument types of the support kernels, as (kind, ndim): "f" float array, "F" a tuple of float arrays
# (any length; the PTX check compiles it for 3), "i" int64 array,
# "i" with ndim 0 an int64 scalar, "f" with ndim 0 a float scalar. Used by the PTX check.
SUPPORT_SIGNATURES = {
    "sum_slices_kernel": (("f", 3), ("f", 2), ("i", 0)),
    "stack_kernel": (("F", 2), ("f", 2), ("i", 0)),
    "fill_kernel": (("f", 1), ("f", 0)),
    "add_kernel": (("f", 1), ("f", 1)),
    "mask_padding_kernel": (("f", 3), ("i", 1), ("f", 3)),
    "gather_final_kernel": (("f", 3), ("i", 1), ("f", 2)),
    "sum_rows_kernel": (("f", 3), ("f", 2)),
}


def signature_types(signature, dtype: str) -> tuple:
    """Numba argument types of a kernel signature written as above, for ``cuda.compile_ptx``: arrays
    C-contiguous, a tuple of float arrays as 3 of them."""
    from numba import types
    f = {"float32": types.float32, "float64": types.float64}[dtype]
    out = []
    for kind, ndim in signature:
        scalar = f if kind in ("f", "F") else types.int64
        typ = scalar if ndim == 0 else types.Array(scalar, ndim, "C")
        out.append(types.UniTuple(typ, 3) if kind == "F" else typ)
    return tuple(out)


class CudaEmitter(KernelPlan):
    """The CUDA kernels: one thread per element (b, j); per-row scratch is [B, H], indexed (b, j)."""

    scratch = "b, j"
    products_cross_launches = True   # each segment is its own launch: late products go through value_
    share_x_adjoint = True           # the runtime takes d_x_proj from the d_prods of sched.x_adjoint_groups

    def __init__(self, sched: Schedule, dtype: str):
        super().__init__(sched, dtype)
        self.signatures: dict[str, tuple] = {}

    def helper(self, fn: str) -> str:
        return "_gpu_" + fn

    def product(self, i: int, seg: int, training: bool) -> Expr:
        """The thread's local product in its own segment's launch; later launches read it back."""
        if self.s.group_of[i].level < seg:
            return load(self.stored_value(i, training))
        return Expr.name(self.product_local(i))

    def d_gemm(self, st: str) -> Expr:
        return Expr.name(f"d_gemm_{st}")

    def d_operand(self, i: int) -> Expr:
        return Expr.name(f"d_operand_{self.stem(i)}")

    def d_param(self, p: str) -> str:
        return f"d_params[{self.vec_index[p]}, b, j]"

    def product_local(self, i: int) -> str:
        grp = self.s.group_of[i]
        return f"p_{grp.name}_{grp.members.index(i)}"

    def ndim(self, arg: str) -> tuple[str, int]:
        if arg in ("t", "T", "steps"):
            return ("i", 0)
        if arg == "lengths":
            return ("i", 1)
        if arg.startswith(("param_",)):
            return ("f", 1)
        if arg.startswith(("weightT_", "weight_", "value_", "d_cross_", "d_final_", "d_init_")):
            return ("f", 2)
        return ("f", 3)   # x_proj, state_, y, saved_, d_y, d_x_proj, d_prod_, d_params, d_state_

    # -- shared pieces -----------------------------------------------------------
    def kernel_def(self, w, name: str, args: list[str]):
        """`def name(args):` of a step-work kernel (launch-bounded), its signature noted for the PTX check."""
        self.signatures[name] = tuple(self.ndim(a) for a in args)
        w("@step_jit")
        w(f"def {name}({', '.join(args)}):")
        w.depth += 1

    @staticmethod
    def grid_position(w):
        w("j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x   # hidden unit")
        w("b = cuda.blockIdx.y * cuda.blockDim.y + cuda.threadIdx.y   # batch row")

    def kernel_head(self, w, name: str, args: list[str], comments: list[str]):
        """A kernel with one thread per (b, j): grid x over units, grid y over rows."""
        self.kernel_def(w, name, args)
        for c in comments:
            w(f"# {c}")
        self.grid_position(w)
        self.shape_lines(w)

    def shape_lines(self, w):
        w(f"B = state_{self.s.states[0]}.shape[1]")
        w(f"H = state_{self.s.states[0]}.shape[2]")
        w("active = b < B and j < H")

    def body_head(self, w, name: str, args: list[str], comments: list[str]):
        """The work of thread (b, j) in one segment of step t, as a device function: the step kernel
        calls it once, the persistent kernel once per tile it owns (returns end one tile's work)."""
        # inlined in Numba's IR, like the function helpers: no call and no array structs passed per tile
        w('@cuda.jit(device=True, inline="always")')
        w(f"def {name}(j, b, {', '.join(args)}):")
        w.depth += 1
        for c in comments:
            w(f"# {c}")
        self.shape_lines(w)

    @staticmethod
    def assemble(w, products_from: int, tail) -> str:
        """The body's source: `w` (head, products), the tail's loads hoisted to just before the products
        (line `products_from` of `w`), then the tail; every subscript unsigned."""
        loads, rest = hoist_loads(tail.lines)
        indent = "    " * tail.depth
        lines = w.lines[:products_from] + [indent + line for line in loads] + w.lines[products_from:] + rest
        return unsigned_subscripts("\n".join(lines))

    def step_kernel(self, name: str, body: str, args: list[str]) -> str:
        """One launch of one segment of step t: grid x over units, grid y over rows."""
        w = SourceWriter()
        self.kernel_def(w, name, args)
        self.grid_position(w)
        w(f"{body}(j, b, {', '.join(args)})")
        return w.text()

    def persistent_kernel(self, name: str, bodies: list[str], args: list[str], reverse: bool) -> str:
        """All steps and segments in one cooperative launch: each block walks the (rows, units) tiles
        of the step, block x takes tiles x, x + gridDim.x, ...; the grid meets after every segment,
        since the next segment (or step) reads whole rows that other blocks wrote."""
        call = ", ".join(args)
        w = SourceWriter()
        self.kernel_def(w, name, ["steps" if a == "t" else a for a in args])
        w("# launched cooperatively with gridDim.x <= the blocks that fit on the GPU at once")
        w("grid = cuda.cg.this_grid()")
        w(f"B = state_{self.s.states[0]}.shape[1]")
        w(f"H = state_{self.s.states[0]}.shape[2]")
        w("unit_tiles = (H + cuda.blockDim.x - 1) // cuda.blockDim.x")
        w("tiles = unit_tiles * ((B + cuda.blockDim.y - 1) // cuda.blockDim.y)")
        w("for step in range(steps):")
        with w.indent():
            w("t = steps - 1 - step" if reverse else "t = step")
            for body in bodies:
                w("for tile in range(cuda.blockIdx.x, tiles, cuda.gridDim.x):")
                with w.indent():
                    w("row_tile = tile // unit_tiles")
                    w("j = (tile - row_tile * unit_tiles) * cuda.blockDim.x + cuda.threadIdx.x")
                    w("b = row_tile * cuda.blockDim.y + cuda.threadIdx.y")
                    w(f"{body}(j, b, {call})")
                w("grid.sync()")
        return w.text()

    def row_products(self, w, outputs: list[str], operand_row: str, matrix: str, columns: list[str],
                     count: str, comment: str):
        """outputs[m] = sum_k operand_row(k) * matrix[k, columns[m]] over k < count, for row b.

        The sum is split over blockDim.z threads (why: one weight load in flight per product left a
        step latency-bound, see UNROLL): slice z takes the tiles of blockDim.x columns z, z + splits,
        ... Every thread stages one operand value of its (slice, row) in shared memory per pass, active
        or not; the slices' partial sums then meet in shared memory and slice 0 adds them in order.
        """
        w(f"# {comment}")
        for o in outputs:
            w(f"{o} = F(0.0)")
        w(f"K = {count}")
        w("for k0 in range(0, K, cuda.blockDim.x * cuda.blockDim.z):")
        with w.indent():
            w("kz = k0 + cuda.threadIdx.z * cuda.blockDim.x   # this slice's tile of columns")
            w("if b < B and kz + cuda.threadIdx.x < K:")
            with w.indent():
                w(f"shared[row + cuda.threadIdx.x] = {operand_row.format(k='kz + cuda.threadIdx.x')}")
            w("else:")
            with w.indent():
                w("shared[row + cuda.threadIdx.x] = F(0.0)")
            w("cuda.syncthreads()")
            w("if active:")
            with w.indent():
                w("n = min(cuda.blockDim.x, K - kz)")
                w("kk = 0")
                w(f"while kk + {UNROLL} <= n:   # {UNROLL} operand values at once: more weight loads in flight")
                with w.indent():
                    for u in range(UNROLL):
                        w(f"o{u} = shared[row + kk + {u}]")
                    for o, col in zip(outputs, columns):
                        terms = " + ".join(f"o{u} * {matrix}[kz + kk + {u}, {col}]" for u in range(UNROLL))
                        w(f"{o} += {terms}")
                    w(f"kk += {UNROLL}")
                w("while kk < n:")
                with w.indent():
                    w("o = shared[row + kk]")
                    for o, col in zip(outputs, columns):
                        w(f"{o} += o * {matrix}[kz + kk, {col}]")
                    w("kk += 1")
            w("cuda.syncthreads()")
        # the slices' partial sums meet in shared memory: [outputs, splits, rows, units] after the operands
        w("if cuda.blockDim.z > 1:")
        with w.indent():
            for m, o in enumerate(outputs):
                w(f"shared[{m + 1} * threads + row + cuda.threadIdx.x] = {o}")
            w("cuda.syncthreads()")
            w("if cuda.threadIdx.z == 0:")
            with w.indent():
                w("for z in range(1, cuda.blockDim.z):")
                with w.indent():
                    w("other = (z * cuda.blockDim.y + cuda.threadIdx.y) * cuda.blockDim.x + cuda.threadIdx.x")
                    for m, o in enumerate(outputs):
                        w(f"{o} += shared[{m + 1} * threads + other]")
            w("cuda.syncthreads()")

    @staticmethod
    def products_done(w):
        """After the products: only slice 0 of an active thread goes on to the pointwise work."""
        w("if not active or cuda.threadIdx.z > 0:   # slice 0 finishes the products")
        with w.indent():
            w("return")

    def shared_tile(self, w):
        w("shared = cuda.shared.array(0, FT)   # operands [splits, rows, units], then partial sums (row_products)")
        w("threads = cuda.blockDim.x * cuda.blockDim.y * cuda.blockDim.z")
        w("row = (cuda.threadIdx.z * cuda.blockDim.y + cuda.threadIdx.y) * cuda.blockDim.x   # its operand row")

    # -- forward -----------------------------------------------------------------
    def forward_args(self, training: bool) -> list[str]:
        return (["t", "lengths"] + self.forward_arrays(training, "weightT")
                + [self.value_array(i) for i in self.scratch_values(training)])

    def forward(self, training: bool) -> tuple[list[str], list[str], list[str]]:
        """Source of the step kernels (one per segment), their names, and their common arguments."""
        s, g = self.s, self.g
        mode = "train" if training else "infer"
        args = self.forward_args(training)
        prev_slot = self.slots(training)[0]
        sources, names = [], []
        bodies = []
        for seg in range(len(s.segments)):
            w = SourceWriter()
            name = f"forward_{mode}_seg{seg}_kernel"
            body = f"forward_{mode}_seg{seg}"
            bodies.append(body)
            self.body_head(w, body, args, [
                f"one thread per (b, j) of step t, segment {seg} of {len(s.segments)}",
                "x_proj [T, B, Gx*H]; state_<s> " + ("[T + 1, B, H]" if training else "[2, B, H] (slot t & 1)"),
                "weightT_<g> [in, k*H]; param_<p> [H]; y, saved_<v> [T, B, H]; value_<v> [B, H]"])
            products_from = len(w.lines)
            level_groups = [grp for grp in s.groups if grp.level == seg]
            if level_groups:
                self.shared_tile(w)
            for grp in level_groups:
                op = g.nodes[grp.operand]
                if grp.kind == "state":
                    row = f"state_{op.attr}[{prev_slot}, b, {{k}}]"
                elif training:
                    row = f"{self.saved_array(grp.operand)}[t, b, {{k}}]"
                else:
                    row = f"{self.value_array(grp.operand)}[b, {{k}}]"
                self.row_products(w, [self.product_local(m) for m in grp.members], row, f"weightT_{grp.name}",
                                  [self.block(m) for m in grp.members], f"weightT_{grp.name}.shape[0]",
                                  f"{' ; '.join(grp.matrices)} @ {g.label(grp.operand)}")
            self.products_done(w)
            tail = SourceWriter()
            tail.depth = w.depth
            tail("if t >= lengths[b]:   # past the end of this sequence")
            with tail.indent():
                for line in self.forward_padding_lines(seg, training):
                    tail(line)
                tail("return")
            for line in self.forward_lines(seg, training):
                tail(line)
            sources += [self.assemble(w, products_from, tail), self.step_kernel(name, body, args)]
            names.append(name)
        sources.append(self.persistent_kernel(f"forward_{mode}_persistent_kernel", bodies, args, reverse=False))
        return sources, names, args

    # -- backward ----------------------------------------------------------------
    def backward_args(self) -> list[str]:
        return ["t", "lengths"] + self.backward_arrays() + [f"d_cross_{self.stem(i)}"
                                                            for i in sorted(self.s.cross_adjoints)]

    def state_gemm(self, w, st: str):
        """d_gemm_<s> = d_prod_g[t + 1, b] @ weight_g[:, j]: the part of the adjoint of state s at
        t + 1 that flows back through its recurrent product at step t + 1 (zero at the last step)."""
        grp = self.state_group(st)
        self.row_products(w, [f"d_gemm_{st}"], f"d_prod_{grp.name}[t + 1, b, {{k}}]", f"weight_{grp.name}",
                          ["j"], f"d_prod_{grp.name}.shape[2] if t + 1 < d_prod_{grp.name}.shape[0] else 0",
                          f"d {st}_prev (at step t + 1) from {' ; '.join(grp.matrices)}")

    def backward(self) -> tuple[list[str], list[str], list[str]]:
        s, g = self.s, self.g
        args = self.backward_args()
        top = len(s.segments) - 1
        sources, names = [], []
        bodies = []
        for seg in range(top, -1, -1):
            w = SourceWriter()
            name = f"backward_seg{seg}_kernel"
            body = f"backward_seg{seg}"
            bodies.append(body)
            self.body_head(w, body, args, [
                f"one thread per (b, j) of step t, segment {seg} of {len(s.segments)} (run in reverse)",
                "d_y [T, B, H]; d_x_proj [T, B, Gx*H], d_prod_<g> [T, B, k*H] product adjoints (for the",
                "weight GEMMs); d_params [P, B, H] per-row vector gradients; d_state_<s> [2, B, H] adjoint",
                "of the state at t + 1 (slot (t + 1) & 1) and at t (slot t & 1); d_cross_<v> [B, H]"])
            products_from = len(w.lines)
            gemm_states = [st for st in s.states if self.state_group(st) is not None
                           and s.segment_of.get(g.new_state[st]) == seg]
            operand_groups = [grp for grp in s.operand_groups() if grp.level == seg + 1]
            if gemm_states or operand_groups:
                self.shared_tile(w)
            for st in gemm_states:
                self.state_gemm(w, st)
            for grp in operand_groups:
                self.row_products(w, [f"d_operand_{self.stem(grp.operand)}"], f"d_prod_{grp.name}[t, b, {{k}}]",
                                  f"weight_{grp.name}", ["j"], f"d_prod_{grp.name}.shape[2]",
                                  f"d {g.label(grp.operand)} from {' ; '.join(grp.matrices)}")
            self.products_done(w)
            tail = SourceWriter()
            tail.depth = w.depth
            if seg == top:   # the first launch of step t clears what the step accumulates into
                for st in self.accumulated_states():
                    tail(f"{self.d_state(st, 't & 1')} = F(0.0)")
                for i in sorted(s.cross_adjoints):
                    tail(f"{self.d_cross(i)} = F(0.0)")
            self.backward_padding(tail, seg)
            for line in self.backward_lines(seg):
                tail(line)
            sources += [self.assemble(w, products_from, tail), self.step_kernel(name, body, args)]
            names.append(name)
        sources.append(self.persistent_kernel("backward_persistent_kernel", bodies, args, reverse=True))
        return sources, names, args

    def initial_adjoint(self) -> tuple[str, list[str]]:
        """d_init_<s> = d_state_<s>[0] + the GEMM part through step 0 (launched with t = -1)."""
        s = self.s
        args = ["t"] + [f"d_prod_{grp.name}" for grp in s.groups]
        args += [f"state_{st}" for st in s.states] + [f"weight_{grp.name}" for grp in s.groups]
        args += [f"d_state_{st}" for st in s.states] + [f"d_init_{st}" for st in s.states]
        w = SourceWriter()
        self.kernel_head(w, "backward_initial_kernel", args, ["d_init_<s> [B, H]; launched with t = -1"])
        gemm_states = [st for st in s.states if self.state_group(st) is not None]
        if gemm_states:
            self.shared_tile(w)
        for st in gemm_states:
            self.state_gemm(w, st)
        self.products_done(w)
        for st in s.states:
            gemm = f" + d_gemm_{st}" if st in gemm_states else ""
            w(f"d_init_{st}[b, j] = d_state_{st}[0, b, j]{gemm}")
        return unsigned_subscripts(w.text()), args

    def backward_padding(self, w, seg: int):
        """Past a sequence's end: the plan's zeroed product adjoints; the state adjoints carry d_final
        (put in slot T & 1 by the runtime) back to step `lengths[b]`."""
        w("if t >= lengths[b]:   # past the end: product adjoints zero, the final adjoint waits")
        with w.indent():
            for line in self.backward_padding_lines(seg):
                w(line)
            if seg == 0:
                for st in self.s.states:
                    w(f"d_state_{st}[t & 1, b, j] = d_state_{st}[(t + 1) & 1, b, j]")
            w("return")


def typed_names(dtype: str) -> list[str]:
    """Lines of a generated module naming its float type (F; FT as a Numba type) and the unsigned index
    cast (U), which every generated kernel indexes with."""
    return [f"F = np.{dtype}", "U = np.uint64   # an index that cannot be negative: no wraparound code",
            f"FT = cuda.{dtype}   # F as a Numba type, for shared arrays"]


def emit_module(sched: Schedule, dtype: str, doc: str = "") -> tuple[str, dict]:
    """The source of the kernel module, and a description of its kernels for the runtime:
    ``{"forward_train": (kernel names per segment, args), "forward_infer": ..., "backward": (names in
    launch order, args), "initial": (name, args), "signatures": {kernel: ((kind, ndim), ...)}}``."""
    em = CudaEmitter(sched, dtype)
    g: Graph = sched.graph
    train_src, train_names, train_args = em.forward(True)
    infer_src, infer_names, infer_args = em.forward(False)
    back_src, back_names, back_args = em.backward()
    init_src, init_args = em.initial_adjoint()
    used = {n.op for n in g.nodes if n.id in sched.live and n.op in HELPERS}
    if "softplus" in used:
        used.add("sigmoid")   # its derivative
    signatures = {**SUPPORT_SIGNATURES, **em.signatures}
    info = {
        "forward_train": (tuple(train_names), tuple(train_args)),
        "forward_infer": (tuple(infer_names), tuple(infer_args)),
        "backward": (tuple(back_names), tuple(back_args)),
        "persistent": {"forward_train": "forward_train_persistent_kernel",
                       "forward_infer": "forward_infer_persistent_kernel", "backward": "backward_persistent_kernel"},
        "initial": ("backward_initial_kernel", tuple(init_args)),
        "signatures": signatures,
        "step_kernels": tuple(em.signatures),   # compiled with launch bounds (step_jit)
    }
    parts = [f'"""seqengine CUDA kernels for cell {g.cell!r} ({dtype}). Generated; do not edit.\n\n{doc}\n"""',
             "import math", "", "import numpy as np", "from numba import cuda", "",
             *typed_names(dtype), "", f"KERNELS = {info!r}", "",
             "# Step kernels promise the compiler at most STEP_MAX_THREADS threads a block, so it keeps each",
             "# thread's registers within what such a block may use (a block that asks for more fails to launch).",
             "try:",
             f"    step_jit = cuda.jit(cache=True, launch_bounds={STEP_MAX_THREADS})",
             "except TypeError:   # the CUDA simulator's jit takes no launch bounds",
             "    step_jit = cuda.jit(cache=True)", ""]
    for fn in sorted(used):
        parts += ["", "@cuda.jit(device=True, inline=\"always\")", HELPERS[fn], ""]
    parts += [SUPPORT_KERNELS]
    for src in train_src + infer_src + back_src + [init_src]:
        parts += ["", src, ""]
    return "\n".join(parts), info
