"""Windows of steps: the CPU runtime keeps x_proj and the product adjoints for `W` steps at a time.

With `runtime.WINDOW_BYTES` made tiny, every call runs in windows of one or a few steps (a remainder
window included); every output, final state and gradient must equal the single-window run, and the
gradients must match float64 finite differences. The buffer pool's arrays must behave as ordinary ones.
"""

import numpy as np
import pytest

from seqengine import functional
from seqengine.backends.cpu import runtime, workspace
from seqengine.gradcheck import check_gradients
from seqengine.plugins import get_cell

CELLS = ["lstm", "peephole", "coupled", "gru", "gru_cho", "rnn"]
T, B, D, H = 7, 3, 4, 5


def _problem(cell, seed=0):
    rng = np.random.default_rng(seed)
    params = functional.init_params(cell, D, H, np.float64, rng)
    x = rng.standard_normal((T, B, D))
    state0 = {s: rng.uniform(-0.5, 0.5, (B, H)) for s in cell.state}
    dy = rng.standard_normal((T, B, H))
    dfinal = {s: rng.standard_normal((B, H)) for s in cell.state}
    return params, x, state0, dy, dfinal


def _run(cell, problem, lengths=None):
    params, x, state0, dy, dfinal = problem
    y_inf, final_inf, _ = functional.forward(cell, params, x, state0, training=False, lengths=lengths)
    y, final, tape = functional.forward(cell, params, x, state0, training=True, lengths=lengths)
    dx, dstate0, grads = functional.backward(cell, params, tape, dy, dfinal)
    out = {"y_infer": y_inf, "y": y, "dx": dx}
    out.update({f"final_infer.{s}": v for s, v in final_inf.items()})
    out.update({f"final.{s}": v for s, v in final.items()})
    out.update({f"dstate0.{s}": v for s, v in dstate0.items()})
    out.update({f"grad.{p}": v for p, v in grads.items()})
    return {k: np.array(v, copy=True) for k, v in out.items()}


def _steps_per_window(cell, monkeypatch, steps):
    """Set WINDOW_BYTES so that the runtime takes `steps` steps per window (checked)."""
    kernels = functional._kernels(cell, np.float64, "cpu")
    assert kernels._window(T, B, D, H) == T
    monkeypatch.setattr(runtime, "WINDOW_MIN_REUSE", 0)         # no lower bound at these tiny sizes
    monkeypatch.setattr(runtime, "WINDOW_BYTES", kernels._step_bytes(B, H) * steps)
    assert kernels._window(T, B, D, H) == steps


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", CELLS)
def test_windows_match_one_window(name, steps, monkeypatch):
    cell = get_cell(name)
    problem = _problem(cell)
    lengths = np.array([7, 2, 5], np.int64)
    whole = _run(cell, problem)
    whole_len = _run(cell, problem, lengths)
    _steps_per_window(cell, monkeypatch, steps)   # 7 steps: windows of 1, or 3 + 3 + 1
    windowed = _run(cell, problem)
    windowed_len = _run(cell, problem, lengths)
    for key in whole:
        np.testing.assert_allclose(windowed[key], whole[key], rtol=1e-12, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(windowed_len[key], whole_len[key], rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", ["lstm", "gru_cho"])
def test_windowed_gradients_match_finite_differences(name, monkeypatch):
    monkeypatch.setattr(runtime, "WINDOW_MIN_REUSE", 0)
    monkeypatch.setattr(runtime, "WINDOW_BYTES", 1)              # one step per window
    result = check_gradients(name, input_size=3, hidden_size=4, steps=5, batch=2)
    assert result.worst()[1] < 1e-7, result.errors


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("shape", [(100, 64, 256, 256), (50, 16, 512, 512), (1000, 64, 512, 512), (200, 8, 64, 32)])
def test_windows_read_enough_per_pass_over_the_weight_gradients(name, shape):
    """Each window adds into every weight gradient once more: a window holds at most WINDOW_BYTES of the
    largest windowed array, but at least enough steps that the weight GEMMs read WINDOW_MIN_REUSE times
    the gradients' bytes; never more than T. The gradients' bytes are the parameter matrices' (from
    init_params, not from the runtime's own count)."""
    T_, B_, H_, D_ = shape
    cell = get_cell(name)
    kernels = functional._kernels(cell, np.float32, "cpu")
    params = functional.init_params(cell, D_, H_, np.float32, np.random.default_rng(0))
    gradients, per_step = kernels._gradient_traffic(B_, D_, H_)
    assert gradients == sum(p.nbytes for p in params.values() if p.ndim == 2)
    W = kernels._window(T_, B_, D_, H_)
    by_bytes = max(1, runtime.WINDOW_BYTES // kernels._step_bytes(B_, H_))
    enough = -(-runtime.WINDOW_MIN_REUSE * gradients // per_step)        # fewest steps reading enough
    assert W == min(T_, max(by_bytes, enough))
    assert W == T_ or W * per_step >= runtime.WINDOW_MIN_REUSE * gradients
    if (name, shape[:3]) == ("lstm", (50, 16, 512)):
        assert W == T_                     # 8 MiB of gradients: one window (RESULTS.md, session 6)


def test_pooled_arrays_are_ordinary_and_reused():
    a = workspace.empty((64, 1024), np.float32)                  # 256 KiB: from the pool
    assert type(a) is np.ndarray and a.flags.c_contiguous and a.flags.writeable and a.shape == (64, 1024)
    a[:] = 3.0
    view = a[1:3]
    address = a.ctypes.data
    del a
    assert view.sum() == 3.0 * 2 * 1024                          # a view keeps the block alive and intact
    b = workspace.empty((64, 1024), np.float32)
    assert b.ctypes.data != address                              # not handed out while the view lives
    del view
    c = workspace.empty((1024, 64), np.float32)                  # same size: the freed block comes back
    assert c.ctypes.data == address
    assert address % 64 == 0 and b.ctypes.data % 64 == 0         # blocks start at a cache line
    z = workspace.zeros((300, 300), np.float64)
    assert z.dtype == np.float64 and not z.any()
    small = workspace.empty((3,), np.float32)
    assert small.base is None                                    # small arrays come from NumPy directly
    del b, c, z
    workspace.release()
    assert workspace.POOL.free_bytes == 0
