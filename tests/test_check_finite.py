"""`se.RNN(..., check_finite=True)`: the first NaN/Inf of a forward or backward, with its step and value name."""

from __future__ import annotations

import numpy as np
import pytest

import seqengine as se
from seqengine.finite import NonFiniteError, StepInterpreter

from _seqengine_testing import assert_close, make_problem

LOG_CELL = se.Cell(name="finite_log", state=["h"], equations="""
    a = tanh(W @ x + U @ h_prev + b)
    l = log(a + k)
    h = tanh(l) * a + 0 * l
""")   # 0 * l: the -Inf of l turns the output into NaN
# l is not saved here: tanh(log(0)) = -1 hides the -Inf from every output, state and saved value
HIDDEN_LOG_CELL = se.Cell(name="finite_hidden_log", state=["h"], equations="""
    a = tanh(W @ x + U @ h_prev + b)
    l = log(a + k)
    h = tanh(l) * a
""")
SQRT_CELL = se.Cell(name="finite_sqrt", state=["h"], equations="""
    a = tanh(W @ x + U @ h_prev + b)
    h = sqrt(a * a)
""")


def log_rnn(cell=LOG_CELL, dtype=np.float64, **kw):
    """log(a + 1) with a = tanh(sum of x): -Inf exactly where x = -50 saturates a to -1."""
    rnn = se.RNN(cell, 3, 4, seed=0, dtype=dtype, **kw)
    rnn.params["k"][:] = 1.0
    rnn.params["W"][:] = 1.0
    x = (0.1 * np.random.default_rng(0).standard_normal((6, 2, 3))).astype(dtype)
    x[3, 1, :] = -50.0
    return rnn, x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [True, False])
def test_forward_names_the_step_and_the_value(dtype, training):
    rnn, x = log_rnn(dtype=dtype, check_finite=True)
    rnn.train(training)
    with pytest.raises(NonFiniteError) as info:
        rnn.forward(x)
    e = info.value
    assert isinstance(e, FloatingPointError)
    assert (e.phase, e.step, e.time, e.name, e.kind, e.row) == ("forward", 3, 3, "l", "value", 1)
    assert e.value == -np.inf and e.equation == "line 2: l = log(a + k)"
    text = str(e)
    assert text.startswith("check_finite: cell 'finite_log': forward step 3: value `l` is -Inf at batch row 1")
    assert "line 2: l = log(a + k)" in text and "its arguments: a + k = 0" in text


def test_off_by_default_and_silent_when_finite():
    rnn, x = log_rnn()
    y, _ = rnn.forward(x)                     # check_finite=False: the -Inf is the author's business
    assert np.isnan(y[3, 1]).all()           # 0 * log(0) = NaN
    rnn, x = log_rnn(check_finite=True)
    x[3, 1, :] = 0.0
    y, _ = rnn.forward(x)
    rnn.backward(np.ones_like(y))
    assert np.isfinite(y).all()


def test_a_value_hidden_from_the_tape_is_caught_in_backward_or_by_all():
    rnn, x = log_rnn(HIDDEN_LOG_CELL, check_finite=True)
    y, _ = rnn.forward(x)                     # finite outputs and tape
    assert np.isfinite(y).all()
    with pytest.raises(NonFiniteError) as info:
        rnn.backward(np.ones_like(y))
    e = info.value
    assert (e.phase, e.step, e.name, e.kind, e.row) == ("backward", 3, "d(a + k)", "adjoint", 1) and np.isnan(e.value)
    assert "its adjoint comes from `l`" in str(e)
    rnn, x = log_rnn(HIDDEN_LOG_CELL, check_finite="all")
    with pytest.raises(NonFiniteError, match="forward step 3: value `l` is -Inf"):
        rnn.forward(x)


def test_backward_in_a_stack_names_layer_direction_and_time():
    rnn = se.RNN(SQRT_CELL, 3, 4, seed=0, dtype=np.float64, num_layers=2, bidirectional=True, check_finite=True)
    for k in ("W", "U", "b"):   # unit 2 of layer 1's reverse direction is exactly 0: d sqrt = 1 / (2 * 0)
        rnn.params[f"l1_reverse.{k}"][2] = 0.0
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    y, _ = rnn.forward(x, lengths=np.array([5, 3]))
    with pytest.raises(NonFiniteError) as info:
        rnn.backward(np.ones_like(y))
    e = info.value
    assert (e.phase, e.layer, e.direction, e.unit, e.name, e.value) == ("backward", 1, 1, 2, "d(a * a)", np.inf)
    # the reverse direction's step counts from each sequence's own end: step s is time index length - 1 - s
    assert e.time == {0: 5, 1: 3}[e.row] - 1 - e.step
    assert "(layer 1, reverse direction)" in str(e) and "h = sqrt(a * a)" in str(e)
    assert set(rnn.grads) and not np.isfinite(rnn.grads["l1_reverse.W"]).all()   # grads are still set


def test_non_finite_inputs_parameters_and_states_are_named():
    rnn = se.RNN("lstm", 3, 4, seed=0, check_finite=True)
    x = np.zeros((4, 2, 3), np.float32)
    x[2, 1, 0] = np.nan
    with pytest.raises(NonFiniteError) as info:
        rnn.forward(x)
    assert (info.value.name, info.value.kind, info.value.step, info.value.row) == ("x", "input", 2, 1)
    x[2, 1, 0] = 0.0
    state = {s: np.zeros((1, 2, 4), np.float32) for s in ("h", "c")}
    state["c"][0, 0, 3] = np.inf
    with pytest.raises(NonFiniteError, match="initial state `c_prev` is \\+Inf at batch row 0, unit 3"):
        rnn.forward(x, state)
    rnn.params["b_hf"][1] = np.nan
    with pytest.raises(NonFiniteError, match="parameter `b_hf` is NaN"):
        rnn.forward(x)


def test_check_finite_argument_is_checked():
    with pytest.raises(ValueError, match="check_finite must be False, True or 'all'"):
        se.RNN("rnn", 3, 4, check_finite="yes")
    assert se.RNN("rnn", 3, 4, check_finite=np.True_).check_finite is True


def test_interpreter_matches_the_kernels(registered_cell):
    """The interpreter that names values computes what the kernels compute (forward and every adjoint)."""
    cell, params, x, state0, dy, dfinal = make_problem(registered_cell, steps=1, batch=3, seed=5)
    interp = StepInterpreter(cell, np.float64)
    vals = interp.forward(params, x[0], state0)
    y, final, tape = se.functional.forward(cell, params, x, state0, training=True)
    for s in cell.state:
        assert_close(vals[interp.graph.new_state[s]], final[s], 1e-12, 1e-12, f"{registered_cell} new {s}")
    dx, dstate0, grads = se.functional.backward(cell, params, tape, dy, dfinal)
    adj = interp.backward(params, vals, dy[0], dfinal)
    g = interp.graph
    for s in cell.state:
        prev = next(n.id for n in g.nodes if n.op == "prev" and n.attr == s)
        assert_close(adj[prev], dstate0[s], 1e-12, 1e-12, f"{registered_cell} d{s}_prev")
    for n in g.nodes:
        if n.op == "param":
            assert_close(np.sum(adj[n.id], axis=0), grads[n.attr], 1e-12, 1e-12, f"{registered_cell} d{n.attr}")
