"""The CUDA buffer pool (`backends/cuda/pool.py`) with numba-cuda's own array and pointer classes, on
fake device addresses (no GPU needed; numba-cuda must be installed, not under the simulator).

What must hold: a block goes back to its free list only when its last array, reshape and view are
gone (Numba's reference counting, unchanged); a request of the same size then gets it again without
an allocation; the free lists never hold more than their limit; out of memory, the free lists are
given back and the allocation retried; where numba-cuda's internals differ, the pool turns itself off.
"""

from __future__ import annotations

import contextlib
import gc
from types import SimpleNamespace

import numpy as np
import pytest


@pytest.fixture
def fake_device(monkeypatch):
    """Slicing a device array asks for a CUDA context; there is none here."""
    from numba.cuda.cudadrv import devices
    monkeypatch.setattr(devices._runtime, "ensure_context", contextlib.nullcontext)


class FakeAllocator:
    """Raw blocks 1 MiB apart at made-up addresses; `fail` makes the next allocations run out of memory."""

    def __init__(self):
        self.next_address = 1 << 20
        self.calls = 0
        self.fail = 0

    def __call__(self, nbytes):
        from numba.cuda.cudadrv.driver import binding
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise RuntimeError("[2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")
        self.next_address += 1 << 20
        return SimpleNamespace(gpu_data=SimpleNamespace(device_pointer=binding.CUdeviceptr(self.next_address)))


def make_pool(limit=1 << 30):
    from seqengine.backends.cuda.pool import DevicePool
    allocator = FakeAllocator()
    pool = DevicePool(limit_bytes=limit, allocate=allocator, context=None)
    pool.enabled = True
    return pool, allocator


def address(a) -> int:
    return a.device_ctypes_pointer.value


def test_a_block_returns_when_its_last_view_is_gone_and_is_reused(fake_device):
    pool, allocator = make_pool()
    a = pool.empty((3, 4), np.float32)
    assert a.shape == (3, 4) and a.strides == (16, 4) and a.dtype == np.float32
    base = address(a)
    row = a[1:]                     # a view: its own pointer, counted against a's block
    flat = a.reshape(12)            # shares a's pointer
    assert address(row) == base + 16 and address(flat) == base
    del a
    gc.collect()
    assert pool.cached_bytes == 0   # the view and the reshape still hold the block
    del flat
    gc.collect()
    assert pool.cached_bytes == 0
    del row
    gc.collect()
    assert pool.cached_bytes == 48 and not pool._live
    b = pool.empty((12,), np.float32)   # same size, other shape: the same block, no allocation
    assert address(b) == base and allocator.calls == 1 and (pool.hits, pool.misses) == (1, 1)
    assert pool.cached_bytes == 0
    c = pool.empty((12,), np.float32)   # b still holds the first: a new block
    assert address(c) != base and allocator.calls == 2


def test_free_lists_keep_at_most_their_limit(fake_device):
    pool, allocator = make_pool(limit=100)
    a, b = pool.empty((16,), np.float32), pool.empty((16,), np.float32)   # 64 bytes each
    del a, b
    gc.collect()
    assert pool.cached_bytes == 64      # the second did not fit under 100 bytes: left to Numba
    assert len(pool._free[None, 64]) == 1
    assert pool.release_cached() == 64 and pool.cached_bytes == 0 and not pool._free


def test_out_of_memory_gives_the_free_lists_back_and_retries(fake_device):
    pool, allocator = make_pool()
    a = pool.empty((8,), np.float64)
    del a
    gc.collect()
    assert pool.cached_bytes == 64
    allocator.fail = 1
    b = pool.empty((100,), np.float32)  # fails once, then succeeds after the cache is given back
    assert b.shape == (100,) and pool.cached_bytes == 0 and allocator.calls == 3
    allocator.fail = 1                  # nothing cached left to give: the error reaches the caller
    with pytest.raises(RuntimeError, match="OUT_OF_MEMORY"):
        pool.empty((100,), np.float32)


def test_the_pool_turns_itself_off_where_numba_internals_differ(fake_device, monkeypatch):
    from numba import cuda
    pool, _ = make_pool()
    pool._allocate = lambda nbytes: object()   # no gpu_data: not a Numba device array
    sentinel = object()
    monkeypatch.setattr(cuda, "device_array", lambda shape, dtype=None, stream=0: sentinel)
    with pytest.warns(RuntimeWarning, match="CUDA buffer pool off"):
        assert pool.empty((4,), np.float32) is sentinel
    assert pool.enabled is False
    assert pool.empty((4,), np.float32) is sentinel   # off for good, quietly


def test_blocks_are_kept_per_gpu(fake_device):
    """A block freed under one CUDA context is not handed out under another (it is that GPU's memory)."""
    from seqengine.backends.cuda.pool import DevicePool
    class Context:   # a CUDA context as the pool sees it: a driver handle (weakly referenced)
        def __init__(self, handle):
            self.handle = handle
    gpus = [Context(1), Context(2)]
    current = [gpus[0]]
    pool = DevicePool(limit_bytes=1 << 30, allocate=FakeAllocator(), context=gpus[0])
    pool._current_context = lambda: current[0]
    pool.enabled = True
    a = pool.empty((4,), np.float32)
    first = address(a)
    del a
    gc.collect()
    current[0] = gpus[1]
    b = pool.empty((4,), np.float32)
    assert address(b) != first and pool.hits == 0
    current[0] = gpus[0]
    c = pool.empty((4,), np.float32)
    assert address(c) == first and pool.hits == 1
