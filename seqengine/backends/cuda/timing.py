"""GPU timing for the benchmark runner (seqengine/bench): one call per configuration.

    from seqengine.backends.cuda.timing import time_cuda
    result = time_cuda("lstm", steps=100, batch=64, input_size=256, hidden_size=512)

Inputs live on the device (no host transfers timed), results are checked against the
CPU backend before anything is timed, every timed call is synchronised, and the first
(compiling) call is timed apart from the steady-state ones.
"""

from __future__ import annotations

import time

import numpy as np


def time_cuda(cell, steps: int, batch: int, input_size: int, hidden_size: int, dtype="float32",
              repeats: int = 10, training: bool = True, check: bool = True, seed: int = 0) -> dict:
    """Seconds per call of the CUDA forward (and backward when `training`) of one layer.

    Returns ``{"compile_s", "forward_s", "backward_s" (None unless training), "device"}``, the
    steady-state figures being the median of `repeats` synchronised calls. Raises
    `CudaUnavailableError` without a GPU. `check` compares one call with the CPU backend first
    (float32: rtol 1e-3) and raises AssertionError on a mismatch.
    """
    from numba import cuda

    from ... import get_cell
    from ...functional import backward as cpu_backward
    from ...functional import forward as cpu_forward
    from ...functional import init_params
    from . import compile_cell

    cell = get_cell(cell)
    rng = np.random.default_rng(seed)
    params = init_params(cell, input_size, hidden_size, dtype=dtype, rng=rng)
    x = rng.standard_normal((steps, batch, input_size)).astype(dtype)
    state0 = {s: np.zeros((batch, hidden_size), dtype) for s in cell.state}
    dy = rng.standard_normal((steps, batch, hidden_size)).astype(dtype)
    dfinal = {s: np.zeros((batch, hidden_size), dtype) for s in cell.state}

    t0 = time.perf_counter()
    kernels = compile_cell(cell, dtype)
    device = {k: cuda.to_device(v) for k, v in params.items()}
    device_x, device_dy = cuda.to_device(x), cuda.to_device(dy)
    device_state0 = {s: cuda.to_device(v) for s, v in state0.items()}
    device_dfinal = {s: cuda.to_device(v) for s, v in dfinal.items()}

    def run_forward():
        out = kernels.forward(device, device_x, device_state0, training)
        cuda.synchronize()
        return out

    def run_backward(tape):
        out = kernels.backward(device, tape, device_dy, device_dfinal)
        cuda.synchronize()
        return out

    y, _, tape = run_forward()
    grads = run_backward(tape)[2] if training else None
    compile_s = time.perf_counter() - t0

    if check:
        tol = dict(rtol=1e-3, atol=1e-4) if np.dtype(dtype) == np.float32 else dict(rtol=1e-8, atol=1e-10)
        y_ref, _, tape_ref = cpu_forward(cell, params, x, state0, training=True)
        np.testing.assert_allclose(y.copy_to_host(), y_ref, err_msg="CUDA forward vs CPU", **tol)
        if training:
            grads_ref = cpu_backward(cell, params, tape_ref, dy, dfinal)[2]
            for name, g in grads_ref.items():
                np.testing.assert_allclose(grads[name].copy_to_host(), g, err_msg=f"CUDA grad {name} vs CPU",
                                           **tol)

    forward_s, backward_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, _, tape = run_forward()
        forward_s.append(time.perf_counter() - t0)
        if training:
            t0 = time.perf_counter()
            run_backward(tape)
            backward_s.append(time.perf_counter() - t0)
    return {
        "compile_s": compile_s,
        "forward_s": float(np.median(forward_s)),
        "backward_s": float(np.median(backward_s)) if training else None,
        "device": cuda.get_current_device().name.decode() if hasattr(
            cuda.get_current_device().name, "decode") else str(cuda.get_current_device().name),
    }
