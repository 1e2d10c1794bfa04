"""The CUDA GEMM ``c (+)= op(a) @ op(b)``: one generated kernel per (dtype, block shape), shared by all cells.

It runs the hoisted input projection before the step loop and the deferred weight gradients and dx
after it. The block shape is compiled in, not a runtime argument: the inner loop then indexes shared
memory with constant offsets and unrolls (session 7: a runtime tile width cost 85 instructions per
step of the sum for 16 multiply-adds; see benchmarks/RESULTS.md). `LaunchConfig.gemm_tile` and
`gemm_regs` pick the variant; each is generated and compiled on first use, cached on disk.

Per block of ts x ts threads, each with a regs x regs register tile of c (a [ts*regs, ts*regs] tile
of c a block):

    for each depth stage of `ts` values of the sum:
        stage op(a) [ts, tile] and op(b) [ts, tile] in shared memory (k-major, rows padded by 4 words)
        start loading the next stage into registers        # global loads in flight during the FMAs
        for kk < ts:  acc[r, q] += a_tile[kk, row_r] * b_tile[kk, col_q]

A thread owns rows in runs of `vec = min(regs, 4)` neighbours (ty*vec .. ty*vec + vec-1, then the
same a block of vec*ts rows further), so that its values of a stage row are adjacent: 128-bit shared
loads, 2*regs/vec of them for regs^2 multiply-adds. The padding keeps both the transposing stores of a
stage and the loads free of most bank conflicts. Indices are unsigned (``U``): no negative-index
wraparound code.
"""

from __future__ import annotations

import functools

from ...compiler.cache import load_generated_module
from .config import GEMM_REGS, GEMM_THREADS
from .emit import typed_names

PAD = 4   # words added to every stage row in shared memory: keeps rows 16-byte aligned, spreads banks


def _owned(regs: int, ts: int, thread: str) -> list[str]:
    """Offsets inside a block tile of the rows (or columns) that `thread` owns, as source."""
    vec = min(regs, 4)
    return [f"{(r // vec) * vec * ts + r % vec} + {thread} * {vec}" for r in range(regs)]


def gemm_kernel_name(trans_a: bool, trans_b: bool) -> str:
    """``gemm_nt_kernel``: the kernel for c (+)= a @ b.T (n: as stored, t: transposed)."""
    return f"gemm_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}_kernel"


def gemm_kernel_source(ts: int = GEMM_THREADS, regs: int = GEMM_REGS, dtype: str = "float32",
                       aligned: bool = True) -> str:
    """Source of a module with the four ``gemm_<ab>_kernel(a, b, c, accumulate)`` of one block shape.

    c [S, M, N]: c[z] (+)= op(a) [M, K] @ op(b) [K, N] over the z-th of S slices of K (blockIdx.z);
    op(v) = v.T in the kernels whose name says t for v. Launch with blockDim (ts, ts), any grid.
    The layouts are compiled in too: with a runtime flag each stage ran both layouts' loads, predicated.
    `aligned`: the stage tiles are declared 16-byte aligned, which lets the compiler merge a thread's 4
    adjacent shared loads into one (the CUDA simulator refuses the alignment argument).
    """
    parts = [f'"""seqengine GEMM kernels: {ts} x {ts} threads, {regs} x {regs} outputs each, {dtype}. '
             'Generated; do not edit."""',
             "import numpy as np", "from numba import cuda", "", *typed_names(dtype)]
    for trans_a in (False, True):
        for trans_b in (False, True):
            parts += ["", "", _kernel(ts, regs, trans_a, trans_b, aligned)]
    return "\n".join(parts)


