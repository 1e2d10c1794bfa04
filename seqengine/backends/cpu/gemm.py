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
    tn(A [M, K1], B [M, K2]) -> [K1, K2]       A^T @ B         (A transposed, B read in place as
                                                               panels, K1 split)
    tn_many(A, [B, ...])                       the same for several Bs, A transposed once
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from . import tiles, workspace
from .tiles import MR_P, NV, VECTOR_BYTES, gemm_packed, transpose_tile

# tn sums over this many rows at a time: the block of A^T transposed into a thread's cache (session 5,
# alone: 512 beat or tied 128 and 256).
TN_BLOCK = 512


@njit(parallel=True, cache=True)
def _nt(A, Bt, Bp, out, n_blocks, accumulate):
    M = A.shape[0]
    for c in prange(n_blocks):
        r0 = c * M // n_blocks
        r1 = (c + 1) * M // n_blocks
        if r1 > r0:
            gemm_packed(A[r0:r1], Bt, Bp, out[r0:r1], accumulate)


@njit(cache=True)
def _transpose_block(A, m0, m1, r0, r1, at):
    """at [r1 - r0, m1 - m0] = A[m0:m1, r0:r1]^T: L x L tiles (L = a vector's lanes) transposed in
    registers (`tiles.transpose_tile`), the edges one element at a time. In cache: 0.15 ns an element;
    through a local tile in Python loops 0.4, reading or writing with a stride 0.6-1.5."""
    L = VECTOR_BYTES // A.itemsize
    m_full = m0 + (m1 - m0) // L * L
    r_full = r0 + (r1 - r0) // L * L
    for r in range(r0, r_full, L):
        for m in range(m0, m_full, L):
            transpose_tile(A, m, r, at, r - r0, m - m0)
        for m in range(m_full, m1):
            for j in range(L):
                at[r - r0 + j, m - m0] = A[m, r + j]
    for r in range(r_full, r1):
        for m in range(m0, m1):
            at[r - r0, m - m0] = A[m, r]


