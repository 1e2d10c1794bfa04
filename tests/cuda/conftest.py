"""The CUDA tests run in their own pytest process (see docs/CUDA.md, tests/cuda/run.sh).

- test_simulator.py: every cell's CUDA forward and backward against the CPU backend. Runs under
  the CUDA simulator (NUMBA_ENABLE_CUDASIM=1 in the environment, so set before numba is imported)
  or on a real GPU; skipped otherwise, e.g. in the normal CPU pytest process.
- test_ptx.py: every generated kernel compiled to PTX for compute capability 9.0 (needs numba-cuda[cu12],
  no GPU). Opt-in with SEQENGINE_CUDA_PTX=1, and not under the simulator (which does not compile).
- test_pool.py, test_launch.py: the device buffer pool and the dispatcher-free launches with
  numba-cuda's own classes on fake addresses; gated as test_ptx.py (numba-cuda's real driver module,
  which the simulator replaces).
- test_availability.py: no GPU needed; runs everywhere.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
PTX_CHECK = os.environ.get("SEQENGINE_CUDA_PTX") == "1"


def numba_cuda_installed() -> bool:
    return importlib.util.find_spec("numba_cuda") is not None


@functools.lru_cache(maxsize=1)
def gpu_present() -> bool:
    if SIMULATOR or not numba_cuda_installed():
        return False
    from numba import cuda
    return cuda.is_available()


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module == "test_simulator" and not (SIMULATOR or gpu_present()):
            item.add_marker(pytest.mark.skip(
                reason="needs NUMBA_ENABLE_CUDASIM=1 (set before numba is imported: run tests/cuda/run.sh) "
                       "or a GPU"))
        elif module in ("test_ptx", "test_pool", "test_launch"):
            if SIMULATOR:
                item.add_marker(pytest.mark.skip(reason="the CUDA simulator does not compile to PTX"))
            elif not PTX_CHECK:
                item.add_marker(pytest.mark.skip(reason="opt-in: SEQENGINE_CUDA_PTX=1 (tests/cuda/run.sh)"))
            elif not numba_cuda_installed():
                item.add_marker(pytest.mark.skip(reason="needs numba-cuda: pip install 'seqengine[cuda]'"))
