"""The hoisted and deferred GEMMs, parallel over Numba threads, on seqengine's own kernels.

The time-loop kernels use Numba's thread pool; a multithreaded BLAS for the big
GEMMs before and after them is a second pool, whose threads still spin when the
kernel starts (and the kernel's when BLAS starts). On 2 cores the full
forward+backward of an LSTM at (T, B, H) = (200, 8, 64) took 108 ms with BLAS
threads and 25 ms with BLAS at one thread. So every GEMM here splits its rows
over Numba threads, each running the one-thread kernels of `tiles.py` (register
blocks on packed panels: ~250 GFLOP/s a thread here, where one-thread OpenBLAS
gives 119-126) on a contiguous block.

    nt(A [M, K], Bt [N, K]) -> [M, N]          A @ Bt^T        (rows of A split; Bt packed once)
    rows(A [M, K], B [K, N]) -> [M, N]         A @ B           (nt on B^T)
    tn(A [M, K1], B [M, K2]) -> [K1, K2]       A^T @ B         (M split, partial sums added: A's rows
                                                               copied into panels, B's transposed,
                                                               block by block; result transposed)
    tn_many(A, [B, ...])                       the same for several Bs, A packed once
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import tiles, workspace
from .tiles import gemm_packed, pack_columns

# tn packs this many rows of each B at a time into per-thread panels.
TN_BLOCK = 512


@njit(parallel=True, cache=True)
def _nt(A, Bt, Bp, out, n_blocks):
    M = A.shape[0]
    for c in prange(n_blocks):
        r0 = c * M // n_blocks
        r1 = (c + 1) * M // n_blocks
        if r1 > r0:
            gemm_packed(A[r0:r1], Bt, Bp, out[r0:r1], False)


@njit(cache=True)
def _transpose_rows(A, m0, n, a_t):
    """a_t [K, n] = A[m0:m0+n]^T, in stripes of 16 columns of A so the written rows stay in L1
    (a plain row-by-row transpose touched K cache lines per row: 3 ns an element)."""
    K = A.shape[1]
    for k0 in range(0, K, 16):
        k1 = min(k0 + 16, K)
        for m in range(n):
            for k in range(k0, k1):
                a_t[k, m] = A[m0 + m, k]


@njit(cache=True)
def _tn_rows(A, Bs, r0, r1, outs, c, Ap, Bt, NR):
    """outs[q][c] [K2q, K1] = (A[r0:r1]^T @ Bs[q][r0:r1])^T for each q, TN_BLOCK rows at a time.

    The register-block kernel broadcasts elements along the rows of one operand and reads the other in
    packed panels. A (the product adjoints, K1 = k*H columns) is the wide one: its rows are copied into
    panels Ap [P * TN_BLOCK * NR] once per block for all the Bs; each B (K2 = D or H columns) is
    transposed into Bt [K2 * TN_BLOCK] so that the broadcasts read along rows (read in place they are
    K2 floats apart and alias in L1: 233 vs 339 GFLOP/s; transposing A instead moved 4x the data).
    The result comes out transposed; the caller transposes the sum."""
    K1 = A.shape[1]
    P = K1 // NR
    first = True
    for m0 in range(r0, r1, TN_BLOCK):
        n = min(m0 + TN_BLOCK, r1) - m0
        ap = Ap[:P * n * NR].reshape((P, n, NR))                 # panels of A[m0:m0+n]^T
        pack_columns(A, m0, n, ap)
        for q in range(len(Bs)):
            B = Bs[q]
            K2 = B.shape[1]
            b_t = Bt[:K2 * n].reshape((K2, n))                   # [K2, n] = B[m0:m0+n]^T
            _transpose_rows(B, m0, n, b_t)
            gemm_packed(b_t, A[m0:m0 + n].T, ap, outs[q][c], not first)
        first = False
    if first:
        for q in range(len(Bs)):
            outs[q][c, :, :] = 0


@njit(parallel=True, cache=True)
def _tn(A, Bs, partials, Ap, Bt, NR):
    M = A.shape[0]
    n_blocks = partials[0].shape[0]
    for c in prange(n_blocks):
        _tn_rows(A, Bs, c * M // n_blocks, (c + 1) * M // n_blocks, partials, c, Ap[c], Bt[c], NR)


@njit(parallel=True, cache=True)
def _sum_transposed(partials, out):
    """out [K1, K2] = sum over c of partials[c] [K2, K1] transposed, in 32 x 32 blocks (rows of both
    stay in L1); a numpy strided add of the transposed views cost 2.4 ms a step at 50x16x512."""
    n, K2, K1 = partials.shape
    for ib in prange((K1 + 31) // 32):
        i0 = ib * 32
        i1 = min(i0 + 32, K1)
        for j0 in range(0, K2, 32):
            j1 = min(j0 + 32, K2)
            for ii in range(i1 - i0):                # (zero-based inner ranges: LLVM vectorizes them)
                for jj in range(j1 - j0):
                    out[i0 + ii, j0 + jj] = partials[0, j0 + jj, i0 + ii]
            for c in range(1, n):
                for ii in range(i1 - i0):
                    for jj in range(j1 - j0):
                        out[i0 + ii, j0 + jj] += partials[c, j0 + jj, i0 + ii]


# Products with at least this many rows pack the weight into panels for the register-block kernel.
PACK_MIN_ROWS = 32

# Below this many multiply-adds one thread beats waking the Numba pool.
SERIAL_WORK = 2_000_000


def _blocks(rows: int, work: float) -> int:
    return 1 if work < SERIAL_WORK else max(1, min(numba.get_num_threads(), rows))


def panels(Bt: np.ndarray, rows: int) -> np.ndarray:
    """Bt [N, K] packed for products with `rows` rows: panels when there are enough rows to repay packing,
    else none (the dot-form tiles then multiply Bt as it is). Callers that multiply by the same Bt
    several times (one product per window of steps) compute this once and pass it in."""
    return tiles.packed(Bt) if rows >= PACK_MIN_ROWS else tiles.no_panels(Bt.shape[1], Bt.dtype)


def column_panels(B: np.ndarray, rows: int) -> np.ndarray:
    """`panels(B.T, rows)` for B [K, N], packed from B's rows (no transposed copy)."""
    return tiles.packed_columns(B) if rows >= PACK_MIN_ROWS else tiles.no_panels(B.shape[0], B.dtype)


