"""A barrier for the threads of one Numba parallel region, for kernels that split hidden units.

With one row per sequence (streaming inference), splitting the batch leaves one thread idle and
the other multiplying by all of U every step (1 MiB at H = 256: more than a core's 1 MiB L2).
Splitting hidden units instead gives each thread half of U, which stays in its L2, but every step
then reads the state all threads wrote: the threads must meet once per segment of a step.
Waking the pool once per step (a parallel region per step) costs ~4 us, as much as the step's
products; so the members of one region (`prange(n)`, one member per thread) meet at a counter:

    barrier(sync, n, k):   sync[ARRIVED] += 1 (atomic); wait until sync[ARRIVED] >= n * k

for the k-th meeting. The wait spins (with `pause`) for SPINS rounds, then yields the core between
checks (`sched_yield`), so a partner that another busy thread pool (torch's OpenMP threads, say)
pushed off a core gets it back at once instead of after a scheduler tick. A member that waits
past `limit` yields gives up and raises sync[ABORTED]: the others then give up too, and the caller
reruns the window on the row-split kernels. That happens only when the members do not all run at
once (one thread running several members in turn); the runtime avoids it by using the split only
with a threading layer that gives each member its own thread (omp, workqueue) and enough threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

ARRIVED, ABORTED = 0, 1
SPINS = 4000                  # rounds of `pause` before yielding (~tens of microseconds)
DEFAULT_LIMIT = 2_000_000     # yields before giving up: about a second with nothing else runnable

_YIELD_SYMBOL = "seqengine_sched_yield"
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _register_sched_yield() -> bool:
    """Make libc's sched_yield callable from compiled code under a name of ours (the JIT resolves it
    in this process, including for kernels loaded from Numba's disk cache)."""
    if not sys.platform.startswith("linux"):
        return False
    import llvmlite.binding as llvm
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    llvm.add_symbol(_YIELD_SYMBOL, ctypes.cast(libc.sched_yield, ctypes.c_void_p).value)
    return True


AVAILABLE = _register_sched_yield()


def _element_pointer(context, builder, arr_type, arr, index):
    array = context.make_array(arr_type)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arr_type, array, [index])


def _int64_vector(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


@intrinsic
def atomic_add(typingctx, arr, index, value):
    """arr[index] += value atomically (sequentially consistent); returns the old value."""
    if not (_int64_vector(arr) and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, context.cast(builder, args[2], sig.args[2], types.int64), "seq_cst")
    return types.int64(arr, index, value), codegen


@intrinsic
def atomic_load(typingctx, arr, index):
    """arr[index] read atomically (acquire: what was written before a matching atomic_add is visible)."""
    if not (_int64_vector(arr) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, index), codegen


@intrinsic
def cpu_relax(typingctx):
    """The spin-wait hint (`pause` on x86; nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        from llvmlite import ir
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def yield_core(typingctx):
    """sched_yield(): give the core to another runnable thread, if any."""
    def codegen(context, builder, sig, args):
        from llvmlite import ir
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), _YIELD_SYMBOL)
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@njit(cache=True, nogil=True)
def barrier(sync, n, k, limit):
    """The k-th meeting (k = 1, 2, ...) of the n members sharing `sync`; False if the team gave up."""
    atomic_add(sync, ARRIVED, 1)
    target = n * k
    spins = 0
    yields = 0
    while atomic_load(sync, ARRIVED) < target:
        if atomic_load(sync, ABORTED) != 0:
            return False
        if spins < SPINS:
            spins += 1
            cpu_relax()
        else:
            yields += 1
            if yields > limit:
                atomic_add(sync, ABORTED, 1)
                return False
            yield_core()
    return atomic_load(sync, ABORTED) == 0


LIMIT = DEFAULT_LIMIT       # what the runtime passes (tests lower it)
_gave_up = False


def give_up():
    """A team gave up waiting in this process: warn once and split rows from now on."""
    global _gave_up
    if not _gave_up:
        import warnings
        warnings.warn("seqengine: the threads of a hidden-unit team did not all run at once (threading layer "
                      f"{numba.threading_layer()!r}, {numba.get_num_threads()} threads); inference splits batch "
                      "rows from now on", RuntimeWarning, stacklevel=3)
    _gave_up = True


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


@njit(parallel=True, cache=True)
def _start_pool(out):
    for i in prange(out.shape[0]):
        out[i] = i


def usable() -> bool:
    """Whether a team can run here: sched_yield is reachable, this process has not given up on teams,
    and Numba's threading layer gives each member of a `prange(n)` its own thread (omp and workqueue
    run one chunk per thread; tbb may run two members in turn on one thread)."""
    if not AVAILABLE or _gave_up:
        return False
    try:
        layer = numba.threading_layer()
    except ValueError:                        # the pool starts with the first parallel region
        _start_pool(np.zeros(2, np.int64))
        layer = numba.threading_layer()
    return layer in ("omp", "workqueue")


def new_sync() -> np.ndarray:
    """A fresh counter pair for one parallel region: [arrivals, aborted]."""
    return np.zeros(2, np.int64)
