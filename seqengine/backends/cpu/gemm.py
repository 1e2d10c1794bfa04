"""The hoisted and deferred GEMMs, parallel over Numba threads, on the register-tiled kernel.

The time-loop kernels use Numba's thread pool; a multithreaded BLAS for the big
GEMMs before and after them is a second pool, whose threads still spin when the
kernel starts (and the kernel's when BLAS starts). On 2 cores the full
forward+backward of an LSTM at (T, B, H) = (200, 8, 64) took 108 ms with BLAS
threads and 25 ms with BLAS at one thread. So every GEMM here splits its rows
over Numba threads, each running the one-thread tile kernel of `tiles.py`
(which also beats one-thread OpenBLAS on this machine: 149-189 vs 119-126
GFLOP/s at these sizes) on a contiguous block.

    nt(A [M, K], Bt [N, K]) -> [M, N]          A @ Bt^T        (rows of A split)
    rows(A [M, K], B [K, N]) -> [M, N]         A @ B           (nt on B^T)
    tn(A [M, K1], B [M, K2], ...) -> [K1, K2]  A^T @ B         (M split; partial sums added; one
                                                               transpose of A for several Bs)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import workspace
from .tiles import gemm_nt

# tn transposes this many rows of A and B at a time into per-thread scratch (the tile kernel
# reads both operands along the summed index): long enough that the tiles' final sums are rare.
TN_BLOCK = 512


@njit(parallel=True, cache=True)
def _nt(A, Bt, out, n_blocks):
    M = A.shape[0]
    for c in prange(n_blocks):
        r0 = c * M // n_blocks
        r1 = (c + 1) * M // n_blocks
        if r1 > r0:
            gemm_nt(A[r0:r1], Bt, out[r0:r1], False)


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
def _tn_rows(A, Bs, r0, r1, outs, c, At, Bts):
    """outs[q][c] [K1, K2q] = A[r0:r1]^T @ Bs[q][r0:r1] for each q, TN_BLOCK rows at a time transposed into
    the flat scratch At [K1 * TN_BLOCK], Bts[q][c] [K2q * TN_BLOCK] (reshaped, so the tile kernel sees
    C-contiguous rows); A's block is transposed once for all the Bs."""
    K1 = A.shape[1]
    first = True
    for m0 in range(r0, r1, TN_BLOCK):
        n = min(m0 + TN_BLOCK, r1) - m0
        a_t = At[:K1 * n].reshape((K1, n))                       # [K1, n] = A[m0:m0+n]^T
        _transpose_rows(A, m0, n, a_t)
        for q in range(len(Bs)):
            K2 = Bs[q].shape[1]
            b_t = Bts[q][c, :K2 * n].reshape((K2, n))            # [K2, n] = B[m0:m0+n]^T
            _transpose_rows(Bs[q], m0, n, b_t)
            gemm_nt(a_t, b_t, outs[q][c], not first)
        first = False
    if first:
        for q in range(len(Bs)):
            outs[q][c, :, :] = 0


@njit(parallel=True, cache=True)
def _tn(A, Bs, partials, At, Bts):
    M = A.shape[0]
    n_blocks = At.shape[0]
    for c in prange(n_blocks):
        _tn_rows(A, Bs, c * M // n_blocks, (c + 1) * M // n_blocks, partials, c, At[c], Bts)


# Below this many multiply-adds one thread beats waking the Numba pool.
SERIAL_WORK = 2_000_000


def _blocks(rows: int, work: float) -> int:
    return 1 if work < SERIAL_WORK else max(1, min(numba.get_num_threads(), rows))


def nt(A: np.ndarray, Bt: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A [M, K] @ Bt [N, K]^T -> out [M, N] (A, Bt and out C-contiguous)."""
    if out is None:
        out = workspace.empty((A.shape[0], Bt.shape[0]), A.dtype)
    if A.shape[1] == 0:
        out[:] = 0
    elif out.size:
        n = _blocks(A.shape[0], float(A.shape[0]) * A.shape[1] * Bt.shape[0])
        if n == 1:
            gemm_nt(A, Bt, out, False)
        else:
            _nt(A, Bt, out, n)
    return out


def rows(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A [M, K] @ B [K, N] -> out [M, N]; B may be a transposed view (then nothing is copied)."""
    return nt(A, np.ascontiguousarray(B.T), out)


def tn(A: np.ndarray, *Bs: np.ndarray):
    """A [M, K1]^T @ B [M, K2] -> [K1, K2] for each B (a list of them for several Bs): per-thread
    partial products over row blocks, then summed. Several Bs share the transposes of A."""
    M, K1 = A.shape
    A = np.ascontiguousarray(A)
    Bs = tuple(np.ascontiguousarray(B, A.dtype) for B in Bs)
    n = _blocks(M, float(M) * K1 * sum(B.shape[1] for B in Bs))
    block = min(TN_BLOCK, max(M, 1))
    partials = tuple(workspace.empty((n, K1, B.shape[1]), A.dtype) for B in Bs)
    At = workspace.empty((n, K1 * block), A.dtype)
    Bts = tuple(workspace.empty((n, B.shape[1] * block), A.dtype) for B in Bs)
    if n == 1:
        _tn_rows(A, Bs, 0, M, partials, 0, At[0], Bts)
        outs = [p[0] for p in partials]
    else:
        _tn(A, Bs, partials, At, Bts)
        outs = [np.sum(p, axis=0, out=workspace.empty(p.shape[1:], A.dtype)) for p in partials]
    return outs[0] if len(Bs) == 1 else outs
