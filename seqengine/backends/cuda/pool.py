"""Device buffers kept and reused across calls, by exact size (a caching allocator, as torch's).

Why: a training step of the CUDA backend asks for 20-40 device arrays (the tape, the adjoints, the
GEMM slices, the results), the same sizes every step. Through Numba each is a ``cuMemAlloc`` plus
Python bookkeeping, and each free is queued and later run as ``cuMemFree``, which waits for the
GPU; torch's GPU peers in the benchmark pay neither (its caching allocator). Here a block whose last
array (and last view) is gone goes back to a free list for its size, and the next request of that
size gets it without a driver call.

Ordering: every kernel and copy of the backend runs on the default stream, so work queued with a
block's new owner runs after the work its previous owner queued. A caller who hands our device
results to another stream must keep them alive until that stream is done with them (the same rule as
torch's ``record_stream``).

Lifetime follows Numba's own allocations exactly: the block is wrapped in an ``AutoFreePointer``
whose reference count the arrays and views hold through ``OwnedPointer``s; when the count reaches
zero its finalizer returns the block here instead of queueing ``cuMemFree``. This reads numba-cuda
internals (``cudadrv.driver``); where they differ, or under the CUDA simulator, or with
``SEQENGINE_CUDA_POOL=0``, `DevicePool.empty` falls back to ``cuda.device_array``: slower, never wrong.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections import defaultdict

import numpy as np


class DevicePool:
    """``empty(shape, dtype)``: a C-contiguous device array, its memory reused once it is released.

    limit_bytes: most bytes kept in free lists (None: a quarter of the first GPU's memory, read at
    first use); a block released beyond it is freed as usual. Free lists are kept per CUDA context
    (a block belongs to its GPU), keyed by the context's handle.
    """

    def __init__(self, limit_bytes: int | None = None, allocate=None, context=None):
        self._allocate = allocate          # nbytes -> raw device array (tests pass a fake)
        self._current_context = (lambda: context) if context is not None else None
        self.limit_bytes = limit_bytes
        self.enabled = None                # None: not decided yet (decided at the first request)
        self._free: dict[tuple, list] = defaultdict(list)   # (context, nbytes) -> raw blocks ready for reuse
        self._live: dict[int, object] = {}                 # key -> pointer, until its count is 0
        self._keys = itertools.count()
        self.cached_bytes = 0
        self.hits = 0
        self.misses = 0

    # -- the decision to pool ------------------------------------------------------
    def _start(self) -> bool:
        from numba import config, cuda
        if config.ENABLE_CUDASIM or os.environ.get("SEQENGINE_CUDA_POOL", "1") == "0":
            return False
        try:
            from numba.cuda.cudadrv.devicearray import DeviceNDArray   # noqa: F401
            from numba.cuda.cudadrv.driver import AutoFreePointer      # noqa: F401
        except ImportError:
            return False
        if self._allocate is None:
            self._allocate = lambda nbytes: cuda.device_array(nbytes, np.uint8)
        if self.limit_bytes is None:
            self.limit_bytes = cuda.current_context().get_memory_info().total // 4
        if self._current_context is None:
            self._current_context = cuda.current_context
        return True

    def empty(self, shape, dtype, stream=0):
        """An uninitialised C-contiguous device array of `shape` and `dtype`."""
        shape = tuple(int(n) for n in shape)
        dtype = np.dtype(dtype)
        if self.enabled is None:
            self.enabled = self._start()
        if self.enabled and math.prod(shape) > 0:
            try:
                return self._pooled(shape, dtype, stream)
            except (AttributeError, TypeError) as e:   # numba-cuda internals not as expected: stop pooling
                self.enabled = False
                import warnings
                warnings.warn(f"seqengine: CUDA buffer pool off ({type(e).__name__}: {e}); "
                              "allocating through Numba", RuntimeWarning, stacklevel=2)
        from numba import cuda
        return cuda.device_array(shape, dtype=dtype, stream=stream)

    def _pooled(self, shape, dtype, stream):
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        from numba.cuda.cudadrv.driver import AutoFreePointer
        nbytes = math.prod(shape) * dtype.itemsize
        context = self._current_context() if self._current_context else None
        where = (_handle(context), nbytes)
        free = self._free.get(where)
        if free:
            raw = free.pop()
            self.cached_bytes -= nbytes
            self.hits += 1
        else:
            raw = self._allocate_or_trim(nbytes)
            self.misses += 1
        # as Numba's own allocations: a pointer counted by its arrays' and views' OwnedPointers, kept
        # alive here until the count is zero; then its finalizer returns the block instead of freeing it
        key = next(self._keys)
        pointer = AutoFreePointer(_proxy(context), raw.gpu_data.device_pointer, nbytes,
                                  finalizer=functools.partial(self._release, key, where, raw))
        self._live[key] = pointer
        strides = tuple(dtype.itemsize * math.prod(shape[k + 1:]) for k in range(len(shape)))
        return DeviceNDArray(shape, strides, dtype, stream=stream, gpu_data=pointer.own())

    def _allocate_or_trim(self, nbytes: int):
        """A new raw block; when the GPU is out of memory, the free lists are given back first."""
        try:
            return self._allocate(nbytes)
        except Exception as e:   # numba's CudaAPIError (out of memory) or the driver's own
            if not self.cached_bytes or "OUT_OF_MEMORY" not in str(e).upper().replace(" ", "_"):
                raise
            self.release_cached()
            return self._allocate(nbytes)

    def _release(self, key: int, where: tuple, raw) -> None:
        """The finalizer of a block's pointer: its last array or view is gone."""
        self._live.pop(key, None)
        nbytes = where[1]
        if self.cached_bytes + nbytes <= (self.limit_bytes or 0):
            self._free[where].append(raw)
            self.cached_bytes += nbytes
        # else: `raw` is dropped here and Numba frees it as any of its arrays

    def release_cached(self) -> int:
        """Give every free block back to Numba (freed as its arrays are); returns the bytes given back."""
        given = self.cached_bytes
        self._free.clear()
        self.cached_bytes = 0
        return given


def _handle(context):
    """A hashable name of a CUDA context: its driver handle's address (None for none: the tests)."""
    if context is None:
        return None
    try:
        return int(context.handle)
    except (AttributeError, TypeError, ValueError):
        return id(context)


def _proxy(context):
    import weakref
    return None if context is None else weakref.proxy(context)


POOL = DevicePool()
"""The process's pool: every CudaKernels allocates through it."""