def _kernel(ts: int, regs: int, trans_a: bool, trans_b: bool, aligned: bool) -> str:
    tile = ts * regs
    pitch = tile + PAD
    threads = ts * ts
    per_thread = tile * ts // threads           # = regs elements of each stage tile a thread stages
    rows, cols = _owned(regs, ts, "ty"), _owned(regs, ts, "tx")
    rq = [(r, q) for r in range(regs) for q in range(regs)]
    align = ", alignment=16" if aligned else ""
    a_shape = "[K, M]" if trans_a else "[M, K]"
    b_shape = "[N, K]" if trans_b else "[K, N]"
    L = ["@cuda.jit(cache=True)",
         f"def {gemm_kernel_name(trans_a, trans_b)}(a, b, c, accumulate):",
         f"    # c [S, M, N]: c[z] (+)= {'a.T' if trans_a else 'a'} @ {'b.T' if trans_b else 'b'} over the z-th of S "
         f"slices of K; a {a_shape}, b {b_shape}",
         f"    # blockDim ({ts}, {ts}); tile of c [{tile}, {tile}]; stage tiles [{ts}, {pitch}] (k-major, padded)",
         f"    a_tile = cuda.shared.array({ts * pitch}, FT{align})",
         f"    b_tile = cuda.shared.array({ts * pitch}, FT{align})",
         "    tx = cuda.threadIdx.x",
         "    ty = cuda.threadIdx.y",
         f"    lin = ty * {ts} + tx",
         f"    m0 = cuda.blockIdx.y * {tile}",
         f"    n0 = cuda.blockIdx.x * {tile}",
         "    z = cuda.blockIdx.z",
         "    M = c.shape[1]",
         "    N = c.shape[2]",
         f"    K_all = a.shape[{0 if trans_a else 1}]",
         f"    chunk = ((K_all + cuda.gridDim.z - 1) // cuda.gridDim.z + {ts - 1}) // {ts} * {ts}",
         "    k_begin = z * chunk",
         "    K = min(K_all, k_begin + chunk)",
         f"    # element lin + i * {threads} of each stage tile is this thread's to stage: its (row, depth), with",
         "    # consecutive threads on consecutive addresses of the matrix"]
    def split(i: int, inner: int, major: str, minor: str) -> list[str]:
        """(major, minor) of element lin + i * threads of a tile whose minor side is `inner` long. Where
        `threads` is a multiple of `inner`, element i is element 0 moved `threads // inner` along the
        major side, written so: no division for it, and its shared-memory offset is element 0's plus
        a constant (stores with immediate offsets; 186 -> 152 registers in gemm_nt_kernel)."""
        if i and threads % inner == 0:
            return [f"    {major}{i} = {major}0 + {i * threads // inner}", f"    {minor}{i} = {minor}0"]
        e = f"(lin + {i * threads})"
        return [f"    {major}{i} = {e} // {inner}", f"    {minor}{i} = {e} - {major}{i} * {inner}"]

    for i in range(per_thread):
        L += split(i, tile, "ka", "ma") if trans_a else split(i, ts, "ma", "ka")
        L += split(i, ts, "nb", "kb") if trans_b else split(i, tile, "kb", "nb")
        L += [f"    sa{i} = U(ka{i} * {pitch} + ma{i})",
              f"    sb{i} = U(kb{i} * {pitch} + nb{i})"]
    L += [f"    row{r} = U({rows[r]})" for r in range(regs)]
    L += [f"    col{q} = U({cols[q]})" for q in range(regs)]
    L += [f"    acc_{r}_{q} = F(0.0)" for r, q in rq]
    # per operand: its register, its element i, where the block's tile is inside it, element i's bounds
    operands = [("va", "a[U(k0 + ka{i}), U(m0 + ma{i})]" if trans_a else "a[U(m0 + ma{i}), U(k0 + ka{i})]",
                 "a_inside", "m0 + ma{i} < M and k0 + ka{i} < K"),
                ("vb", "b[U(n0 + nb{i}), U(k0 + kb{i})]" if trans_b else "b[U(k0 + kb{i}), U(n0 + nb{i})]",
                 "b_inside", "n0 + nb{i} < N and k0 + kb{i} < K")]

    def stage_loads(indent: str) -> list[str]:
        """Load the stage at depth k0 into registers va<i>, vb<i> (zero outside the matrices); a stage
        inside both matrices (every stage of an interior block but a slice's last) skips the checks."""
        out = []
        for register, at, inside, bounds in operands:
            out += [f"{indent}if {inside} and k0 + {ts} <= K:"]
            out += [f"{indent}    {register}{i} = {at.format(i=i)}" for i in range(per_thread)]
            out += [f"{indent}else:"]
            out += [f"{indent}    {register}{i} = {at.format(i=i)} if {bounds.format(i=i)} else F(0.0)"
                    for i in range(per_thread)]
        return out

    L += [f"    a_inside = m0 + {tile} <= M   # the block's rows of op(a) are all inside it",
          f"    b_inside = n0 + {tile} <= N",
          "    k0 = k_begin"]
    L += stage_loads("    ")
    L += ["    while k0 < K:"]
    L += [f"        a_tile[sa{i}] = va{i}" for i in range(per_thread)]
    L += [f"        b_tile[sb{i}] = vb{i}" for i in range(per_thread)]
    L += ["        cuda.syncthreads()",
          f"        k0 += {ts}",
          "        if k0 < K:   # the next stage's loads are in flight while this one's FMAs run"]
    L += stage_loads("            ")
    # a while loop over an unsigned offset: Numba's range() loop keeps a signed trip count beside it
    L += ["        base = U(0)",
          f"        while base < U({ts * pitch}):   # the stage's {ts} rows"]
    L += [f"            a{r} = a_tile[base + row{r}]" for r in range(regs)]
    L += [f"            b{q} = b_tile[base + col{q}]" for q in range(regs)]
    L += [f"            acc_{r}_{q} += a{r} * b{q}" for r, q in rq]
    L += [f"            base += U({pitch})"]
    L += ["        cuda.syncthreads()"]
    for r in range(regs):
        L += [f"    i = m0 + {rows[r]}", "    if i < M:"]
        for q in range(regs):
            L += [f"        j = n0 + {cols[q]}",
                  "        if j < N:",
                  f"            c[U(z), U(i), U(j)] = c[U(z), U(i), U(j)] + acc_{r}_{q} if accumulate else acc_{r}_{q}"]
    return "\n".join(L) + "\n"


# Argument types of a GEMM kernel for the PTX check, as in emit.SUPPORT_SIGNATURES.
GEMM_SIGNATURE = (("f", 2), ("f", 2), ("f", 3), ("i", 0))


@functools.lru_cache(maxsize=None)
def gemm_module(dtype: str, ts: int = GEMM_THREADS, regs: int = GEMM_REGS):
    """The loaded module of one GEMM variant (generated once per process, compiled on first launch)."""
    from numba import config
    return load_generated_module(f"gemm_{ts}x{regs}_{dtype}_cuda",
                                 gemm_kernel_source(ts, regs, dtype, aligned=not config.ENABLE_CUDASIM))
