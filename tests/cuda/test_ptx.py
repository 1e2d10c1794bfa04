"""Every generated kernel compiles to PTX for compute capability 9.0 (no GPU needed).

The simulator runs kernels as Python and checks no types; this is the check that a typing
error (a float64 constant in a float32 kernel, an unsupported call) fails CI.
"""

from __future__ import annotations

import re

import pytest

import seqengine as se

CC = (9, 0)
F64_ARITHMETIC = re.compile(r"\b(add|sub|mul|div|fma)(\.rn)?\.f64\b")


def _types(signature, dtype):
    from numba import types
    f = {"float32": types.float32, "float64": types.float64}[dtype]
    out = []
    for kind, ndim in signature:
        scalar = f if kind in ("f", "F") else types.int64
        typ = scalar if ndim == 0 else types.Array(scalar, ndim, "C")
        out.append(types.UniTuple(typ, 3) if kind == "F" else typ)
    return tuple(out)


@pytest.fixture(autouse=True)
def compute_capability_without_a_gpu(monkeypatch):
    """numba-cuda compiles the implementation of `cuda.cg.this_grid()` (the persistent kernels' grid
    barrier) as a device function for the *current* GPU's compute capability, which a machine without a
    GPU cannot report. Answer the PTX target's instead, for the length of one test."""
    from types import SimpleNamespace

    import numba.cuda.dispatcher
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: SimpleNamespace(compute_capability=CC))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(se.cells()))
def test_every_kernel_compiles_to_ptx(name, dtype):
    from numba import cuda

    from seqengine.backends.cuda import generated_module
    from seqengine.backends.cuda.config import STEP_MAX_THREADS
    _, module = generated_module(se.get_cell(name), dtype)
    signatures = module.KERNELS["signatures"]
    assert signatures
    for kernel, signature in signatures.items():
        py_func = getattr(module, kernel).py_func
        bounded = kernel in module.KERNELS["step_kernels"]
        ptx, _ = cuda.compile_ptx(py_func, _types(signature, dtype), cc=CC,
                                  launch_bounds=STEP_MAX_THREADS if bounded else None)
        assert ".target sm_90" in ptx, kernel
        if bounded:   # the register budget of a full block: what the runtime's step kernels are built with
            assert f".maxntid {STEP_MAX_THREADS}" in ptx, kernel
            assert ".local" not in ptx, f"{kernel}: a thread-local array (the unrolled values stay registers)"
        if "persistent" in kernel:   # the steps meet at the grid barrier (a cooperative launch)
            assert "cudaCGSynchronize" in ptx, kernel
        if dtype == "float32":   # no float64 constant promoted a float32 kernel's arithmetic
            assert not F64_ARITHMETIC.search(ptx), f"{kernel}: float64 arithmetic in a float32 kernel"
