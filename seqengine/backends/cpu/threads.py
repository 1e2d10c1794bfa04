"""Keep exactly one thread pool busy: Numba's.

Inside the time-loop kernels every Numba thread calls BLAS for its own rows,
and the big GEMMs split their rows over Numba threads too; a multithreaded BLAS
would be a second pool fighting for the same cores (measured 50x slower on 2
cores). `single_threaded_blas` holds every loaded BLAS (NumPy's and SciPy's,
which Numba's ``np.dot`` calls) to one thread for the duration of a call.
Nested uses cost nothing, and the outermost one talks to the libraries
directly (threadpoolctl's `limit` costs ~60 us, a streaming step ~20 us).
"""

from __future__ import annotations

import contextlib
import functools
import threading

_state = threading.local()


@functools.lru_cache(maxsize=1)
def _blas_libraries():
    import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS that jitted np.dot calls first)
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
