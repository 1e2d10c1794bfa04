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


@pytest.mark.parametrize("B,H,chosen", [
    (64, 256, (32, 4, 4)),    # 8 x 16 = 128 tiles of 4 rows fit 132 SMs; 2 rows would make 256
    (16, 512, (32, 2, 8)),    # 4 rows: 16 x 4 = 64 tiles, half the SMs idle; 2 rows: 128
    (8, 64, (32, 2, 8)),      # 4 vs 8 tiles: more blocks at work
    (512, 1024, (32, 4, 4)),  # every candidate exceeds the SMs: the fewest tiles
])
def test_step_block_fills_the_multiprocessors(B, H, chosen):
    """Rows and splits left open are chosen per shape: the most (units, rows) tiles that fit the SMs."""
    from seqengine.backends.cuda.config import LaunchConfig
    u, r, z = LaunchConfig().step_block(B, H, multiprocessors=132)
    assert (u, r, z) == chosen
    tiles = -(-H // u) * -(-B // r)
    assert u * r * z == 512
    assert tiles <= 132 or r == 4


@pytest.mark.parametrize("kwargs,block", [
    (dict(rows=4, splits=2), (32, 4, 2)),   # both given: used as given
    (dict(rows=8), (32, 8, 2)),             # one given: the other fills 512 threads
    (dict(units=16, splits=4), (16, 8, 4)),
])
def test_step_block_keeps_what_the_config_fixes(kwargs, block):
    from seqengine.backends.cuda.config import LaunchConfig
    assert LaunchConfig(**kwargs).step_block(16, 512, multiprocessors=132) == block
