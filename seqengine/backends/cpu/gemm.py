"""The hoisted and deferred GEMMs, parallel over Numba threads with single-threaded BLAS.

The time-loop kernels use Numba's thread pool; a multithreaded BLAS for the big
GEMMs before and after them is a second pool, whose threads still spin when the
kernel starts (and the kernel's when BLAS starts). On 2 cores the full
forward+backward of an LSTM at (T, B, H) = (200, 8, 64) took 108 ms with BLAS
threads and 25 ms with BLAS at one thread. So every GEMM here splits its rows
over Numba threads, each calling one-thread BLAS on a contiguous block.

    rows(A [M, K], B [K, N], out [M, N])            out = A @ B
    tn(A [M, K1], B [M, K2], out [K1, K2], scratch)  out = A^T @ B  (M split, partial sums added)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _rows(A, B, out, n_blocks):
    M = A.shape[0]
    for c in prange(n_blocks):
        r0 = c * M // n_blocks
        r1 = (c + 1) * M // n_blocks
        if r1 > r0:
            np.dot(A[r0:r1], B, out[r0:r1])


@njit(parallel=True, cache=True)
def _tn(A, B, scratch):
    M = A.shape[0]
    n_blocks = scratch.shape[0]
    for c in prange(n_blocks):
        r0 = c * M // n_blocks
        r1 = (c + 1) * M // n_blocks
        if r1 > r0:
            np.dot(A[r0:r1].T, B[r0:r1], scratch[c])
        else:
            scratch[c, :, :] = 0


# Below this many multiply-adds one BLAS call (one thread) beats waking the Numba pool.
SERIAL_WORK = 2_000_000


def _blocks(rows: int, work: float) -> int:
    return 1 if work < SERIAL_WORK else max(1, min(numba.get_num_threads(), rows))


def rows(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A [M, K] @ B [K, N] -> out [M, N] (A and out C-contiguous; B C- or F-contiguous)."""
    if out is None:
        out = np.empty((A.shape[0], B.shape[1]), A.dtype)
    if A.shape[1] == 0:
        out[:] = 0
    elif out.size:
        n = _blocks(A.shape[0], float(A.shape[0]) * A.shape[1] * B.shape[1])
        if n == 1:
            np.matmul(A, B, out=out)
        else:
            if not (B.flags.c_contiguous or B.flags.f_contiguous):
                B = np.ascontiguousarray(B)
            _rows(A, B, out, n)   # B may be a transposed view: BLAS takes it as is
    return out


def tn(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A [M, K1]^T @ B [M, K2] -> [K1, K2]: per-thread partial products over row blocks, then summed."""
    n = _blocks(A.shape[0], float(A.shape[0]) * A.shape[1] * B.shape[1])
    if n == 1:
        return A.T @ B
    scratch = np.empty((n, A.shape[1], B.shape[1]), A.dtype)
    if A.shape[1] and B.shape[1]:
        _tn(A, B, scratch)
    else:
        scratch[:] = 0
    return scratch[0] if n == 1 else scratch.sum(axis=0)
