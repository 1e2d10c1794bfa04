"""Keep exactly one thread pool busy: Numba's.

The kernels' GEMMs are seqengine's own (`tiles.py`), run on Numba's threads;
NumPy calls around them (small products below the parallel threshold, the
training head, a user's code in between) use NumPy's BLAS, whose own thread
pool would be a second one fighting for the same cores (measured 50x slower
on 2 cores). `single_threaded_blas` holds every loaded BLAS to one thread for
the duration of a call. Nested uses cost nothing, and the outermost one talks
to the libraries directly (threadpoolctl's `limit` costs ~60 us, a streaming
step ~20 us).
"""

from __future__ import annotations

import contextlib
import functools
import threading

_state = threading.local()


@functools.lru_cache(maxsize=1)
def _blas_libraries():
    from threadpoolctl import ThreadpoolController
    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


@contextlib.contextmanager
def single_threaded_blas():
    if getattr(_state, "depth", 0):
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    libs = _blas_libraries()
    previous = [lib.get_num_threads() for lib in libs]
    for lib, n in zip(libs, previous):
        if n != 1:
            lib.set_num_threads(1)
    _state.depth = 1
    try:
        yield
    finally:
        _state.depth = 0
        for lib, n in zip(libs, previous):
            if n != 1:
                lib.set_num_threads(n)
