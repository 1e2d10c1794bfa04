"""Every cell's CUDA kernels against the CPU backend: outputs, final states, all gradients.

Tiny shapes and tiny blocks (2 x 2 threads, 2 x 2 GEMM tiles) so that every kernel runs
several blocks, partial blocks and several operand tiles, even in the slow simulator.
"""

from __future__ import annotations

import numpy as np
import pytest

import seqengine as se
from seqengine import functional
from seqengine.backends.cuda import LaunchConfig, compile_cell

T, B, D, H = 3, 3, 3, 4
TINY = LaunchConfig(units=2, rows=2, splits=2, gemm_tile=2)   # persistent kernels, sums split in two
TINY_STEPS = LaunchConfig(units=2, rows=2, splits=2, gemm_tile=2, persistent=False)   # a launch per step
CELLS = sorted(se.cells())
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-4, atol=2e-5)}


def problem(cell, dtype, seed=0, T=T, B=B, D=D, H=H):
    rng = np.random.default_rng(seed)
    params = functional.init_params(cell, D, H, dtype=dtype, rng=rng)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    state0 = {s: (0.5 * rng.standard_normal((B, H))).astype(dtype) for s in cell.state}
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dfinal = {s: rng.standard_normal((B, H)).astype(dtype) for s in cell.state}
    return params, x, state0, dy, dfinal


def cpu_reference(cell, params, x, state0, dy, dfinal, lengths=None):
    kwargs = {} if lengths is None else {"lengths": lengths}
    y, final, tape = functional.forward(cell, params, x, state0, training=True, **kwargs)
    y, final = np.array(y), {s: np.array(v) for s, v in final.items()}
    dx, dstate0, grads = functional.backward(cell, params, tape, dy, dfinal)
    return y, final, dx, dstate0, grads


def assert_close(got, want, dtype, what):
    np.testing.assert_allclose(np.asarray(got), want, err_msg=what, **TOL[dtype])


def check_all(cell, dtype, lengths=None, launch=TINY, **dims):
    params, x, state0, dy, dfinal = problem(cell, dtype, **dims)
    y0, final0, dx0, dstate00, grads0 = cpu_reference(cell, params, x, state0, dy, dfinal, lengths)
    kernels = compile_cell(cell, dtype, launch=launch)
    y, final, tape = kernels.forward(params, x, state0, True, lengths)
    assert isinstance(y, np.ndarray) and y.dtype == np.dtype(dtype)
    assert_close(y, y0, dtype, "y (training)")
    for s in cell.state:
        assert_close(final[s], final0[s], dtype, f"final {s} (training)")
    y_inf, final_inf, no_tape = kernels.forward(params, x, state0, False, lengths)
    assert no_tape is None
    assert_close(y_inf, y0, dtype, "y (inference)")
    for s in cell.state:
        assert_close(final_inf[s], final0[s], dtype, f"final {s} (inference)")
    dx, dstate0, grads = kernels.backward(params, tape, dy, dfinal)
    assert_close(dx, dx0, dtype, "dx")
    for s in cell.state:
        assert_close(dstate0[s], dstate00[s], dtype, f"dstate0 {s}")
    assert set(grads) == set(grads0)
    for name in grads0:
        assert_close(grads[name], grads0[name], dtype, f"grad {name}")


@pytest.mark.parametrize("name", CELLS)
def test_cell_matches_cpu_float64(name):
    check_all(se.get_cell(name), "float64")


@pytest.mark.parametrize("name", ["gru_cho", "lstm"])
def test_cell_matches_cpu_float32(name):
    check_all(se.get_cell(name), "float32")


