"""Without a GPU: backend="cuda" fails with a clear error, and the CPU path never imports CUDA code."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import seqengine as se
from seqengine import functional

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def gpu_present() -> bool:
    if SIMULATOR or importlib.util.find_spec("numba_cuda") is None:
        return False
    from numba import cuda
    return cuda.is_available()


@pytest.mark.skipif(SIMULATOR or gpu_present(), reason="kernels can run here")
def test_cuda_backend_without_gpu_names_what_is_missing():
    from seqengine.backends.cuda import CudaUnavailableError
    cell = se.get_cell("rnn")
    params = functional.init_params(cell, 2, 3, rng=np.random.default_rng(0))
    x = np.zeros((2, 1, 2), np.float32)
    with pytest.raises(CudaUnavailableError, match=r"numba-cuda|driver|GPU|device"):
        functional.forward(cell, params, x, {"h": np.zeros((1, 3), np.float32)}, backend="cuda")


def test_cpu_path_never_imports_cuda():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import seqengine as se
        from seqengine import functional
        cell = se.get_cell("gru_cho")
        params = functional.init_params(cell, 2, 3, rng=np.random.default_rng(0))
        x = np.ones((2, 1, 2), np.float32)
        y, final, tape = functional.forward(cell, params, x, {"h": np.zeros((1, 3), np.float32)})
        functional.backward(cell, params, tape, np.ones_like(y), {"h": np.zeros((1, 3), np.float32)})
        loaded = sorted(m for m in sys.modules if m.startswith(("numba.cuda", "numba_cuda", "seqengine.backends.cuda")))
        assert not loaded, loaded
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kwargs,named", [
    (dict(units=0), "LaunchConfig.units must be >= 1"),
    (dict(splits=0), "LaunchConfig.splits must be >= 1"),
    (dict(units=32, rows=4, splits=8), "units * rows * splits = 1024"),
    (dict(gemm_tile=33), "gemm_tile ** 2 = 1089"),
    (dict(gemm_regs=0), "LaunchConfig.gemm_regs must be >= 1"),
    (dict(gemm_regs=9), "LaunchConfig.gemm_regs = 9; at most 8"),
])
def test_launch_config_rejects_blocks_that_cannot_launch(kwargs, named):
    from seqengine.backends.cuda.config import LaunchConfig
    with pytest.raises(ValueError, match=named.replace("*", r"\*")):
        LaunchConfig(**kwargs)
