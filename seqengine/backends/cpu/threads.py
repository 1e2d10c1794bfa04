"""Keep exactly one thread pool busy: BLAS or Numba, never both.

Inside the time-loop kernels every Numba thread calls BLAS for its own rows;
a multithreaded BLAS there would spawn a second pool fighting for the same
cores (measured 50x slower on 2 cores). `single_threaded_blas` holds every
loaded BLAS (NumPy's and SciPy's, which Numba's ``np.dot`` calls) to one
thread for the duration of a kernel call.
"""

from __future__ import annotations

import contextlib
import functools


@functools.lru_cache(maxsize=1)
def _controller():
    import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS that jitted np.dot calls first)
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas():
    with _controller().limit(limits=1, user_api="blas"):
        yield