# States that share a value get an internal copy node from the parser: a delay line, a new state as a
# product's operand, a delayed output.
SHARING = {
    "delay": dict(state=["h", "c"], equations="h = tanh(W @ x + U @ h_prev + p * c_prev)\nc = h_prev"),
    "new_state_operand": dict(state=["h", "c"],
                              equations="c = tanh(W @ x + U @ h_prev + p * c_prev)\nh = tanh(V @ c)"),
    "delayed_output": dict(state=["h"], equations="h = tanh(W @ x + U @ h_prev)\nout = h_prev", output="out"),
    "products_of_products": dict(state=["h"], equations="h = tanh(U @ (V @ x) + R @ (S @ h_prev) + W @ b)"),
}


@pytest.mark.parametrize("name", sorted(SHARING))
def test_states_sharing_a_value_match_cpu(name):
    check_all(se.Cell(name=f"sim_{name}", **SHARING[name]), "float64")


@pytest.mark.parametrize("name", ["gru_cho", "peephole"])
def test_variable_lengths_match_cpu(name):
    check_all(se.get_cell(name), "float64", lengths=np.array([3, 1, 2], np.int64))


@pytest.mark.parametrize("name", ["gru_cho", "lstm"])
def test_unrolled_sums_match_cpu(name):
    """Tiles of 8 units, three slices of the sum, 19 units: the unrolled passes of the products (UNROLL
    values at once), their rest, slices with no columns left, and the partial sums meeting."""
    from seqengine.backends.cuda.emit import UNROLL
    launch = LaunchConfig(units=UNROLL, rows=1, splits=3, gemm_tile=2)
    check_all(se.get_cell(name), "float64", launch=launch, T=2, B=2, D=5, H=19)


@pytest.mark.parametrize("name", ["gru_cho", "lstm"])
def test_step_launches_match_cpu(name):
    """The launch-per-step path (LaunchConfig(persistent=False)), with variable lengths."""
    check_all(se.get_cell(name), "float64", lengths=np.array([3, 1, 2], np.int64), launch=TINY_STEPS)


def test_device_arrays_in_and_out():
    from numba import cuda

    from seqengine.backends.cuda.runtime import is_device_array
    cell, dtype = se.get_cell("gru_cho"), "float64"
    params, x, state0, dy, dfinal = problem(cell, dtype, seed=1)
    y0, final0, dx0, dstate00, grads0 = cpu_reference(cell, params, x, state0, dy, dfinal)
    to = cuda.to_device
    kernels = compile_cell(cell, dtype, launch=TINY)
    y, final, tape = kernels.forward({k: to(v) for k, v in params.items()}, to(x),
                                     {s: to(v) for s, v in state0.items()}, True)
    assert is_device_array(y) and all(is_device_array(v) for v in final.values())
    dx, dstate0, grads = kernels.backward({k: to(v) for k, v in params.items()}, tape, to(dy),
                                          {s: to(v) for s, v in dfinal.items()})
    assert is_device_array(dx) and all(is_device_array(g) for g in grads.values())
    assert_close(y.copy_to_host(), y0, dtype, "y")
    assert_close(dx.copy_to_host(), dx0, dtype, "dx")
    assert_close(dstate0["h"].copy_to_host(), dstate00["h"], dtype, "dstate0")
    for name in grads0:
        assert_close(grads[name].copy_to_host(), grads0[name], dtype, f"grad {name}")


def test_functional_dispatch_to_cuda():
    cell, dtype = se.get_cell("rnn"), "float64"
    params, x, state0, dy, dfinal = problem(cell, dtype, seed=2)
    y0, final0, dx0, _, grads0 = cpu_reference(cell, params, x, state0, dy, dfinal)
    y, final, tape = functional.forward(cell, params, x, state0, training=True, backend="cuda")
    dx, _, grads = functional.backward(cell, params, tape, dy, dfinal, backend="cuda")
    assert_close(y, y0, dtype, "y")
    assert_close(dx, dx0, dtype, "dx")
    assert_close(grads["U"], grads0["U"], dtype, "grad U")