def nt(A: np.ndarray, Bt: np.ndarray, out: np.ndarray | None = None, Bp: np.ndarray | None = None) -> np.ndarray:
    """A [M, K] @ Bt [N, K]^T -> out [M, N] (A, Bt and out C-contiguous); Bp: `panels(Bt, M)` if known."""
    return _multiply(A, Bt, panels(Bt, A.shape[0]) if Bp is None else Bp, out)


def rows(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None, Bp: np.ndarray | None = None) -> np.ndarray:
    """A [M, K] @ B [K, N] -> out [M, N] (A and out C-contiguous, B C-contiguous or a transposed view);
    Bp: `column_panels(B, M)` if known. B's columns are packed directly, no transposed copy."""
    if B.flags.f_contiguous and not B.flags.c_contiguous:
        return nt(A, B.T, out, Bp)                               # B^T is C-contiguous
    B = np.ascontiguousarray(B)
    return _multiply(A, B.T, column_panels(B, A.shape[0]) if Bp is None else Bp, out)


def _multiply(A, Bt, Bp, out):
    """out = A @ Bt^T with Bt [N, K] (maybe a view) and its panels Bp; rows split over threads."""
    if out is None:
        out = workspace.empty((A.shape[0], Bt.shape[0]), A.dtype)
    if A.shape[1] == 0:
        out[:] = 0
    elif out.size:
        n = _blocks(A.shape[0], float(A.shape[0]) * A.shape[1] * Bt.shape[0])
        if n == 1:
            gemm_packed(A, Bt, Bp, out, False)
        else:
            _nt(A, Bt, Bp, out, n)
    return out


def tn(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A [M, K1]^T @ B [M, K2] -> [K1, K2]."""
    return tn_many(A, [B])[0]


def tn_many(A: np.ndarray, Bs) -> list[np.ndarray]:
    """[A [M, K1]^T @ B [M, K2] -> [K1, K2] for each B]: per-thread partial products over row blocks,
    then summed. The Bs share the packing of A."""
    M, K1 = A.shape
    A = np.ascontiguousarray(A)
    Bs = tuple(np.ascontiguousarray(B, A.dtype) for B in Bs)
    n = _blocks(M, float(M) * K1 * sum(B.shape[1] for B in Bs))
    block = min(TN_BLOCK, max(M, 1))
    NR = tiles.panel_width(A.dtype.itemsize)
    partials = tuple(workspace.empty((n, B.shape[1], K1), A.dtype) for B in Bs)    # transposed results
    Ap = workspace.empty((n, max(1, K1 // NR * block * NR)), A.dtype)
    Bt = workspace.empty((n, max(B.shape[1] for B in Bs) * block), A.dtype)
    if n == 1:
        _tn_rows(A, Bs, 0, M, partials, 0, Ap[0], Bt[0], NR)
    else:
        _tn(A, Bs, partials, Ap, Bt, NR)
    outs = []
    for p in partials:                                           # sum the threads' [K2, K1] and transpose
        out = workspace.empty((K1, p.shape[1]), A.dtype)
        _sum_transposed(p, out)
        outs.append(out)
    return outs
