"""Every registered cell: finite-difference gradients (float64) and float32/float64 agreement."""

from __future__ import annotations

import numpy as np
import pytest

import seqengine as se
from seqengine import functional
from seqengine.gradcheck import check_gradients, relative_error

from _seqengine_testing import assert_close, make_problem, run_engine


def test_registry_has_the_builtin_cells():
    # the parametrized tests below loop over the registry; make sure it is not silently empty
    assert {"lstm", "peephole", "coupled", "gru", "gru_cho", "rnn"} <= set(se.cells())


def test_finite_difference_gradients(registered_cell):
    cell = se.get_cell(registered_cell)
    result = check_gradients(registered_cell, input_size=3, hidden_size=4, steps=4, batch=2, seed=1)
    params = functional.param_shapes(cell, 3, 4)
    expected = {"x"} | {f"state0.{s}" for s in cell.state} | set(params)
    assert set(result.errors) == expected, "an error must be measured for x, every initial state and every param"
    assert all(np.isfinite(e) for e in result.errors.values())
    assert result.tolerance == 1e-6
    assert result.ok, result.report()
    # float64 central differences with eps=1e-6 are good to ~1e-9 here: keep a margin, not a blank cheque
    assert max(result.errors.values()) < 1e-7, result.report()


def test_float32_matches_float64(registered_cell):
    """Same params cast to float32: outputs, final states and every gradient agree with float64."""
    cell, params, x, state0, dy, dfinal = make_problem(registered_cell, input_size=3, hidden_size=5, steps=5,
                                                       batch=3, seed=2, scale=0.5)
    # cast the float64 inputs through float32 first, so both runs see the very same numbers
    params, x, state0, dy = ({k: v.astype(np.float32).astype(np.float64) for k, v in params.items()},
                             x.astype(np.float32).astype(np.float64),
                             {k: v.astype(np.float32).astype(np.float64) for k, v in state0.items()},
                             dy.astype(np.float32).astype(np.float64))
    dfinal = {k: v.astype(np.float32).astype(np.float64) for k, v in dfinal.items()}
    r64 = run_engine(cell, params, x, state0, dy, dfinal, np.float64)
    r32 = run_engine(cell, params, x, state0, dy, dfinal, np.float32)
    # float32 has ~6e-8 unit roundoff; 5 steps of O(1) values and fast-math: 2e-5 relative, 2e-5 absolute
    rtol, atol = 2e-5, 2e-5
    names = ["y", "final", "dx", "dstate0", "grads"]
    for name, a32, a64 in zip(names, r32, r64):
        if isinstance(a64, dict):
            assert set(a32) == set(a64)
            for k in a64:
                assert a32[k].dtype == np.float32, f"{name}[{k}] is {a32[k].dtype}"
                assert_close(a32[k], a64[k], rtol, atol, f"{registered_cell} {name}[{k}]")
        else:
            assert a32.dtype == np.float32, f"{name} is {a32.dtype}"
            assert_close(a32, a64, rtol, atol, f"{registered_cell} {name}")


def test_inference_forward_matches_training_forward(registered_cell):
    """training=False runs a different kernel (two state slots); it must give the same numbers."""
    cell, params, x, state0, _, _ = make_problem(registered_cell, steps=5, seed=3)
    for T in (1, 2, 5):   # odd and even step counts: the final state sits in slot T & 1
        y_t, f_t, tape = functional.forward(cell, params, x[:T], state0, training=True)
        y_i, f_i, none = functional.forward(cell, params, x[:T], state0, training=False)
        assert none is None and tape is not None
        assert_close(y_i, y_t, 0, 1e-14, f"{registered_cell} y (T={T})")
        for s in cell.state:
            assert_close(f_i[s], f_t[s], 0, 1e-14, f"{registered_cell} final {s} (T={T})")


def test_gradient_check_detects_a_wrong_gradient(monkeypatch):
    """The checker itself can fail: perturb one analytic gradient by 1% and it must be flagged."""
    real_backward = functional.backward

    def wrong_backward(*args, **kwargs):
        dx, dstate0, grads = real_backward(*args, **kwargs)
        grads = dict(grads)
        grads["b_hz"] = grads["b_hz"] * 1.01
        return dx, dstate0, grads

    monkeypatch.setattr(functional, "backward", wrong_backward)
    result = check_gradients("gru", steps=3, batch=2, seed=0)
    assert not result.ok
    name, err = result.worst()
    assert name == "b_hz" and err > 1e-4
    assert all(e < 1e-7 for k, e in result.errors.items() if k != "b_hz")
    assert "b_hz" in result.report() and "FAIL" in result.report() and "FAILED" in result.report()


def test_gradient_check_max_entries_samples():
    result = check_gradients("rnn", input_size=3, hidden_size=4, steps=2, batch=2, max_entries=3, seed=4)
    assert result.ok and set(result.errors) == {"x", "state0.h", "W", "b_i", "U", "b_h"}


def test_relative_error_is_absolute_near_zero_and_relative_far_from_it():
    a = np.array([0.0, 100.0, 1e-3])
    n = np.array([1e-7, 100.0 + 1e-3, 1e-3 + 2e-7])
    # per entry |a - n| / max(1, |a|, |n|): 1e-7 / 1, 1e-3 / (100 + 1e-3), 2e-7 / 1
    expected = max(1e-7, 1e-3 / (100.0 + 1e-3), 2e-7)
    assert relative_error(a, n) == pytest.approx(expected, rel=1e-6)
    assert relative_error(n, a) == pytest.approx(expected, rel=1e-6)
    assert relative_error(np.empty(0), np.empty(0)) == 0.0