def test_benchmark_gpu_mode_checks_and_times_the_cuda_backend(tmp_path):
    """`seqengine bench --gpu`: seqengine-cuda is checked against the CPU backend, then timed (here on the
    simulator; the torch GPU peers join when torch has CUDA)."""
    import json

    from seqengine.bench import main
    assert main(["--gpu", "--cells", "rnn", "--shapes", "3x2x4", "--modes", "forward,train", "--repeats", "1",
                 "--warmup", "0", "--no-compile", "--no-memory", "--no-plot", "--out", str(tmp_path)]) == 0
    cases = json.loads((tmp_path / "results.json").read_text())["cases"]
    assert {c["mode"] for c in cases} == {"forward", "train"}
    for case in cases:
        cuda_run = case["impls"]["seqengine-cuda"]
        assert cuda_run["status"] == "ok" and cuda_run["check"]["passed"], case
        assert cuda_run["check"]["max_rel_err"] < 1e-4


@pytest.mark.parametrize("threads,regs", [(3, 4), (2, 8), (4, 2)])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_kernel_matches_numpy(trans_a, trans_b, threads, regs):
    """The register-tiled GEMM in every layout, with several blocks, several depth stages and partial
    tiles on every side: 3 x 3 threads of 4 x 4 outputs (one run of 4 adjacent rows a thread), 2 x 2
    threads of 8 x 8 (two runs) and 4 x 4 of 2 x 2 (where a thread's staged elements are its first one
    moved along either side of the tile, as in 16 x 8), whole sums and sums split into slices."""
    from numba import cuda

    kernels = compile_cell(se.get_cell("rnn"), "float64", launch=LaunchConfig(gemm_tile=threads, gemm_regs=regs))
    rng = np.random.default_rng(3)
    M, N, K = threads * regs + 3, 2 * threads * regs - 1, 3 * threads + 1   # 2 x 2 blocks, 4 stages
    a = rng.standard_normal((K, M) if trans_a else (M, K))
    b = rng.standard_normal((N, K) if trans_b else (K, N))
    c0 = rng.standard_normal((M, N))
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    # the sum over K whole, split in two (uneven slices, one of them ending inside a stage), as chosen
    for accumulate, slices in [(False, 1), (True, 2), (False, None)]:
        c = cuda.to_device(c0)
        kernels._gemm(cuda.to_device(a), cuda.to_device(b), c, bool(trans_a), bool(trans_b), accumulate, 0,
                      slices=slices)
        np.testing.assert_allclose(c.copy_to_host(), want + c0 if accumulate else want, rtol=1e-12,
                                   atol=1e-12, err_msg=f"accumulate={accumulate}, slices={slices}")


def test_step_launch_binds_on_a_gpu_and_falls_back_in_the_simulator():
    """StepLaunch gives the dispatcher's results for every t; on a real GPU every launch after the first
    bypasses the dispatcher (bound), in the simulator it keeps using it."""
    import os

    from numba import cuda

    from seqengine.backends.cuda.launch import StepLaunch

    # defined in its own namespace: the simulator swaps the kernel's global `cuda` for its own
    namespace = {"cuda": cuda}
    exec("def scaled_row(t, src, dst):   # dst [T, N]: row t = t * src\n"
         "    i = cuda.grid(1)\n"
         "    if i < src.shape[0]:\n"
         "        dst[t, i] = src[i] * t\n", namespace)
    scaled_row = cuda.jit(namespace["scaled_row"])
    src = cuda.to_device(np.arange(1.0, 13.0))
    dst = cuda.to_device(np.zeros((4, 12)))
    step = StepLaunch(scaled_row, 2, 8, 0, 0, [0, src, dst], 0)
    for t in (3, 1, 2, 0):
        step(t)
    np.testing.assert_array_equal(dst.copy_to_host(), np.outer(np.arange(4.0), np.arange(1.0, 13.0)))
    assert step.bound == (os.environ.get("NUMBA_ENABLE_CUDASIM") != "1")
