"""Reuse the big arrays of a training step instead of asking the OS for fresh pages each time.

glibc serves allocations above its mmap threshold with fresh ``mmap`` pages and
unmaps them on free, so every training step faulted in all of its tape,
adjoint and GEMM scratch memory again. In this project's virtual machines a
page fault costs about 3.5 us (13 MB of GEMM scratch: 3300 faults, ~11 ms).
Measured on an LSTM training step at (T, B, H) = (50, 16, 512): 71 ms with
fresh arrays, 46 ms with glibc told to keep freed memory (the same effect as
this pool); benchmarks/RESULTS.md.

    a = workspace.empty((T, B, H), np.float32)    # an ordinary ndarray

The array (and every view of it) keeps a lease on a pooled block; when the last
one dies the block goes back to the pool, so a block is never handed out twice
while anything can still see it. Free blocks are kept up to `max_free_bytes`
(``$SEQENGINE_POOL_MB``, default 2048 MiB) and matched by size rounded up to
64 KiB; arrays below `MIN_BYTES` come from NumPy directly. `release()` returns
every free block to the OS (the benchmark's memory probe measures a step from
an empty pool).
"""

from __future__ import annotations

import math
import os

import numpy as np

MIN_BYTES = 256 * 1024
GRANULE = 64 * 1024
# Blocks start at a multiple of a cache line (NumPy's start 16 bytes into a page): rows of 2^k floats
# then hold whole AVX-512 vectors, none split over two lines. Step breakdown (benchmarks/
# step_breakdown.py), two alternated pairs of runs: peephole 100x64x256 48.49 / 47.21 -> 47.72 / 46.80 ms,
# rnn 12.58 / 11.98 -> 12.11 / 11.86.
ALIGN = 64


class _Lease:
    """The base of a pooled array: exposes the block's memory, and returns it to the pool when collected."""

    __slots__ = ("__array_interface__", "_block", "_pool")

    def __init__(self, block: np.ndarray, shape: tuple, dtype: np.dtype, pool: "BufferPool"):
        self._block = block
        self._pool = pool
        self.__array_interface__ = {"version": 3, "shape": shape, "typestr": dtype.str,
                                    "data": (block.ctypes.data, False), "strides": None}

    def __del__(self):
        self._pool._give_back(self._block)


class BufferPool:
    def __init__(self, max_free_bytes: int):
        self.max_free_bytes = max_free_bytes
        self._free: dict[int, list[np.ndarray]] = {}   # rounded size -> free blocks (uint8 arrays)
        self.free_bytes = 0

    def empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        nbytes = math.prod(shape) * dtype.itemsize             # (np.prod: 2 of the call's 5 us)
        if nbytes < MIN_BYTES or self.max_free_bytes <= 0:
            return np.empty(shape, dtype)
        size = -(-nbytes // GRANULE) * GRANULE
        blocks = self._free.get(size)
        try:
            block = blocks.pop()                 # list.pop is atomic: safe against a __del__ in another thread
            self.free_bytes -= size
        except (AttributeError, IndexError):
            block = np.empty(size + ALIGN, np.uint8)
            start = -block.ctypes.data % ALIGN
            block = block[start:start + size]
        return np.asarray(_Lease(block, shape, dtype, self))

    def zeros(self, shape, dtype) -> np.ndarray:
        a = self.empty(shape, dtype)
        a.fill(0)
        return a

    def _give_back(self, block: np.ndarray):
        if self.free_bytes + block.nbytes <= self.max_free_bytes:
            self._free.setdefault(block.nbytes, []).append(block)
            self.free_bytes += block.nbytes

    def release(self):
        """Drop every free block (memory in use is unaffected)."""
        self._free.clear()
        self.free_bytes = 0


POOL = BufferPool(int(float(os.environ.get("SEQENGINE_POOL_MB", "2048")) * 2 ** 20))
empty = POOL.empty
zeros = POOL.zeros
release = POOL.release