@njit(cache=True)
def _panels_in_place(B):
    """B [n, K2]'s first K2 // NR * NR columns (B's rows contiguous: tn_many makes sure) as panels
    [K2 // NR, n, NR] without packing: a strided view,
    panel p row m = B[m, p * NR:(p + 1) * NR], which the register blocks read as they read packed
    panels (NR contiguous floats a row). For the weight gradients' long sums the copy did not pay: B is
    read once either way, and the pack wrote and read it once more (a 6.4 MiB operand: 13 MiB of
    traffic at ~10-16 GB/s). Weight GEMMs in the step, two alternated runs: peephole 100x64x256 15.63 /
    15.13 -> 14.92 / 15.40 ms, coupled 12.67 / 11.96 -> 11.51 / 11.66, and no packed copy (6.4 MiB each)."""
    NR = NV * VECTOR_BYTES // B.itemsize                          # tiles.panel_width
    return np.lib.stride_tricks.as_strided(B, (B.shape[1] // NR, B.shape[0], NR),
                                           (NR * B.itemsize, B.strides[0], B.itemsize))


@njit(cache=True)
def _tn_rows(A, Bs, outs, r0, r1, at, accumulate):
    """outs[q][r0:r1] (+)= A[:, r0:r1]^T @ Bs[q], TN_BLOCK rows of A and the Bs (the sum's depth) at a time:
    the block of A^T (the register blocks' broadcast rows) is transposed into `at`, where it stays in
    cache for all the Bs, which are read in place (`_panels_in_place`)."""
    M = A.shape[0]
    for m0 in range(0, M, TN_BLOCK):
        m1 = min(m0 + TN_BLOCK, M)
        a_t = at[:(r1 - r0) * (m1 - m0)].reshape((r1 - r0, m1 - m0))     # [r1 - r0, n]
        _transpose_block(A, m0, m1, r0, r1, a_t)
        for q in range(len(Bs)):       # (B's columns past the panels go through the dot-form tiles)
            B = Bs[q][m0:m1]                                                                   # [n, K2]
            gemm_packed(a_t, B.T, _panels_in_place(B), outs[q][r0:r1], accumulate or m0 > 0)


@njit(parallel=True, cache=True)
def _tn(A, Bs, outs, at, n_blocks, accumulate):
    """`tn_many` with the result's rows split over n_blocks threads."""
    M, K1 = A.shape
    row_blocks = (K1 + MR_P - 1) // MR_P                          # whole register blocks of result rows
    for c in prange(n_blocks):
        _tn_rows(A, Bs, outs, min(K1, c * row_blocks // n_blocks * MR_P),
                 min(K1, (c + 1) * row_blocks // n_blocks * MR_P), at[c], accumulate)


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
    return tiles.packed(Bt, workspace.empty) if rows >= PACK_MIN_ROWS else tiles.no_panels(Bt.shape[1], Bt.dtype)


def column_panels(B: np.ndarray, rows: int) -> np.ndarray:
    """`panels(B.T, rows)` for B [K, N], packed from B's rows (no transposed copy)."""
    return tiles.packed_columns(B, workspace.empty) if rows >= PACK_MIN_ROWS else tiles.no_panels(B.shape[0], B.dtype)


def nt(A: np.ndarray, Bt: np.ndarray, out: np.ndarray | None = None, Bp: np.ndarray | None = None,
       accumulate: bool = False) -> np.ndarray:
    """A [M, K] @ Bt [N, K]^T -> out [M, N] (A, Bt and out C-contiguous); Bp: `panels(Bt, M)` if known;
    accumulate: out += A @ Bt^T."""
    return _multiply(A, Bt, panels(Bt, A.shape[0]) if Bp is None else Bp, out, accumulate)


def rows(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None, Bp: np.ndarray | None = None,
         accumulate: bool = False) -> np.ndarray:
    """A [M, K] @ B [K, N] -> out [M, N] (A and out C-contiguous, B C-contiguous or a transposed view);
    Bp: `column_panels(B, M)` if known (or a slice of them along K, for row blocks of B); accumulate:
    out += A @ B. B's columns are packed directly, no transposed copy."""
    if B.flags.f_contiguous and not B.flags.c_contiguous:
        return nt(A, B.T, out, Bp, accumulate)                   # B^T is C-contiguous
    B = np.ascontiguousarray(B)
    return _multiply(A, B.T, column_panels(B, A.shape[0]) if Bp is None else Bp, out, accumulate)


def _multiply(A, Bt, Bp, out, accumulate):
    """out (+)= A @ Bt^T with Bt [N, K] (maybe a view) and its panels Bp; rows split over threads."""
    if out is None:
        out, accumulate = workspace.empty((A.shape[0], Bt.shape[0]), A.dtype), False
    if A.shape[1] == 0:
        if not accumulate:
            out[:] = 0
    elif out.size:
        n = _blocks(A.shape[0], float(A.shape[0]) * A.shape[1] * Bt.shape[0])
        if n == 1:
            gemm_packed(A, Bt, Bp, out, accumulate)
        else:
            _nt(A, Bt, Bp, out, n, accumulate)
    return out


def tn(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A [M, K1]^T @ B [M, K2] -> [K1, K2]."""
    return tn_many(A, [B])[0]


def tn_many(A: np.ndarray, Bs, outs=None, accumulate: bool = False) -> list[np.ndarray]:
    """[A [M, K1]^T @ B [M, K2] -> [K1, K2] for each B]: each B read in place as panels, the result's rows
    split over threads, each summing over all M in blocks of A^T transposed into its cache (no
    per-thread partial results to add up afterwards). The Bs share each transposed block of A.
    outs: arrays [K1, K2] (unit column stride) to write, or with `accumulate` to add, the results to."""
    M, K1 = A.shape
    A = np.ascontiguousarray(A)
    Bs = tuple(np.ascontiguousarray(B, A.dtype) for B in Bs)
    if outs is None:
        outs, accumulate = tuple(workspace.empty((K1, B.shape[1]), A.dtype) for B in Bs), False
    outs = tuple(outs)
    if M == 0:
        if not accumulate:
            for out in outs:
                out[:] = 0
        return list(outs)
    n = _blocks(K1, float(M) * K1 * sum(B.shape[1] for B in Bs))
    rows_each = -(-K1 // (n * MR_P)) * MR_P + MR_P
    at = workspace.empty((n, rows_each * min(M, TN_BLOCK)), A.dtype)              # per thread [rows, n]
    if n == 1:
        _tn_rows(A, Bs, outs, 0, K1, at[0], accumulate)
    else:
        _tn(A, Bs, outs, at, n, accumulate)
    return list(outs)
